"""Configuration of an L-Tuning adapter: what is trained, on which labels, with which lengths.

The config is everything needed to rebuild the trainable modules around a backbone; it is saved as
``adapter_config.json`` next to the weights and read back by :func:`ltuning.adapter.load_adapter`.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError


class PrefixPooling(str, enum.Enum):
    """How LT-prefix turns the l per-token scores of F into the input of Z.

    ``softmax``: the paper (A.5): softmax over the label's real tokens, then Z.
    ``raw``: the official code: the raw scores go to Z (padded positions set to 0). The default: softmax
    weights sum to 1, so the part of Z's input that differs between labels is small next to the part all
    labels share, and on MiniLM / demo data the softmax variant stayed at chance for 200 steps where raw
    reached 0.79 (BENCHMARKS.md). With one-token labels softmax gives every label the same prefix.
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
    """

    PAPER = "paper"
    SIMILARITY = "similarity"


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
    score_head: ScoreHead = field(
        default=ScoreHead.SIMILARITY,
        metadata={"help": "LT methods: paper (C_zeta, random init) or similarity (starts at the frozen model's "
                  "text-label similarity). Adapters saved without the key use paper."},
    )
    text_pairs: bool | None = field(
        default=None,
        metadata={"help": "Trained on (premise, hypothesis) pairs (e.g. RTE): such a model classifies pairs only. "
                  "Set by training; None: not known (not trained yet, or saved before ltuning recorded it)."},
    )
    backbone_fingerprint: str | None = field(
        default=None, metadata={"help": "Hash of the backbone's architecture config; set when the model is built."}
    )
    backbone_weights: list[float] | None = field(
        default=None, metadata={"help": "A sample of the backbone's weight values (backbones.weights_sample); set "
                                "when the model is built. An adapter refuses a backbone whose sample differs."}
    )

    def __post_init__(self) -> None:
        for name, kind in (("prefix_pooling", PrefixPooling), ("text_pooling", TextPooling),
                           ("score_head", ScoreHead)):
            try:
                setattr(self, name, kind(getattr(self, name)))
            except ValueError:
                raise ConfigError(f"{name} must be one of {[k.value for k in kind]}, got {getattr(self, name)!r}") from None
        if self.text_pairs is not None and not isinstance(self.text_pairs, bool):
            raise ConfigError(f"text_pairs must be true, false or null, got {self.text_pairs!r}")
        try:
            self.label_position = LabelPosition(self.label_position)
        except ValueError:
            raise ConfigError(f"label_position must be 'before' or 'after', got {self.label_position!r}") from None
        self.label_names = [str(n) for n in self.label_names]
        if not self.label_texts:
            self.label_texts = list(self.label_names)
        self.label_texts = [str(t) for t in self.label_texts]
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
        if self.label_length is not None and self.label_length < 1:
            raise ConfigError(f"label_length must be >= 1, got {self.label_length}")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, enum.Enum):
                d[k] = v.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LTuningConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown adapter config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)
