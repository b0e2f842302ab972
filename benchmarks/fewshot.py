"""Issue 13: few examples per class. ltuning's methods against SetFit and the frozen model's zero-shot similarity.

For each dataset, shot count k and seed, the same k training examples per class go to every method (SetFit
included: ``export`` writes them to ``benchmarks/.fewshot_data/``, which ``peers/setfit_peer.py`` reads in its
own venv), and every method is scored on the same validation rows. One JSON per cell:
``benchmarks/results/fewshot/<dataset>-<method>-<shots>shot-seed<N>.json``; cells run at an earlier default
learning rate are kept beside them as ``<dataset>-<method>-lr1e-2-<shots>shot-seed<N>.json`` (the renderer reads
each file's recorded rate, not its name).

The recipe is fixed for every dataset, shot count and method (few shots leave no rows to choose on, and no
choice is made on the reported rows): the library's defaults for each method (its own default learning rate,
:func:`learning_rate`; the similarity score head and the listwise objective for the LT methods, mean pooling on
minilm) with 100 steps of batch 16, the final state kept (no validation during training). ``linear-probe``:
Linear(d, K) on the frozen pooled vector, the same 100 steps, batch 16, lr 1e-2. ``zero-shot-similarity``: no training (``shots`` 0), the
cosine between the text's and each label text's frozen sentence embedding, the task's label texts as they are
in ``ltuning.data.TASKS`` (fixed before any run). ``lt-prefix-multitask``: lt-prefix with the same recipe, started
(``ltuning train --init-from``) from one LT-prefix adapter trained on the *other* datasets' training rows
(:func:`source_tasks`: those whose label set differs from the target's; 300 steps of batch 16, seed 0, library
defaults of the time, lr 1e-2), so it uses labelled data of other tasks that no other row gets; its cost is
reported apart. It keeps lr 1e-2 (:data:`MULTITASK_LR`), the recipe its rows were run with.

    python benchmarks/fewshot.py                                   # export, then every cell (hours of CPU)
    python benchmarks/fewshot.py --datasets sst2 --shots 8 16 --seeds 0 1 --methods lt-prefix prefix
    python benchmarks/fewshot.py --epochs 50 --methods lt-prefix prefix --shots 8 16
                                                                   # the same rows at a budget that grows with
                                                                   # the training set (``budget``; ``-ep50`` files)
    python benchmarks/fewshot.py export                            # only the samples, for the SetFit peer
    python benchmarks/fewshot.py source-parts                      # lt-prefix-multitask's sources, parts reset
    python benchmarks/fewshot.py ablate --methods lt-prefix prefix --variants default lr-1e-3 --shots 16
                                                                   # recipe variants on dev rows carved from train

Samples are nested: for one seed, each class's examples are a seeded shuffle of that class's training rows,
and k shots take the first k, so the 8-shot sample is part of the 16-shot one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

OUT = common.RESULTS / "fewshot"
DATA = common.ROOT / "benchmarks" / ".fewshot_data"
DATASETS = ["sst2", "demo", "trec", "sms-spam"]
SHOTS = [8, 16, 32, 64]
SEEDS = [0, 1, 2, 3, 4]
METHODS = ["zero-shot-similarity", "lt-prefix", "lt-prompt", "prefix", "prompt", "linear-probe",
           "lt-prefix-multitask", "lt-prefix-cosine", "lt-prefix-label-map"]
#: Rows that are a library method with other options than its defaults: row name -> (method, config options)
#: (``lt-prefix-anchored`` is LT-prefix's default since the anchored head became it: its cells are the
#: ``lt-prefix`` row's, render.py)
#: ``lt-prefix-label-map``: the default LT-prefix (anchored head, 3e-3) with the label map of rank
#: common.LABEL_MAP_RANK (``--label-map-rank``)
CONFIGURED = {"lt-prefix-cosine": ("lt-prefix", {"score_head": "cosine"}),
              "lt-prefix-anchored": ("lt-prefix", {"score_head": "anchored"}),
              "lt-prefix-label-map": ("lt-prefix", {"score_head": "anchored", "label_map_rank": common.LABEL_MAP_RANK})}
#: Methods with a 0-shot cell: the frozen model's similarity, and the multi-task adapter on the target's labels
ZERO_SHOT = ("zero-shot-similarity", "lt-prefix-multitask")
STEPS, BATCH, LR = 100, 16, 1e-2  # LR: linear-probe's
#: lt-prefix-multitask and its source adapters: the lr its rows were run with (lt-prefix's default until it
#: became 3e-3); kept so that the row and its cached sources stay one recipe
MULTITASK_LR = 1e-2
MAX_VALIDATION = 500  # a seeded sample of each dataset's validation split (seed 0), the same rows for every method
BACKBONE = "minilm"


def budget(change: dict, n_texts: int) -> int:
    """The training steps of a cell: the recipe's STEPS; a variant's own ``steps``; or, with ``epochs`` E (a
    budget that grows with the training set), at least E passes over the n training texts and never fewer than
    STEPS: ``max(STEPS, ceil(E * n / BATCH))``. The fixed 100 steps give a 2-class set 100 epochs at 8 shots
    and 50 at 16, a 6-class one (trec) 33 and 17, and any set fewer as the shots grow; E = 50 is what the
    fixed recipe gives a 2-class set at 16 shots, the shot count the defaults were chosen at."""
    import math

    if "epochs" in change:
        return max(STEPS, math.ceil(change["epochs"] * n_texts / BATCH))
    return change.get("steps", STEPS)


def learning_rate(method: str) -> float:
    """The fixed recipe's learning rate for ``method``: the library's default for it (what a user gets without
    ``--learning-rate``); ``linear-probe`` LR, ``lt-prefix-multitask`` MULTITASK_LR."""
    from ltuning.methods import METHODS

    if method in CONFIGURED:  # what the library trains that configuration at without --learning-rate
        name, options = CONFIGURED[method]
        return METHODS[name].learning_rate_for(options.get("score_head"))
    if method in METHODS:
        return METHODS[method].default_learning_rate
    return MULTITASK_LR if method == "lt-prefix-multitask" else LR


def score_head(method: str) -> str | None:
    """The score head the fixed recipe trains ``method`` with today: a configured row's own, an LT method's
    library default (what a user gets without ``--score-head``); None for the other rows."""
    from ltuning.methods import METHODS

    if method == "lt-prefix-multitask":
        return ABLATION_HEAD
    name, options = CONFIGURED.get(method, (method, {}))
    if name not in METHODS or not METHODS[name].label_conditioned:
        return None
    return METHODS[name].head_for(options.get("score_head")).value


def load(dataset: str):
    """(train, validation): the validation rows every method is scored on."""
    from ltuning.data import read_glue

    train = read_glue(dataset, "train", common.GLUE_DIR)
    val = read_glue(dataset, "validation", common.GLUE_DIR)
    if len(val) > MAX_VALIDATION:
        val = val.subset(MAX_VALIDATION, seed=0)
    return train, val


def sample(train, shots: int, seed: int):
    """``shots`` examples of every class: the first ``shots`` of a seeded shuffle of that class's rows."""
    from ltuning.data import TextDataset

    rng = random.Random(seed)
    picked = []
    for k in range(len(train.label_names)):
        rows = [i for i, y in enumerate(train.labels) if y == k]
        rng.shuffle(rows)
        if len(rows) < shots:
            raise SystemExit(f"{train.source}: class {train.label_names[k]!r} has {len(rows)} rows, fewer than "
                             f"{shots} shots")
        picked += rows[:shots]
    picked.sort()
    return TextDataset([train.texts[i] for i in picked], [train.labels[i] for i in picked], train.label_names,
                       f"{train.source} ({shots} per class, seed {seed})")


