"""Issue 12 part A: a comparison that can tell methods apart. Learning rates chosen on a dev split carved
from the training data, runs trained until the dev metric stops improving, reported once on the full GLUE
validation split.

    python benchmarks/converged.py --list                      # the jobs and which are done
    python benchmarks/converged.py --workers 2 --threads 1     # run what is missing (CPU: hours)
    python benchmarks/converged.py --workers 8 --model-path DIR --deadline 420   # a GPU machine
    python benchmarks/converged.py --to-cap --tasks sst2 --rows prefix   # the same final runs, no early stopping
    python benchmarks/converged.py --tasks sst2 --rows prefix --lrs 0.1  # a probe beyond the grid's end
    python benchmarks/converged.py --beyond-grid --to-cap --tasks sst2 --rows prefix   # final runs where it won

Protocol (PROTOCOL below; BENCHMARKS.md states it):

1. **Dev split.** A seeded 10% of each task's training rows (at most 1,000; the same rows for every method,
   `headstart.dev_split`) is held out; the rest is trained on. GLUE validation is read only to report.
2. **Learning rate.** Every row trains seed 0 for ``lr_steps`` steps at each learning rate of its grid and
   keeps the one with the best dev metric (accuracy; MCC on CoLA) at any evaluation; ties go to the earlier
   grid entry. One JSON per (row, learning rate) under ``results/converged/lr/``.
3. **Final runs.** Seeds 0-2 at the chosen rate, evaluated on dev every ``eval_every`` steps (step 0
   included), stopped ``patience`` evaluations after the best or at ``max_steps``; the best dev state is
   scored once on the full validation split. One JSON per run under
   ``results/converged/<backbone>-<task>-<method>-seed<N>.json``.
4. **Beyond the grid (a check, not part of 2-3).** Where the chosen rate is an end of the grid, ``--lrs``
   runs the same search run at rates beyond it (probes, beside the grid's JSONs); where one beat the end on
   dev, ``--beyond-grid`` makes the final runs at it (:func:`beyond_grid_lr`) into ``beyond-grid/`` (with
   ``--to-cap``, no early stopping: ``to-cap/beyond-grid/``), the rate in the file name.

Rows: ``prefix``, ``prompt``, ``lt-prefix``, ``lt-prompt`` (the similarity score head, pairwise: the
defaults when they first ran), ``lt-prefix-paper`` / ``lt-prompt-paper`` (the paper's head, A.3),
``linear-probe``, ``full-finetune``, ``peft-prompt`` / ``peft-lora`` (peft's prompt tuning and LoRA r=8 on the
attention projections, each with the model's standard K-way head: ``peer_loop``; they need peft in this
process, ``pip install peft==0.21.2``; peft's prefix tuning needs transformers 4.x and is only in Table 1) and
``zero-shot-similarity`` (no training). ``--rows`` also takes ``-listwise`` (the listwise objective),
``-cosine`` and ``-anchored`` (score heads) forms, e.g. ``lt-prefix-anchored-listwise``, today's LT-prefix
default, and ``lt-prefix-label-map-*`` (LT-prefix with the label map of rank ``common.LABEL_MAP_RANK``, e.g.
``lt-prefix-label-map-anchored-listwise``; :func:`parse_row`). Workers claim jobs in priority order (all learning-rate runs, then seed 0, then
seeds 1-2) through lock files, so several processes (or machines writing to copies of the folder) fill the
table; a job whose JSON exists is skipped, and a worker whose job raises skips that (task, row) from then on
(exit status 1); without peft installed the peft rows are skipped with a notice.

Stopped runs resume. Every run writes a checkpoint at every evaluation under ``<results>/.checkpoints/``
(ignored by git; removed once the JSON is written), and a later command given the same job continues from it
(our rows: ``ltuning.train``'s resume; the peers: ``peer_loop.train_peer``'s; both keep weights, best state,
optimizer, data order and RNG, so the run is the one it would have been unbroken; the JSON records
``resumed_from``, the step it went on from;
``seconds`` counts every process, ``wall_seconds``, ``started`` and ``machine`` the last one). A checkpoint
that no longer matches the job (another backbone copy, a changed default) is refused with its folder named:
delete that folder to start the job again.
A run killed by ``timeout`` or the end of a session leaves its claim file behind: a worker on the same host
takes over a claim whose process is gone (``--list`` names the step of a job's checkpoint).
``--no-checkpoints`` turns both off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import headstart  # noqa: E402
import peer_loop  # noqa: E402

OUT = common.RESULTS / "converged"
TASKS = ["sst2", "cola", "rte"]
ROWS = ["prefix", "prompt", "lt-prefix", "lt-prompt", "lt-prefix-paper", "lt-prompt-paper", "linear-probe",
        "full-finetune", "peft-prompt", "peft-lora"]
LR_GRID = [1e-3, 3e-3, 1e-2, 3e-2]
# all 22.7M weights: the grid above diverges; the usual fine-tuning range instead
FULL_FINETUNE_GRID = [1e-5, 3e-5, 1e-4, 3e-4]
# LoRA's usual range (1e-4 to 1e-3 on BERT-sized models) up to the shared grid's 1e-2
LORA_GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
PROTOCOL = {"batch_size": 32, "lr_steps": 500, "max_steps": 3000, "eval_every": 100, "patience": 6,
            "seeds": [0, 1, 2], "max_length": common.MAX_LENGTH, "text_pooling": "mean"}


def grid(row: str) -> list[float]:
    return {"full-finetune": FULL_FINETUNE_GRID, "peft-lora": LORA_GRID}.get(row, LR_GRID)


def lr_path(backbone: str, task: str, row: str, lr: float) -> Path:
    return OUT / "lr" / f"{backbone}-{task}-{row}-lr{lr:g}.json"


def final_path(backbone: str, task: str, row: str, seed: int, to_cap: bool = False,
               beyond_lr: float | None = None) -> Path:
    if beyond_lr is None:
        return OUT / ("to-cap" if to_cap else "") / f"{backbone}-{task}-{row}-seed{seed}.json"
    return OUT / ("to-cap" if to_cap else "") / "beyond-grid" / f"{backbone}-{task}-{row}-lr{beyond_lr:g}-seed{seed}.json"


def checkpoint_dir(path: Path) -> Path:
    """Where the run that writes ``path`` keeps its checkpoints until the JSON is written."""
    return OUT / ".checkpoints" / path.relative_to(OUT).with_suffix("")


def drop_checkpoints(path: Path) -> None:
    """Remove the checkpoints of ``path``'s run (its JSON is written) and the folders above it left empty."""
    folder = checkpoint_dir(path)
    shutil.rmtree(folder, ignore_errors=True)
    for parent in folder.parents:
        if parent == OUT or not parent.is_dir() or any(parent.iterdir()):
            break
        try:
            parent.rmdir()
        except OSError:  # another worker put something there since
            break


