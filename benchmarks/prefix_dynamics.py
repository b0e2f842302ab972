"""Why LT-prefix learns slower than classic prefix: how fast each method's prefix moves under AdamW.

LT-prefix's prefix for label y is Z(s_y), s_y = F(h_y) the l pooling scores of the label's frozen token states
(``raw`` pooling: F = Linear(d, 1) applied to each token state h, padding zeroed). The hypothesis tested here:
Adam moves every weight by about the learning rate per step, whatever its gradient's scale, so F's step can move
each score by up to lr * ||h||_1 while the scores start near 0.3, and Z (started at zero with the anchored head)
moves the prefix sum_i s_i Z_i by about lr * sum_i |s_i|; F would be the stiff part that sets LT-prefix's low
rate. (Measured, BENCHMARKS.md "How LT-prefix's prefix moves under AdamW": slowing F changes nothing; with all
the data the labels' prefixes become nearly the same.)

This script records how the prefix moves: for each (row, rate) it
trains on SST-2's converged-protocol training split (the dev split carved from GLUE's training data held
out; the reported validation rows are never read) and logs, every ``--every`` steps, the prefix's norm, the
norm of the difference between the two labels' prefixes, LT-prefix's scores, and the dev accuracy on the first
``--dev-rows`` rows of the dev split.

Rows: ``lt-prefix`` (the library's default: anchored head, listwise), ``lt-prefix-pool-x0.1`` (the same with F
at a tenth of the rate: its output scaled by 0.1 and its start by 10, the same start, and under Adam one
tenth of the movement), ``lt-prefix-label-map`` (the same with the label map of rank
``common.LABEL_MAP_RANK``: a low-rank map of each label's pooled frozen encoding added to its prefix, which should
keep the labels' prefixes apart), ``prefix`` (classic). Results:
``results/dynamics/sst2-<row>-lr<rate>-<steps>steps-seed<seed>.json``.

    python benchmarks/prefix_dynamics.py --runs lt-prefix:3e-3 lt-prefix:1e-2 lt-prefix-pool-x0.1:1e-2 prefix:3e-2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import converged  # noqa: E402

OUT = common.RESULTS / "dynamics"
#: row -> (method, F's rate factor or None, label map rank or None)
ROWS = {"lt-prefix": ("lt-prefix", None, None), "lt-prefix-pool-x0.1": ("lt-prefix", 0.1, None),
        "lt-prefix-label-map": ("lt-prefix", None, common.LABEL_MAP_RANK), "prefix": ("prefix", None, None)}


def slow_pool(method, c: float) -> None:
    """F at ``c`` times the rate (Adam: an output scaled by c moves c times as fast), from the same start."""
    import torch

    with torch.no_grad():
        method.pool.weight.div_(c)
    method.pool.register_forward_hook(lambda mod, inp, out: out * c)


def probe(model) -> dict:
    import torch

    method = model.method
    with torch.no_grad():
        prefix = method(model.label_states, model.label_mask).prefix.float()  # (K or 1, j, 2, n_kv, l, d_h)
        out = {"prefix_norm": prefix.norm().item(),
               "prefix_rms": prefix.pow(2).mean().sqrt().item(),
               "label_difference_norm": (prefix[0] - prefix[1]).norm().item() if prefix.shape[0] > 1 else None}
        if hasattr(method, "pool"):
            s = method.pool(model.label_states).squeeze(-1) * model.label_mask
            out["scores"] = [[round(x, 4) for x in row] for row in s.tolist()]
    return out


def run(row: str, lr: float, steps: int, every: int, dev_rows: int, seed: int) -> dict:
    from ltuning.data import TextDataset
    from ltuning.evaluate import evaluate
    from ltuning.recipe import prepare_model
    from ltuning.train import TrainArgs, set_seed, train

    method, pool_rate, rank = ROWS[row]
    train_ds, dev, task, label_texts = converged.split("sst2")
    dev = TextDataset(list(dev.texts[:dev_rows]), list(dev.labels[:dev_rows]), dev.label_names)
    set_seed(seed)
    from ltuning.loading import load_backbone

    bb = load_backbone("minilm")
    model = prepare_model(bb, train_ds.label_names, method=method, task=task, label_texts=label_texts,
                          text_pooling=converged.PROTOCOL["text_pooling"],
                          max_length=converged.PROTOCOL["max_length"], say=None, **common.label_map(method, rank))
    if pool_rate is not None:
        slow_pool(model.method, pool_rate)
    objective = common.objective(method, listwise=True)
    curve = [{"step": 0, **probe(model), "dev_accuracy": evaluate(model, dev)["accuracy"]}]

    def on_eval(r: dict) -> None:
        curve.append({"step": r["step"], **probe(model), "dev_accuracy": r["accuracy"],
                      "train_loss": r.get("train_loss")})
        print(f"{row} lr {lr:g} step {r['step']}: prefix norm {curve[-1]['prefix_norm']:.2f}, dev acc "
              f"{r['accuracy']:.3f}", flush=True)

    t = common.clock()
    args = TrainArgs(max_steps=steps, batch_size=converged.PROTOCOL["batch_size"], learning_rate=lr,
                     eval_every=every, seed=seed, progress=False, objective=objective)
    train(model, train_ds, dev, args, on_eval=on_eval)
    return {"task": "sst2", "row": row, "method": method, "pool_rate": pool_rate, "label_map_rank": rank, "learning_rate": lr,
            "seed": seed, "steps": steps, "batch_size": args.batch_size, "objective": objective,
            "dev_rows": len(dev), "dev_selected_on": "the first rows of the converged protocol's dev split",
            "adapter": model.config.to_dict(), "curve": curve, "seconds": common.since(t),
            "versions": common.versions("torch", "transformers"), "git": common.git_commit(),
            "machine": common.machine(), "finished": common.now(),
            "command": "python benchmarks/prefix_dynamics.py " + " ".join(sys.argv[1:])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="ROW:RATE", help=f"rows: {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--dev-rows", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    for spec in a.runs:
        row, _, rate = spec.partition(":")
        if row not in ROWS or not rate:
            p.error(f"--runs: {spec!r} is not ROW:RATE with ROW one of {', '.join(ROWS)}")
        path = OUT / f"sst2-{row}-lr{float(rate):g}-{a.steps}steps-seed{a.seed}.json"
        if path.exists():
            print(f"{path.name} exists: skipped")
            continue
        common.write_result(path, run(row, float(rate), a.steps, a.every, a.dev_rows, a.seed))
        print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