def _write_jsonl(path: Path, ds) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(ds.texts, ds.labels,
                                                                                     strict=True)))
    tmp.replace(path)


def export(datasets, shots, seeds) -> None:
    """The samples and validation rows as JSONL, and the label sets, for a peer in another venv."""
    from ltuning.data import get_task

    DATA.mkdir(parents=True, exist_ok=True)
    for name in datasets:
        train, val = load(name)
        t = get_task(name)
        (DATA / f"{name}-labels.json").write_text(json.dumps({"label_names": t.label_names,
                                                               "label_texts": t.label_texts}) + "\n")
        _write_jsonl(DATA / f"{name}-validation.jsonl", val)
        for k in shots:
            for seed in seeds:
                _write_jsonl(DATA / f"{name}-{k}shot-seed{seed}.jsonl", sample(train, k, seed))
    print(f"exported {len(datasets)} datasets x {len(shots)} shot counts x {len(seeds)} seeds to {DATA}", flush=True)


#: The similarity head's trained parts (C_zeta, W, s, b): frozen at their start, the head is the cosine head
HEAD_PARTS = ["head.weight", "text_map.weight", "logit_scale", "logit_bias"]

#: The one label template the ablation tries (the zero-shot-classification pipeline's default hypothesis)
LABEL_TEMPLATE = "This example is {}."
ABLATIONS = {  # recipe variants compared on dev rows carved from train (``ablate``); "freeze": LT methods only
    "default": {},
    "frozen-text-map": {"freeze": ["text_map.weight"]},   # the similarity head's W stays the identity
    "lr-1e-3": {"learning_rate": 1e-3},
    "steps-25": {"steps": 25},
    # which half of LT-prefix learns from few examples: the similarity head alone (Z stays at zero, so every
    # label's prefix is zero) or the label-conditioned prefix alone (W, C_zeta, s, b stay at their start)
    "head-only": {"freeze": ["pool.weight", "transform.weight"]},
    "prefix-only": {"freeze": HEAD_PARTS},
    "lr-3e-4": {"learning_rate": 3e-4},
    "lr-3e-3": {"learning_rate": 3e-3},
    "lr-3e-2": {"learning_rate": 3e-2},  # with lr-1e-3, 3e-3 and 1e-2: the converged protocol's grid, and 3e-4
    "lr-1e-2": {"learning_rate": 1e-2},  # the grid spelt out, whatever the method's default is today
    # issue 12's hypothesis "add a shared learned prefix to the label-conditioned part" (LT-prefix only): one
    # prefix for every label, as classic prefix tuning learns, added to Z's per-label one; at zero (the step-0
    # head start kept) or drawn as classic prefix draws it (std Prefix.init_std)
    "shared-prefix": {"shared_prefix": 0.0},
    "shared-prefix-random": {"shared_prefix": "prefix"},
    # LT-prefix's label-to-prefix map Z at 10x the rate of the rest (W, C_zeta, s, b, F): Z's output is scaled
    # by 10, which under Adam is Z trained at 10x the learning rate (3e-2, classic prefix's rate, at the default)
    "z-lr-x10": {"z_rate": 10.0},
    # the label-conditioned prefix alone at classic prefix's rate: is the similarity head what a high rate spoils?
    # (for LT-prompt, "prefix-only" is its prompt map G alone)
    "prefix-only-lr-3e-2": {"freeze": HEAD_PARTS, "learning_rate": 3e-2},
    "prefix-only-lr-1e-2": {"freeze": HEAD_PARTS, "learning_rate": 1e-2},
    "prefix-only-lr-3e-3": {"freeze": HEAD_PARTS, "learning_rate": 3e-3},
    "prefix-only-lr-1e-3": {"freeze": HEAD_PARTS, "learning_rate": 1e-3},
    # issue 13's hypothesis: a similarity head that stays the cosine head with few examples and learns a
    # direction with many. (a) the head's direction-learning parts (W - I, C_zeta) at a tenth of the rate of
    # the rest; (b) a Gaussian prior centred on the head's start, (lambda / n) * (||W - I||^2 + ||C_zeta||^2)
    # added to the loss, n the training texts: as in any MAP estimate its weight falls as 1 / n, so it holds
    # the head at the frozen similarity on 16 examples per class and lets it go on a full training set
    "head-rate-x0.1-lr-1e-2": {"head_rate": 0.1, "learning_rate": 1e-2},
    "head-prior-1-lr-1e-2": {"head_prior": 1.0, "learning_rate": 1e-2},
    "head-prior-10-lr-1e-2": {"head_prior": 10.0, "learning_rate": 1e-2},
    "head-prior-100-lr-1e-2": {"head_prior": 100.0, "learning_rate": 1e-2},
    "head-prior-10-lr-3e-3": {"head_prior": 10.0, "learning_rate": 3e-3},
    "head-prior-1-lr-3e-3": {"head_prior": 1.0, "learning_rate": 3e-3},
    "head-prior-100-lr-3e-3": {"head_prior": 100.0, "learning_rate": 3e-3},
    # why the default (the anchored head: prior 10 at 3e-3) gains least from more shots on trec: a rate too low
    # for the fixed 100 steps (3e-2: classic prefix's rate) or a budget too short (300 steps; classic prefix
    # given the same)
    "head-prior-10-lr-3e-2": {"head_prior": 10.0, "learning_rate": 3e-2},
    "head-prior-10-lr-3e-3-steps-300": {"head_prior": 10.0, "learning_rate": 3e-3, "steps": 300},
    "steps-300": {"steps": 300},
    # the same question at 8 and 16 shots: a budget that grows with the training set (``budget``), for every
    # method alike; E = 50 is fixed before any run (what 100 steps give a 2-class set at 16 shots)
    "epochs-50": {"epochs": 50},
    "head-prior-10-lr-3e-3-epochs-50": {"head_prior": 10.0, "learning_rate": 3e-3, "epochs": 50},
    # a warm start (lt-prefix-multitask): the prior centred on the head it starts from (L2-SP; head_prior's
    # centre is the weights when the prior is set, after the warm start) or on the fresh head's W = I, C_zeta = 0
    "head-prior-10-identity-lr-3e-3": {"head_prior": 10.0, "prior_centre": "identity", "learning_rate": 3e-3},
    # issue 12's hypothesis "label texts as short sentences against bare words", with one template for every
    # dataset (a wording per dataset would be tuning to it): the zero-shot-classification pipeline's default
    # hypothesis, LABEL_TEMPLATE; the frozen similarity with it (``template``: zero-shot-similarity only, the
    # classic methods never read a label text) and the default LT-prefix (the anchored head at 3e-3) with it
    "template": {"label_template": LABEL_TEMPLATE},
    "head-prior-10-lr-3e-3-template": {"head_prior": 10.0, "learning_rate": 3e-3, "label_template": LABEL_TEMPLATE},
    # issue 12's hypothesis "feed Z the pooled d-vector through a low-rank map": Z reads l scalars per label (one
    # score per label token, F), so K labels' prefixes span at most l directions (trec: K = 6 labels of l tokens);
    # here each label's prefix also gets U V e(y), e(y) its frozen mean-pooled encoding, V: d -> r, U: r -> the
    # prefix, U started at zero (the step-0 head start kept): LT-prefix's ``label_map_rank`` r; with the default
    # recipe (anchored head at 3e-3). The first cells (16 and 8 shots, r = 8 and 32) ran through a patch of the
    # method in this script that computed the same map, before the option was in the library.
    "head-prior-10-lr-3e-3-label-map-r8": {"head_prior": 10.0, "learning_rate": 3e-3, "label_map": 8},
    "head-prior-10-lr-1e-2-label-map-r8": {"head_prior": 10.0, "learning_rate": 1e-2, "label_map": 8},
    "head-prior-10-lr-3e-3-label-map-r32": {"head_prior": 10.0, "learning_rate": 3e-3, "label_map": 32},
    # issue 13's "training no slower than SetFit": the default (above, r = 8) at a quarter and half of the fixed
    # 100 steps. SetFit's budget is one pass over its pairs, so on 2-class sets at 8-16 shots it trains for
    # 8-32 steps; how much accuracy does LT-prefix keep with a budget of that size?
    "head-prior-10-lr-3e-3-label-map-r8-steps-25": {"head_prior": 10.0, "learning_rate": 3e-3, "label_map": 8,
                                                    "steps": 25},
    "head-prior-10-lr-3e-3-label-map-r8-steps-50": {"head_prior": 10.0, "learning_rate": 3e-3, "label_map": 8,
                                                    "steps": 50},
}


