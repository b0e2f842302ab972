"""Configuration of an L-Tuning adapter: what is trained, on which labels, with which lengths.

The config is everything needed to rebuild the trainable modules around a backbone; it is saved as
``adapter_config.json`` next to the weights and read back by :meth:`LTuningConfig.from_pretrained` (which
also reads the copy inside a Trainer checkpoint's ``model.safetensors``).
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import AdapterError, ConfigError

#: The adapter folder's config file (peft's name).
ADAPTER_CONFIG_NAME = "adapter_config.json"
#: A ``transformers.Trainer`` checkpoint (``checkpoint-N/``) of :class:`ltuning.hf.LTuningForTrainer` holds no
#: adapter_config.json: the Trainer saves only the module's ``state_dict`` into this file, so that state
#: dict carries the config as JSON bytes under :data:`TRAINER_CONFIG_KEY` (a uint8 tensor) beside the
#: method's weights under :data:`TRAINER_WEIGHTS_PREFIX`.
TRAINER_WEIGHTS_NAME = "model.safetensors"
TRAINER_CONFIG_KEY = "ltuning_adapter_config"
TRAINER_WEIGHTS_PREFIX = "model.method."


class PrefixPooling(str, enum.Enum):
    """How LT-prefix turns the l per-token scores of F into the input of Z.

    ``softmax``: the paper (A.5): softmax over the label's real tokens, then Z.
    ``raw``: the official code: the raw scores go to Z (padded positions set to 0). The default: softmax
    weights sum to 1, so the part of Z's input that differs between labels is small next to the part all
    labels share, and on MiniLM / demo data the softmax variant stayed at chance for 200 steps where raw
    reached 0.79 (BENCHMARKS.md). With one-token labels softmax gives every label the same Z part, so that
    case is refused unless a label map (``label_map_rank``), which reads each label's own encoding, is set.
    """

    SOFTMAX = "softmax"
    RAW = "raw"


class TextPooling(str, enum.Enum):
    """Which vector of the frozen backbone's output the head reads.

    ``auto``: for an encoder saved by sentence-transformers, the pooling its folder declares (``mean`` or
    ``cls``); else ``pooler`` for an encoder that has one, else ``cls``; ``last`` for decoders.
    """

    AUTO = "auto"
    POOLER = "pooler"
    CLS = "cls"
    MEAN = "mean"
    LAST = "last"


class LabelPosition(str, enum.Enum):
    """Where LT-prompt's label-derived soft prompt sits in the row.

    ``before``: the paper: [label prompt][text]; every label needs its own forward over the whole text.
    ``after``: decoders only: [text][label prompt], the head reads the last prompt position. The text sees
    no label, so at prediction its keys/values are computed once and shared by the K labels (cost
    n + K*l positions per text instead of K*(n + l)). A different model: train and predict with the same order.
    """

    BEFORE = "before"
    AFTER = "after"


class ScoreHead(str, enum.Enum):
    """How an LT method turns the pooled (text, label) state into a pair logit.

    ``paper``: C_zeta of A.3, a randomly initialised Linear(d, 2) on the pooled vector; LT-prefix's Z
    starts random too. The label reaches the score only through the prefix / prompt.
    ``similarity``: ``s * cos(W p, e(y)) + b + C_zeta(p)``: p the pooled vector of the text under the label's
    prefix / prompt, e(y) the frozen model's own pooled embedding of the label text, W a d x d map
    initialised at the identity, s and b a learned scale and bias, C_zeta (the paper's head) and LT-prefix's
    Z initialised at zero. Before any update the model ranks labels as the frozen model's text-label
    similarity does (the zero-shot baseline), and training starts from there: the paper's "head start"
    (A.1), which the ``paper`` head, with random maps, does not have.
    ``cosine``: ``s * cos(p, e(y)) + b`` with s = 20 and b = -4 fixed: the frozen model's own text-label
    similarity, nothing in the head trains. Only the label-conditioned prefix / prompt learns, and it can
    raise a pair's score only by moving the text's pooled state toward the label's own embedding: a label's
    meaning stays the frozen model's, and the adapter holds no task-specific direction (no W, no C_zeta).
    LT-prefix's Z starts at zero, so step 0 is the zero-shot ranking, as with ``similarity``. Trains at
    the method's ``head_learning_rates["cosine"]`` by default where it has one (LT-prefix; BENCHMARKS.md, "Few-shot").
    ``anchored``: the ``similarity`` head, trained with a Gaussian prior centred on its initial values (W at the
    identity, C_zeta at zero: the frozen similarity; also when training starts from another adapter's weights): ``(anchor_weight / n) * (||W - I||^2 + ||C_zeta||^2)`` is added to the loss, n the number
    of training texts. As in any MAP estimate the prior's weight falls as 1 / n: on a few examples per class it
    holds the head near the frozen similarity (the ``cosine`` head) and only the label prefix / prompt moves;
    on a full training set it lets W and C_zeta learn a task direction (the ``similarity`` head). The same
    weights and scores as ``similarity`` once trained.

    An unset ``LTuningConfig.score_head`` (None) is the method's ``default_score_head``: ``anchored`` for
    LT-prefix, ``similarity`` for LT-prompt (chosen on dev rows: BENCHMARKS.md, "Choosing the defaults").
    """

    PAPER = "paper"
    SIMILARITY = "similarity"
    COSINE = "cosine"
    ANCHORED = "anchored"

    @property
    def reads_label(self) -> bool:
        """Whether the pair score reads the label's frozen embedding e(y) (every head but ``paper``)."""
        return self != ScoreHead.PAPER

    @property
    def learns_direction(self) -> bool:
        """Whether the head has the trained text map W, C_zeta, s and b (``similarity`` and ``anchored``)."""
        return self in (ScoreHead.SIMILARITY, ScoreHead.ANCHORED)


@dataclass
class LTuningConfig:
    """Config of one adapter. String options round-trip through JSON."""

    method: str = field(default="lt-prefix", metadata={"help": "lt-prefix, lt-prompt, prefix or prompt."})
    base_model: str = field(default="minilm", metadata={"help": "Short name, local folder or hub id of the backbone."})
    label_names: list[str] = field(default_factory=list, metadata={"help": "Class names, in class-index order."})
    label_texts: list[str] = field(
        default_factory=list, metadata={"help": "Text the model reads for each class (defaults to the names)."}
    )
    label_length: int | None = field(
        default=None,
        metadata={"help": "l: padded token length of the label texts (None: the longest label). Also the "
                  "number of virtual tokens of the classic baselines."},
    )
    max_length: int = field(default=128, metadata={"help": "Texts are truncated to this many tokens."})
    prefix_pooling: PrefixPooling = field(
        default=PrefixPooling.RAW, metadata={"help": "LT-prefix: raw (official code, default) or softmax (paper)."}
    )
    text_pooling: TextPooling = field(default=TextPooling.AUTO, metadata={"help": "Pooled vector for the head."})
    label_position: LabelPosition = field(
        default=LabelPosition.BEFORE,
        metadata={"help": "lt-prompt on decoders: label prompt before the text (paper) or after it (text keys/values "
                  "shared by all labels at prediction)."},
    )
    score_head: ScoreHead | None = field(
        default=None,
        metadata={"help": "LT methods: None (the method's own default, Method.default_score_head), paper (C_zeta, "
                  "random init), similarity (starts at the frozen model's "
                  "text-label similarity), cosine (that similarity, fixed: only the prefix / prompt trains) or "
                  "anchored (similarity, held near its start by a prior weighted 1 / n). "
                  "Adapters saved without the key use paper."},
    )
    prefix_layers: int | None = field(
        default=None,
        metadata={"help": "Prefix methods: the label prefix enters the top j layers only (j in [1, m]); the texts' "
                  "bottom m - j layers are then computed once for all K labels. None: every layer (m). Adapters "
                  "saved without the key use every layer."},
    )
    label_map_rank: int | None = field(
        default=None,
        metadata={"help": "lt-prefix: each label's prefix also gets U V e(y), e(y) the mean of its frozen token "
                  "states, through a rank-r map (V: d -> r, U: r -> the prefix, U started at zero), besides Z's "
                  "map of its l token scores. None: the method's default (Method.default_label_map_rank: 8 for "
                  "lt-prefix; other methods have no map), resolved when the model is built; 0: no map, Z alone "
                  "(the paper). Adapters saved without the key have no map (0)."},
    )
    text_pairs: bool | None = field(
        default=None,
        metadata={"help": "Trained on (premise, hypothesis) pairs (e.g. RTE): such a model classifies pairs only. "
                  "Set by training; None: not known (not trained yet, or saved before ltuning recorded it)."},
    )
    objective: str | None = field(
        default=None,
        metadata={"help": "The training objective of an LT adapter: listwise (a K-way softmax: its pair scores rank "
                  "labels but are not per-label probabilities) or pairwise (A.3: BCE per pair, calibrated for "
                  "multi_label). Set by training; None: not recorded (saved before the key: pairwise)."},
    )
    tasks: dict[str, dict[str, list[str]]] | None = field(
        default=None,
        metadata={"help": "Multi-task LT adapters: every training task's label set, {name: {label_names, label_texts}}, "
                  "in training order; the first is the primary label set (label_names / label_texts). None: one "
                  "task (left out of adapter_config.json)."},
    )
    backbone_fingerprint: str | None = field(
        default=None, metadata={"help": "Hash of the backbone's architecture config; set when the model is built."}
    )
    backbone_weights: list[float] | None = field(
        default=None, metadata={"help": "A sample of the backbone's weight values (backbones.weights_sample); set "
                                "when the model is built. An adapter refuses a backbone whose sample differs."}
    )
    backbone_settings: dict[str, str | int | float | bool] | None = field(
        default=None, metadata={"help": "The backbone config's values that change its computation but no weight's "
                                "shape (activation, norm eps, RoPE; backbones.config_settings) and a hash of its "
                                "tokenizer's ids for a probe sentence; set when the model is built. An adapter "
                                "refuses a backbone where one of them differs."}
    )

    def __post_init__(self) -> None:
        for f in fields(self):  # the types adapter_config.json is checked for, on every construction
            check, what = _CONFIG_TYPES[f.name]
            check_arg(check(getattr(self, f.name)), f.name, what, getattr(self, f.name))
        for name, kind in (("prefix_pooling", PrefixPooling), ("text_pooling", TextPooling),
                           ("score_head", ScoreHead)):
            if name == "score_head" and self.score_head is None:  # the method's default, resolved when built
                continue
            try:
                setattr(self, name, kind(getattr(self, name)))
            except ValueError:
                raise ConfigError(f"{name} must be one of {[k.value for k in kind]}, got {getattr(self, name)!r}") from None
        if self.text_pairs is not None and not isinstance(self.text_pairs, bool):
            raise ConfigError(f"text_pairs must be true, false or null, got {self.text_pairs!r}")
        if self.objective not in (None, "listwise", "pairwise"):
            raise ConfigError(f"objective must be 'listwise', 'pairwise' or null, got {self.objective!r}")
        try:
            self.label_position = LabelPosition(self.label_position)
        except ValueError:
            raise ConfigError(f"label_position must be 'before' or 'after', got {self.label_position!r}") from None
        self.label_names = list(self.label_names)
        self.label_texts = list(self.label_texts) or list(self.label_names)
        if self.label_names and len(self.label_names) < 2:
            raise ConfigError(f"need at least 2 labels, got {len(self.label_names)}: {self.label_names}")
        if len(self.label_texts) != len(self.label_names):
            raise ConfigError(
                f"{len(self.label_names)} label names but {len(self.label_texts)} label texts; give one text per label"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise ConfigError(f"label names must be unique, got {self.label_names}")
        for name, text in zip(self.label_names, self.label_texts, strict=False):
            if not text.strip():
                raise ConfigError(f"label {name!r} has an empty label text")
        if self.prefix_layers is not None and not _is_int(self.prefix_layers):
            # the range, [1, m], is checked where the backbone is known (Backbone.check_prefix_layers)
            raise ConfigError(f"prefix_layers (--prefix-layers) must be an integer from 1 to the backbone's layers m, "
                              f"or null for every layer; got {self.prefix_layers!r}")
        if self.label_map_rank is not None and self.label_map_rank < 0:
            raise ConfigError(f"label_map_rank (--label-map-rank) must be a positive integer (the rank r of the "
                              f"label map), 0 for none, or null for the method's default; got {self.label_map_rank!r}")
        if self.label_length is not None and self.label_length < 1:
            raise ConfigError(f"label_length must be >= 1, got {self.label_length}")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}")
        self._check_tasks()

    def _check_tasks(self) -> None:
        """``tasks``: each task's label set checked; the first is the primary label set (label_names / texts)."""
        if self.tasks is None:
            return
        self.tasks = check_tasks(self.tasks)
        first = next(iter(self.tasks.values()))
        if self.label_names and (first["label_names"] != self.label_names or first["label_texts"] != self.label_texts):
            raise ConfigError(f"tasks: the first task {next(iter(self.tasks))!r} is the primary label set, so its "
                              f"labels {first['label_names']} must be label_names {self.label_names} (and its "
                              "label texts label_texts); put the primary task first")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LTuningConfig:
        """The config of an adapter folder (``adapter_config.json``) or of a ``transformers.Trainer``
        checkpoint folder written while training :class:`ltuning.hf.LTuningForTrainer`, as peft's
        ``PeftConfig.from_pretrained``. Every field is checked by type and value (the method's own options
        are checked when a model is built, or by :func:`ltuning.adapter.read_adapter_config`).

        Raises:
            AdapterError: no such folder, neither file, unreadable JSON, a field of the wrong type or value.
        """
        directory = Path(directory)
        raw = read_config_dict(directory)
        source = config_source(directory)
        _check_config_types(raw, source)
        # Adapters saved before score_head existed were trained with the paper's head; a saved adapter names its
        # head (a built model's config always does), so a null one is not "today's default"
        raw.setdefault("score_head", "paper")
        # and before label_map_rank existed, without a label map (a built model's config names its rank); null
        # meant "no map" until the map became lt-prefix's default, so a saved null is no map too
        if raw.get("label_map_rank") is None:
            raw["label_map_rank"] = 0
        if raw["score_head"] is None:
            raise AdapterError(f"{source}: score_head is null; a saved adapter names the head it was trained with "
                               f"(one of {[h.value for h in ScoreHead]})")
        _primary_task_first(raw)
        try:
            return cls.from_dict(raw)
        except (ConfigError, TypeError, ValueError) as e:
            raise AdapterError(f"{source}: {e}") from None

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``adapter_config.json``). Keys newer than the first release are left out while
        unset (None), so an adapter that does not use them still loads in versions that refuse unknown keys."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        for k in _OMITTED_WHEN_UNSET:
            if d.get(k) is None:
                d.pop(k, None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LTuningConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------- reading a saved config
def _is_trainer_checkpoint(directory: Path) -> bool:
    """A folder where the Trainer saved a module that is not a transformers model: a model.safetensors and no
    config.json (a transformers model folder, or a Trainer checkpoint of one, has a config.json)."""
    return (directory / TRAINER_WEIGHTS_NAME).is_file() and not (directory / "config.json").exists()


def is_adapter_folder(directory: str | Path) -> bool:
    """Whether ``directory`` holds an adapter's config: adapter_config.json, or is a Trainer checkpoint
    (whose model.safetensors holds the config when the Trainer trained ltuning.hf.LTuningForTrainer)."""
    directory = Path(directory)
    return (directory / ADAPTER_CONFIG_NAME).is_file() or _is_trainer_checkpoint(directory)


def config_source(directory: str | Path) -> Path:
    """The file an adapter's config is read from (also for messages): adapter_config.json, else a Trainer
    checkpoint's model.safetensors."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG_NAME).exists() and _is_trainer_checkpoint(directory):
        return directory / TRAINER_WEIGHTS_NAME
    return directory / ADAPTER_CONFIG_NAME


def read_config_dict(directory: Path) -> dict:
    """The raw config of an adapter folder or Trainer checkpoint (``_meta`` dropped), unchecked."""
    path = config_source(directory)
    if not directory.is_dir():
        raise AdapterError(f"adapter folder not found: {directory}")
    if not path.exists():
        raise AdapterError(f"{directory} is not an adapter folder: {ADAPTER_CONFIG_NAME} is missing (nor is it a "
                           "transformers.Trainer checkpoint of ltuning.hf.LTuningForTrainer, whose "
                           f"{TRAINER_WEIGHTS_NAME} holds the adapter)")
    if path.name == TRAINER_WEIGHTS_NAME:
        text = _trainer_config_text(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise AdapterError(f"{path} is not valid JSON ({e})") from None
        except OSError as e:  # a file the user may not read
            raise AdapterError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise AdapterError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    raw.pop("_meta", None)
    return raw


def _trainer_config_text(path: Path) -> str:
    """The adapter config JSON that :class:`ltuning.hf.LTuningForTrainer` stores in a Trainer checkpoint."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            data = f.get_tensor(TRAINER_CONFIG_KEY) if TRAINER_CONFIG_KEY in keys else None
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{path} is not a readable safetensors file ({e})") from None
    if data is None:
        if any(k.startswith(TRAINER_WEIGHTS_PREFIX) for k in keys):
            raise AdapterError(f"{path} holds adapter weights but no adapter config ({TRAINER_CONFIG_KEY!r}): a "
                               "checkpoint written before ltuning stored it; load its weights into a model built with "
                               "the same config (ltuning.hf.LTuningForTrainer(model).load_state_dict)")
        raise AdapterError(f"{path} holds no adapter weights and no adapter config: not a checkpoint of a Trainer "
                           "training ltuning.hf.LTuningForTrainer")
    try:
        return bytes(data.numpy().tobytes()).decode("utf-8")
    except UnicodeDecodeError as e:
        raise AdapterError(f"{path}: {TRAINER_CONFIG_KEY} is not UTF-8 JSON ({e})") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ---------------------------------------------------------------------- argument checks shared by the API
def is_utf8(text: str) -> bool:
    """False for a string holding lone surrogates: bytes that were not UTF-8 (a command-line argument or stdin
    decoded with ``surrogateescape``), which a tokenizer refuses with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_bytes(text: str, limit: int = 40) -> str:
    """A string that is not UTF-8 as the bytes it came from, shortened, in ASCII; a lone surrogate that stands for
    no byte (``\\ud83d``, half a UTF-16 pair, as JSON can carry) as its escape."""
    try:
        raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError:
        return ascii(text[:limit]) + ("..." if len(text) > limit else "")
    shown = repr(raw[:limit])
    return shown + ("..." if len(raw) > limit else "")


def is_text(v) -> bool:
    """A non-empty, non-blank string that is UTF-8 (no lone surrogates)."""
    return isinstance(v, str) and bool(v.strip()) and is_utf8(v)


def is_number(v) -> bool:
    """An int or float, not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def shown(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, in ASCII (a lone surrogate shows as its escape)."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_path(v) -> bool:
    """A file or folder name: a non-empty str or os.PathLike (a lone surrogate is how Python spells a file name
    that is not UTF-8, so it is allowed here)."""
    return isinstance(v, str | os.PathLike) and bool(str(v).strip())


def check_arg(ok: bool, name: str, what: str, value, error: type[Exception] = ConfigError) -> None:
    """Raise ``error`` naming the argument ``name`` and what it must be, unless ``ok``."""
    if not ok:
        raise error(f"{name} must be {what}, got {shown(value)}")


def _is_str_list(v) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(x, str) and is_utf8(x) for x in v)


# adapter_config.json keys: (check, what the value must be); unknown keys are refused by LTuningConfig
# added after adapters were first saved; None is their default, so leaving them out changes nothing here
_OMITTED_WHEN_UNSET = ("prefix_layers", "label_map_rank", "objective", "tasks", "backbone_settings")

_CONFIG_TYPES = {
    "method": (is_text, "a string (non-empty, UTF-8)"),
    "base_model": (is_text, "a string (non-empty, UTF-8)"),
    "label_names": (_is_str_list, "a list of strings (UTF-8)"),
    "label_texts": (_is_str_list, "a list of strings (UTF-8)"),
    "label_length": (lambda v: v is None or _is_int(v), "an integer or null"),
    "max_length": (_is_int, "an integer"),
    "prefix_pooling": (lambda v: isinstance(v, str), "a string"),
    "text_pooling": (lambda v: isinstance(v, str), "a string"),
    "label_position": (lambda v: isinstance(v, str), "a string"),
    "score_head": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "prefix_layers": (lambda v: v is None or _is_int(v), "an integer or null"),
    "label_map_rank": (lambda v: v is None or _is_int(v), "an integer or null"),
    "text_pairs": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "objective": (lambda v: v is None or is_text(v), "a string or null"),
    "tasks": (lambda v: v is None or _is_tasks(v),
              "null or an object {task name: {label_names: [strings], label_texts: [strings]}}"),
    "backbone_fingerprint": (lambda v: v is None or (isinstance(v, str) and is_utf8(v)), "a string or null (UTF-8)"),
    "backbone_weights": (lambda v: v is None or _is_weights_sample(v), "a list of 16 or 32 finite numbers or null"),
    "backbone_settings": (lambda v: v is None or _is_settings(v),
                          "null or an object {name: string, number or boolean} (finite numbers, UTF-8 strings)"),
}


def _is_settings(v) -> bool:
    """What ``backbones.config_settings`` writes: names to scalars."""
    def scalar(x) -> bool:
        return isinstance(x, bool) or (isinstance(x, str) and is_utf8(x)) or _is_finite_number(x)
    return isinstance(v, dict) and all(is_text(k) and scalar(x) for k, x in v.items())


def _is_tasks(v) -> bool:
    return isinstance(v, dict) and all(
        is_text(k) and isinstance(t, dict) and set(t) <= {"label_names", "label_texts"} and "label_names" in t
        and all(_is_str_list(x) for x in t.values()) for k, t in v.items())


def check_tasks(tasks: dict) -> dict[str, dict[str, list[str]]]:
    """A multi-task label-set table, checked: at least one task, each with >= 2 distinct label names and one
    non-empty label text per name (default: the names). Returns a normalised copy (lists, label texts filled)."""
    if not tasks:
        raise ConfigError("tasks: give at least one task {name: {label_names, label_texts}}, or None for one task")
    out = {}
    for name, t in tasks.items():
        names = list(t["label_names"])
        texts = list(t.get("label_texts") or names)
        where = f"tasks[{name!r}]"
        if len(names) < 2:
            raise ConfigError(f"{where}: a task needs at least 2 labels, got {names}; drop the task or give it "
                              "more labels")
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: label names must be unique, got {names}")
        if len(texts) != len(names):
            raise ConfigError(f"{where}: {len(names)} label names but {len(texts)} label texts; give one text per label")
        if any(not x.strip() for x in texts):
            raise ConfigError(f"{where}: a label text is empty ({texts}); give every label a text")
        out[str(name)] = {"label_names": names, "label_texts": texts}
    return out


def _primary_task_first(raw: dict) -> None:
    """Multi-task adapters saved before ``config_json`` had their ``tasks`` sorted by name, so the primary task
    (the one whose labels are ``label_names`` / ``label_texts``) was not always first and the adapter did not
    load. Put it back in front where exactly one task is the primary label set; anything else is left for the
    config's own check to refuse."""
    tasks, names, texts = raw.get("tasks"), raw.get("label_names"), raw.get("label_texts")
    if not isinstance(tasks, dict) or not tasks or not isinstance(names, list):
        return
    def is_primary(t) -> bool:
        return (isinstance(t, dict) and t.get("label_names") == names
                and (t.get("label_texts") or t.get("label_names")) == (texts or names))
    primary = [k for k, t in tasks.items() if is_primary(t)]
    if len(primary) == 1 and next(iter(tasks)) != primary[0]:
        raw["tasks"] = {primary[0]: tasks[primary[0]], **{k: t for k, t in tasks.items() if k != primary[0]}}


def config_json(config: dict, indent: int | None = None) -> str:
    """An adapter config as JSON: keys sorted (files that diff well), except the tasks', which keep their
    training order: the first task is the primary label set (``check_tasks``), so sorted ``tasks`` (``--tasks
    trec demo``, a --task-column file's tasks in first-seen order) would not load."""
    def ordered(value):
        if isinstance(value, dict):
            return {k: ordered(v) for k, v in sorted(value.items())}
        return [ordered(v) for v in value] if isinstance(value, list) else value

    out = ordered(config)
    if isinstance(config.get("tasks"), dict):
        out["tasks"] = {name: ordered(task) for name, task in config["tasks"].items()}
    return json.dumps(out, indent=indent)


def _is_finite_number(x) -> bool:
    """An int or float (not a bool) that is finite; an int too large for a float is not (``math.isfinite``
    would raise OverflowError on it)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _is_weights_sample(v) -> bool:
    """What ``backbones.weights_sample`` writes: 16 values per sampled tensor (one or two tensors), finite."""
    return isinstance(v, list) and len(v) in (16, 32) and all(_is_finite_number(x) for x in v)


def _check_config_types(raw: dict, path: Path) -> None:
    """Refuse a hand-edited or corrupted config field by its type, naming the file and the key (the
    config's own checks then compare values: a string label_length would fail there with a TypeError)."""
    for key, value in raw.items():
        check = _CONFIG_TYPES.get(key)
        if check is not None and not check[0](value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise AdapterError(f"{path}: {key} must be {check[1]}, got {shown}")
