"""Table 1 runner: ltuning's methods (and the in-process peers linear-probe / full-finetune) x GLUE tasks x
packaged backbones, one JSON per cell under benchmarks/results/table1/. Cells whose JSON exists are
skipped, so the table fills over several sittings.

    python benchmarks/table1.py                      # everything, in priority order
    python benchmarks/table1.py --backbones minilm --seeds 0 --methods lt-prefix prefix
    python benchmarks/table1.py --peers              # linear-probe and full-finetune (peft: peers/peft_peers.py)
    python benchmarks/table1.py --list               # the cells and whether each is done

The protocol (steps, batch, lr, validation rows) is common.PROTOCOL; BENCHMARKS.md states it.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peer_loop  # noqa: E402

IN_PROCESS_PEERS = ["linear-probe", "full-finetune"]


def load_task(task: str, backbone: str):
    from ltuning.data import read_glue

    train = read_glue(task, "train", common.GLUE_DIR)
    val = read_glue(task, "validation", common.GLUE_DIR)
    n = common.PROTOCOL[backbone]["max_validation"]
    if n is not None:
        val = val.subset(n, seed=0)
    return train, val


def protocol_record(backbone: str, task: str, method: str, seed: int, lr: float, val) -> dict:
    p = common.PROTOCOL[backbone]
    return {"steps": p["steps"], "batch_size": p["batch_size"], "eval_every": p["eval_every"],
            "learning_rate": lr, "seed": seed, "max_length": common.MAX_LENGTH,
            "validation": {"split": "validation", "rows": len(val),
                           "subsample": p["max_validation"], "subsample_seed": 0 if p["max_validation"] else None},
            "checkpoint": "best validation accuracy over the evaluations (ties: lower loss)",
            "text_pooling": p["text_pooling"]}


def run_ours(backbone_obj, backbone: str, task: str, method: str, seed: int) -> dict:
    from ltuning.data import get_task
    from ltuning.recipe import build_and_train
    from ltuning.train import TrainArgs

    p = common.PROTOCOL[backbone]
    train_ds, val = load_task(task, backbone)
    t = get_task(task)
    real_method, pooling, position = {"lt-prefix-softmax": ("lt-prefix", "softmax", "before"),
                                      "lt-prompt-after": ("lt-prompt", "raw", "after")}.get(method,
                                                                                              (method, "raw", "before"))
    args = TrainArgs(max_steps=p["steps"], batch_size=p["batch_size"], learning_rate=p["learning_rate"],
                     eval_every=p["eval_every"], seed=seed, progress=False,
                     objective=common.objective(real_method))  # the paper's A.3 for LT
    # the library's recipe (the same as `ltuning train`) on the shared backbone: seeds, builds, trains
    run = build_and_train(backbone_obj, train_ds, val, args, method=real_method, task=t, base_model=backbone,
                          prefix_pooling=pooling, text_pooling=p["text_pooling"], max_length=common.MAX_LENGTH,
                          label_position=position, score_head="paper",  # Table 1 is the paper's recipe
                          **common.label_map(real_method),  # no label map: the paper's Z alone
                          on_eval=lambda r: print(
                              f"    step {r['step']}: acc {r['accuracy']:.4f} mcc {r['mcc']:.4f} "
                              f"loss {r['loss']:.4f}", flush=True))
    model, res, build_s = run.model, run.result, run.build_seconds
    best = res.best_metrics
    return {
        "accuracy": best["accuracy"], "mcc": best["mcc"], "macro_f1": best["macro_f1"],
        "validation_loss": best["loss"], "best_step": res.best_step,
        "final": res.history[-1] if res.history else None,
        "majority_accuracy": best["majority_accuracy"], "num_validation": best["num_examples"],
        "confusion_matrix": best["confusion_matrix"],
        "trainable_params": model.num_trainable_parameters(),
        "seconds": res.seconds + build_s, "timings": {"build_seconds": build_s, "train_loop_seconds": res.seconds,
                                                      "train_step_seconds": res.train_seconds},
        "curve": res.history,
        # the model's own config: label_length, the backbone fingerprint and the resolved pooling filled in
        "config": {"adapter": model.config.to_dict(), "protocol": protocol_record(backbone, task, method, seed,
                                                                                  res.learning_rate, val),
                   "label_texts": t.label_texts},
    }


# ----------------------------------------------------------------------------- in-process peers
def run_peer(backbone: str, task: str, method: str, seed: int, shared_backbone) -> dict:
    """linear-probe: Linear(d, K) on the frozen pooled vector (same pooling as our methods).
    full-finetune: every backbone weight + Linear(d, K), AdamW lr 2e-5 (minilm only)."""
    from ltuning.data import get_task
    from ltuning.loading import load_backbone

    p = common.PROTOCOL[backbone]
    train_ds, val = load_task(task, backbone)
    K = len(get_task(task).label_names)
    lr = common.FULL_FINETUNE_LR if method == "full-finetune" else p["learning_rate"]
    run = peer_loop.train_peer(method, shared_backbone, lambda: load_backbone(backbone), train_ds, val,
                               num_labels=K, lr=lr, steps=p["steps"], batch_size=p["batch_size"],
                               eval_every=p["eval_every"], seed=seed, text_pooling=p["text_pooling"],
                               max_length=common.MAX_LENGTH, eval_at_start=False)
    return run.tracker.result(val.labels, K, run.trainable, run.build_seconds, run.step_seconds,
                              {"head": f"Linear(d, {K}) with bias, K-way cross-entropy",
                               "protocol": protocol_record(backbone, task, method, seed, lr, val)})


def _locked(lock: Path) -> bool:
    """Another runner process (still alive) is on this cell."""
    try:
        pid = int(lock.read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return pid != os.getpid()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["minilm", "smollm2"])
    ap.add_argument("--tasks", nargs="+", default=common.TASKS)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--peers", action="store_true", help="run linear-probe and full-finetune instead of ours")
    ap.add_argument("--all", action="store_true", help="ours, then the in-process peers, in priority order")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="4 steps, 32 validation rows, results in /tmp (a test)")
    a = ap.parse_args(argv)

    if a.smoke:
        common.TABLE_DIR = Path("/tmp/ltuning-bench-smoke")
        for p in common.PROTOCOL.values():
            p.update(steps=4, eval_every=2, max_validation=32)
    if a.all:
        # priority: minilm seed 0 (ours), smollm2 seed 0 (ours), in-process peers seed 0, other seeds
        first = common.cells(a.backbones, a.tasks, a.methods, seeds=[0])
        peers = common.cells(a.backbones, a.tasks, IN_PROCESS_PEERS, seeds=[0])
        rest = [c for c in common.cells(a.backbones, a.tasks, a.methods) if c[3] != 0]
        todo = first + peers + rest
    else:
        methods = a.methods or (IN_PROCESS_PEERS if a.peers else None)
        todo = common.cells(a.backbones, a.tasks, methods, a.seeds)
    if a.list:
        for c in todo:
            print(("done " if common.result_path(*c).exists() else "todo ") + "-".join(map(str, c)))
        return 0

    import torch

    from ltuning.loading import load_backbone

    if a.threads:
        torch.set_num_threads(a.threads)
    loaded = {}
    for backbone, task, method, seed in todo:
        path = common.result_path(backbone, task, method, seed)
        lock = path.with_suffix(".running")
        if path.exists() or _locked(lock):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(str(os.getpid()))
        print(f"[{common.now()}] {path.name}", flush=True)
        if backbone not in loaded:
            loaded.clear()  # one backbone in memory at a time
            loaded[backbone] = load_backbone(backbone)
        bb = loaded[backbone]
        started = common.now()
        try:
            if method in IN_PROCESS_PEERS:
                out = run_peer(backbone, task, method, seed, bb)
            else:
                out = run_ours(bb, backbone, task, method, seed)
        except Exception as e:  # noqa: BLE001 - one failed cell must not stop the table
            from ltuning.errors import ConfigError

            if isinstance(e, ConfigError):  # a cell the method cannot run (recorded, not retried)
                out = {"accuracy": None, "mcc": None, "error": f"{type(e).__name__}: {e}", "seconds": 0.0,
                       "trainable_params": None, "curve": []}
            else:
                traceback.print_exc()
                lock.unlink(missing_ok=True)
                continue
        payload = {"backbone": backbone, "task": task, "method": method, "seed": seed,
                   "steps": common.PROTOCOL[backbone]["steps"], "started": started, "finished": common.now(),
                   "runner": "benchmarks/table1.py", "versions": common.versions("torch", "transformers", "ltuning"),
                   "git": common.git_commit(), "machine": common.machine(),
                   "torch_threads": torch.get_num_threads(),
                   "steps_to_95pct_best": common.steps_to_target(out.get("curve") or []), **out}
        common.write_result(path, payload)
        lock.unlink(missing_ok=True)
        acc = out.get("accuracy")
        print(f"  -> accuracy {acc if acc is None else round(acc, 4)}, mcc "
              f"{out.get('mcc') if out.get('mcc') is None else round(out['mcc'], 4)}, "
              f"{out['seconds']:.0f}s", flush=True)
        del out
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
