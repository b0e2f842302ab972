"""The training loop (A.3): NLI pair batches and BCE for LT methods, K-way cross-entropy for the classic
baselines; AdamW with linear warmup and decay; validation every N steps; the best state kept.

Processes and devices come from Accelerate's ``PartialState`` (one process, or one per device under
``accelerate launch``); the rest is plain PyTorch, not Accelerate's ``Accelerator`` or DDP. The loop moves
the model to its process's device and autocasts to bfloat16 when asked (``--bf16``, or ``accelerate launch
--mixed_precision bf16``). With several processes it broadcasts the main process's initial trainable
weights, gives each of the N processes every N-th pair of each global batch, and sums the trainable
parameters' gradients and the loss with one ``torch.distributed`` all-reduce per optimizer step (the
backbone is frozen, so nothing else needs synchronizing). Checkpoints (``ltuning.checkpoint``) let a killed
run continue bit-exactly with ``resume``.

:func:`train` is the entry point; ``_TrainingLoop`` holds one run's state, one method per part (setup,
resume, an optimizer step with accumulation and the all-reduce, non-finite steps, evaluation and the best
state, checkpoints, the final state).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import checkpoint
from .backbones import same_weights, settings_differ
from .checkpoint import json_safe
from .config import (
    LabelPosition,
    PrefixPooling,
    ScoreHead,
    TextPooling,
    _is_int,
    check_arg,
    is_number,
    is_path,
)
from .data import TASKS, TextDataset
from .errors import ConfigError, DataError
from .evaluate import evaluate
from .labels import label_token_lengths
from .model import LTuningModel
from .pairs import PairBatch, PairSampler, TaskSampler
from .progress import progress_bar


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradients became NaN or infinite (the weights were not updated with them)."""


# validation metrics that may choose the kept state (higher is better; ties go to the lower validation loss)
BEST_METRICS = ("accuracy", "mcc", "macro_f1")
# training objectives: "listwise", a K-way softmax over the K label scores of each text (the default; what
# the classic methods' K-way head always trains), or, for the label-conditioned methods only, "pairwise", the
# paper's BCE on one true or false (text, label) pair per text (A.3)
OBJECTIVES = ("listwise", "pairwise")


@dataclass
class TrainArgs:
    max_steps: int = 300
    batch_size: int = 16  # global: split across processes when distributed
    learning_rate: float | None = None  # None: the method's default_learning_rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    eval_every: int = 50
    eval_batch_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16"
    progress: bool = True
    gradient_accumulation_steps: int = 1  # batches per optimizer step (effective batch = this * batch_size)
    output_dir: str | None = None  # where checkpoints/ goes
    checkpoint_every: int = 0  # 0: no checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept (plus the best)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    skip_nonfinite: bool = False  # skip steps with a non-finite loss instead of stopping
    metric_for_best: str = "accuracy"  # validation metric that picks the kept state: accuracy | mcc | macro_f1
    #: stop after this many evaluations without a better kept state (0: never): a better metric, or at an equal
    #: metric a lower validation loss (the tie-break that picks the kept state)
    early_stopping_patience: int = 0
    objective: str = "listwise"  # "listwise" (K-way CE) | "pairwise" (LT methods: A.3, BCE on one pair per text)

    def __post_init__(self) -> None:
        for name, (check, what) in _ARG_TYPES.items():  # types first: the value checks below compare numbers
            value = getattr(self, name)
            check_arg(check(value), f"{name} (--{name.replace('_', '-')})", what, value)
        finite = math.isfinite
        checks = [  # (holds, the option and what it must be)
            (self.max_steps >= 1, "--max-steps must be >= 1", self.max_steps),
            (self.batch_size >= 2, "--batch-size must be >= 2 (half true, half false pairs)", self.batch_size),
            (self.eval_every >= 1, "--eval-every must be >= 1", self.eval_every),
            (self.eval_batch_size >= 1, "--eval-batch-size must be >= 1", self.eval_batch_size),
            (self.learning_rate is None or (self.learning_rate > 0 and finite(self.learning_rate)),
             "--learning-rate must be a finite number > 0", self.learning_rate),
            (self.weight_decay >= 0 and finite(self.weight_decay), "--weight-decay must be a finite number >= 0",
             self.weight_decay),
            (0 <= self.warmup_ratio < 1, "--warmup-ratio must be in [0, 1)", self.warmup_ratio),
            (self.mixed_precision in ("no", "bf16"), "mixed_precision must be 'no' or 'bf16'",
             repr(self.mixed_precision)),
            # PairSampler mixes the seed into 64-bit generator seeds
            (0 <= self.seed < 1_000_000, "--seed must be in [0, 999999]", self.seed),
            (self.gradient_accumulation_steps >= 1, "--gradient-accumulation-steps must be >= 1",
             self.gradient_accumulation_steps),
            (self.metric_for_best in BEST_METRICS, f"--metric-for-best must be one of {', '.join(BEST_METRICS)}",
             repr(self.metric_for_best)),
            (self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}",
             repr(self.objective)),
            (self.early_stopping_patience >= 0, "--early-stopping-patience must be >= 0 (0: off)",
             self.early_stopping_patience),
            (self.checkpoint_every >= 0, "--checkpoint-every must be >= 0 (0: no checkpoints)", self.checkpoint_every),
            (self.keep_checkpoints >= 1, "--keep-checkpoints must be >= 1", self.keep_checkpoints),
        ]
        for holds, rule, value in checks:
            if not holds:
                raise ConfigError(f"{rule}, got {value}")
        if (self.checkpoint_every or self.resume) and not self.output_dir:
            raise ConfigError("checkpoints need an output folder (--output-dir)")


