"""Build a model for training and train it: the one recipe behind ``ltuning train`` and the benchmarks.

:func:`build_and_train` seeds, loads the backbone (or takes a loaded one, so several runs share it), builds
the model with :func:`prepare_model` (the task's label texts by default, ``label_length`` bounded by what
the backbone can run, ``max_length`` cut to what fits beside the prefix / prompt) and runs
:func:`ltuning.train.train`. The returned :class:`TrainingRun` holds the trained model (in its best
validation state), the training result and the summary ``ltuning train`` writes as ``train_results.json``.

For example (the Python form of ``ltuning train --task sst2 --method lt-prefix``)::

    from ltuning import build_and_train, load_backbone
    from ltuning.data import read_glue
    from ltuning.train import TrainArgs

    backbone = load_backbone("minilm")  # loaded once, reused by every run
    run = build_and_train(backbone, read_glue("sst2", "train"), read_glue("sst2", "validation"),
                          TrainArgs(max_steps=300), method="lt-prefix", task="sst2")
    run.model.save_pretrained("runs/sst2-lt-prefix")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import labels
from . import train as training
from .backbones import Backbone
from .config import LTuningConfig, check_arg, is_path, is_text
from .data import Task, TextDataset, get_task
from .errors import ConfigError
from .model import LTuningModel
from .train import TrainArgs, TrainResult


@dataclass
class TrainingRun:
    """What :func:`build_and_train` returns: the trained model (best validation state), the training result
    and the seconds spent building the model (label encodings) on the loaded backbone."""

    model: LTuningModel
    result: TrainResult
    build_seconds: float

    def summary(self) -> dict:
        """The run's results, as ``ltuning train`` writes them to ``train_results.json`` (after its command
        and arguments)."""
        r = self.result
        return {
            "learning_rate": r.learning_rate,
            "best_step": r.best_step,
            "best_metrics": r.best_metrics,
            "history": r.history,
            "train_log": r.train_log,
            "seconds": r.seconds,
            "train_seconds": r.train_seconds,
            "trainable_parameters": self.model.num_trainable_parameters(),
            "resumed_from_step": r.resumed_from,
            "skipped_steps": r.skipped_steps,
            "stopped_early_at": r.stopped_early_at,
        }


def default_label_texts(label_names: Sequence[str], label_texts: Sequence[str] | None,
                        task: Task | str | None) -> list[str] | None:
    """``label_texts`` if given, else the task's label texts where its labels are ``label_names``, else None
    (the model then reads the label names)."""
    if label_texts is not None:
        return list(label_texts)
    task = get_task(task) if isinstance(task, str) else task
    if task is not None and task.label_names == list(label_names):
        return list(task.label_texts)
    return None


def check_label_length(backbone: Backbone, label_length: int | None, model_name: str) -> None:
    """The label texts run through the model itself, so l cannot exceed its context (nor pad to 10^9 tokens):
    :func:`ltuning.labels.check_label_length`, worded for the command line's ``--label-length``."""
    labels.check_label_length(backbone, label_length, "--label-length", model_name)


def _say_on_main(say: Callable[[str], None] | None, message: str) -> None:
    """Under ``accelerate launch`` only the main process prints."""
    if say is not None and training.is_main_process():
        say(message)


