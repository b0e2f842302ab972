"""Issue 16: the label prefix in the top j layers only (``prefix_layers``): accuracy and prediction speed per j.

With j < m the texts' bottom m - j layers run once for all K labels: a text costs (m - j) + K*j layer passes
instead of K*m. Two parts, one JSON per result under ``benchmarks/results/depth/``, each with its config, seed,
package versions, git commit and load average:

``train``: one run per (method, j) on a GLUE task: trained on the training rows minus a seeded dev split
(headstart.py's: 10% of train, at most 1,000 rows); the saved state is the best dev accuracy among the
evaluations every ``--eval-every`` steps; the reported numbers are that state on the GLUE validation split (all
rows), which chooses nothing. ``<backbone>-<task>-<method>-j<J>-seed<N>.json`` (J = m: every layer).

    python benchmarks/depth.py train --methods lt-prefix prefix --js 1 2 3 6 --steps 300

``speed``: texts/s of ``LTuningModel.score_texts`` (its defaults, CPU token budget included) for each j and K
on the same texts (synthetic label sets of K label texts), interleaved in one process (order reversed every
other repeat), medians of wall and CPU time (``time.process_time``); beside them the floor, the same backbone
running every text once per label with no prefix, and transformers' zero-shot pipeline on the same backbone.
The shared-bottom scores are checked against the B*K full rows with the same prefix (max abs diff recorded).
``speed-<backbone>.json``.

    python benchmarks/depth.py speed --js 1 2 3 6 --ks 2 4 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import headstart  # noqa: E402

OUT = common.RESULTS / "depth"


def _provenance(threads: int) -> dict:
    return {"versions": common.versions("torch", "transformers"), "git": common.git_commit(),
            "machine": common.machine(), "threads": threads, "finished": common.now()}


def train_one(backbone, name: str, task: str, method: str, j: int, seed: int, args) -> dict:
    import torch

    from ltuning.config import LTuningConfig, TextPooling
    from ltuning.evaluate import evaluate
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, set_seed, train

    m = backbone.dims.num_layers
    full, names, label_texts = headstart.load(task)
    train_ds, dev = headstart.dev_split(full, seed=0)
    dev = dev.subset(args.dev_rows, seed=0)
    pooling = backbone.resolve_pooling(TextPooling(common.PROTOCOL[name]["text_pooling"]))
    set_seed(seed)
    cfg = LTuningConfig(method=method, base_model=name, label_names=names, label_texts=label_texts,
                        score_head="similarity", text_pooling=pooling, max_length=common.MAX_LENGTH, prefix_layers=None if j == m else j,
                        **common.label_map(method))
    model = LTuningModel(backbone, cfg)
    targs = TrainArgs(max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
                      eval_every=args.eval_every, seed=seed, progress=False,
                      objective=common.objective(method))  # the default when the stored runs trained
    load0, t0, c0 = common.machine()["loadavg_at_start"], time.perf_counter(), time.process_time()
    res = train(model, train_ds, dev, targs)
    best_step = res.best_step
    train_wall, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    val = headstart.held_out(task)
    t1, c1 = time.perf_counter(), time.process_time()
    v = evaluate(model, val)
    eval_wall, eval_cpu = time.perf_counter() - t1, time.process_time() - c1
    return {"backbone": name, "task": task, "method": method, "prefix_layers": j, "m": m, "seed": seed,
            "steps": args.steps, "batch_size": args.batch_size, "learning_rate": res.learning_rate,
            "eval_every": args.eval_every, "dev_rows": len(dev), "train_rows": len(train_ds), "best_step": best_step,
            "selected_on": f"best dev accuracy (step {res.best_step}); dev carved from train, GLUE validation "
                           "read once at the end",
            "validation": {"rows": len(val), "accuracy": v["accuracy"], "mcc": v["mcc"]},
            "curve": [{"step": r["step"], "dev_accuracy": r["accuracy"], "dev_loss": r["loss"],
                       "train_loss": r.get("train_loss")} for r in res.history],
            "trainable_params": model.num_trainable_parameters(), "adapter": model.config.to_dict(),
            "train_seconds": {"wall": train_wall, "cpu": train_cpu},
            "validation_seconds": {"wall": eval_wall, "cpu": eval_cpu},
            "load_before": load0, "load_after": common.machine()["loadavg_at_start"],
            "command": "python benchmarks/depth.py " + " ".join(sys.argv[1:]),
            **_provenance(torch.get_num_threads())}


def cmd_train(args) -> int:
    import torch

    from ltuning.loading import load_backbone

    torch.set_num_threads(args.threads)
    bb = load_backbone(args.backbone)
    OUT.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        for j in args.js:
            for seed in args.seeds:
                path = OUT / f"{args.backbone}-{args.task}-{method}-j{j}-seed{seed}.json"
                if path.exists() and not args.overwrite:
                    print(f"skip {path.name} (exists)", flush=True)
                    continue
                rec = train_one(bb, args.backbone, args.task, method, j, seed, args)
                path.write_text(json.dumps(rec, indent=1) + "\n")
                print(f"{path.name}: validation accuracy {rec['validation']['accuracy']:.4f} (best dev step "
                      f"{rec['selected_on'].split('step ')[1].split(')')[0]}), train {rec['train_seconds']['cpu']:.0f} "
                      f"CPU s", flush=True)
    return 0


def cmd_speed(args) -> int:
    import speed
    import torch

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.loading import load_backbone
    from ltuning.model import LTuningModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started, load_before = time.strftime("%Y-%m-%dT%H:%M:%S%z"), speed.loadavg()
    bb = load_backbone(args.backbone)
    m = bb.dims.num_layers
    texts, _ = speed.demo_texts("validation", args.texts)
    pipe = speed.nli_pipeline(bb) if args.pipeline else None
    fns, info = {}, {}
    for K in args.ks:
        names = speed.MANY_LABELS[:K]
        for j in args.js:
            cfg = LTuningConfig(method="lt-prefix", base_model=args.backbone, label_names=names,
                                score_head="similarity", max_length=args.length, prefix_layers=None if j == m else j,
                                **common.label_map("lt-prefix"))
            model = LTuningModel(bb, cfg)
            with torch.no_grad():  # a trained-looking prefix: the similarity head starts Z at zero
                model.method.transform.weight.normal_(0, 0.05)
            model.eval()
            if j < m:  # the shared path against the B*K full rows with the same prefix
                rows_bb = Backbone(bb.model, bb.tokenizer, bb.name)
                rows_bb.shares_bottom = lambda prefix: False  # the reference: the B*K rows run whole
                full = LTuningModel(rows_bb, model.config)
                full.method.load_state_dict(model.method.state_dict())
                full.eval()
                diff = (model.score_texts(texts[:8]) - full.score_texts(texts[:8])).abs().max().item()
            else:
                diff = None
            info[(K, j)] = {"max_abs_diff_shared_vs_rows": diff, "label_length": model.config.label_length}
            fns[f"lt-prefix_j{j}_k{K}"] = lambda mod=model: mod.score_texts(texts)
        # the floor: every text once per label, no prefix, batched as score_texts batches
        fns[f"floor_k{K}"] = lambda K=K: speed.floor_rows(bb, texts, K, args.length)
        if pipe is not None:
            fns[f"pipeline_k{K}"] = lambda names=names: pipe(texts, candidate_labels=names, batch_size=64)
    tok = bb.tokenize(texts, args.length)["attention_mask"].sum(-1).tolist()
    speed.log(f"{len(fns)} variants x {args.repeats} repeats, {len(texts)} texts of {min(tok)}-{max(tok)} tokens")
    t = speed.interleaved(fns, args.repeats, warmup=1)
    rows = []
    for K in args.ks:
        floor = t[f"floor_k{K}"]
        pipe_t = t.get(f"pipeline_k{K}")
        for j in args.js:
            x = t[f"lt-prefix_j{j}_k{K}"]
            rows.append({"K": K, "j": j, "layer_passes_per_text": (m - j) + K * j,
                         "wall_median": x["wall_median"], "cpu_median": x["cpu_median"], "wall": x["wall"],
                         "cpu": x["cpu"], "texts_per_s": len(texts) / x["wall_median"],
                         "texts_per_cpu_s": len(texts) / x["cpu_median"],
                         "predict_over_floor_wall": x["wall_median"] / floor["wall_median"],
                         "predict_over_floor_cpu": x["cpu_median"] / floor["cpu_median"],
                         "pipeline_over_predict_wall": None if pipe_t is None else pipe_t["wall_median"] / x["wall_median"],
                         "pipeline_over_predict_cpu": None if pipe_t is None else pipe_t["cpu_median"] / x["cpu_median"],
                         **info[(K, j)]})
    baselines = {f"{v}_k{K}": {k: t[f"{v}_k{K}"][k] for k in ("wall_median", "cpu_median", "wall", "cpu")}
                 for K in args.ks for v in ("floor", "pipeline") if f"{v}_k{K}" in t}
    payload = {"started": started, "backbone": args.backbone, "m": m, "method": "lt-prefix",
               "texts": len(texts), "text_source": "packaged demo validation texts", "text_tokens": tok,
               "max_length": args.length, "repeats": args.repeats, "max_tokens": LTuningModel.cpu_max_tokens,
               "label_names": speed.MANY_LABELS[:max(args.ks)], "seed": 0, "rows": rows, "baselines": baselines,
               "load_before": load_before, "load_after": speed.loadavg(), "machine_info": speed.machine_info(args.threads),
               "command": "python benchmarks/depth.py " + " ".join(sys.argv[1:]), **_provenance(args.threads)}
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"speed-{args.backbone}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}; load {load_before} -> {payload['load_after']}")
    for r in rows:
        print(f"K={r['K']:>2} j={r['j']}: {r['texts_per_s']:7.1f} texts/s wall, {r['texts_per_cpu_s']:7.1f} per CPU s, "
              f"predict/floor {r['predict_over_floor_wall']:.2f} (CPU {r['predict_over_floor_cpu']:.2f}), "
              f"pipeline/predict {r['pipeline_over_predict_wall'] or float('nan'):.2f}, diff {r['max_abs_diff_shared_vs_rows']}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--backbone", default="minilm")
    t.add_argument("--task", default="sst2")
    t.add_argument("--methods", nargs="+", default=["lt-prefix", "prefix"])
    t.add_argument("--js", nargs="+", type=int, default=[1, 2, 3, 6])
    t.add_argument("--seeds", nargs="+", type=int, default=[0])
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=1e-2,
                   help="default: 1e-2, the rate the committed rows ran at (every method's default then)")
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--dev-rows", type=int, default=300)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("speed")
    s.add_argument("--backbone", default="minilm")
    s.add_argument("--js", nargs="+", type=int, default=[1, 2, 3, 6])
    s.add_argument("--ks", nargs="+", type=int, default=[2, 4, 16])
    s.add_argument("--texts", type=int, default=64)
    s.add_argument("--length", type=int, default=128)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    s.set_defaults(func=cmd_speed)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
