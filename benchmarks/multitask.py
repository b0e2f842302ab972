"""Issue 13 part 3: one LT adapter for several tasks, against one adapter per task, and on a held-back task.

One lt-prefix adapter is trained on several packaged tasks at once (default demo + trec; each batch from one
task, tasks drawn in proportion to their size: ``ltuning.pairs.TaskSampler``) with the library's defaults
(listwise objective, LT-prefix's default score head unless ``--score-head`` names another, that head's default
learning rate, the default label map unless ``--label-map-rank`` names another) for ``--steps`` steps of
``--batch-size`` texts, final state (no validation during training: nothing is chosen on the reported rows).
Against it, per-task adapters with the same recipe:

- ``same-budget``: each per-task adapter gets the multi-task run's whole budget (``--steps`` steps), or
  ``own-steps``: each gets ``--per-task-steps`` steps where that differs (``--steps 600 --per-task-steps 300``
  on two tasks: one adapter at the total steps, so the texts seen, of the two it replaces; not the same forward
  rows, since listwise LT-prefix scores K rows per text and the multi-task run's task mix sets the K);
- ``same-task-steps``: each gets the number of batches the multi-task run drew from its task (the seeded
  ``TaskSampler`` draws, recorded in the JSON), so it sees as many of its own texts.

Each is scored on its own task's validation split (a seeded ``--val-rows`` subset, the same rows for every
model). Then a held-back task the multi-task adapter never saw (default sms-spam, labels "normal message" /
"spam"):

- ``zero-shot-cosine``: the frozen model's cosine between text and label-text embeddings (benchmarks/headstart.py);
- ``multitask-zero-shot``: the multi-task adapter with the held-back labels through the candidate-label path,
  scored by its trained head (``unseen_label_head="trained"``, as every stored run; the frozen similarity's
  score is ``parts``' ``head-at-start``);
- ``rewordings``: each training task's validation rows with other wordings of its labels (:data:`REWORDINGS`),
  scored by the trained head and by the frozen similarity;
- ``parts``: the same with parts of the adapter put back to their start (:func:`zero_shot_parts`): the score head
  (W, C_zeta, s, b), W alone, the label prefix (Z, the label map's U), or all (the frozen similarity again); it
  shows which part moves the held-back ranking away from the frozen model's;
- ``multitask-<k>-shot``: the multi-task adapter's weights, continued on k examples per class (a seeded
  per-class sample, the same examples for every model) for ``--fewshot-steps`` steps, final state;
- ``scratch-<k>-shot``: a fresh lt-prefix adapter trained on the same k-shot examples and steps.

One JSON per run, ``benchmarks/results/multitask/<backbone>-<tasks>-heldout-<task>-<head>[-label-map-r<R>]-lr<rate>
[-steps<S>][-per-task<P>][-<tag>]-seed<N>.json`` (steps only where not 300, per-task steps only where not S), with the
config, seed, task draws, package versions, git commit and machine. A full run (minutes on a few cores)::

    python benchmarks/multitask.py --backbone minilm --tasks demo trec --held-out sms-spam --steps 300 \\
        --fewshot-steps 50 --shots 8 16 --seeds 0 1 2

and a smoke run (seconds; its file name tagged ``smoke``)::

    python benchmarks/multitask.py --steps 4 --fewshot-steps 2 --val-rows 32 --shots 8 --tag smoke

``--zero-shot-only`` trains the multi-task adapter and scores the held-back task zero-shot with its parts (no
per-task adapters, no few-shot runs: a third of the time), into ``multitask/zero-shot-parts/`` under the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from headstart import zero_shot_metrics  # noqa: E402

from ltuning.config import ScoreHead  # noqa: E402

OUT = common.RESULTS / "multitask"
ADAPTERS = Path(__file__).resolve().parent / ".multitask_adapters"


def resolved(score_head: str | None, learning_rate: float | None = None) -> tuple[str, float]:
    """The (score head, learning rate) an lt-prefix run with ``--score-head score_head`` and ``--learning-rate
    learning_rate`` trains with: the head asked for or the method's default head; the rate asked for or that
    head's default rate. (The stored runs without a ``score_head`` key: the similarity head at 1e-2.)"""
    from ltuning.methods import get_method

    method = get_method("lt-prefix")
    head = method.head_for(score_head).value
    return head, method.learning_rate_for(head) if learning_rate is None else learning_rate