def resumable_step(path: Path) -> int | None:
    """The step of the newest checkpoint a stopped run of ``path`` left, or None."""
    from ltuning import checkpoint

    found = checkpoint.list_checkpoints(checkpoint_dir(path)) + peer_loop.checkpoints(checkpoint_dir(path))
    return max(step for step, _ in found) if found else None


def stopped_before_cap(path: Path) -> bool:
    """A final run exists and early stopping ended it before ``max_steps``: the runs ``--to-cap`` repeats."""
    return path.exists() and not common.ran_to_cap(json.loads(path.read_text()))


def reached_cap(path: Path) -> bool:
    """A final run exists and reached ``max_steps``: it is its own run to the cap."""
    return path.exists() and common.ran_to_cap(json.loads(path.read_text()))


def jobs(backbone: str, tasks=TASKS, rows=ROWS, seeds=None, to_cap: bool = False, lrs=None,
         beyond: bool = False) -> list[tuple]:
    """(kind, task, row, lr_or_seed, path) in priority order. ``to_cap``: the final runs without early stopping
    (results in ``to-cap/``) of the early-stopping runs that stopped before the cap; nothing else (a missing
    early-stopping run is for the plain command to run first). ``lrs``: the search runs at those rates only,
    inside a row's grid or beyond it (a rate beyond the grid is a probe: :func:`chosen_lr` reads the grid only).
    ``beyond``: the final runs at :func:`beyond_grid_lr` of every (task, row) that has one (results in
    ``beyond-grid/``, or ``to-cap/beyond-grid/`` with ``to_cap``: every seed but those whose ``beyond-grid/`` run
    at that rate reached the cap; a missing early-stopping run is not waited for)."""
    seeds = PROTOCOL["seeds"] if seeds is None else seeds
    if lrs:
        return [("lr", t, r, lr, lr_path(backbone, t, r, lr)) for r in rows for t in tasks for lr in lrs]
    if beyond:  # with to_cap, a run that early stopping did not end before the cap is its own to-cap run
        at = {(t, r): beyond_grid_lr(backbone, t, r) for r in rows for t in tasks}
        return [("beyond", t, r, s, final_path(backbone, t, r, s, to_cap=to_cap, beyond_lr=at[(t, r)][0]))
                for s in seeds for r in rows for t in tasks if at[(t, r)] is not None
                and not (to_cap and reached_cap(final_path(backbone, t, r, s, beyond_lr=at[(t, r)][0])))]
    if to_cap:
        return [("final", t, r, s, final_path(backbone, t, r, s, to_cap=True)) for s in seeds for r in rows
                for t in tasks if stopped_before_cap(final_path(backbone, t, r, s))]
    out = [("zero-shot", t, "zero-shot-similarity", 0, final_path(backbone, t, "zero-shot-similarity", 0))
           for t in tasks]
    out += [("lr", t, r, lr, lr_path(backbone, t, r, lr)) for r in rows for t in tasks for lr in grid(r)]
    for first in (True, False):
        out += [("final", t, r, s, final_path(backbone, t, r, s)) for s in seeds if (s == seeds[0]) == first
                for r in rows for t in tasks]
    return out