_INT = (_is_int, "an integer")
_NUMBER = (is_number, "a number")
_BOOL = (lambda v: isinstance(v, bool), "True or False")
_STR = (lambda v: isinstance(v, str), "a string")
#: TrainArgs field -> (type check, what it must be); the values are checked after the types
_ARG_TYPES = {
    "max_steps": _INT, "batch_size": _INT, "learning_rate": (lambda v: v is None or is_number(v), "a number or None"),
    "weight_decay": _NUMBER, "warmup_ratio": _NUMBER, "eval_every": _INT, "eval_batch_size": _INT, "seed": _INT,
    "mixed_precision": _STR, "progress": _BOOL, "gradient_accumulation_steps": _INT,
    "output_dir": (lambda v: v is None or is_path(v), "a folder path or None"), "checkpoint_every": _INT,
    "keep_checkpoints": _INT, "resume": _BOOL, "skip_nonfinite": _BOOL, "metric_for_best": _STR,
    "early_stopping_patience": _INT, "objective": _STR,
}


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    train_log: list[dict] = field(default_factory=list)  # one row per logged step
    seconds: float = 0.0
    train_seconds: float = 0.0
    learning_rate: float = 0.0
    resumed_from: int = 0  # the checkpoint step this run continued from (0: from scratch)
    skipped_steps: list[int] = field(default_factory=list)  # steps skipped for a non-finite loss
    stopped_early_at: int | None = None  # the step early stopping ended the run at (None: ran to max_steps)

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def distributed_state():
    """Accelerate's process state: one process, or one per device under ``accelerate launch``."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return distributed_state().is_main_process


def shard(pb: PairBatch, rank: int, world: int) -> PairBatch:
    """This process's share of a global batch: every ``world``-th row from ``rank``; the shares' union is
    the batch, so N processes see exactly what one process sees."""
    return PairBatch(pb.indices[rank::world], pb.label_ids[rank::world], pb.targets[rank::world],
                     pb.labels[rank::world])


def _broadcast_(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with the main process's values."""
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, src=0)