def result_path(args, seed: int) -> Path:
    from ltuning.methods import learning_rate_text

    head, lr = resolved(args.score_head, args.learning_rate)
    tag = "-" + args.tag if args.tag else ""
    rank = f"-label-map-r{args.label_map_rank}" if args.label_map_rank else ""
    steps = f"-steps{args.steps}" if args.steps != 300 else ""  # the stored runs' 300 keep their names
    per_task = f"-per-task{per_task_steps(args)}" if per_task_steps(args) != args.steps else ""
    out = OUT / "zero-shot-parts" if args.zero_shot_only else OUT
    return out / (f"{args.backbone}-{'+'.join(args.tasks)}-heldout-{args.held_out}-{head}{rank}-lr{learning_rate_text(lr)}"
                  f"{steps}{per_task}{tag}-seed{seed}.json")


def adapter_cache(args, seed: int) -> Path:
    """Where the multi-task adapter of a run is kept (ignored by git): its name is the result's without the
    held-back task, the per-task steps and ``zero-shot-only``, since the adapter depends on none of them, so a run
    on another held-back task scores the same adapter without training it again; the batch size where not 16.
    ``multitask_run.json`` in it (written last) records the training arguments and adapter config, which a reuse
    must match."""
    name = result_path(args, seed).name.removesuffix(".json")
    name = name.replace(f"-heldout-{args.held_out}", "")
    if per_task_steps(args) != args.steps:
        name = name.replace(f"-per-task{per_task_steps(args)}", "")
    if args.batch_size != 16:  # the stored runs' batch
        name = name.replace(f"-seed{seed}", f"-batch{args.batch_size}-seed{seed}")
    return ADAPTERS / name


def per_task_steps(args) -> int:
    """The steps of each per-task adapter that is not the same-task-steps one: --per-task-steps, else --steps."""
    return args.steps if args.per_task_steps is None else args.per_task_steps


def per_class_sample(data, k: int, seed: int):
    """k examples of each class, drawn with a seeded generator per (seed, k, class); all of a class if fewer."""
    from ltuning.data import TextDataset

    idx = []
    for c in range(len(data.label_names)):
        rows = [i for i, y in enumerate(data.labels) if y == c]
        idx += random.Random(seed * 1_000_003 + k * 101 + c).sample(rows, min(k, len(rows)))
    idx.sort()
    return TextDataset([data.texts[i] for i in idx], [data.labels[i] for i in idx], list(data.label_names),
                       f"{data.source} ({k} per class, seed {seed})")


def scored(model, data) -> dict:
    from ltuning.evaluate import evaluate

    m = evaluate(model, data)
    return {"rows": len(data), "accuracy": m["accuracy"], "mcc": m["mcc"], "macro_f1": m["macro_f1"],
            "majority_accuracy": m["majority_accuracy"]}


#: ``parts``: which of the multi-task adapter's learned parts (common.LT_PREFIX_PARTS) is put back to its start
ZERO_SHOT_PARTS = {
    "trained": (),
    "head-at-start": ("head", "text_map", "logit_scale", "logit_bias"),  # the label prefix's effect alone
    "W-at-start": ("text_map",),
    "prefix-at-start": ("transform", "label_up"),  # the trained head reading the frozen model's states
    "both-at-start": common.LT_PREFIX_PARTS,  # the frozen text-label similarity: the zero-shot cosine's ranking
}


#: other wordings of the training tasks' labels (fixed before any run read them): how an adapter scores its own
#: task under label texts its head was not trained on, with the trained head and with the frozen similarity
REWORDINGS = {
    "demo": [["bad", "good"], ["a negative review", "a positive review"]],
    "sst2": [["bad", "good"], ["a negative review", "a positive review"]],
    "trec": [["abbreviated term", "definition", "thing", "person", "place", "number"]],
}


def candidate_accuracy(model, data, label_texts: list[str], unseen_label_head: str = "trained") -> float:
    """Accuracy of ``model`` on ``data`` with ``label_texts`` (one per class) as candidate labels."""
    pred = model.predict(data.texts, candidate_labels=label_texts, unseen_label_head=unseen_label_head)
    return sum(p == label_texts[y] for p, y in zip(pred, data.labels, strict=True)) / len(data)