def prepare_model(backbone: Backbone, label_names: Sequence[str], *, method: str = "lt-prefix",
                  label_texts: Sequence[str] | None = None, task: Task | str | None = None,
                  label_length: int | None = None, max_length: int = 128, prefix_pooling: str = "raw",
                  text_pooling: str = "auto", label_position: str = "before", score_head: str | None = None,
                  base_model: str | None = None, prefix_layers: int | None = None,
                  label_map_rank: int | None = None, tasks: dict | None = None, say: Callable[[str], None] | None = print) -> LTuningModel:
    """An untrained model on ``backbone`` for the labels ``label_names``, as ``ltuning train`` builds it.

    - ``label_texts``: one text per label, in label order; default: the ``task``'s label texts if its
      labels are ``label_names``, else the names themselves.
    - ``label_length`` (l) must be in [1, ``backbone.max_label_tokens()``]; default: the longest label.
    - ``score_head`` (None: the method's ``default_score_head``) applies to the label-conditioned methods
      (lt-*); the others are built with ``paper`` (another head is refused).
    - ``max_length`` is cut to what the backbone's position table holds beside the l prefix / prompt
      positions (``say`` gets a note on the main process), so the saved adapter states what it read.
    - ``base_model``: the backbone's name in the adapter; default ``backbone.name``.
    - ``prefix_layers`` (prefix methods): the label prefix enters the top j layers only (None: every layer).
    - ``label_map_rank`` (lt-prefix): the rank r of the map from each label's pooled frozen encoding into its
      prefix, besides Z (None: the method's default, 8; 0: Z alone, the paper).
    - ``tasks`` (multi-task, LT methods): {name: {label_names, label_texts}} (:func:`ltuning.train.task_table`),
      the first task's labels being ``label_names``; l defaults to the longest label of all tasks.

    The returned model's ``config`` is its own copy, with l, the backbone fingerprint and the resolved
    pooling filled in. Seed first (:func:`ltuning.train.set_seed`): the method's weights are drawn here.

    Raises: ConfigError for an out-of-range ``label_length`` or an option the method or backbone refuses.
    """
    base_model = backbone.name if base_model is None else base_model
    check_label_length(backbone, label_length, base_model)
    texts = default_label_texts(label_names, label_texts, task)
    # None: the method's default head; a classic method takes "paper" only (Method.check_config)
    head = {} if score_head is None else {"score_head": score_head}
    config = LTuningConfig(method=method, base_model=base_model, label_names=list(label_names),
                           label_texts=texts or [], label_length=label_length, max_length=max_length,
                           prefix_pooling=prefix_pooling, text_pooling=text_pooling, label_position=label_position,
                           prefix_layers=prefix_layers, label_map_rank=label_map_rank, tasks=tasks, **head)
    model = LTuningModel(backbone, config)
    config = model.config  # with l, the fingerprint and the pooling filled in
    fits = model.text_max_length
    if config.max_length > fits:
        # Longer texts would index past the model's position table (a crash mid-training, or in predict).
        _say_on_main(say, f"note: --max-length {config.max_length} is more than {backbone.name} fits with a "
                          f"{config.label_length}-token prefix/prompt; texts are truncated to {fits} tokens")
        config.max_length = fits
    return model


#: The ``ltuning train`` option of each config key a method's weights depend on (``Method.weight_options``).
_OPTION_FLAGS = {"method": "--method", "label_length": "--label-length", "prefix_pooling": "--prefix-pooling",
                 "text_pooling": "--text-pooling", "label_position": "--label-position",
                 "score_head": "--score-head", "prefix_layers": "--prefix-layers",
                 "label_map_rank": "--label-map-rank"}


def _option_value(config: LTuningConfig, key: str, backbone: Backbone):
    v = getattr(config, key)
    if key == "prefix_layers" and v is None:
        return backbone.dims.num_layers  # None: every layer
    if key == "label_map_rank" and not v:
        return None  # 0 (an adapter without a map) and a built model's None (no map): the same
    return v.value if hasattr(v, "value") else v


def _source_config(source: LTuningModel | str | Path) -> LTuningConfig:
    """The config of a warm start's ``source``: a model, or an adapter folder (read and checked)."""
    from .adapter_io import read_adapter_config

    if isinstance(source, LTuningModel):
        return source.config
    check_arg(is_path(source), "init_from", "an adapter folder (str or pathlib.Path) or an LTuningModel", source)
    return read_adapter_config(source)


def _check_source(source: LTuningModel | str | Path, config: LTuningConfig, backbone: Backbone, method: str) -> None:
    """What a warm start needs before the model is built: the source's backbone (architecture and weights)
    and its method.
    Raises: AdapterError (a folder's adapter on another backbone), ConfigError."""
    from .adapter_io import fit_config_to_backbone
    from .backbones import same_weights, settings_differ
    from .errors import AdapterError

    # the config records its backbone (fingerprint, settings, weights sample) for a model in memory as for a
    # saved adapter
    a, b = config.backbone_weights, backbone.weights_sample
    changed = settings_differ(config.backbone_settings, backbone.settings)
    other = (bool(config.backbone_fingerprint) and config.backbone_fingerprint != backbone.fingerprint) or (
        a is not None and b is not None and not same_weights(a, b)) or bool(changed)
    if isinstance(source, LTuningModel):
        if other:
            what = "; ".join(changed) if changed else "another architecture or other weights"
            raise ConfigError(f"init_from: the source model is on backbone {source.backbone.name!r}, this run's model "
                              f"on {backbone.name!r} ({what}); build the model on the source's backbone")
    else:
        try:
            fit_config_to_backbone(source, config, backbone)
        except AdapterError as e:
            if not other:  # a broken adapter file, not another backbone
                raise
            raise AdapterError(f"init_from: {e} (a warm start trains on the adapter's backbone: give --model "
                               f"{config.base_model})") from None
    if config.method != method:
        raise ConfigError(f"init_from {_source_name(source)}: it is a {config.method} adapter and this run trains "
                          f"{method}; give --method {config.method}")


