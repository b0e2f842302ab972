"""Issue 12 part B: why LT starts slower than classic tuning, and whether the similarity head fixes it.

Every number here is on a **dev split carved from the training data** (seeded, 10% of train, at most
1,000 rows; the rest is trained on); the GLUE validation rows are never read. One JSON per run under
``benchmarks/results/headstart/<backbone>-<task>-<variant>-seed<N>.json``: the dev curve from step 0
(before any update), the config, seed, package versions and git commit.

    python benchmarks/headstart.py --tasks sst2 demo --variants zero-shot-similarity lt-prefix-paper \\
        lt-prefix-similarity prefix --steps 400 --eval-every 50

Variants: ``zero-shot-similarity`` (no training: cosine of the frozen sentence embeddings of text and label
text), ``<method>-paper`` / ``<method>-similarity`` / ``<method>-cosine`` / ``<method>-anchored`` for the LT methods (``score_head``), and the classic
``prefix`` / ``prompt``. A ``-listwise`` suffix on an LT variant trains with ``objective="listwise"`` (a K-way
softmax over the K pair scores of each text: K forward rows per text where the pairwise A.3 objective has one);
``forward_rows_per_step`` in the JSON says which.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OUT = common.RESULTS / "headstart"
DEV_FRACTION, DEV_MAX = 0.10, 1000


def dev_split(train, seed: int = 0):
    """(train minus dev, dev): a seeded 10% of the training rows (at most 1,000) held out for choosing."""
    from ltuning.data import TextDataset

    n = min(DEV_MAX, max(1, int(DEV_FRACTION * len(train))))
    order = list(range(len(train)))
    random.Random(1000 + seed).shuffle(order)
    dev_idx, rest = sorted(order[:n]), sorted(order[n:])
    pick = lambda idx, tag: TextDataset([train.texts[i] for i in idx], [train.labels[i] for i in idx],  # noqa: E731
                                        train.label_names, f"{train.source} ({tag}, seed {seed})")
    return pick(rest, "train minus dev"), pick(dev_idx, "dev")


def load(task: str):
    from ltuning.data import get_task, read_demo, read_glue

    train = read_demo("train") if task == "demo" else read_glue(task, "train", common.GLUE_DIR)
    t = get_task(task)
    return train, t.label_names, t.label_texts


def held_out(task: str):
    """The reported split, read only after every choice was made on dev: GLUE validation (all rows), or
    the packaged demo's validation rows."""
    from ltuning.data import read_demo, read_glue

    return read_demo("validation") if task == "demo" else read_glue(task, "validation", common.GLUE_DIR)


def zero_shot(backbone, texts, label_texts, pooling):
    """(N, K) cosine between each text's and each label text's frozen pooled embedding."""
    import torch
    import torch.nn.functional as F

    labels = backbone.encode_label_vectors(label_texts, pooling)
    out = []
    with torch.inference_mode():
        for s in range(0, len(texts), 64):
            enc = {k: v.to(backbone.device) for k, v in backbone.tokenize(texts[s:s + 64], common.MAX_LENGTH).items()}
            v = backbone(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), pooling=pooling)
            out.append(F.cosine_similarity(v.float().unsqueeze(1), labels.float().unsqueeze(0), dim=-1).cpu())
    return torch.cat(out)


def zero_shot_metrics(backbone, data, label_texts, pooling) -> dict:
    """``ltuning.metrics.classification_metrics`` of the frozen model's zero-shot ranking on ``data`` (texts and
    label indices): each text's label is the label text whose embedding is nearest (:func:`zero_shot`)."""
    from ltuning.metrics import classification_metrics

    pred = zero_shot(backbone, list(data.texts), label_texts, pooling).argmax(-1).tolist()
    return classification_metrics(pred, list(data.labels), len(label_texts))