def rewordings(model, val_sets: dict) -> dict:
    """Accuracy of ``model`` on each training task's validation rows with the label texts of :data:`REWORDINGS`
    as candidates, scored by the trained head (``unseen_label_head="trained"``, the default) and by the frozen
    similarity (``"cosine"``)."""
    out = {}
    for task, data in val_sets.items():
        for texts in REWORDINGS.get(task, ()):
            row = {"label_texts": texts}
            for head in ("trained", "cosine"):
                row[head] = candidate_accuracy(model, data, texts, head)
            out.setdefault(task, []).append(row)
            print(f"  {task} as {' / '.join(texts)}: trained head {row['trained']:.3f}, frozen similarity "
                  f"{row['cosine']:.3f}", flush=True)
    return out


def zero_shot_parts(model, data, label_texts: list[str]) -> dict:
    """Zero-shot accuracy of ``model`` on ``data`` with ``label_texts`` as candidates, with the parts of
    :data:`ZERO_SHOT_PARTS` put back to their start (``common.reset_parts``); ``model``'s weights are restored
    afterwards."""
    trained = {k: v.detach().clone() for k, v in model.method.state_dict().items()}
    if not model.method.score_head.reads_label:
        return {}  # the paper head starts random: no start to put it back to
    out = {}
    try:
        for name, parts in ZERO_SHOT_PARTS.items():
            common.reset_parts(model, trained, parts)
            out[name] = candidate_accuracy(model, data, label_texts)
    finally:
        common.reset_parts(model, trained, ())
    return out


def task_draws(train: dict, steps: int, batch_size: int, seed: int) -> dict:
    """How many batches the multi-task run draws from each task (TaskSampler's seeded draws)."""
    from ltuning.pairs import TaskSampler

    sampler = TaskSampler([d.labels for d in train.values()], [len(d.label_names) for d in train.values()],
                          batch_size, seed=seed)
    draws = [sampler.task_of(i) for i in range(steps)]
    return {name: draws.count(i) for i, name in enumerate(train)}