def _check_label_fit(source, config: LTuningConfig, backbone: Backbone, texts: dict) -> None:
    """A method whose weights depend on l (LT-prefix's Z reads exactly l tokens per label) refuses label texts
    longer than the source's l: cut, two labels could become one, and the cut text is not the label.
    ``texts``: {task or None: label texts}. Raises: ConfigError naming the labels."""
    from .methods import get_method

    method = get_method(config.method)
    if "label_length" not in method.weight_options or not method.label_conditioned:
        return
    for task, t in texts.items():
        long = [(x, n) for x, n in zip(t, labels.label_token_lengths(backbone, t), strict=True) if n > config.label_length]
        if long:
            where = "" if task is None else f" of task {task!r}"
            raise ConfigError(
                f"init_from {_source_name(source)}: label texts{where} "
                f"{', '.join(f'{x!r} ({n} tokens)' for x, n in long)} are longer than the adapter's l = "
                f"{config.label_length}, and {config.method} reads exactly l tokens per label; give shorter label texts "
                "(--label-texts), or train without --init-from")


def _source_name(source) -> str:
    return "the source model" if isinstance(source, LTuningModel) else str(source)


def warm_start(model: LTuningModel, source: LTuningModel | str | Path) -> LTuningConfig:
    """Load the trained weights of ``source`` (an adapter folder, or a model in memory) into ``model`` (built,
    not yet trained), so training starts from them: for example a multi-task adapter adapted to a new task from
    a few examples.

    An LT adapter's weights read each label through its text, so ``model`` may have other labels than the
    source (that is the point). A classic prefix / prompt adapter's head has one row per label, so its labels
    must be ``model``'s. What the weights depend on must agree: the backbone (architecture and weights, as when
    loading the adapter), the method and its ``Method.weight_options`` (for lt-prefix l, the pooling options,
    the score head, the prefix depth, the label map's rank; lt-prompt's weights do not depend on l). One
    exception: ``model`` may add an lt-prefix label map (``label_map_rank``) to a source trained without one,
    since U starts at zero and the run still starts exactly where the source ended; dropping one is refused.
    LT-prefix's Z reads exactly l tokens per label, so a label text longer than the source's l is refused
    rather than cut. Returns the source's config.

    Raises:
        AdapterError: missing or corrupt adapter files, or an adapter trained on another backbone.
        ConfigError: an option the weights depend on differs between ``model`` and the source (named, with
            the value to give), a classic source with other labels, a label text longer than LT-prefix's l, or
            a source model on another backbone.
    """
    config = _source_config(source)
    _check_source(source, config, model.backbone, model.config.method)
    if model.label_conditioned:
        tasks = model.config.tasks or {None: {"label_texts": model.config.label_texts}}
        _check_label_fit(source, config, model.backbone, {t: v["label_texts"] for t, v in tasks.items()})
    _load_source(model, source, config)
    return config


def _load_source(model: LTuningModel, source: LTuningModel | str | Path, config: LTuningConfig) -> None:
    """The rest of :func:`warm_start`, once ``_check_source`` and ``_check_label_fit`` have passed: the options
    the weights depend on, a classic head's labels, then the weights."""
    from .adapter_io import check_adapter_weights, read_adapter_weights
    from .methods import get_method

    name = _source_name(source)
    method = get_method(config.method)
    pairs = {k: (_option_value(config, k, model.backbone), _option_value(model.config, k, model.backbone))
             for k in method.weight_options}
    # an option this run adds to a source without it, whose weights start as a no-op (lt-prefix's label map):
    # added (restarted at that no-op below), not refused
    zero = {k for k, (a, b) in pairs.items() if a is None and b is not None and k in method.zero_start_options}
    added = tuple(p for k in zero for p in method.zero_start_options[k])
    differ = [(k, a, b) for k, (a, b) in pairs.items() if a != b and k not in zero]
    if differ:
        said = "; ".join(f"{k} is {a!r} there, {b!r} here (" + (f"give {_OPTION_FLAGS[k]} {a}" if a is not None
                         else f"leave {_OPTION_FLAGS[k]} unset") + ")" for k, a, b in differ)
        raise ConfigError(f"init_from {name}: its weights were trained with other options than this run's: {said}")
    if not model.label_conditioned and config.label_names != model.config.label_names:
        raise ConfigError(f"init_from {name}: a {config.method} adapter's head has one row per label, for "
                          f"{config.label_names}, and this run's labels are {model.config.label_names}; a warm start "
                          "onto other labels needs an LT method (lt-prefix, lt-prompt), which reads each label's text")
    own = {k: v for k, v in model.method.state_dict().items() if added and k.startswith(added)}  # kept as built
    if isinstance(source, LTuningModel):
        state = {k: v.detach() for k, v in source.method.state_dict().items()}
    else:
        state = read_adapter_weights(source)
        expected = {k: v for k, v in model.method.state_dict().items() if k not in own}
        check_adapter_weights(source, config.method, expected, state)
    with torch.no_grad():  # only once every check passed: a refused warm start leaves the model as it was
        for k in zero:  # a model trained (or warm-started) before would not start where the source ended
            model.method.restart_zero_start(k)  # in place: ``own`` shares its storage
        model.method.load_state_dict({**state, **own})
    model.clear_injection_cache()
    model.warm_started = True


