"""Issue 13: training cost of the default LT-prefix against SetFit, timed under the same load.

The few-shot cells (``fewshot.py``, ``peers/setfit_peer.py``) record their CPU seconds, but each ran whenever it ran,
beside whatever else the 2-core host was doing, and CPU seconds on a shared host grow with the load (caches, memory
bandwidth). This script times the two methods as a pair: for each (dataset, shots, seed) it runs one cell of each,
one after the other, every cell a fresh process with one torch thread, alternating which goes first
(:func:`first_is_ours`), so both see the same background and neither gains from warm caches. Each cell is exactly
the few-shot benchmark's (the same sample, recipe and validation rows), written to a scratch folder; its accuracy is checked
against the stored cell of ``benchmarks/results/fewshot/`` (a timing run that trained something else would show
there). One JSON per pair: ``benchmarks/results/fewshot/timing/<dataset>-<shots>shot-seed<N>.json``.

    python benchmarks/fewshot_timing.py --shots 8 16 --seeds 0 1        # needs benchmarks/peers/.setfit-venv

The ltuning row is the library's default LT-prefix (``fewshot.py``'s ``lt-prefix-label-map``: the anchored head,
the rank-8 label map, lr 3e-3, 100 steps of batch 16). Pairs whose JSON exists are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import fewshot  # noqa: E402

OUT = fewshot.OUT / "timing"
OURS = "lt-prefix-label-map"
SETFIT_PY = common.ROOT / "benchmarks" / "peers" / ".setfit-venv" / "bin" / "python"


def commands(method: str, dataset: str, shots: int, seed: int, out: Path) -> list[str]:
    """The command line of one cell, written to ``out``: ours in this interpreter, SetFit in its venv."""
    cell = ["--datasets", dataset, "--shots", str(shots), "--seeds", str(seed), "--threads", "1",
            "--out", str(out), "--overwrite"]
    if method == "setfit":
        return [str(SETFIT_PY), str(common.ROOT / "benchmarks" / "peers" / "setfit_peer.py"), *cell]
    return [sys.executable, str(common.ROOT / "benchmarks" / "fewshot.py"), "run", "--methods", method, *cell]


def run_one(method: str, dataset: str, shots: int, seed: int) -> dict:
    """One cell in a fresh process; what it recorded, with the load around it and the stored cell's accuracy."""
    with tempfile.TemporaryDirectory() as tmp:
        load0 = os.getloadavg()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(commands(method, dataset, shots, seed, Path(tmp)), env=env, capture_output=True,
                              text=True)
        if proc.returncode:
            raise SystemExit(f"{method} {dataset} {shots}-shot seed {seed} failed:\n{proc.stderr[-3000:]}")
        load1 = os.getloadavg()
        name = common.fewshot_cell_name(dataset, method, shots, seed)
        rec = json.loads((Path(tmp) / name).read_text())
    stored = fewshot.OUT / name
    return {"train_seconds": rec["train_seconds"], "predict_seconds": rec["predict_seconds"],
            "accuracy": rec["accuracy"], "validation_rows": rec["validation_rows"], "train_rows": rec["train_rows"],
            "stored_accuracy": json.loads(stored.read_text())["accuracy"] if stored.exists() else None,
            "load_before": list(load0), "load_after": list(load1), "versions": rec["versions"],
            "recipe": rec["recipe"], "git": rec["git"]}


def first_is_ours(dataset: str, seed: int) -> bool:
    """Which cell of a pair runs first: it alternates from seed to seed (seeds 0 and 1 give every (dataset, shots)
    one pair of each order) and from dataset to dataset, whatever subset of datasets, shots and seeds runs."""
    return (seed + fewshot.DATASETS.index(dataset)) % 2 == 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=fewshot.DATASETS, choices=fewshot.DATASETS)
    ap.add_argument("--shots", nargs="+", type=int, default=[8, 16])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = ap.parse_args(argv)
    if min(args.shots) < 1:
        ap.error("--shots: the timed cells train, so 1 or more examples per class")
    if not SETFIT_PY.exists():
        raise SystemExit(f"{SETFIT_PY} missing: make bench-setfit-venv")
    fewshot.export(args.datasets, args.shots, args.seeds)  # the samples both methods read
    for d, k, s in [(d, k, s) for s in args.seeds for k in args.shots for d in args.datasets]:
        path = OUT / f"{d}-{k}shot-seed{s}.json"
        if path.exists():
            continue
        order = [OURS, "setfit"] if first_is_ours(d, s) else ["setfit", OURS]
        cells = {m: run_one(m, d, k, s) for m in order}
        common.write_result(path, {
            "dataset": d, "shots": k, "seed": s, "order": order, "cells": cells, "threads": 1,
            "machine": common.machine(), "git": common.git_commit(), "finished": common.now(),
            "command": "python benchmarks/fewshot_timing.py " + " ".join(sys.argv[1:])})
        ours, theirs = cells[OURS]["train_seconds"]["cpu"], cells["setfit"]["train_seconds"]["cpu"]
        print(f"{path.name}: train CPU s {OURS} {ours:.0f}, setfit {theirs:.0f} ({ours / theirs:.2f}x); accuracy "
              f"{cells[OURS]['accuracy']:.3f} / {cells['setfit']['accuracy']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