def run(backbone, args, seed: int) -> dict:
    import torch

    from ltuning import LTuningModel, build_and_train
    from ltuning.config import LTuningConfig
    from ltuning.data import get_task, read_glue
    from ltuning.recipe import warm_start
    from ltuning.train import TrainArgs, set_seed, train

    head, lr = resolved(args.score_head, args.learning_rate)
    own_steps = per_task_steps(args)
    own_kind = "same-budget" if own_steps == args.steps else "own-steps"  # the per_task key; the renderer reads it

    def targs(steps: int) -> TrainArgs:
        return TrainArgs(max_steps=steps, batch_size=args.batch_size, seed=seed, progress=False, learning_rate=lr)

    train_sets = {t: read_glue(t, "train") for t in args.tasks}
    val_sets = {t: read_glue(t, "validation").subset(args.val_rows, seed=0) for t in args.tasks}
    record = {"backbone": args.backbone, "tasks": args.tasks, "held_out": args.held_out, "seed": seed,
              "steps": args.steps, "per_task_steps": own_steps, "per_task_kind": own_kind, "batch_size": args.batch_size,
              "fewshot_steps": args.fewshot_steps,
              "shots": args.shots, "val_rows": {t: len(v) for t, v in val_sets.items()},
              "train_rows": {t: len(d) for t, d in train_sets.items()},
              "score_head": head, "label_map_rank": args.label_map_rank,
              "recipe": f"library defaults (TrainArgs(): listwise), the {head} head at lr {lr:g}, "
                        + (f"label map r={args.label_map_rank}" if args.label_map_rank else "no label map")
                        + ", final state"}
    t0 = time.perf_counter()
    if args.zero_shot_only:
        record["recipe"] += "; the multi-task adapter only, scored zero-shot on the held-back task"
    cached = adapter_cache(args, seed)
    train_args = json.loads(json.dumps(vars(targs(args.steps)), default=str))
    if (cached / "multitask_run.json").exists():  # the same run's adapter, trained before (deterministic)
        model = LTuningModel.from_pretrained(cached, backbone)
        trained = json.loads((cached / "multitask_run.json").read_text())
        if trained.get("train_args") != train_args:
            raise SystemExit(f"{cached}: trained with other arguments ({trained.get('train_args')}, now {train_args}); "
                             "delete the folder to train again")
        record["learning_rate"], train_seconds = trained["learning_rate"], trained["seconds"]
        record["multitask_adapter_from"] = f"{cached.name}, trained {trained['finished']} (git {trained['git']})"
    else:
        multi = build_and_train(backbone, train_sets, None, targs(args.steps), method="lt-prefix", say=None,
                                score_head=head, **common.label_map("lt-prefix", args.label_map_rank))
        record["learning_rate"] = multi.result.learning_rate  # the rate the run trained at (resolved() above)
        model, train_seconds = multi.model, time.perf_counter() - t0
        model.save_pretrained(cached)
        common.write_result(cached / "multitask_run.json", {  # last: its presence marks a complete adapter
            "learning_rate": record["learning_rate"], "seconds": train_seconds, "finished": common.now(),
            "train_args": train_args, "git": common.git_commit().get("commit")})
    draws = task_draws(train_sets, args.steps, args.batch_size, seed)
    record["multitask"] = {
        "task_batches": draws, "seconds": train_seconds, "adapter": model.config.to_dict(),
        "trainable_params": model.num_trainable_parameters(),
        "validation": {t: scored(model.for_task(t) if i else model, val_sets[t]) for i, t in enumerate(args.tasks)}}
    print(f"  multitask: {({t: round(v['accuracy'], 3) for t, v in record['multitask']['validation'].items()})}",
          flush=True)
    record["rewordings"] = rewordings(model, val_sets)
    record["per_task"] = {}
    for t in args.tasks if not args.zero_shot_only else ():
        for kind, steps in ((own_kind, own_steps), ("same-task-steps", max(1, draws[t]))):
            t1 = time.perf_counter()
            single = build_and_train(backbone, train_sets[t], None, targs(steps), method="lt-prefix", task=t, say=None,
                                     score_head=head, **common.label_map("lt-prefix", args.label_map_rank))
            record["per_task"][f"{t}/{kind}"] = {"steps": steps, "seconds": time.perf_counter() - t1,
                                                 "validation": scored(single.model, val_sets[t])}
            print(f"  {t} {kind} ({steps} steps): {record['per_task'][f'{t}/{kind}']['validation']['accuracy']:.3f}",
                  flush=True)

    # the held-back task: its labels were never seen in training
    held = get_task(args.held_out)
    held_train, held_val = read_glue(held.name, "train"), read_glue(held.name, "validation").subset(args.val_rows, seed=0)
    texts = held.label_texts
    cm = zero_shot_metrics(backbone, held_val, texts, model.pooling)
    held_rec = {"label_texts": texts, "rows": len(held_val),
                "zero-shot-cosine": {"accuracy": cm["accuracy"], "mcc": cm["mcc"], "macro_f1": cm["macro_f1"]},
                "multitask-zero-shot": {"accuracy": candidate_accuracy(model, held_val, texts),  # as the stored runs
                                        "unseen_label_head": "trained"},
                "parts": zero_shot_parts(model, held_val, texts)}
    print(f"  {args.held_out} zero-shot: cosine {cm['accuracy']:.3f}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in held_rec["parts"].items()), flush=True)
    if args.held_out_dev_rows:  # the same on rows of its training split: a dev set to choose on, not reported
        held_dev = held_train.subset(args.held_out_dev_rows, seed=0)
        held_rec["dev"] = {"rows": len(held_dev),
                           "zero-shot-cosine": zero_shot_metrics(backbone, held_dev, texts, model.pooling)["accuracy"],
                           "parts": zero_shot_parts(model, held_dev, texts)}
        print(f"  {args.held_out} dev zero-shot: cosine {held_rec['dev']['zero-shot-cosine']:.3f}, "
              + ", ".join(f"{k} {v:.3f}" for k, v in held_rec["dev"]["parts"].items()), flush=True)
    for k in args.shots if not args.zero_shot_only else ():
        shots = per_class_sample(held_train, k, seed)
        for start in ("multitask", "scratch"):
            set_seed(seed)
            cfg = LTuningConfig(method="lt-prefix", base_model=backbone.name, label_names=held.label_names,
                                label_texts=texts, score_head=head, label_length=model.config.label_length, **common.label_map("lt-prefix", args.label_map_rank),
                                max_length=model.config.max_length, text_pooling=model.pooling)
            m = LTuningModel(backbone, cfg)
            if start == "multitask":
                warm_start(m, model)  # ltuning train --init-from
            # batch: the k-shot set, at most the library batch size
            fargs = TrainArgs(max_steps=args.fewshot_steps, batch_size=min(args.batch_size, len(shots)), seed=seed,
                              progress=False, learning_rate=lr)
            train(m, shots, None, fargs)
            held_rec[f"{start}-{k}-shot"] = {**scored(m, held_val), "examples": len(shots)}
            print(f"  {args.held_out} {start} {k}-shot: {held_rec[f'{start}-{k}-shot']['accuracy']:.3f}", flush=True)
    record["held_out_task"] = held_rec
    record.update(seconds=time.perf_counter() - t0, versions=common.versions("torch", "transformers", "ltuning"),
                  git=common.git_commit(), machine=common.machine(), threads=torch.get_num_threads(),
                  finished=common.now())
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--tasks", nargs="+", default=["demo", "trec"], help="packaged training tasks")
    ap.add_argument("--held-out", default="sms-spam", help="packaged task never trained on by the multi-task run")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int, default=300, help="multi-task steps (and the same-budget per-task steps)")
    ap.add_argument("--per-task-steps", type=int, default=None,
                    help="steps of each per-task adapter (default: --steps); --steps 600 --per-task-steps 300 on two "
                         "tasks compares at equal total steps (texts seen)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--fewshot-steps", type=int, default=50)
    ap.add_argument("--shots", nargs="+", type=int, default=[8, 16], help="examples per class on the held-out task")
    ap.add_argument("--val-rows", type=int, default=500, help="seeded validation rows per task (seed 0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--score-head", default=None, choices=[h.value for h in ScoreHead],
                    help="lt-prefix's score head for every adapter here (default: the method's default head)")
    ap.add_argument("--learning-rate", type=float, default=None,
                    help="for every adapter here (default: the score head's default rate; the stored similarity-head "
                         "runs: --score-head similarity --learning-rate 1e-2)")
    ap.add_argument("--label-map-rank", type=int, default=None,
                    help="lt-prefix's label map for every adapter here (default: the library's default rank, a map "
                         "since 2026-11-29); 0: none, as the stored runs without 'label-map' in their names")
    ap.add_argument("--zero-shot-only", action="store_true",
                    help="train the multi-task adapter and score the held-back task zero-shot, with its parts at "
                         "their start; nothing else (results in multitask/zero-shot-parts/)")
    ap.add_argument("--held-out-dev-rows", type=int, default=500,
                    help="also score the held-back task's zero-shot parts on this many seeded rows of its training "
                         "split (a dev set for choices; 0: none)")
    ap.add_argument("--tag", default="", help="suffix of the result file name (e.g. smoke)")
    args = ap.parse_args()
    if args.label_map_rank is None:
        from ltuning.methods import get_method

        args.label_map_rank = get_method("lt-prefix").label_map_rank_for(None)
    if args.label_map_rank < 0:
        ap.error("--label-map-rank: 0 (no map) or a positive rank")
    if args.steps < 1 or (args.per_task_steps is not None and args.per_task_steps < 1):
        ap.error("--steps and --per-task-steps: a positive number of steps")
    if args.tag.startswith(("steps", "per-task")):  # the name's own parts: a tag like that could collide
        ap.error(f"--tag {args.tag!r}: a tag may not start with 'steps' or 'per-task' (the file name's step parts)")

    import torch

    torch.set_num_threads(args.threads)
    from ltuning.loading import load_backbone

    backbone = load_backbone(args.backbone)
    for seed in args.seeds:
        path = result_path(args, seed)
        if path.exists():
            print(f"skip {path.name} (exists)")
            continue
        print(f"{args.backbone} multitask {args.tasks} held out {args.held_out} seed {seed}", flush=True)
        rec = run(backbone, args, seed)
        rec["cli"] = dict(vars(args))
        common.write_result(path, rec)
        print(f"  -> {path}", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