def chosen_lr(backbone: str, task: str, row: str) -> tuple[float, dict] | None:
    """The learning rate with the best dev metric once every rate of the grid has its JSON, else None."""
    scores = {}
    for lr in grid(row):
        p = lr_path(backbone, task, row, lr)
        if not p.exists():
            return None
        r = json.loads(p.read_text())
        scores[lr] = r["best_dev_metric"] if r.get("best_dev_metric") is not None else float("-inf")
    best = max(grid(row), key=lambda lr: (scores[lr], -grid(row).index(lr)))
    return best, {f"{lr:g}": scores[lr] for lr in grid(row)}


def probes_beyond(backbone: str, task: str, row: str) -> dict[float, float]:
    """{rate: dev metric} of the search runs (probes, ``--lrs``) beyond the end of the grid that the chosen rate
    is: larger rates when it is the largest entry, smaller when the smallest; {} when the choice is inside the
    grid or not made yet."""
    chosen = chosen_lr(backbone, task, row)
    g = grid(row)
    if chosen is None or chosen[0] not in (g[0], g[-1]):
        return {}
    lr, probes = chosen[0], {}
    for p in (OUT / "lr").glob(f"{backbone}-{task}-{row}-lr*.json"):
        r = json.loads(p.read_text())
        x = r["learning_rate"]
        if r.get("best_dev_metric") is not None and x not in g and (x > lr if lr == g[-1] else x < lr):
            probes[x] = r["best_dev_metric"]
    return probes