#: The head of the ``ablate`` cells of lt-prefix / lt-prompt and of ``lt-prefix-multitask`` (its source adapters
#: and its target runs): the similarity head, the LT default when they ran; pinned, so that a later default
#: does not mix recipes under one row
ABLATION_HEAD = "similarity"
SOURCES = common.ROOT / "benchmarks" / ".fewshot_sources"
SOURCE_STEPS, SOURCE_SEED = 300, 0


def source_tasks(dataset: str) -> list[str]:
    """``lt-prefix-multitask``'s training tasks for ``dataset``: every other dataset here whose label texts
    differ from ``dataset``'s, so the target's label set is one the source adapter never saw (sst2 and demo
    share negative / positive, so neither is the other's source)."""
    from ltuning.data import get_task

    own = get_task(dataset).label_texts
    return [d for d in DATASETS if d != dataset and get_task(d).label_texts != own]


def source_adapter(bb, dataset: str, pooling) -> tuple[Path, dict]:
    """The multi-task LT-prefix adapter ``lt-prefix-multitask`` starts from for ``dataset``: trained on all the
    training rows of :func:`source_tasks` (``SOURCE_STEPS`` of batch 16, seed ``SOURCE_SEED``, lr
    ``MULTITASK_LR``, otherwise the library's defaults, final state), saved once in ``benchmarks/.fewshot_sources/`` and reused by every shot count and
    seed. Returns the folder and what it cost."""
    from ltuning.data import read_glue
    from ltuning.recipe import build_and_train
    from ltuning.train import TrainArgs

    folder = SOURCES / f"{BACKBONE}-for-{dataset}-seed{SOURCE_SEED}"
    info = folder / "source.json"
    tasks = source_tasks(dataset)
    made = json.loads(info.read_text()) if info.exists() else {}
    made.setdefault("learning_rate", 1e-2)  # written before the key: lt-prefix's default then
    if {k: made.get(k) for k in ("tasks", "steps", "batch_size", "seed", "text_pooling", "learning_rate")} != {
            "tasks": tasks, "steps": SOURCE_STEPS, "batch_size": BATCH, "seed": SOURCE_SEED,
            "text_pooling": pooling.value, "learning_rate": MULTITASK_LR}:  # none yet, or another recipe: (re)train
        t = common.clock()
        run = build_and_train(bb, {d: read_glue(d, "train", common.GLUE_DIR) for d in tasks}, None,
                              TrainArgs(max_steps=SOURCE_STEPS, batch_size=BATCH, learning_rate=MULTITASK_LR,
                                        seed=SOURCE_SEED, progress=False),
                              method="lt-prefix", text_pooling=pooling.value, max_length=common.MAX_LENGTH, say=None,
                              score_head=ABLATION_HEAD, **common.label_map("lt-prefix"))
        run.model.save_pretrained(folder, overwrite=True)
        info.write_text(json.dumps({"tasks": tasks, "steps": SOURCE_STEPS, "batch_size": BATCH, "seed": SOURCE_SEED,
                                    "text_pooling": pooling.value, "learning_rate": MULTITASK_LR, "train_seconds": common.since(t)}))
    return folder, json.loads(info.read_text())