def run(backbone, backbone_name: str, task: str, variant: str, seed: int, args) -> dict:
    import torch

    from ltuning.config import LTuningConfig, TextPooling
    from ltuning.evaluate import evaluate
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, record_objective, set_seed, train

    full, names, label_texts = load(task)
    train_ds, dev = dev_split(full, seed=0)  # one dev split per task, the same for every variant and seed
    dev = dev.subset(args.dev_rows, seed=0)
    pooling = backbone.resolve_pooling(TextPooling(common.PROTOCOL[backbone_name]["text_pooling"]))
    t0 = time.perf_counter()
    record = {"backbone": backbone_name, "task": task, "variant": variant, "seed": seed,
              "dev_rows": len(dev), "train_rows": len(train_ds), "label_texts": label_texts,
              "selected_on": "dev (carved from train; GLUE validation not read)"}
    if variant == "zero-shot-similarity":
        m = zero_shot_metrics(backbone, dev, label_texts, pooling)
        val = held_out(task)
        v = zero_shot_metrics(backbone, val, label_texts, pooling)
        record.update(curve=[{"step": 0, "dev_accuracy": m["accuracy"], "dev_mcc": m["mcc"]}], steps=0,
                      trainable_params=0, validation={"rows": len(val), "accuracy": v["accuracy"], "mcc": v["mcc"]})
    else:

        # "<lt method>-similarity-frozen-injection": the similarity head alone, its prefix / prompt maps kept
        # at their initial values (the ablation: what does the label-conditioned injection add?)
        listwise = variant.endswith("-listwise")
        frozen_injection = variant.removesuffix("-listwise").endswith("-frozen-injection")
        base = variant.removesuffix("-listwise").removesuffix("-frozen-injection")
        method, score_head = common.split_score_head(base)
        if frozen_injection and score_head == "cosine":
            raise SystemExit(f"{variant}: the cosine head trains nothing but the injection; freezing it leaves "
                             "nothing to train")
        set_seed(seed)
        cfg = LTuningConfig(method=method, base_model=backbone_name, label_names=names, label_texts=label_texts,
                            text_pooling=pooling, max_length=common.MAX_LENGTH,
                            score_head=score_head, **common.label_map(method))
        model = LTuningModel(backbone, cfg)
        if frozen_injection:
            keep = {"head.weight", "text_map.weight", "logit_scale", "logit_bias"}
            for name, p in model.method.named_parameters():
                p.requires_grad_(name in keep)
        targs = TrainArgs(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                          eval_every=args.eval_every, seed=seed, progress=False,
                          objective=common.objective(method, listwise))
        record_objective(model, targs)  # the step-0 loss is the objective's too
        m0 = evaluate(model, dev)
        curve = [{"step": 0, "dev_accuracy": m0["accuracy"], "dev_mcc": m0["mcc"], "dev_loss": m0["loss"]}]
        print(f"  {variant} seed {seed} step 0: dev acc {m0['accuracy']:.4f}", flush=True)
        res = train(model, train_ds, dev, targs)
        curve += [{"step": r["step"], "dev_accuracy": r["accuracy"], "dev_mcc": r["mcc"], "dev_loss": r["loss"],
                   "train_loss": r.get("train_loss")} for r in res.history]
        # the state train() kept is the best on dev; the held-out split is scored once, never chosen on
        val = held_out(task)
        v = evaluate(model, val)
        record["validation"] = {"rows": len(val), "accuracy": v["accuracy"], "mcc": v["mcc"],
                                "checkpoint": f"best dev accuracy (step {res.best_step})"}
        record.update(curve=curve, steps=args.steps, batch_size=args.batch_size, learning_rate=res.learning_rate,
                      trainable_params=model.num_trainable_parameters(), adapter=model.config.to_dict(),
                      objective=targs.objective,
                      forward_rows_per_step=args.batch_size * (len(names) if listwise else 1))
    record.update(seconds=time.perf_counter() - t0, versions=common.versions("torch", "transformers"),
                  git=common.git_commit(), machine=common.machine(), threads=torch.get_num_threads(),
                  finished=common.now())
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "demo"])
    ap.add_argument("--variants", nargs="+", default=["zero-shot-similarity", "lt-prefix-paper",
                                                      "lt-prefix-similarity", "prefix"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--dev-rows", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-2,
                    help="default: 1e-2, the rate the committed rows ran at (every method's default then)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="suffix of the result file names (e.g. lr3e-3)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from ltuning.loading import load_backbone

    backbone = load_backbone(args.backbone)
    for task in args.tasks:
        for variant in args.variants:
            for seed in args.seeds:
                path = OUT / f"{args.backbone}-{task}-{variant}{args.tag}-seed{seed}.json"
                if path.exists():
                    print(f"skip {path.name} (exists)")
                    continue
                print(f"{args.backbone} {task} {variant} seed {seed}", flush=True)
                rec = run(backbone, args.backbone, task, variant, seed, args)
                rec["cli"] = {k: v for k, v in vars(args).items()}
                common.write_result(path, rec)
                print(f"  -> {path.name}: {[round(c['dev_accuracy'], 3) for c in rec['curve']]}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