def beyond_grid_lr(backbone: str, task: str, row: str) -> tuple[float, dict] | None:
    """Where the choice would move if the grid went on: when a probe beyond the chosen end of the grid
    (:func:`probes_beyond`) beat that end on dev, the best such rate (of tied probes, the one nearer the grid,
    at either end) and the probes' dev metrics; else None. It reads only the probes that were run."""
    probes = probes_beyond(backbone, task, row)
    if not probes:
        return None
    lr, scores = chosen_lr(backbone, task, row)
    if max(probes.values()) <= scores[f"{lr:g}"]:
        return None
    best = max(probes, key=lambda x: (probes[x], -abs(x - lr)))  # ties: the rate nearer the grid
    return best, {f"{x:g}": v for x, v in sorted(probes.items())}


# ----------------------------------------------------------------------------- one run
def split(task: str):
    from ltuning.data import get_task

    full, names, label_texts = headstart.load(task)
    train_ds, dev = headstart.dev_split(full, seed=0)
    return train_ds, dev, get_task(task), label_texts


def parse_row(row: str) -> tuple[str, str, str, dict]:
    """(method, objective, score head, other config options) of a row name:
    ``<method>[-label-map][-paper|-cosine|-anchored][-listwise]``. An LT row trains pairwise unless it ends in
    ``-listwise``; its head is the similarity head unless ``-paper``, ``-cosine`` or ``-anchored`` says otherwise
    (a classic method has the paper's K-way head); ``lt-prefix-label-map`` is LT-prefix with the label map of
    rank ``common.LABEL_MAP_RANK`` (``label_map_rank``), any other LT-prefix row LT-prefix without a map, as every
    stored row ran (:func:`common.label_map`)."""
    method, score_head = common.split_score_head(row.removesuffix("-listwise"))
    rank = None
    if method == "lt-prefix-label-map":
        method, rank = "lt-prefix", common.LABEL_MAP_RANK
    return method, common.objective(method, listwise=row.endswith("-listwise")), score_head, common.label_map(method, rank)


def run_ours(bb, backbone: str, task: str, row: str, lr: float, seed: int, steps: int, patience: int,
             device, report: bool, checkpoints: Path | None = None) -> dict:
    from ltuning.evaluate import evaluate
    from ltuning.recipe import build_and_train
    from ltuning.train import TrainArgs

    train_ds, dev, t, label_texts = split(task)
    method, objective, score_head, options = parse_row(row)
    metric = common.metric_of(task)
    curve = []

    def at_start(model):
        model.to(device)
        m = evaluate(model, dev)
        curve.append({"step": 0, "dev_metric": m[metric], "dev_accuracy": m["accuracy"], "dev_mcc": m["mcc"],
                      "dev_loss": m["loss"], "train_loss": None})

    args = TrainArgs(max_steps=steps, batch_size=PROTOCOL["batch_size"], learning_rate=lr,
                     eval_every=PROTOCOL["eval_every"], seed=seed, progress=False, metric_for_best=metric,
                     early_stopping_patience=patience, objective=objective,
                     **(dict(output_dir=str(checkpoints), checkpoint_every=PROTOCOL["eval_every"], keep_checkpoints=1,
                             resume=True) if checkpoints else {}))
    run = build_and_train(bb, train_ds, dev, args, method=method, task=t, label_texts=label_texts,
                          base_model=backbone, text_pooling=PROTOCOL["text_pooling"],
                          max_length=PROTOCOL["max_length"], score_head=score_head, on_built=at_start, say=None,
                          **options)
    res = run.result
    curve += [{"step": r["step"], "dev_metric": r[metric], "dev_accuracy": r["accuracy"], "dev_mcc": r["mcc"],
               "dev_loss": r["loss"], "train_loss": r.get("train_loss")} for r in res.history]
    model = run.model
    K = model.num_labels
    out = {"curve": curve, "best_step": res.best_step, "stopped_early_at": res.stopped_early_at,
           "best_dev_metric": res.best_metrics.get(metric), "trainable_params": model.num_trainable_parameters(),
           "adapter": model.config.to_dict(), "train_seconds": res.train_seconds, "seconds": res.seconds,
           "resumed_from": res.resumed_from,  # 0: one unbroken process; seconds include the earlier processes
           # forward rows: training feeds one (text, label) row per text (LT pairwise: half true, half false pairs;
           # classic: the text once; listwise: K rows); prediction scores K rows per text for LT, one for classic
           "objective": objective,
           "train_rows_per_step": PROTOCOL["batch_size"] * (K if model.label_conditioned and objective == "listwise"
                                                            else 1),
           "predict_rows_per_text": K if model.label_conditioned else 1}
    if report:
        val = headstart.held_out(task)
        m = evaluate(model, val)
        out.update(accuracy=m["accuracy"], mcc=m["mcc"], macro_f1=m["macro_f1"], validation_rows=len(val),
                   majority_accuracy=m["majority_accuracy"], confusion_matrix=m["confusion_matrix"])
    return out