def dev_load(dataset: str):
    """(train minus dev, dev): 500 rows of a seeded dev split carved from the training rows, for ``ablate``."""
    import headstart

    from ltuning.data import read_glue

    rest, dev = headstart.dev_split(read_glue(dataset, "train", common.GLUE_DIR), seed=0)
    return rest, dev.subset(min(MAX_VALIDATION, len(dev)), seed=0)


def run_cell(bb, dataset: str, method: str, shots: int, seed: int, variant: str | None = None,
             epochs: int | None = None) -> dict:
    import torch

    from ltuning.config import LTuningConfig, TextPooling
    from ltuning.data import get_task
    from ltuning.metrics import classification_metrics

    task = get_task(dataset)
    train, val = dev_load(dataset) if variant else load(dataset)
    change = dict(ABLATIONS[variant]) if variant else {}
    if "label_template" in change:  # every label text put into one sentence (the label names stay)
        task = dataclasses.replace(task, label_texts=[change["label_template"].format(t) for t in task.label_texts])
    if epochs:  # a reported row at a budget that grows with the training set (``--epochs``)
        change["epochs"] = epochs
    k = len(task.label_names)
    pooling = bb.resolve_pooling(TextPooling(common.PROTOCOL[BACKBONE]["text_pooling"]))
    rec = {"dataset": dataset, "method": method, "shots": shots, "seed": seed, "backbone": BACKBONE,
           "label_texts": task.label_texts, "validation_rows": len(val)}
    if variant:
        rec.update(variant=variant, evaluated_on="dev rows carved from train (headstart.dev_split, seed 0)")
    if method == "zero-shot-similarity":
        import headstart

        t = common.clock()
        scores = headstart.zero_shot(bb, list(val.texts), task.label_texts, pooling)
        preds, train_s, predict_s, trainable, recipe = scores.argmax(-1).tolist(), None, common.since(t), 0, \
            {"training": "none"}
        train_rows = 0
    else:
        few = sample(train, shots, seed) if shots else None
        train_rows = len(few) if shots else 0
        steps = budget(change, len(few)) if shots else 0
        recipe = {"steps": steps, "batch_size": BATCH, "learning_rate": change.get("learning_rate", learning_rate(method)),
                  "state": "final (no validation)",
                  "text_pooling": pooling.value, "max_length": common.MAX_LENGTH}
        if "epochs" in change:  # every row records its budget rule (render.py tags the row with it)
            recipe["epochs"] = change["epochs"]
        if not shots:
            recipe.update(steps=0, state="the source adapter, no training on the target")
        if method == "linear-probe":
            import peer_loop

            t = common.clock()
            run = peer_loop.train_peer(method, bb, None, few, few, num_labels=k, lr=recipe["learning_rate"], steps=steps,
                                       batch_size=BATCH, eval_every=steps + 1, seed=seed,
                                       text_pooling=pooling.value, max_length=common.MAX_LENGTH,
                                       eval_at_start=False)
            train_s, trainable = common.since(t), run.trainable
            fitted = run.predict(list(few.texts)).argmax(-1)
            t = common.clock()
            logits = run.predict(list(val.texts))
            preds, predict_s = logits.argmax(-1).tolist(), common.since(t)
        else:
            from ltuning.model import LTuningModel
            from ltuning.train import TrainArgs, set_seed
            from ltuning.train import train as fit

            source = None
            if method == "lt-prefix-multitask":
                from ltuning.adapter_io import read_adapter_config
                from ltuning.recipe import warm_start

                folder, source = source_adapter(bb, dataset, pooling)
                recipe["init_from"] = source
            set_seed(seed)
            name, options = CONFIGURED.get(method, ("lt-prefix" if source else method, {}))
            if (variant or source) and name == ("lt-prefix" if source else method):
                # the ablations of lt-prefix / lt-prompt and lt-prefix-multitask ran, and run, the similarity
                # head (their stored cells' head; render.DEFAULT_CONFIGS reads them as that head's)
                options = {**options, "score_head": ABLATION_HEAD}
            # LT-prefix's label map (the library's label_map_rank): a variant's own, else a configured row's, else none
            options = ({**options, **common.label_map(name, change["label_map"])} if "label_map" in change
                       else {**common.label_map(name), **options})
            cfg = LTuningConfig(method=name, **options, base_model=BACKBONE,
                                label_names=task.label_names, label_texts=task.label_texts, text_pooling=pooling,
                                max_length=common.MAX_LENGTH,
                                label_length=read_adapter_config(folder).label_length if source else None)
            model = LTuningModel(bb, cfg)
            if source:
                warm_start(model, folder)
            if "shared_prefix" in change:
                add_shared_prefix(model.method, change["shared_prefix"])
            if "z_rate" in change:  # Adam's step is scale-free: an output scaled by c moves c times as fast
                c = change["z_rate"]
                model.method.transform.register_forward_hook(lambda mod, inp, out: out * c)
            if "head_rate" in change:
                slow_head(model.method, change["head_rate"])
            if "head_prior" in change:
                head_prior(model.method, change["head_prior"] / len(few), change.get("prior_centre", "start"))
            for name, p in model.method.named_parameters():
                if name in change.get("freeze", []):
                    p.requires_grad_(False)
            targs = TrainArgs(max_steps=max(steps, 1), batch_size=BATCH,
                              learning_rate=recipe["learning_rate"], seed=seed, progress=False)
            t = common.clock()
            if shots:  # 0 shots (lt-prefix-multitask): the source adapter as it is, on the target's labels
                fit(model, few, None, targs)
            train_s, trainable = common.since(t) if shots else None, model.num_trainable_parameters()
            if shots:
                fitted = model.score_texts(list(few.texts)).argmax(-1)
            t = common.clock()
            preds, predict_s = model.score_texts(list(val.texts)).argmax(-1).tolist(), common.since(t)
            recipe.update(objective=targs.objective, adapter=model.config.to_dict(), **change)
    m = classification_metrics(preds, list(val.labels), k)
    if train_rows:  # how well the few training rows themselves are fitted (a gap to accuracy: generalisation)
        rec["train_accuracy"] = sum(int(p) == y for p, y in zip(fitted.tolist(), few.labels, strict=True)) / train_rows
    rec.update(accuracy=m["accuracy"], confusion_matrix=m["confusion_matrix"], mcc=m["mcc"], macro_f1=m["macro_f1"], train_rows=train_rows,
               train_seconds=train_s, predict_seconds=predict_s, trainable_params=trainable, recipe=recipe,
               versions=common.versions("torch", "transformers"), git=common.git_commit(),
               machine=common.machine(), threads=torch.get_num_threads(), finished=common.now(),
               command="python benchmarks/fewshot.py " + " ".join(sys.argv[1:]))
    return rec


