"""Open-vocabulary labels: train LT-prompt and LT-prefix on SST-2 with one label wording, then score the
SST-2 validation split with label wordings the adapter never saw (``predict(candidate_labels=...)``).

    python benchmarks/open_vocab.py                    # minilm, lt-prompt + lt-prefix, seed 0
    python benchmarks/open_vocab.py --seeds 0 1 --steps 300 --max-validation 0   # larger: full validation

Writes benchmarks/results/open_vocab.json; BENCHMARKS.md ("Open-vocabulary labels") reports it.

Protocol (kept small: 2 shared CPU cores): minilm, batch 16, lr 1e-2, mean pooling (as Table 1), 200 steps,
max_length 64, trained on a seeded 4,000-row subsample of SST-2 train with the label texts "negative" /
"positive"; no model selection (the final state; validation is never seen in training); label_length
l = 8 for both methods so that paraphrases up to 8 tokens fit LT-prefix's Z (which takes exactly l
inputs). Every label set is scored by argmax (A.4) on the same seeded 400-row subsample of SST-2
validation (--max-validation 0: all 872 rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# name -> (text read for class 0 "negative", text read for class 1 "positive")
LABEL_SETS = {
    "trained: negative / positive": ("negative", "positive"),
    "bad / good": ("bad", "good"),
    "terrible / great": ("terrible", "great"),
    "negative review / positive review": ("negative review", "positive review"),
    "template 'The review is {}.'": ("The review is negative.", "The review is positive."),
    "control, swapped: positive / negative": ("positive", "negative"),
}
METHODS = ["lt-prompt", "lt-prefix"]
LABEL_LENGTH = 8
TRAIN_ROWS = 4000
STEPS = 200
MAX_LENGTH = 64
VALIDATION_ROWS = 400


def run(method: str, seed: int, steps: int, backbone, train, val) -> dict:
    from ltuning.api import get_ltuning_model, score_candidates
    from ltuning.config import LTuningConfig
    from ltuning.evaluate import classification_metrics
    from ltuning.train import TrainArgs, set_seed
    from ltuning.train import train as fit

    p = common.PROTOCOL["minilm"]
    set_seed(seed)
    config = LTuningConfig(method=method, base_model="minilm", label_length=LABEL_LENGTH,
                           max_length=MAX_LENGTH, text_pooling=p["text_pooling"],
                           score_head="paper",  # the stored results predate the similarity head
                           **common.label_map(method))  # and LT-prefix's label map
    model = get_ltuning_model(backbone, config, labels={"negative": "negative", "positive": "positive"})
    t0 = time.perf_counter()
    fit(model, train, None, TrainArgs(max_steps=steps, batch_size=p["batch_size"], learning_rate=p["learning_rate"],
                                      seed=seed, progress=True, objective="pairwise"))  # as stored
    train_seconds = time.perf_counter() - t0
    rows = []
    for name, texts in LABEL_SETS.items():
        scores = score_candidates(model, val.texts, list(texts), batch_size=64)  # (N, 2)
        m = classification_metrics(scores.argmax(-1).tolist(), val.labels, 2)
        rows.append({"label_set": name, "label_texts": list(texts), "accuracy": m["accuracy"], "mcc": m["mcc"],
                     "macro_f1": m["macro_f1"]})
        print(f"{method} seed {seed} {name:<42} accuracy {m['accuracy']:.4f}", flush=True)
    return {"method": method, "seed": seed, "trainable_parameters": model.num_trainable_parameters(),
            "train_seconds": train_seconds, "results": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--max-validation", type=int, default=VALIDATION_ROWS,
                    help=f"score a seeded random subset of SST-2 validation (default {VALIDATION_ROWS}; 0: all)")
    ap.add_argument("--output", default=str(common.RESULTS / "open_vocab.json"))
    ap.add_argument("--table", action="store_true", help="print the Markdown table of --output and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.output).read_text())))
        return

    import torch

    from ltuning.data import read_glue
    from ltuning.loading import load_backbone

    torch.set_num_threads(2)
    started = common.now()
    train = read_glue("sst2", "train", common.GLUE_DIR).subset(TRAIN_ROWS, seed=0)
    val = read_glue("sst2", "validation", common.GLUE_DIR).subset(args.max_validation or None, seed=0)
    backbone = load_backbone("minilm")
    p = common.PROTOCOL["minilm"]
    runs: list[dict] = []
    for s in args.seeds:
        for m in args.methods:
            runs.append(run(m, s, args.steps, backbone, train, val))
            write(args, runs, p, train, val, started)  # after every run: a partial result is still a result
    print(f"wrote {args.output}")


def markdown_table(result: dict) -> str:
    """Accuracy per label set and method; the change against the trained wording in points."""
    runs = result["runs"]
    methods = sorted({r["method"] for r in runs}, key=METHODS.index)
    by = {(r["method"], row["label_set"]): [] for r in runs for row in r["results"]}
    for r in runs:
        for row in r["results"]:
            by[(r["method"], row["label_set"])].append(row["accuracy"])
    base = {m: sum(by[(m, next(iter(LABEL_SETS)))]) / len(by[(m, next(iter(LABEL_SETS)))]) for m in methods}
    lines = ["| label texts read (class 0 / class 1) | " + " | ".join(f"{m} accuracy (change)" for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for name, texts in LABEL_SETS.items():
        cells = []
        for m in methods:
            accs = by.get((m, name))
            if not accs:
                cells.append("-")
                continue
            a = sum(accs) / len(accs)
            cells.append(f"{a:.3f}" if name == next(iter(LABEL_SETS)) else f"{a:.3f} ({100 * (a - base[m]):+.1f})")
        note = " (trained wording)" if name.startswith("trained") else " (control: swapped)" if "swapped" in name else ""
        lines.append(f"| \"{texts[0]}\" / \"{texts[1]}\"{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(args, runs, p, train, val, started) -> None:
    common.write_result(Path(args.output), {
        "question": "accuracy on SST-2 validation when an LT adapter trained with the label texts "
                    "'negative'/'positive' is asked to score other label wordings",
        "command": "python benchmarks/open_vocab.py " + " ".join(sys.argv[1:]),
        "backbone": "minilm",
        "protocol": {"train": f"SST-2 train, seeded random {TRAIN_ROWS} rows (seed 0)", "steps": args.steps,
                     "batch_size": p["batch_size"], "learning_rate": p["learning_rate"],
                     "text_pooling": p["text_pooling"], "label_length": LABEL_LENGTH,
                     "max_length": MAX_LENGTH, "prefix_pooling": "raw",
                     "trained_label_texts": ["negative", "positive"], "checkpoint": "final state (no selection)",
                     "evaluation": f"SST-2 validation, {len(val)} rows ({val.source}), argmax over the 2 candidate "
                                   "labels"},
        "runs": runs,
        "started": started, "finished": common.now(),
        "git": common.git_commit(), "versions": common.versions("torch", "transformers"), "machine": common.machine(),
    })


if __name__ == "__main__":
    main()
