"""Shared by the benchmark runners: the protocol (steps, batch, lr, validation rows per backbone), the
cell order, result paths, and the provenance every result JSON carries.

Imports nothing from ltuning or transformers at module level, so the peer scripts (which run in their
own venv with transformers 4.57.1 and peft) can use it too.
"""

from __future__ import annotations

import importlib.util
import json
import math
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
OURS = ["prefix", "prompt", "lt-prefix", "lt-prompt", "lt-prefix-softmax", "lt-prompt-after"]
# Extra rows after the four paper methods: LT-prefix with the paper's softmax pooling; LT-prompt with the label
# prompt after the text (label_position="after", decoders only: no cells on encoders).
EXTRA_ROWS = ["lt-prefix-softmax", "lt-prompt-after"]
DECODER_ONLY = {"lt-prompt-after"}
DECODER_BACKBONES = {"smollm2"}
PEERS = ["peft-prefix", "peft-prompt", "linear-probe", "full-finetune"]

# The protocol. One learning rate for every method (no search): 1e-2, the library's default for all four
# methods when Table 1 ran (each method has its own default now); the peers use the same 1e-2 except full fine-tuning (all 22.7M weights), which diverges at
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


def lr_name(x: float) -> str:
    """3e-3, 2.5e-4: a learning rate as people write it (row names, file names), as ``--help`` writes it."""
    from ltuning.methods import learning_rate_text

    return learning_rate_text(x)


def objective(method: str, listwise: bool = False) -> str:
    """The training objective of a benchmark row: an LT method trains pairwise (A.3; the library default when
    the stored rows ran) unless the row asks for listwise; a classic method's K-way head is always listwise."""
    return "listwise" if listwise or not method.startswith("lt-") else "pairwise"


#: The rank of LT-prefix's label map (``label_map_rank``) in the benchmark rows that have it (``fewshot.py``'s
#: ``lt-prefix-label-map``, ``converged.py``'s ``lt-prefix-label-map-*`` rows): chosen before any of them ran, with
#: 32 tried beside it on the few-shot dev rows (BENCHMARKS.md)
LABEL_MAP_RANK = 8


def fewshot_cell_name(dataset: str, method: str, shots: int, seed: int, tag: str = "") -> str:
    """The file name of one few-shot cell (``fewshot.py``, ``peers/setfit_peer.py``, ``fewshot_timing.py``):
    ``<dataset>-<method>[-<tag>]-<shots>shot-seed<N>.json``; the tag names a budget (``ep50``) or an ablation
    variant."""
    return f"{dataset}-{method}{f'-{tag}' if tag else ''}-{shots}shot-seed{seed}.json"


def label_map(method: str, rank: int | None = None) -> dict:
    """The ``label_map_rank`` option of a benchmark row's LT-prefix build: a map of ``rank``, or none (0) where
    ``rank`` is None. The library's default became a map (r = 8) on 2026-11-29, and every stored row that does not
    name the map ran without one, so each LT-prefix build here names it: a rerun keeps its row's recipe whatever
    the library's default. {} for the other methods, which have no map."""
    return {"label_map_rank": rank or 0} if method == "lt-prefix" else {}


def split_score_head(name: str) -> tuple[str, str]:
    """(method, score head) of a row or variant name ``lt-<method>[-paper|-similarity|-cosine|-anchored]``: the suffix
    names the head; without one, the similarity head (what these rows ran; LT-prefix's library default is now
    the anchored head, named with ``-anchored``). Only the LT methods have a choice of head: any
    other name is the method itself with the paper's K-way head (``zero-shot-similarity`` included)."""
    if not name.startswith("lt-"):
        return name, "paper"
    head = next((h for h in ("paper", "similarity", "cosine", "anchored") if name.endswith("-" + h)), None)
    return (name.removesuffix(f"-{head}") if head else name), head or "similarity"


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
                # the four paper methods on every task first; the extra rows after them
                for method, task in sorted(((m, t) for t in tasks for m in methods),
                                           key=lambda mt: (mt[0] in EXTRA_ROWS, tasks.index(mt[1]))):
                    if method == "full-finetune" and backbone != "minilm":
                        continue  # the ceiling: minilm only
                    if method in DECODER_ONLY and backbone not in DECODER_BACKBONES:
                        continue
                    out.append((backbone, task, method, seed))
    return out


#: LT-prefix's learned parts and the values each starts at (a fresh adapter's, whatever the seed): the score
#: head's C_zeta (``head``) 0, W (``text_map``) the identity, s and b their initial values; Z (``transform``) and
#: the label map's U (``label_up``) 0, so the label prefix starts at zero whatever ``pool`` and ``label_down`` hold
LT_PREFIX_PARTS = ("head", "text_map", "logit_scale", "logit_bias", "transform", "label_up")


def reset_parts(model, trained: dict, parts) -> None:
    """Load ``trained`` (a state dict of ``model.method``) into ``model``, with each of ``parts``
    (:data:`LT_PREFIX_PARTS`) put back to its start value (a part the method does not have, such as the cosine
    head's W, is left out); the cached prediction-time prefixes are dropped."""
    import torch

    method = model.method
    if parts and not method.score_head.reads_label:
        raise ValueError(f"{method.score_head.value} head: its C_zeta and Z start random, so there is no start value "
                         "to put them back to (the similarity, anchored and cosine heads start at W = I, C_zeta = 0, "
                         "Z = 0)")
    model.method.load_state_dict(trained)
    with torch.no_grad():
        for part in parts:
            if part not in LT_PREFIX_PARTS:
                raise ValueError(f"unknown part {part!r}: one of {', '.join(LT_PREFIX_PARTS)}")
            if part not in trained and f"{part}.weight" not in trained:  # e.g. the cosine head's W: nothing learned
                continue
            if part == "logit_scale":
                method.logit_scale.fill_(math.log(method.initial_scale))
            elif part == "logit_bias":
                method.logit_bias.fill_(method.initial_bias)
            else:
                w = getattr(method, part).weight
                w.copy_(torch.eye(w.shape[0], dtype=w.dtype) if part == "text_map" else torch.zeros_like(w))
    model.clear_injection_cache()