def run_peer(bb, backbone: str, load_private, model_dir: str, task: str, row: str, lr: float, seed: int,
             steps: int, patience: int, device, report: bool, checkpoints: Path | None = None) -> dict:
    train_ds, dev, t, label_texts = split(task)
    metric, K = common.metric_of(task), len(t.label_names)
    run = peer_loop.train_peer(row, bb, load_private, train_ds, dev, num_labels=K, lr=lr, steps=steps,
                               batch_size=PROTOCOL["batch_size"], eval_every=PROTOCOL["eval_every"], seed=seed,
                               text_pooling=PROTOCOL["text_pooling"], max_length=PROTOCOL["max_length"],
                               metric=metric, patience=patience, device=device, model_path=model_dir,
                               label_texts=label_texts, checkpoint_dir=checkpoints)
    tr = run.tracker
    curve = [{"step": r["step"], "dev_metric": r[metric], "dev_accuracy": r["accuracy"], "dev_mcc": r["mcc"],
              "dev_loss": r["loss"], "train_loss": r["train_loss"]} for r in tr.history]
    out = {"curve": curve, "best_step": tr.best_step, "stopped_early_at": run.stopped_early_at,
           "best_dev_metric": tr.best[metric], "trainable_params": run.trainable,
           "head": run.config["head"] if run.config else f"Linear(d, {K}) with bias, K-way cross-entropy",
           "train_seconds": run.step_seconds, "seconds": time.perf_counter() - tr.start + run.build_seconds,
           "resumed_from": run.resumed_from,  # 0: one unbroken process; seconds include the earlier processes
           "train_rows_per_step": PROTOCOL["batch_size"], "predict_rows_per_text": 1}
    if run.config:
        out["peft"] = run.config["peft"]
    if report:
        import torch

        val = headstart.held_out(task)
        m = common.logits_metrics(run.predict(list(val.texts)), torch.as_tensor(val.labels), K)
        out.update(accuracy=m["accuracy"], mcc=m["mcc"], macro_f1=m["macro_f1"], validation_rows=len(val),
                   majority_accuracy=max(val.label_counts()) / len(val), confusion_matrix=m["confusion_matrix"])
    return out


def run_zero_shot(bb, task: str) -> dict:
    from ltuning.config import TextPooling

    _, dev, t, label_texts = split(task)
    pooling = bb.resolve_pooling(TextPooling(PROTOCOL["text_pooling"]))
    metric = common.metric_of(task)
    d = headstart.zero_shot_metrics(bb, dev, label_texts, pooling)
    val = headstart.held_out(task)
    m = headstart.zero_shot_metrics(bb, val, label_texts, pooling)
    return {"curve": [{"step": 0, "dev_metric": d[metric], "dev_accuracy": d["accuracy"], "dev_mcc": d["mcc"],
                       "dev_loss": None, "train_loss": None}],
            "best_step": 0, "best_dev_metric": d[metric], "trainable_params": 0, "label_texts": label_texts,
            "accuracy": m["accuracy"], "mcc": m["mcc"], "macro_f1": m["macro_f1"], "validation_rows": len(val),
            "majority_accuracy": max(val.label_counts()) / len(val), "confusion_matrix": m["confusion_matrix"],
            "predict_rows_per_text": 1}