def _all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` in place across processes (one flat buffer, one collective)."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def _finite_weights(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _check_final_state(model: LTuningModel, probe: list, step: int) -> None:
    """The state about to be returned (and saved) must hold finite weights that give finite scores: weights
    of ~1e30 are finite, yet score NaN."""
    if not _finite_weights(model.method.parameters()):
        problem = "hold non-finite values"
    else:
        with torch.no_grad():
            scores = model.score_texts(probe, batch_size=len(probe))
        if bool(torch.isfinite(scores).all()):
            return
        problem = "give non-finite scores (weights too large)"
    raise NonFiniteLossError(
        f"the trained weights (step {step}) {problem}; no adapter is saved. Lower --learning-rate or check the data")


def _data_fingerprints(data) -> str | dict | None:
    """:meth:`TextDataset.fingerprint` of a dataset, of each task's ({name: ...}), or None (no data)."""
    if isinstance(data, Mapping):
        return {n: d.fingerprint() for n, d in data.items() if d is not None}
    return None if data is None else data.fingerprint()


def _run_signature(model: LTuningModel, train_data: TextDataset, args: TrainArgs, lr: float,
                   validation_data=None) -> dict:
    """Options a checkpoint must share with the run that resumes it (the data order and schedule)."""
    return {"method": model.config.method, "label_names": list(model.label_names),
            # the label texts, their length and the text length shape what the trained weights mean; the data's
            # fingerprints: a run resumed on other rows of the same size would mix two runs (the validation data
            # chooses the kept state). Checkpoints written before these keys resume without the comparison.
            "label_texts": list(model.config.label_texts), "label_length": model.config.label_length,
            "max_length": model.config.max_length, "train_data": _data_fingerprints(train_data),
            "validation_data": _data_fingerprints(validation_data),
            "backbone_fingerprint": model.config.backbone_fingerprint,
            "train_examples": sum(len(d) for d in train_data.values()) if isinstance(train_data, Mapping)
            else len(train_data),
            # multi-task runs: each task's labels, label texts and size (the task draws depend on the sizes,
            # the tasks' label encodings on the texts and l)
            **({"tasks": {n: [d.label_names, len(d), list((model.config.tasks or {}).get(n, {}).get("label_texts", []))]
                          for n, d in train_data.items()},
                # the order too (a dict compares without it): task i's sampler state resumes task i
                "task_order": list(train_data)}
               if isinstance(train_data, Mapping) else {}),
            "max_steps": args.max_steps, "batch_size": args.batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": lr,
            "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio, "seed": args.seed,
            "eval_every": args.eval_every,
            **({"metric_for_best": args.metric_for_best} if args.metric_for_best != "accuracy" else {}),
            # LT runs only (a classic method's objective is fixed); absent: pairwise, the only one before
            **({"objective": args.objective} if model.label_conditioned and args.objective != "pairwise" else {}),
            "weights": {k: list(v.shape) for k, v in model.method.state_dict().items()},
            "text_pooling": model.pooling.value,
            # compared within rounding (same_weights), not for equality: a sample of the backbone's weights
            **({"backbone_weights": model.config.backbone_weights} if model.config.backbone_weights else {}),
            # compared where both hold a key (settings_differ); absent from checkpoints written before the record
            **({"backbone_settings": model.config.backbone_settings} if model.config.backbone_settings else {}),
            # only when not the default, so checkpoints written before the option still resume
            **({"label_position": model.config.label_position.value}
               if model.config.label_position != LabelPosition.BEFORE else {}),
            **({"prefix_pooling": model.config.prefix_pooling.value}
               if model.config.prefix_pooling != PrefixPooling.RAW else {}),
            **({"score_head": model.config.score_head.value}
               if model.config.score_head != ScoreHead.PAPER else {}),
            # only with a map, so checkpoints written without one (before the option, or with 0) still resume
            **({"label_map_rank": model.config.label_map_rank} if model.config.label_map_rank else {}),
            # a warm start (--init-from, init_from=) is one of the run's options: resume it with the same source
            "warm_start": model.warm_started}


def _is_task_table(v) -> bool:
    return (isinstance(v, Mapping) and len(v) > 0
            and all(isinstance(k, str) and k.strip() and isinstance(d, TextDataset) for k, d in v.items()))


def check_train_inputs(train_data, validation_data, args) -> None:
    """The types :func:`train` takes: TextDatasets (validation_data may be None) and TrainArgs; for multi-task
    training (LT methods), a dict {task name: TextDataset} for train_data and, if given, validation_data (its
    tasks a subset of train_data's).
    Raises: ConfigError naming the argument."""
    check_arg(isinstance(train_data, TextDataset) or _is_task_table(train_data), "train_data",
              "a TextDataset (ltuning.data), or a non-empty dict {task name: TextDataset} for multi-task training",
              train_data)
    multi = isinstance(train_data, Mapping)
    check_arg(validation_data is None or (_is_task_table(validation_data) if multi
                                          else isinstance(validation_data, TextDataset)), "validation_data",
              "a dict {task name: TextDataset} or None (multi-task train_data)" if multi
              else "a TextDataset (ltuning.data) or None", validation_data)
    if multi and validation_data is not None and set(validation_data) - set(train_data):
        raise DataError(f"validation_data: tasks {sorted(set(validation_data) - set(train_data))} are not among the "
                        f"training tasks {list(train_data)}; validate only tasks the adapter trains on")
    check_arg(isinstance(args, TrainArgs), "args", "a TrainArgs (ltuning.train)", args)


def task_table(train_data: Mapping[str, TextDataset], label_texts: Mapping[str, list[str]] | None = None) -> dict:
    """``config.tasks`` for multi-task ``train_data``: each task's label names and label texts (from
    ``label_texts``, else a known task's (``ltuning.data.TASKS``) where its labels are the data's, else the
    names). Raises: ConfigError for a task with fewer than 2 labels (via LTuningConfig's check)."""
    from .config import check_tasks

    table = {}
    for name, data in train_data.items():
        texts = (label_texts or {}).get(name)
        known = TASKS.get(name)
        if texts is None and known is not None and known.label_names == data.label_names:
            texts = known.label_texts
        table[name] = {"label_names": list(data.label_names), "label_texts": list(texts or data.label_names)}
    return check_tasks(table)


def _check_validation_labels(train_data: Mapping[str, TextDataset],
                             validation_data: Mapping[str, TextDataset | None] | None) -> None:
    """Validation labels in the training labels' order, each task's (one task: the name ""), checked before the
    first step: evaluation would refuse them anyway, but only at the first evaluation, after minutes of
    training."""
    for name, val in (validation_data or {}).items():
        names = train_data[name].label_names
        if val is not None and val.label_names != names:
            where, how = ((f"task {name!r}: ", "read_table_tasks(..., label_names={task: train[task].label_names})")
                          if name else ("", "read_table(..., label_names=train.label_names)"))
            raise DataError(f"{where}the validation labels {list(val.label_names)} differ from the training labels "
                            f"{list(names)} (names and order: a label index means the same class in both); read the "
                            f"validation data with the training labels ({how})")


def _check_task_model(model: LTuningModel, train_data: Mapping[str, TextDataset]) -> None:
    """A multi-task run trains an LT model whose ``config.tasks`` are the data's tasks, in the data's order (set
    from the data when the model has none: its own labels must be the first task's)."""
    if not model.label_conditioned:
        raise ConfigError(
            f"multi-task training (tasks {list(train_data)}) needs a label-conditioned method (lt-prefix or "
            f"lt-prompt): {model.config.method} has a fixed {model.num_labels}-way head over one label set. Train "
            "one adapter per task, or use --method lt-prefix / lt-prompt")
    if model.config.tasks is None:
        first = next(iter(train_data.values()))
        if first.label_names != model.label_names:
            raise DataError(f"the first training task {next(iter(train_data))!r} has labels {first.label_names}, the "
                            f"model {model.label_names}; build the model for the first task's labels (it is the "
                            "adapter's primary label set)")
        table = task_table(train_data)
        table[next(iter(table))]["label_texts"] = list(model.config.label_texts)
        model.config.tasks = table
    tasks = model.config.tasks
    if list(tasks) != list(train_data):
        raise DataError(f"training tasks {list(train_data)} differ from the model's tasks {list(tasks)} (names and "
                        "order); build the model with the data's tasks")
    for name, data in train_data.items():
        if data.label_names != tasks[name]["label_names"]:
            raise DataError(f"task {name!r}: the data's labels {data.label_names} differ from the model's "
                            f"{tasks[name]['label_names']}")
        if len(data) < 2:
            raise DataError(f"task {name!r}: need at least 2 training examples, got {len(data)}")
        # a method that reads exactly l label tokens (LT-prefix) would cut a longer task label without a word
        longest = max(label_token_lengths(model.backbone, tasks[name]["label_texts"], f"task {name!r} label text"))
        if model.method.candidate_label_length(longest) < longest:
            raise ConfigError(
                f"task {name!r}: a label text is {longest} tokens, longer than the adapter's label_length "
                f"{model.config.label_length} ({model.config.method} reads exactly that many label tokens, so it "
                "would be cut); build the model for all tasks at once (build_and_train with the task dict, or "
                "--tasks on the command line: l is then the longest label of every task), or shorten the label")


def record_objective(model: LTuningModel, args: TrainArgs) -> None:
    """Put the run's objective in the model's config (an LT adapter saves it: listwise scores rank labels but
    are not per-label probabilities, and :func:`ltuning.evaluate.evaluate` reports the objective's own loss);
    before training, so that an evaluation at step 0 already reports that loss."""
    model.config.objective = args.objective if model.label_conditioned else None


def train(model: LTuningModel, train_data: TextDataset, validation_data: TextDataset | None,
          args: TrainArgs, on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model``'s method in place and leave it holding the best evaluated state.

    Under ``accelerate launch`` each process takes its share of every global batch and the gradients of
    the (few) trainable parameters are summed across processes, so N processes follow the same path as
    one. Only the main process writes checkpoints' shared files and shows progress.

    Returns: the best step, its validation metrics, the evaluation history and the training log.
    Raises:
        DataError: label sets differ between model and data, or too few examples.
        CheckpointError: ``resume`` from a checkpoint written with other options, or an unreadable one.
        ConfigError: bad options; checkpoints of another run in ``output_dir`` without ``resume``.
        NonFiniteLossError: a NaN/inf loss or gradient (unless ``skip_nonfinite``); the weights and the
            checkpoints on disk stay as they were before that step.
    """
    check_training(model, train_data, validation_data, args)
    if args.checkpoint_every and not args.resume and (found := checkpoint.list_checkpoints(args.output_dir)):
        # this run's would be pruned among them as if one run's, and a later resume would take the newest
        raise ConfigError(f"output_dir {args.output_dir} holds checkpoints of another run (up to "
                          f"{found[-1][1].name}); give resume=True (--resume) to continue that run, or another "
                          "output_dir, or delete its checkpoints/ folder first")
    loop = _TrainingLoop(model, train_data, validation_data, args, on_eval)
    if args.resume:
        loop.resume()
    return loop.run()


def check_training(model: LTuningModel, train_data, validation_data, args: TrainArgs) -> None:
    """What :func:`train` checks before its first step, on their own: the inputs' types, the model's labels
    (multi-task: its tasks) against the data's, at least 2 training examples (each task's), the objective and
    the options that need validation data. :func:`ltuning.recipe.build_and_train` runs it before its
    ``on_built`` hook, so ``ltuning train`` refuses a run before it writes anything (nor removes a previous
    run for ``--overwrite``).

    Raises: ConfigError / DataError as :func:`train` does."""
    check_arg(isinstance(model, LTuningModel), "model", "an LTuningModel (ltuning.get_ltuning_model)", model)
    check_train_inputs(train_data, validation_data, args)
    multi = isinstance(train_data, Mapping)
    if multi:
        _check_task_model(model, train_data)
        _check_validation_labels(train_data, validation_data)
        train_data = next(iter(train_data.values()))
    elif model.config.tasks is not None and len(model.config.tasks) > 1:
        raise DataError(f"the model has tasks {list(model.config.tasks)}: give train_data as a dict "
                        "{task name: TextDataset} with every task's data")
    if train_data.label_names != model.label_names:
        raise DataError(f"training labels {train_data.label_names} differ from the model's {model.label_names}")
    if len(train_data) < 2:
        raise DataError(f"need at least 2 training examples, got {len(train_data)}")
    if not multi:
        _check_validation_labels({"": train_data}, {"": validation_data})
    if args.objective == "pairwise" and not model.label_conditioned:
        raise ConfigError(f"--objective pairwise is for the label-conditioned methods (lt-*); "
                          f"{model.config.method} trains a K-way softmax over its head (listwise)")
    world = distributed_state().num_processes
    if args.batch_size < world:
        raise ConfigError(f"--batch-size {args.batch_size} is smaller than the {world} processes; "
                          "the batch is split across processes")
    no_validation = validation_data is None or (multi and not validation_data)
    if no_validation and (args.early_stopping_patience or args.metric_for_best != "accuracy"):
        given = [f for f, v in (("--early-stopping-patience", args.early_stopping_patience),
                                ("--metric-for-best", args.metric_for_best != "accuracy")) if v]
        raise ConfigError(f"{' and '.join(given)} need validation data to act on: give --validation-file "
                          "(or a task with a validation split), or leave them out")


class _TrainingLoop:
    """The state of one :func:`train` call (optimizer, schedule, data order, best state, counters) and the
    parts of the recipe that move it: setup, resume, one optimizer step, non-finite steps, evaluation with
    best-state tracking, checkpoints, and the final state."""

    def __init__(self, model: LTuningModel, train_data, validation_data, args: TrainArgs,
                 on_eval: Callable[[dict], None] | None) -> None:
        # multi-task: one (name, training data, validation data or None) per task; single-task runs keep the
        # one-task path (and its checkpoint format) unchanged
        self.multi = isinstance(train_data, Mapping)
        if self.multi:
            self.task_data = [(n, d, (validation_data or {}).get(n)) for n, d in train_data.items()]
            train_data = self.task_data[0][1]
            validation_data = validation_data or None
        # the data and options were checked by check_training (train calls it first)
        self.model, self.train_data, self.validation_data = model, train_data, validation_data
        self.args, self.on_eval = args, on_eval
        sets = [d for _, d, _ in self.task_data] if self.multi else [train_data]
        # saved with the adapter: a model trained on (premise, hypothesis) pairs classifies pairs
        model.config.text_pairs = any(isinstance(t, tuple) for data in sets for t in data.texts)
        record_objective(model, args)
        self.state = state = distributed_state()
        self.world, self.rank, self.main = state.num_processes, state.process_index, state.is_main_process
        self.dev = state.device
        model.to(self.dev)
        # bf16 from --bf16, or from `accelerate launch --mixed_precision bf16`
        self.bf16 = args.mixed_precision == "bf16" or os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
        lr = args.learning_rate or model.method.default_learning_rate
        self.params = model.trainable_parameters()
        if self.world > 1:  # every process starts from the main process's initial weights
            _broadcast_(self.params)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=args.weight_decay)
        warmup = int(args.warmup_ratio * args.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: linear_schedule(s, args.max_steps, warmup))
        if self.multi:
            self.views = [model.for_task(n) for n, _, _ in self.task_data]  # share the method; each its labels
            self.sampler = TaskSampler([d.labels for _, d, _ in self.task_data],
                                       [v.num_labels for v in self.views], args.batch_size, seed=args.seed)
            self.signature = _run_signature(model, {n: d for n, d, _ in self.task_data}, args, lr,
                                            {n: v for n, _, v in self.task_data})
        else:
            self.views = [model]
            self.sampler = PairSampler(train_data.labels, model.num_labels, args.batch_size, seed=args.seed)
            self.signature = _run_signature(model, train_data, args, lr, validation_data)
        # n of the anchored score head's prior (lambda / n): the training texts, of every task
        self.num_train_texts = sum(len(d) for d in sets)
        self.result = TrainResult(best_step=0, best_metrics={}, learning_rate=lr)
        self.best_state = copy.deepcopy(model.method.state_dict())
        self.best_key = (-math.inf, -math.inf)
        self.train_time, self.n_texts, self.running, self.elapsed_before, self.start_step = 0.0, 0, 0.0, 0.0, 0
        self.last_checkpoint = None
        self.start, self.bar, self.started = 0.0, None, False

    # ------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from the latest checkpoint in ``output_dir`` (from step 0 if there is none)."""
        folder = checkpoint.latest_checkpoint(self.args.output_dir)
        if folder is None:
            if self.main:
                print(f"--resume: no checkpoint in {self.args.output_dir}/checkpoints; starting from step 0")
            return
        ckpt = checkpoint.load_checkpoint(folder, self.rank)
        self._check_signature(folder, ckpt["trainer_state"])
        try:
            self._restore(ckpt)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(f"cannot resume from {folder}: {type(e).__name__}: "
                                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        self.result.resumed_from = self.start_step
        self.last_checkpoint = folder
        if self.main:
            print(f"resumed from {folder} (step {self.start_step} of {self.args.max_steps})")

    def _check_signature(self, folder, ts: dict) -> None:
        """The checkpoint was written with this run's options (data order, schedule, shapes)."""
        saved = dict(ts.get("run", {}))
        if "prefix_pooling" not in self.model.method.weight_options:  # recorded, and unused, before it was refused
            saved.pop("prefix_pooling", None)
        if "text_pooling" not in saved:  # written before the signature held it: auto's old rule
            saved["text_pooling"] = self.model.backbone.resolve_pooling(TextPooling.AUTO, follow_folder=False).value
        signature = dict(self.signature)
        for key in ("warm_start", "task_order", "label_texts", "label_length", "max_length", "train_data",
                    "validation_data"):  # written before the key: not compared
            if key not in saved:
                signature.pop(key, None)
        ours, theirs = signature.pop("backbone_weights", None), saved.pop("backbone_weights", None)
        if ours is not None and theirs is not None and not same_weights(ours, theirs):
            raise checkpoint.CheckpointError(
                f"cannot resume from {folder}: it was trained on other backbone weights than those of "
                f"{self.model.backbone.name!r} (same architecture, different values); resume with the backbone it "
                "was trained on, or train from scratch in another --output-dir")
        changed = settings_differ(saved.pop("backbone_settings", None), signature.pop("backbone_settings", None))
        if changed:
            raise checkpoint.CheckpointError(
                f"cannot resume from {folder}: it was trained with other backbone settings than "
                f"{self.model.backbone.name!r} has ({'; '.join(changed)}); resume with the backbone (config and "
                "tokenizer) it was trained on, or train from scratch in another --output-dir")
        diff = sorted(k for k in set(signature) | set(saved) if signature.get(k) != saved.get(k))
        if diff:
            # options recorded only when not their default (e.g. score_head 'paper' before the option existed)
            defaults = {"score_head": "paper", "prefix_pooling": "raw", "label_position": "before",
                        "metric_for_best": "accuracy", "objective": "pairwise", "label_map_rank": 0}
            shown = "; ".join(f"{k}: checkpoint {saved.get(k, defaults.get(k))!r}, now {signature.get(k, defaults.get(k))!r}"
                              for k in diff[:4])
            hint = ("; a pairwise run resumes with --objective pairwise (listwise is the default now)"
                    if "objective" in diff and saved.get("objective", "pairwise") == "pairwise" else "")
            if "learning_rate" in diff and saved.get("learning_rate") is not None:  # e.g. begun at an earlier default
                hint += (f"; to go on at the checkpoint's learning rate, pass --learning-rate {saved.get('learning_rate')!r} "
                         "(Python: TrainArgs(learning_rate=...)); the default of a method can change between versions")
            if "score_head" in diff and saved.get("score_head"):  # e.g. begun with an earlier default head
                hint += (f"; to go on with the checkpoint's score head, pass --score-head {saved['score_head']} "
                         "(Python: score_head=...); the default head of a method can change between versions")
            if "label_map_rank" in diff and not saved.get("label_map_rank"):  # e.g. begun before the map's default
                hint += ("; to go on without a label map, as the checkpoint was written, pass --label-map-rank 0 "
                         "(Python: label_map_rank=0); lt-prefix has one by default since 2026-11-29")
            changed_data = [k.replace("_", " ") for k in ("train_data", "validation_data") if k in diff]
            if changed_data:
                hint += (f"; the {' and the '.join(changed_data)} differ from the checkpoint's (other rows, labels "
                         "or label names): resume with the same data (files, --task, --max-train-samples, "
                         "--max-eval-samples)")
            if "warm_start" in diff:
                hint += ("; the run started from an adapter's weights: resume it with the same --init-from "
                         "(Python: init_from=)" if saved["warm_start"] else
                         "; the run did not start from an adapter's weights: resume it without --init-from")
            raise checkpoint.CheckpointError(f"cannot resume from {folder}: it was written with other options "
                                             f"({shown}); rerun with the same options or another --output-dir{hint}")

    def _restore(self, ckpt: dict) -> None:
        """Weights, best state, optimizer, schedule, data position, RNG and counters from a checkpoint."""
        ts, method, result = ckpt["trainer_state"], self.model.method, self.result
        method.load_state_dict(ckpt["weights"])
        self.best_state = {k: v.to(self.dev) for k, v in ckpt["best_weights"].items()}
        method.load_state_dict(self.best_state)  # checks names and shapes
        method.load_state_dict(ckpt["weights"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ts["sampler"])
        checkpoint.set_rng_state(ckpt["rng"])
        self.start_step = int(ts["step"])
        result.best_step, result.best_metrics = ts["best_step"], ts["best_metrics"]
        self.best_key = tuple(ts["best_key"]) if ts["best_key"] is not None else self.best_key
        result.history, result.train_log = ts["history"], ts["train_log"]
        result.skipped_steps = ts.get("skipped_steps", [])
        self.train_time, self.n_texts, self.running = ts["train_seconds"], ts["n_texts"], ts["running_loss"]
        self.elapsed_before = ts["elapsed_seconds"]

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        args = self.args
        self.start = time.perf_counter()
        # a bar on a terminal, a plain line every N steps or seconds in a log file (ltuning.progress)
        self.bar = progress_bar(args.max_steps, desc=f"train {self.model.config.method}", unit="step",
                                initial=self.start_step, disable=not (args.progress and self.main))
        self.started = any(r.get("loss") is not None for r in self.result.train_log)  # running loss has a value
        self.model.train()
        # a checkpoint written at the evaluation that spent the patience (the process stopped before it finished)
        # ends the run where the unbroken run ended, without another step
        if not (self.start_step and self._stops_early(self.start_step)):
            for step in range(self.start_step + 1, args.max_steps + 1):
                self._step(step)
                if self.validation_data is not None and (step % args.eval_every == 0 or step == args.max_steps):
                    self._evaluate(step)
                if args.checkpoint_every and step % args.checkpoint_every == 0:
                    self._checkpoint(step)
                if self._stops_early(step):
                    break
        self.bar.close()
        return self._finish()

    def _stops_early(self, step: int) -> bool:
        """Early stopping after ``step``: records and says so when the patience is spent."""
        if not self._patience_spent():
            return False
        self.result.stopped_early_at = step
        if self.main:
            self.bar.write(f"step {step}: no better validation {self.args.metric_for_best} in "
                           f"{self.args.early_stopping_patience} evaluations since step {self.result.best_step}; "
                           "stopping early")
        return True

    def _step(self, step: int) -> None:
        """One optimizer step: the accumulated micro-batches, summed across processes; a step whose loss or
        gradients are not finite leaves the weights as they were."""
        t0 = time.perf_counter()
        loss_sum = self._accumulate()
        grads = self._sum_across_processes(loss_sum)
        loss_value = loss_sum.item()
        finite = math.isfinite(loss_value) and all(bool(torch.isfinite(g).all()) for g in grads)
        lr = self.optimizer.param_groups[0]["lr"]  # this step's rate (the scheduler moves to the next one below)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.train_time += time.perf_counter() - t0
        if not finite:
            self._skip_nonfinite(step, loss_value, lr)
        else:
            self.running = loss_value if not self.started else 0.9 * self.running + 0.1 * loss_value
            self.started = True
            self.result.train_log.append({"step": step, "loss": loss_value, "lr": lr})
        self.bar.set_postfix(loss=f"{self.running:.4f}",
                             texts_per_s=f"{self.n_texts / max(self.train_time, 1e-9):.1f}")
        self.bar.update(1)

    def _accumulate(self) -> torch.Tensor:
        """Forward and backward over ``gradient_accumulation_steps`` global batches (this process's share of
        each); returns this process's part of the mean loss."""
        model, dev, A = self.model, self.dev, self.args.gradient_accumulation_steps
        loss_sum = torch.zeros((), device=dev)
        for _ in range(A):
            task, pb = self.sampler.next() if self.multi else (0, self.sampler.next())
            data = self.task_data[task][1] if self.multi else self.train_data
            model = self.views[task]  # multi-task: the batch's task's labels
            B = len(pb.indices)
            local = shard(pb, self.rank, self.world)
            batch = model.tokenize([data.texts[i] for i in local.indices.tolist()])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = model.loss(batch, local.labels.to(dev), local.label_ids.to(dev), local.targets.to(dev),
                                  objective=self.args.objective)
            prior = model.method.anchor_loss(self.num_train_texts)
            if prior is not None:  # the prior counts once per step: each share carries its part of it too
                loss = loss.float() + prior
            # this process's share of the global mean: summed over processes and micro-batches it is the
            # mean loss of the A * B pairs
            part = loss.float() * (len(local.indices) / B) / A
            part.backward()
            loss_sum += part.detach()
            self.n_texts += B
        return loss_sum

    def _sum_across_processes(self, loss_sum: torch.Tensor) -> list[torch.Tensor]:
        """Sum the gradients and ``loss_sum`` (in place) over the processes; returns the gradients."""
        world = self.world
        for p in self.params:
            if p.grad is None and world > 1:  # every process must send the same tensors
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in self.params if p.grad is not None]
        if world > 1:
            _all_reduce_([*grads, loss_sum.view(1)])
        return grads

    def _skip_nonfinite(self, step: int, loss_value: float, lr: float) -> None:
        """A step with a NaN/inf loss or gradient: stop (the default) or record it as skipped."""
        if not self.args.skip_nonfinite:
            self.bar.close()
            where = (f"the last good checkpoint is {self.last_checkpoint}; continue from it with --resume"
                     if self.last_checkpoint is not None else "no checkpoint was written yet")
            raise NonFiniteLossError(
                f"non-finite training {'loss ' + str(loss_value) if not math.isfinite(loss_value) else 'gradient'} "
                f"at step {step}; the weights were not updated with it and {where}. Lower --learning-rate, "
                "check the data, or pass --skip-nonfinite to skip such steps")
        self.result.skipped_steps.append(step)
        self.result.train_log.append({"step": step, "loss": None, "lr": lr,
                                      "skipped": True})
        if self.main:
            self.bar.write(f"step {step}: non-finite loss {loss_value}; step skipped (--skip-nonfinite)")

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    # ------------------------------------------------------------------ evaluation and the best state
    def _evaluate(self, step: int) -> None:
        """Validate, record the row (and show it), and keep the state if it is the best so far."""
        # every process evaluates the same (identical) weights, so all keep the same best state
        metrics = self._validation_metrics()
        self.model.train()
        # a NaN validation loss (weights too large to score) is recorded as null and is never the best
        finite_eval = math.isfinite(metrics["loss"]) and _finite_weights(self.params)
        row = json_safe({"step": step, "loss": metrics["loss"], "accuracy": metrics["accuracy"],
                         "mcc": metrics["mcc"], "macro_f1": metrics["macro_f1"], "train_loss": self.running,
                         "elapsed_seconds": self._elapsed()})
        if "tasks" in metrics:
            row["tasks"] = json_safe({n: {k: m[k] for k in ("loss", "accuracy", "mcc", "macro_f1")}
                                      for n, m in metrics["tasks"].items()})
        if not finite_eval:
            row["nonfinite"] = True
        self.result.history.append(row)
        if self.main:
            if self.on_eval is not None:
                self.on_eval(row)
            self.bar.write(f"step {step}: validation accuracy {metrics['accuracy']:.4f}, mcc {metrics['mcc']:.4f}, "
                           f"loss {metrics['loss']:.4f}")
        key = (metrics[self.args.metric_for_best], -metrics["loss"])
        if finite_eval and key > self.best_key:
            self.best_key = key
            self.best_state = copy.deepcopy(self.model.method.state_dict())
            self.result.best_step = step
            self.result.best_metrics = metrics

    def _validation_metrics(self) -> dict:
        """The validation metrics; multi-task: each validated task's (under ``tasks``) and their mean loss,
        accuracy, MCC and macro-F1 (the metric that picks the kept state)."""
        bs = self.args.eval_batch_size
        if not self.multi:
            return evaluate(self.model, self.validation_data, batch_size=bs)
        per_task = {n: evaluate(view, val, batch_size=bs)
                    for (n, _, val), view in zip(self.task_data, self.views, strict=True) if val is not None}
        mean = {k: float(np.mean([m[k] for m in per_task.values()])) for k in ("loss", *BEST_METRICS)}
        return {**mean, "tasks": per_task}

    def _patience_spent(self) -> bool:
        """Early stopping: ``early_stopping_patience`` evaluations have passed since the best one."""
        patience = self.args.early_stopping_patience
        if not patience or self.validation_data is None:
            return False
        since_best = [r for r in self.result.history if r["step"] > self.result.best_step]
        return len(since_best) >= patience

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, step: int) -> None:
        result = self.result
        trainer_state = {
            "step": step, "sampler": self.sampler.state_dict(), "best_step": result.best_step,
            "best_key": list(self.best_key) if result.best_metrics else None, "best_metrics": result.best_metrics,
            "history": result.history, "train_log": result.train_log, "skipped_steps": result.skipped_steps,
            "running_loss": self.running, "train_seconds": self.train_time, "n_texts": self.n_texts,
            "elapsed_seconds": self._elapsed(), "run": self.signature,
        }
        self.last_checkpoint = checkpoint.save_checkpoint(
            self.args.output_dir, step, weights=self.model.method.state_dict(), best_weights=self.best_state,
            optimizer=self.optimizer, scheduler=self.scheduler, trainer_state=trainer_state,
            keep=self.args.keep_checkpoints, best_step=result.best_step or None,
            accelerator=self.state if self.world > 1 else None) or self.last_checkpoint

    # ------------------------------------------------------------------ the end
    def _finish(self) -> TrainResult:
        """Load the best state (the last one without validation) and check it before it is returned."""
        model, result = self.model, self.result
        if self.validation_data is None:
            self.best_state = copy.deepcopy(model.method.state_dict())
            result.best_step = self.args.max_steps
        elif not result.best_metrics:
            bad = [r["step"] for r in result.history if r.get("nonfinite")]
            skipped = f", {len(result.skipped_steps)} steps skipped" if result.skipped_steps else ""
            raise NonFiniteLossError(
                f"no evaluation had a finite validation loss (non-finite at steps {bad[:8]}"
                f"{'...' if len(bad) > 8 else ''}{skipped}); "
                "the weights became non-finite or too large to score, and no adapter is saved. Lower --learning-rate "
                "or check the data")
        model.method.load_state_dict(self.best_state)
        model.eval()
        probe = self.validation_data if isinstance(self.validation_data, TextDataset) else self.train_data
        _check_final_state(model, probe.texts[:8], result.best_step)
        result.seconds = self._elapsed()
        result.train_seconds = self.train_time
        return result


def history_jsonl(result: TrainResult) -> str:
    return "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in result.history)