def metric_of(task: str) -> str:
    """The converged benchmark's metric of a GLUE task: MCC on CoLA, accuracy elsewhere."""
    return "mcc" if task == "cola" else "accuracy"


def ran_to_cap(rec: dict) -> bool:
    """A converged final run (benchmarks/converged.py) that early stopping did not end before its last step:
    it is also the run without early stopping (the stop only ends the loop; the schedule, the evaluations and the
    best dev state are the same). The patience check also fires at the last step, so a run "stopped" there
    reached the cap too."""
    return rec.get("stopped_early_at") in (None, rec["protocol"]["max_steps"])


def subsample(texts, labels, n, seed=0):
    """Seeded random subset (same rule as ltuning.data.TextDataset.subset)."""
    if n is None or n >= len(texts):
        return texts, labels
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def _git_state() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD"), "dirty_src": bool(run("status", "--porcelain", "src"))}


#: Taken when this module is imported, that is when a benchmark process starts and loads its code: a commit made
#: while a run of hours is going is not the code that run ran (until 2026-11-28 every result recorded HEAD as it
#: was when the run was written, after it ended). Approximate where a script imports a module of src/ or
#: benchmarks/ only when a cell first needs it: that module is read from the work tree at that moment.
_GIT_AT_START = _git_state()


def git_commit() -> dict:
    """The commit checked out when this process started, and whether ``src/`` had uncommitted changes then."""
    return dict(_GIT_AT_START)


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


def length_ordered_logits(texts, score, num_labels: int, batch: int = 64):
    """(N, K) float logits on the CPU of ``score(list of texts) -> (B, K)``, without gradients, the texts
    scored in length order (less padding) in batches of ``batch``."""
    import torch

    idx = sorted(range(len(texts)), key=lambda i: len(str(texts[i])))
    out = torch.empty(len(texts), num_labels)
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            b = idx[s:s + batch]
            out[b] = score([texts[i] for i in b]).float().cpu()
    return out


def clock() -> tuple[float, float]:
    """A start point for :func:`since`: (wall, this process's CPU) seconds."""
    return time.perf_counter(), time.process_time()


def since(t: tuple[float, float]) -> dict:
    """{"wall": s, "cpu": s} elapsed since ``t`` (:func:`clock`)."""
    return {"wall": time.perf_counter() - t[0], "cpu": time.process_time() - t[1]}


def write_result(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def ltuning_metrics():
    """``src/ltuning/metrics.py`` loaded by path: the same metric code for our runs and for the peers,
    whose venv cannot import ltuning (it pins transformers 4.x)."""
    spec = importlib.util.spec_from_file_location("_ltuning_metrics", ROOT / "src" / "ltuning" / "metrics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logits_metrics(logits, labels, num_labels: int) -> dict:
    """Validation metrics of a K-way head: accuracy, MCC, macro-F1, confusion matrix, cross-entropy loss."""
    import torch.nn.functional as F

    m = ltuning_metrics().classification_metrics(logits.argmax(-1).tolist(), labels.tolist(), num_labels)
    m["loss"] = F.cross_entropy(logits, labels).item()
    return m


class RunTracker:
    """Validation curve and best evaluation (highest ``metric``, ties: lower loss) of one benchmark run,
    and the result record every Table 1 runner writes."""

    def __init__(self, metric: str = "accuracy"):
        self.metric = metric
        self.history: list[dict] = []
        self.best: dict | None = None
        self.best_step = 0
        self._best_key = (-math.inf, -math.inf)
        self.start = time.perf_counter()

    def record(self, step: int, m: dict, train_loss: float | None, candidate: bool = True) -> bool:
        """Add an evaluation; True when it is the new best. ``candidate=False``: on the curve only, never the
        kept state (the step-0 evaluation, as in ``ltuning.train``)."""
        self.history.append({"step": step, "loss": m["loss"], "accuracy": m["accuracy"], "mcc": m["mcc"],
                             "macro_f1": m["macro_f1"], "train_loss": train_loss,
                             "elapsed_seconds": time.perf_counter() - self.start})
        print(f"    step {step}: acc {m['accuracy']:.4f} mcc {m['mcc']:.4f} loss {m['loss']:.4f}", flush=True)
        if candidate and (m[self.metric], -m["loss"]) > self._best_key:
            self._best_key, self.best, self.best_step = (m[self.metric], -m["loss"]), m, step
            return True
        return False

    def evals_since_best(self) -> int:
        return sum(1 for r in self.history if r["step"] > self.best_step)

    def result(self, val_labels, num_labels: int, trainable: int, build_s: float, step_s: float,
               config: dict) -> dict:
        loop_s = time.perf_counter() - self.start
        counts = [list(val_labels).count(k) for k in range(num_labels)]
        best = self.best
        return {
            "accuracy": best["accuracy"], "mcc": best["mcc"], "macro_f1": best["macro_f1"],
            "validation_loss": best["loss"], "best_step": self.best_step, "final": self.history[-1],
            "majority_accuracy": max(counts) / len(val_labels), "num_validation": len(val_labels),
            "confusion_matrix": best["confusion_matrix"], "trainable_params": trainable,
            "seconds": build_s + loop_s,
            "timings": {"build_seconds": build_s, "train_loop_seconds": loop_s, "train_step_seconds": step_s},
            "curve": self.history,
            "config": config,
        }