def slow_head(method, c: float) -> None:
    """The ``head-rate`` ablation: the similarity head's W - I and C_zeta move at ``c`` times the rate of the
    rest. Under Adam a step is scale-free, so a part whose output is scaled by c (W's departure from the
    identity, C_zeta's logit, both zero at the start) moves c times as fast; s and b keep the full rate."""
    method.text_map.register_forward_hook(lambda mod, inp, out: inp[0] + c * (out - inp[0]))
    method.head.register_forward_hook(lambda mod, inp, out: out * c)


def head_prior(method, weight: float, centre: str = "start") -> None:
    """The ``head-prior`` ablations: ``weight * (||W - W0||^2 + ||C_zeta - C0||^2)`` added to the loss (through
    its gradient, ``2 * weight * (theta - theta0)``, added to each of the two parameters' own on every
    backward: the same as the library's ``anchored`` term with one backward per step and one process, as here,
    and a fresh model, whose start W0 = I, C0 = 0 is the anchored head's centre). ``centre``: ``start``, the
    weights when this is called (after a warm start: the source adapter's), or ``identity``, W0 = I, C0 = 0."""
    import torch

    if centre not in ("start", "identity"):
        raise ValueError(f"head_prior: centre must be 'start' or 'identity', got {centre!r}")
    W, C = method.text_map.weight, method.head.weight
    if centre == "start":
        W0, C0 = W.detach().clone(), C.detach().clone()
    else:
        W0, C0 = torch.eye(W.shape[0], dtype=W.dtype, device=W.device), torch.zeros_like(C)
    for p, start in ((W, W0), (C, C0)):
        p.register_hook(lambda g, p=p, start=start: g + 2 * weight * (p.detach() - start))