def device_record(device) -> dict:
    import torch

    rec = common.machine()
    rec["device"] = str(device)
    if device.type == "cuda":
        rec["gpu"] = torch.cuda.get_device_name(device)
    return rec


def run_job(job, bb, backbone: str, load_private, model_dir: str, device, checkpoints: bool = True) -> dict:
    import torch

    kind, task, row, arg, path = job
    t0 = time.perf_counter()
    rec = {"backbone": backbone, "task": task, "method": row, "metric": common.metric_of(task),
           "dev_split": "seeded 10% of train (at most 1,000 rows), seed 0; the rest is trained on",
           "protocol": PROTOCOL, "started": common.now()}
    if kind == "zero-shot":
        rec.update(seed=0, steps=0, learning_rate=None, lr_selected_on=None, **run_zero_shot(bb, task))
    else:
        if kind == "lr":
            lr, seed, steps, patience, report = arg, 0, PROTOCOL["lr_steps"], 0, False
            rec.update(role="learning-rate search (dev only)")
        else:
            lr, scores = chosen_lr(backbone, task, row)
            seed, steps, patience, report = arg, PROTOCOL["max_steps"], PROTOCOL["patience"], True
            rec.update(lr_selected_on="dev", lr_grid_dev_metric=scores)
            if kind == "beyond":
                grid_lr = lr
                lr, probes = beyond_grid_lr(backbone, task, row)
                if path.name != final_path(backbone, task, row, seed, beyond_lr=lr).name:  # a probe landed since
                    raise RuntimeError(f"{path.name}: the beyond-grid rate is now {lr:g}; list the jobs again")
                rec.update(lr_selected_on="dev, a probe beyond the grid", grid_lr=grid_lr, lr_probe_dev_metric=probes)
        rec.update(seed=seed, learning_rate=lr, steps=steps)
        fn = run_peer if row in peer_loop.PEER_METHODS else run_ours
        extra = (load_private, model_dir) if fn is run_peer else ()
        kw = {"checkpoints": checkpoint_dir(path)} if checkpoints else {}
        rec.update(fn(bb, backbone, *extra, task, row, lr, seed, steps, patience, device, report, **kw))
        last = rec["curve"][-1]["step"]
        rec["steps_run"] = last
        best = rec["best_dev_metric"]
        rec["steps_to_95pct_best"] = next((c["step"] for c in rec["curve"] if best is not None
                                           and c["dev_metric"] >= 0.95 * best), None) if best and best > 0 else None
    rec.update(wall_seconds=time.perf_counter() - t0, finished=common.now(),
               versions=common.versions("torch", "transformers", *(["peft"] if row in peer_loop.PEFT_PEERS else [])),
               git=common.git_commit(),
               machine=device_record(device), torch_threads=torch.get_num_threads(), runner="benchmarks/converged.py")
    return rec