def build_and_train(backbone: Backbone | str, train_data: TextDataset, validation_data: TextDataset | None,
                    args: TrainArgs, *, trust_remote_code: bool = False,
                    init_from: LTuningModel | str | Path | None = None,
                    on_built: Callable[[LTuningModel], None] | None = None,
                    on_eval: Callable[[dict], None] | None = None,
                    say: Callable[[str], None] | None = print, **model_options) -> TrainingRun:
    """Seed with ``args.seed``, load ``backbone`` if it is a name (short name, folder or hub id), build the
    model for ``train_data``'s labels with :func:`prepare_model` (``model_options`` are its keyword
    arguments: method, label_texts, task, label_length, max_length, prefix_pooling, text_pooling,
    label_position, score_head, base_model, prefix_layers, label_map_rank) and train it with :func:`ltuning.train.train`.

    Multi-task (LT methods): ``train_data`` (and ``validation_data``) a dict {task name: TextDataset}; one
    adapter learns every task, each batch drawn from one task (``docs/design.md``, "Multi-task training"). The
    label texts are a known task's where its labels match, else the names, or ``task_label_texts={name:
    [texts]}``; ``label_texts`` overrides the first task's.

    ``on_built(model)`` runs between building and training (the CLI prints the model there); ``on_eval``
    gets each validation row on the main process. A loaded :class:`~ltuning.backbones.Backbone` is reused
    as it is (it stays frozen), so one backbone serves many runs.

    ``init_from``: an adapter folder (or a model in memory) whose trained weights the run starts from
    (:func:`warm_start`); l, the prefix depth, the score head and the label map's rank default to the adapter's
    where the method's weights depend on them (not lt-prompt's l), the other options its weights depend on must
    match it (a label map may be added to an adapter without one).

    Returns: a :class:`TrainingRun` (model in its best validation state, result, build seconds).
    Raises: what :func:`prepare_model` and :func:`ltuning.train.train` raise.
    """
    check_arg(isinstance(backbone, Backbone) or is_text(backbone), "backbone", "a Backbone or a model name / folder", backbone)
    training.check_train_inputs(train_data, validation_data, args)
    training.set_seed(args.seed)
    if isinstance(backbone, str):
        from .loading import load_backbone

        backbone = load_backbone(backbone, trust_remote_code=trust_remote_code)
    if init_from is not None:  # the backbone and method first; then l, the depth and the head default to the adapter's
        from .methods import get_method

        source = _source_config(init_from)
        _check_source(init_from, source, backbone, model_options.get("method") or "lt-prefix")
        for key in ("label_length", "prefix_layers", "score_head", "label_map_rank"):
            if key in get_method(source.method).weight_options and model_options.get(key) is None:
                model_options[key] = getattr(source, key)
    t0 = time.perf_counter()
    if isinstance(train_data, Mapping):  # multi-task: the first task's labels are the primary label set
        tasks = training.task_table(train_data, model_options.pop("task_label_texts", None))
        first = next(iter(tasks.values()))
        if model_options.get("label_texts") is None:
            model_options["label_texts"] = first["label_texts"]
        tasks[next(iter(tasks))]["label_texts"] = list(model_options["label_texts"])
        if init_from is not None:  # before building, where a cut could make two labels one
            _check_label_fit(init_from, source, backbone, {t: v["label_texts"] for t, v in tasks.items()})
        model = prepare_model(backbone, first["label_names"], say=say, tasks=tasks, **model_options)
    else:
        if init_from is not None:
            texts = default_label_texts(train_data.label_names, model_options.get("label_texts"),
                                        model_options.get("task"))
            _check_label_fit(init_from, source, backbone, {None: texts or list(train_data.label_names)})
        model = prepare_model(backbone, train_data.label_names, say=say, **model_options)
    if init_from is not None:  # the backbone, method and label lengths were checked above
        _load_source(model, init_from, source)
    build_seconds = time.perf_counter() - t0
    training.record_objective(model, args)  # an evaluation in on_built reports the objective's loss
    # everything train refuses is refused here, before on_built (where ltuning train starts writing), except
    # another run's checkpoints in output_dir, which on_built may set aside (ltuning train --overwrite)
    training.check_training(model, train_data, validation_data, args)
    if on_built is not None:
        on_built(model)
    result = training.train(model, train_data, validation_data, args, on_eval=on_eval)
    return TrainingRun(model=model, result=result, build_seconds=build_seconds)