def add_shared_prefix(method, std) -> None:
    """The ``shared-prefix`` ablations: give an LT-prefix method one more trainable prefix, shared by every
    label and added to each label's own (``std``: its initial scale, or ``"prefix"`` for classic prefix's)."""
    import torch

    from ltuning.methods.prefix import Prefix

    if method.name != "lt-prefix":
        raise SystemExit(f"the shared-prefix ablations are for lt-prefix, not {method.name}")
    d = method.dims
    shape = (1, method.prefix_layers, 2, d.num_kv_heads, method.label_length, d.head_dim)
    scale = Prefix.init_std if std == "prefix" else float(std)
    method.register_parameter("shared_prefix", torch.nn.Parameter(torch.randn(shape) * scale))
    own = method.forward

    def forward(label_states, label_mask):
        inj = own(label_states, label_mask)
        inj.prefix = inj.prefix + method.shared_prefix
        return inj

    method.forward = forward


def cells(datasets, methods, shots, seeds):
    """Cheap and decisive first: seed by seed, the small shot counts before the large."""
    for seed in seeds:
        for k in shots:
            for d in datasets:
                for m in methods:
                    if m in ZERO_SHOT and seed == seeds[0] and k == shots[0]:
                        yield d, m, 0, 0
                    if m != "zero-shot-similarity":
                        yield d, m, k, seed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", nargs="?", choices=["run", "export", "ablate", "transfer", "source-parts"],
                    default="run")
    ap.add_argument("--source", default="sst2", choices=DATASETS, help="transfer: the dataset the adapter trains on")
    ap.add_argument("--source-steps", type=int, default=300, help="transfer: training steps (the CLI default)")
    ap.add_argument("--variants", nargs="+", default=list(ABLATIONS), choices=list(ABLATIONS),
                    help="ablate: recipe variants (those that freeze parts: LT methods only), scored on dev rows "
                         "carved from train (never the reported rows)")
    ap.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=[*METHODS, *(m for m in CONFIGURED if m not in METHODS)])
    ap.add_argument("--shots", nargs="+", type=int, default=SHOTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"run: a budget that grows with the training set, max({STEPS} steps, ceil(E * n / {BATCH})) "
                         f"for n training texts, instead of the fixed {STEPS} steps; cells go to "
                         "<dataset>-<method>-ep<E>-...")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT,
                    help=f"run: the folder the cells' JSON go to (default {OUT.relative_to(common.ROOT)}; "
                         "fewshot_timing.py runs cells into a scratch folder)")
    args = ap.parse_args(argv)
    if args.epochs is not None and (args.command != "run" or args.epochs < 1):
        ap.error("--epochs takes a positive number of epochs and applies to the run command only")
    if args.out != OUT and args.command != "run":
        ap.error("--out applies to the run command only (the other commands write to their own folders under "
                 f"{OUT.relative_to(common.ROOT)})")
    if args.command == "ablate":
        return ablate(args)
    if args.command == "transfer":
        return transfer(args)
    if args.command == "source-parts":
        return source_parts(args)
    export(args.datasets, args.shots, args.seeds)
    if args.command == "export":
        return 0
    import torch

    from ltuning.loading import load_backbone

    torch.set_num_threads(args.threads)
    bb = load_backbone(BACKBONE)
    args.out.mkdir(parents=True, exist_ok=True)
    for d, m, k, seed in cells(args.datasets, args.methods, args.shots, args.seeds):
        if args.epochs and not k:  # a budget needs training texts: the 0-shot cells are the fixed recipe's
            continue
        path = args.out / common.fewshot_cell_name(d, m, k, seed, f"ep{args.epochs}" if args.epochs else "")
        if path.exists() and not args.overwrite:
            recipe = json.loads(path.read_text()).get("recipe") or {}
            ran_at, ran_with = recipe.get("learning_rate"), (recipe.get("adapter") or {}).get("score_head")
            if ran_at not in (None, learning_rate(m)):  # e.g. the method's default has changed since
                raise SystemExit(f"{path} ran at lr {ran_at}, the recipe's rate for {m} is {learning_rate(m)} now: "
                                 f"keep it as {path.name.replace(f'-{m}-', f'-{m}-lr{common.lr_name(ran_at)}-')} (git mv) and "
                                 "run again, or pass --overwrite to replace it")
            if ran_with and score_head(m) and ran_with != score_head(m):  # the default head has changed since
                raise SystemExit(f"{path} ran with the {ran_with} score head, the recipe's for {m} is {score_head(m)} "
                                 f"now: keep it as {path.name.replace(f'-{m}-', f'-{m}-{ran_with}-')} (git mv) and run "
                                 "again, or pass --overwrite to replace it")
            continue
        rec = run_cell(bb, d, m, k, seed, epochs=args.epochs)
        common.write_result(path, rec)
        print(f"{path.name}: accuracy {rec['accuracy']:.4f}, train "
              f"{(rec['train_seconds'] or {}).get('cpu', 0):.0f} CPU s, predict {rec['predict_seconds']['cpu']:.0f} "
              f"CPU s", flush=True)
    return 0


