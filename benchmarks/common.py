"""Shared by the benchmark runners: the protocol (steps, batch, lr, validation rows per backbone), the
cell order, result paths, and the provenance every result JSON carries.

Imports nothing from ltuning or transformers at module level, so the peer scripts (which run in their
own venv with transformers 4.57.1 and peft) can use it too.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
TABLE_DIR = RESULTS / "table1"
GLUE_DIR = Path(os.environ.get("LTUNING_GLUE_DIR", ROOT.parent / "shared" / "data" / "glue"))

TASKS = ["sst2", "cola", "rte"]
OURS = ["prefix", "prompt", "lt-prefix", "lt-prompt", "lt-prefix-softmax"]
PEERS = ["peft-prefix", "peft-prompt", "linear-probe", "full-finetune"]

# The protocol. One learning rate for every method (no search): 1e-2, the library's default for all four
# methods; the peers use the same 1e-2 except full fine-tuning (all 22.7M weights), which diverges at
# 1e-2 and gets the standard 2e-5 instead.
PROTOCOL = {
    "minilm": {
        "steps": 150, "batch_size": 16, "eval_every": 25, "learning_rate": 1e-2,
        "max_validation": 300,  # seeded random 300 validation rows (seed 0; RTE has 277: all), same for every method
        "text_pooling": "mean",  # all-MiniLM-L6-v2 is a mean-pooling sentence encoder
        "seeds": [0, 1, 2],
    },
    "smollm2": {
        "steps": 60, "batch_size": 8, "eval_every": 10, "learning_rate": 1e-2,
        "max_validation": 100,  # seeded random 100 validation rows (seed 0), the same rows for every method
        "text_pooling": "last",
        "seeds": [0],
    },
}
FULL_FINETUNE_LR = 2e-5
MAX_LENGTH = 128


def result_path(backbone: str, task: str, method: str, seed: int) -> Path:
    return TABLE_DIR / f"{backbone}-{task}-{method}-seed{seed}.json"


def cells(backbones=("minilm", "smollm2"), tasks=TASKS, methods=None, seeds=None, peers=False):
    """Cells in priority order: minilm seed 0 (ours), smollm2 seed 0 (ours), peers, minilm other seeds."""
    methods = list(methods) if methods else (PEERS if peers else OURS)
    out = []
    for seed_pass in ("first", "rest"):
        for backbone in backbones:
            seeds_here = PROTOCOL[backbone]["seeds"] if seeds is None else [s for s in seeds]
            for seed in seeds_here:
                first = seed == seeds_here[0]
                if (seed_pass == "first") != first:
                    continue
                # the four paper methods on every task first; the extra softmax row after them
                for method, task in sorted(((m, t) for t in tasks for m in methods),
                                           key=lambda mt: (mt[0] == "lt-prefix-softmax", tasks.index(mt[1]))):
                    if True:
                        if method == "full-finetune" and backbone != "minilm":
                            continue  # the ceiling: minilm only
                        out.append((backbone, task, method, seed))
    return out


def subsample(texts, labels, n, seed=0):
    """Seeded random subset (same rule as ltuning.data.TextDataset.subset)."""
    if n is None or n >= len(texts):
        return texts, labels
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def git_commit() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD"), "dirty_src": bool(run("status", "--porcelain", "src"))}


def versions(*modules: str) -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for m in modules:
        try:
            out[m] = __import__(m).__version__
        except Exception:  # noqa: BLE001 - a missing module is reported, not fatal
            out[m] = None
    return out


def machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu_count": os.cpu_count(), "loadavg_at_start": load, "device": "cpu"}


def steps_to_target(history: list[dict], frac: float = 0.95):
    """First evaluated step whose accuracy reaches frac * the run's own best accuracy."""
    if not history:
        return None
    best = max(r["accuracy"] for r in history)
    for r in history:
        if r["accuracy"] >= frac * best:
            return r["step"]
    return None


def write_result(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