# ----------------------------------------------------------------------------- workers
def claim(path: Path, take_over_stale: bool = False) -> bool:
    """Create ``path``'s claim file (host and pid) unless another worker holds it; with ``take_over_stale``, a
    claim left by a process of this host that is gone (:func:`stale_claim`) is replaced. The check and the
    takeover hold a lock shared by this host's workers, so two of them never take over the same claim."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / ".claims.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if take_over_stale and stale_claim(path):
            print(f"[worker {os.getpid()}] {path.name}: the process that claimed it is gone; taking it over",
                  flush=True)
            path.with_suffix(".claim").unlink()
        try:
            fd = os.open(path.with_suffix(".claim"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, " ".join(_identity(os.getpid())).encode())
        os.close(fd)
        if path.exists():  # its worker wrote the JSON and let the claim go after this worker's check
            path.with_suffix(".claim").unlink()
            return False
    return True


def _identity(pid: int) -> tuple[str, ...]:
    """(host, boot id, pid, start time): a process of this machine's current boot, which a reused pid does not
    match. "-" where /proc does not say (not Linux)."""
    def read(f: str) -> str:
        try:
            return Path(f).read_text()
        except OSError:
            return ""
    boot = read("/proc/sys/kernel/random/boot_id").strip() or "-"
    stat = read(f"/proc/{pid}/stat")
    start = stat.rsplit(")", 1)[-1].split()[19] if stat else "-"  # field 22: start time since boot, in ticks
    return socket.gethostname(), boot, str(pid), start


def stale_claim(path: Path) -> bool:
    """``path``'s claim file was written on this machine by a process that is gone (killed by ``timeout`` or the
    end of a session, or from an earlier boot): its recorded (host, boot id, pid, start time) is not a live
    process now. A claim from another host, or an older one without a boot id, is never stale here."""
    try:
        host, boot, pid, start = path.with_suffix(".claim").read_text().split()
    except (OSError, ValueError):
        return False
    me = _identity(os.getpid())
    if host != me[0] or boot == "-" or pid == me[2]:
        return False
    return boot != me[1] or _identity(int(pid))[3] != start


def worker(a) -> int:
    import torch

    torch.set_num_threads(a.threads)
    from ltuning.loading import load_backbone

    device = torch.device("cuda" if torch.cuda.is_available() and not a.cpu else "cpu")
    source = a.model_path or a.backbone
    rows = list(a.rows)
    if set(rows) & set(peer_loop.PEFT_PEERS) and importlib.util.find_spec("peft") is None:
        print(f"[worker {os.getpid()}] peft is not installed: skipping the peft rows (pip install peft==0.21.2)",
              flush=True)
        rows = [r for r in rows if r not in peer_loop.PEFT_PEERS]
    # the folder a peft peer loads with transformers (only looked up when a peft row runs)
    model_dir = a.model_path or (_packaged_folder(a.backbone) if set(rows) & set(peer_loop.PEFT_PEERS) else None)
    bb = load_backbone(source)
    bb.name = a.backbone
    bb.model.to(device)
    todo = jobs(a.backbone, a.tasks, rows, a.seeds, a.to_cap, a.lrs, a.beyond_grid)
    end = time.time() + a.deadline if a.deadline else None
    failed = set()  # (task, row) whose job raised here: its other jobs are skipped, not retried or waited on
    while True:
        if end is not None and time.time() > end:
            print(f"[worker {os.getpid()}] deadline reached", flush=True)
            return 1 if failed else 0
        waiting, took = False, False
        for job in todo:
            path = job[4]
            if path.exists() or job[1:3] in failed:
                continue
            if job[0] == "final" and chosen_lr(a.backbone, job[1], job[2]) is None:
                waiting = True
                continue
            if not claim(path, take_over_stale=a.checkpoints):
                continue
            took = True
            print(f"[{common.now()} worker {os.getpid()}] {job[0]} {job[1]} {job[2]} {job[3]}", flush=True)
            try:
                rec = run_job(job, bb, a.backbone, lambda: _private(source, device), model_dir, device,
                              checkpoints=a.checkpoints)
            except Exception:  # noqa: BLE001 - reported, left unclaimed for a later run; this worker skips its (task, row)
                traceback.print_exc()
                path.with_suffix(".claim").unlink(missing_ok=True)
                if a.stop_on_error:
                    return 1
                failed.add(job[1:3])
                break
            common.write_result(path, rec)
            drop_checkpoints(path)
            path.with_suffix(".claim").unlink(missing_ok=True)
            summary = {k: rec.get(k) for k in ("best_dev_metric", "accuracy", "mcc", "steps_run", "wall_seconds")}
            print(f"  -> {path.name}: {summary}", flush=True)
            break
        if not took:
            if not waiting:
                if failed:
                    print(f"[worker {os.getpid()}] failed, skipped: {sorted(failed)}", flush=True)
                return 1 if failed else 0
            time.sleep(2)


def _packaged_folder(backbone: str) -> str:
    peer_loop.peers_on_path()
    import peft_peers

    return peft_peers.model_path(backbone)


def _private(source: str, device):
    from ltuning.loading import load_backbone

    bb = load_backbone(source)
    bb.model.to(device)
    return bb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--backbone", default="minilm", help="name recorded in the results (default: minilm)")
    ap.add_argument("--model-path", help="load the backbone from this folder instead of the packaged name")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--rows", nargs="+", default=ROWS)
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--lrs", nargs="+", type=float,
                    help="run only these rates of the learning-rate search, and no final run: a partial search, or a "
                         "probe beyond the grid (the choice reads the grid's rates only)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default: 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (default: 1)")
    ap.add_argument("--deadline", type=float, default=0, help="claim no job after this many seconds (0: none)")
    ap.add_argument("--to-cap", action="store_true",
                    help="rerun the final runs that early stopping ended before max_steps, without it (the best "
                         "dev state kept), into to-cap/; a run that reached max_steps is its own to-cap run")
    ap.add_argument("--beyond-grid", action="store_true",
                    help="the final runs at the rate the choice would move to where the grid's chosen rate is an "
                         "end of the grid and a probe beyond it (--lrs) beat it on dev, into beyond-grid/ "
                         "(with --to-cap: without early stopping, into to-cap/beyond-grid/)")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is present")
    ap.add_argument("--no-checkpoints", dest="checkpoints", action="store_false",
                    help="write no checkpoints, resume nothing and leave claims of stopped runs alone (default: "
                         "checkpoint every evaluation under <results>/.checkpoints/, resume from there)")
    ap.add_argument("--stop-on-error", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny budgets, results in /tmp (a check of the runner)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.smoke:
        global OUT
        OUT = Path(os.environ.get("LTUNING_SMOKE_DIR", "/tmp/ltuning-converged-smoke"))
        PROTOCOL.update(lr_steps=4, max_steps=6, eval_every=2, patience=1, seeds=[0])
        headstart.DEV_MAX = 40
        LR_GRID[:] = [1e-2, 3e-2]
        FULL_FINETUNE_GRID[:] = [1e-5, 3e-5]
        LORA_GRID[:] = [1e-3, 3e-3]
    if a.beyond_grid and a.lrs:
        ap.error("--beyond-grid runs final runs and --lrs runs only learning-rate searches: give one of them")
    for x in a.lrs or ():
        if x <= 0 or float(f"{x:g}") != x:  # the file name holds the rate as {x:g}: it must read back as x
            ap.error(f"--lrs {x!r}: give a positive rate that prints as itself (for example 0.1 or 3e-4)")
    if a.to_cap:
        if a.lrs:
            ap.error("--to-cap reruns final runs and --lrs runs only learning-rate searches: give one of them")
        PROTOCOL["patience"] = 0  # recorded in every JSON: no early stopping
    if a.beyond_grid and not jobs(a.backbone, a.tasks, a.rows, a.seeds, a.to_cap, beyond=True):
        print("--beyond-grid: nothing to run: no (task, row) here has a probe beyond its grid's chosen end that "
              "beat it on dev (converged.py --lrs runs probes)", file=sys.stderr)
    if a.list:
        for job in jobs(a.backbone, a.tasks, a.rows, a.seeds, a.to_cap, a.lrs, a.beyond_grid):
            at = None if job[4].exists() else resumable_step(job[4])
            print(("done " if job[4].exists() else "todo ") + " ".join(map(str, job[:4]))
                  + ("" if at is None else f" (checkpoint at step {at})"))
        return 0
    if a.worker or a.workers == 1:
        return worker(a)
    argv = [sys.executable, __file__, "--worker", *sys.argv[1:]]
    procs = [subprocess.Popen(argv) for _ in range(a.workers)]
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