def transfer(args) -> int:
    """New label sets without retraining: an LT adapter trained on ``--source`` (all its training rows, the
    library defaults: ``--source-steps`` of batch 16, no validation) scores every dataset's validation rows with
    that dataset's own label texts as candidate labels; beside it, the zero-shot similarity on the same rows."""
    import torch

    from ltuning.config import LTuningConfig, TextPooling
    from ltuning.data import get_task
    from ltuning.loading import load_backbone
    from ltuning.metrics import classification_metrics
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, set_seed
    from ltuning.train import train as fit

    torch.set_num_threads(args.threads)
    bb = load_backbone(BACKBONE)
    pooling = bb.resolve_pooling(TextPooling(common.PROTOCOL[BACKBONE]["text_pooling"]))
    src = get_task(args.source)
    out = OUT / "transfer"
    for method in [m for m in args.methods if m.startswith("lt-")]:
        todo = [d for d in args.datasets
                if args.overwrite or not (out / f"{args.source}-{method}-to-{d}-seed{args.seeds[0]}.json").exists()]
        if not todo:
            continue
        seed = args.seeds[0]
        set_seed(seed)
        name, options = CONFIGURED.get(method, (method, {}))
        options = {**common.label_map(name), **options}  # a configured row's map, else none
        model = LTuningModel(bb, LTuningConfig(method=name, **options, base_model=BACKBONE, label_names=src.label_names,
                                               label_texts=src.label_texts, text_pooling=pooling,
                                               max_length=common.MAX_LENGTH))
        targs = TrainArgs(max_steps=args.source_steps, batch_size=BATCH, learning_rate=learning_rate(method),
                          seed=seed, progress=False)
        source_train = load(args.source)[0]
        t = common.clock()
        fit(model, source_train, None, targs)
        train_s = common.since(t)
        for d in todo:
            task, val = get_task(d), load(d)[1]
            t = common.clock()
            names = model.predict(list(val.texts), candidate_labels=list(task.label_texts))
            predict_s = common.since(t)
            preds = [task.label_texts.index(n) for n in names]
            m = classification_metrics(preds, list(val.labels), len(task.label_names))
            import headstart

            z = headstart.zero_shot_metrics(bb, val, task.label_texts, pooling)
            rec = {"source": args.source, "target": d, "method": method, "seed": seed, "backbone": BACKBONE,
                   "source_training": {"steps": args.source_steps, "batch_size": BATCH,
                                       "learning_rate": targs.learning_rate,
                                       "objective": targs.objective, "rows": len(source_train),
                                       "label_texts": src.label_texts},
                   "target_label_texts": task.label_texts, "validation_rows": len(val),
                   "accuracy": m["accuracy"], "mcc": m["mcc"], "macro_f1": m["macro_f1"],
                   "zero_shot_similarity": {"accuracy": z["accuracy"], "mcc": z["mcc"], "macro_f1": z["macro_f1"]},
                   "train_seconds": train_s, "predict_seconds": predict_s, "adapter": model.config.to_dict(),
                   "versions": common.versions("torch", "transformers"), "git": common.git_commit(),
                   "machine": common.machine(), "threads": torch.get_num_threads(), "finished": common.now(),
                   "command": "python benchmarks/fewshot.py " + " ".join(sys.argv[1:])}
            common.write_result(out / f"{args.source}-{method}-to-{d}-seed{seed}.json", rec)
            print(f"{args.source} {method} -> {d}: accuracy {m['accuracy']:.4f} (zero-shot similarity "
                  f"{z['accuracy']:.4f})", flush=True)
    return 0


#: ``source-parts``: lt-prefix-multitask's source adapter on the target's labels, no training, with learned parts
#: put back to their initial values (the similarity head's: C_zeta 0, W the identity, Z 0). Which of them moves
#: the 0-shot score off the frozen model's similarity?
SOURCE_PARTS = {
    "as trained": (),
    "C_zeta reset": ("head",),
    "W reset": ("text_map",),
    "Z reset": ("transform",),
    "C_zeta and W reset": ("head", "text_map"),
    "C_zeta, W and Z reset": ("head", "text_map", "transform"),
}


def source_parts(args) -> int:
    """0-shot accuracy of each target's source adapter (:func:`source_adapter`: the one the
    ``lt-prefix-multitask`` cells used, trained here if missing) with some learned parts reset (:data:`SOURCE_PARTS`); one JSON per
    target in ``results/fewshot/source-parts/``."""
    import torch

    from ltuning.config import TextPooling
    from ltuning.data import get_task
    from ltuning.loading import load_backbone
    from ltuning.metrics import classification_metrics
    from ltuning.model import LTuningModel

    torch.set_num_threads(args.threads)
    bb = load_backbone(BACKBONE)
    pooling = bb.resolve_pooling(TextPooling(common.PROTOCOL[BACKBONE]["text_pooling"]))
    out = OUT / "source-parts"
    for d in args.datasets:
        path = out / f"{d}.json"
        if path.exists() and not args.overwrite:
            continue
        folder, source = source_adapter(bb, d, pooling)
        model = LTuningModel.from_pretrained(folder, bb)
        trained = {k: v.clone() for k, v in model.method.state_dict().items()}
        task, val = get_task(d), load(d)[1]
        rows = {}
        for name, parts in SOURCE_PARTS.items():
            common.reset_parts(model, trained, parts)
            names = model.predict(list(val.texts), candidate_labels=list(task.label_texts))
            m = classification_metrics([task.label_texts.index(n) for n in names], list(val.labels),
                                       len(task.label_names))
            rows[name] = {"reset": list(parts), "accuracy": m["accuracy"], "mcc": m["mcc"]}
            print(f"{d} {name}: {m['accuracy']:.4f}", flush=True)
        rec = {"dataset": d, "backbone": BACKBONE, "source": source, "label_texts": task.label_texts,
               "validation_rows": len(val), "scale_s": model.method.logit_scale.exp().item(),
               "bias_b": model.method.logit_bias.item(), "variants": rows,
               "versions": common.versions("torch", "transformers"), "git": common.git_commit(),
               "machine": common.machine(), "threads": torch.get_num_threads(), "finished": common.now(),
               "command": "python benchmarks/fewshot.py " + " ".join(sys.argv[1:])}
        common.write_result(path, rec)
    return 0


def applies(variant: str, method: str) -> bool:
    """Whether an ablation ``variant`` is run for ``method``: freezing a part, the LT methods with a trained head
    only (a configured row such as ``lt-prefix-cosine`` has none of the head's parts, and freezing its injection
    would leave nothing to train); a prior on the head, those and lt-prefix-multitask; a shared prefix, a label map or Z's own
    rate, LT-prefix only; a label template, zero-shot-similarity alone, or LT-prefix with the prior; a learning
    rate or a budget, every method."""
    change = ABLATIONS[variant]
    if "label_template" in change:  # the wording alone: the untrained similarity; with the prior: the default
        # LT-prefix (not lt-prefix-multitask, whose source adapter's label length would cut the sentence)
        return method == ("lt-prefix" if "head_prior" in change else "zero-shot-similarity")
    if "shared_prefix" in change or "z_rate" in change or "label_map" in change:
        return method == "lt-prefix"
    if "prior_centre" in change:  # where the prior is centred matters only after a warm start
        return method == "lt-prefix-multitask"
    if "head_prior" in change:  # and on lt-prefix-multitask's warm-started head
        return method in ("lt-prefix", "lt-prompt", "lt-prefix-multitask")
    if change.get("freeze") or "head_rate" in change:
        return method in ("lt-prefix", "lt-prompt")
    return True


def ablate(args) -> int:
    import torch

    from ltuning.loading import load_backbone

    torch.set_num_threads(args.threads)
    bb = load_backbone(BACKBONE)
    out = OUT / "ablation"
    if "zero-shot-similarity" in args.methods:  # the dev rows' untrained reference (and with a label template)
        for v in ["default", *(v for v in args.variants  # and each label template's (``applies``: the wording alone)
                               if "label_template" in ABLATIONS[v] and applies(v, "zero-shot-similarity"))]:
            for d in args.datasets:
                path = out / common.fewshot_cell_name(d, "zero-shot-similarity", 0, 0, v)
                if not path.exists() or args.overwrite:
                    common.write_result(path, run_cell(bb, d, "zero-shot-similarity", 0, 0, variant=v))
    for seed in args.seeds:
        for k in args.shots:
            for d in args.datasets:
                # the classic methods too, for the variants that apply to them (a learning rate or a budget
                # chosen for LT only would compare a tuned LT with untuned baselines)
                for m in [m for m in args.methods if m.startswith("lt-") or m in ("prefix", "prompt")]:
                    # a prior weighted by 1 / n needs training texts: no 0-shot cell
                    for v in [v for v in args.variants if applies(v, m) and (k or "head_prior" not in ABLATIONS[v])]:
                        path = out / common.fewshot_cell_name(d, m, k, seed, v)
                        if path.exists() and not args.overwrite:
                            continue
                        rec = run_cell(bb, d, m, k, seed, variant=v)
                        common.write_result(path, rec)
                        print(f"{path.name}: dev accuracy {rec['accuracy']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
