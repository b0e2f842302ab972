"""What every method is: an ``nn.Module`` holding only its trainable parameters.

A method turns the cached label encodings into an *injection* for the frozen backbone: per-layer keys
and values (``prefix``) or soft-prompt embeddings (``prompt``). Label-conditioned methods (LT-*) give
one injection per label and score (text, label) pairs with a 2-way head; the classic baselines give one
shared injection and classify with a K-way head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone, Dims
from ..config import LabelPosition, LTuningConfig, PrefixPooling, ScoreHead
from ..errors import ConfigError, UnsupportedModelError


@dataclass
class Injection:
    """What a method hands the backbone, for G groups (G = K labels, or 1 shared).

    prefix: (G, m, 2, n_kv, l, d_h) or None; prompt: (G, l, d) and prompt_mask (G, l) or None;
    label_vectors: (G, d), the frozen model's pooled embedding of each label text, for methods whose pair
    score reads it (``Method.uses_label_vectors``), else None.
    frozen_head: score these labels with the frozen similarity (the ``cosine`` head's formula) instead of the
    trained score head: set for label texts the head was not trained on (``ltuning.prediction.candidate_injection``).
    """

    prefix: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None
    label_vectors: torch.Tensor | None = None
    frozen_head: bool = False

    def select(self, index: torch.Tensor) -> Injection:
        """Rows for a batch: index (B,) into the G groups."""
        def pick(t):
            return (None if t is None else t.index_select(0, index))
        return Injection(pick(self.prefix), pick(self.prompt), pick(self.prompt_mask), pick(self.label_vectors),
                         self.frozen_head)

    @property
    def groups(self) -> int:
        return (self.prefix if self.prefix is not None else self.prompt).shape[0]

    @property
    def length(self) -> int:
        """Prefix / prompt positions each row carries (l, or a candidate label set's own length)."""
        return self.prefix.shape[4] if self.prefix is not None else self.prompt.shape[1]


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``forward`` and ``formula``; the
    hooks below (config checks, initialisation from the backbone, candidate label length, model-card rows)
    have defaults a method overrides where it differs. A new method is one module in ``methods/`` plus its
    entry in ``METHODS``: nothing outside ``methods/`` branches on a method's name or class.
    """

    name: ClassVar[str]
    injection: ClassVar[Literal["prefix", "prompt"]]
    label_conditioned: ClassVar[bool]  # True: (text, label) pairs scored one by one (LT); False: one K-way head
    description: ClassVar[str]
    #: AdamW learning rate when the user gives none.
    default_learning_rate: ClassVar[float] = 1e-2
    #: The score head of an LT method whose config leaves ``score_head`` unset (classic methods: the paper's
    #: K-way head, always). Chosen on dev rows with the learning rate (BENCHMARKS.md, "Choosing the defaults").
    default_score_head: ClassVar[ScoreHead] = ScoreHead.SIMILARITY
    #: The same with a given score head, where it differs (LT methods; a head left out trains at
    #: ``default_learning_rate``): with ``cosine`` only the injection trains, and with ``anchored`` the head is
    #: held near its start on few examples; the injection is the part that wants a higher rate.
    head_learning_rates: ClassVar[Mapping[str, float]] = MappingProxyType({})
    #: Why ``label_position="after"`` is refused for this method (None: it is supported).
    label_after_refusal: ClassVar[str | None] = None
    #: Config options (besides the method and the backbone) that this method's trained weights depend on:
    #: a warm start (``ltuning.recipe.warm_start``) needs the same values as the adapter it starts from.
    weight_options: ClassVar[tuple[str, ...]] = ("text_pooling", "score_head", "label_position")
    #: Weight options that add weights which change nothing until they train (an output map started at zero),
    #: each with the prefixes of the state-dict keys it adds: a warm start from an adapter without the option
    #: keeps them as built (after :meth:`restart_zero_start`), so the run starts exactly where the adapter ended.
    zero_start_options: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType({})
    #: The rank of the label map (lt-prefix's ``label_map_rank``) when a config leaves it unset (None); None
    #: here: the method has no label map.
    default_label_map_rank: ClassVar[int | None] = None
    #: The label map's rank this method was built with (0: none); None for a method that has no label map.
    label_map_rank: int | None = None

    # ------------------------------------------------------------------ hooks (checks, initialisation)
    def restart_zero_start(self, option: str) -> None:
        """Put the weights of ``option`` (one of ``zero_start_options``) back at their no-op start, where they
        change nothing: for a warm start that adds them to an adapter trained without them."""
        raise NotImplementedError(f"{self.name} has no weights that start as a no-op ({option})")

    @classmethod
    def check_config(cls, config: LTuningConfig) -> None:
        """Refuse options this method cannot honour (before anything is built). Raises: ConfigError."""
        if config.prefix_layers is not None and cls.injection != "prefix":
            raise ConfigError(
                f"prefix_layers (--prefix-layers) is for the prefix methods (lt-prefix, prefix); {cls.name} "
                "injects a soft prompt before the first layer, which has no depth to choose: leave it unset")
        if config.label_map_rank and "label_map_rank" not in cls.weight_options:  # 0 / None: no map
            raise ConfigError(
                f"label_map_rank (--label-map-rank) maps each label's frozen encoding into lt-prefix's per-label "
                f"prefix; {cls.name} has no such map: leave it unset, or use --method lt-prefix")
        # options another method reads, which would be recorded in the adapter and do nothing here
        if config.prefix_pooling != PrefixPooling.RAW and "prefix_pooling" not in cls.weight_options:
            raise ConfigError(
                f"prefix_pooling (--prefix-pooling) pools lt-prefix's label-token scores; {cls.name} has none: leave "
                "it unset (raw), or use --method lt-prefix")
        if not cls.label_conditioned and config.score_head not in (None, ScoreHead.PAPER):
            raise ConfigError(
                f"score_head (--score-head) chooses how an LT method scores a (text, label) pair; {cls.name} scores "
                "the labels with its K-way head: leave it unset, or use --method lt-prefix or lt-prompt")
        if config.label_position == LabelPosition.AFTER and cls.label_after_refusal is not None:
            raise ConfigError(
                f"label_position='after' is not supported for method {cls.name!r}: {cls.label_after_refusal}. "
                "Use --method lt-prompt with --label-position after (decoders), or keep --label-position before"
            )

    @classmethod
    def check_backbone(cls, config: LTuningConfig, backbone: Backbone, label_mask: torch.Tensor) -> None:
        """Refuse a backbone or label encodings this method cannot work with (``label_mask`` (K, l): the
        label texts' real tokens). Raises: ConfigError, UnsupportedModelError."""
        if config.prefix_layers is not None:
            backbone.check_prefix_layers(config.prefix_layers)
        if cls.injection == "prompt" and backbone.embedding_size != backbone.dims.hidden_size:
            raise UnsupportedModelError(
                f"{cls.name} needs input embeddings of width d={backbone.dims.hidden_size}, but "
                f"{backbone.name} embeds tokens in {backbone.embedding_size} dimensions; use a prefix method"
            )

    @classmethod
    def check_labels(cls, config: LTuningConfig, texts: list[str], tokens: list[int], backbone_name: str,
                     what: str = "label texts", remedy: str | None = None) -> None:
        """Refuse a label set (the adapter's, a task's or candidate labels: ``texts`` and the real tokens of each
        as the method reads it, special tokens included, at most l) that this method cannot tell apart; ``what`` names them and ``remedy`` replaces the
        training advice where training options no longer apply. Default: every set is fine.
        Raises: ConfigError."""

    def init_from_backbone(self, backbone: Backbone) -> None:
        """Initialisation that reads the frozen backbone (e.g. vocabulary embeddings); default: none."""

    def candidate_label_length(self, longest: int) -> int:
        """Tokens new (open-vocabulary) label texts are padded / cut to, given the longest one's length."""
        return longest

    @classmethod
    def card_rows(cls, config: dict) -> list[tuple[str, str]]:
        """Method-specific (name, value) rows of the adapter's model card, from ``config.to_dict()``."""
        rows = []
        if cls.injection == "prefix" and config.get("prefix_layers") is not None:
            rows.append(("prefix layers", f"top {config['prefix_layers']}"))
        if cls.label_conditioned:
            rows.append(("score head", str(config.get("score_head", ScoreHead.PAPER.value))))
        return rows

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__()
        self.dims = dims
        self.num_labels = num_labels
        self.label_length = label_length
        out = 2 if self.label_conditioned else num_labels
        self.score_head = self.head_for(config.score_head)
        #: what training uses without --learning-rate (an instance value: it depends on the score head)
        self.default_learning_rate = self.learning_rate_for(self.score_head)
        # C_zeta (the classic methods' K-way head); the cosine head has none: nothing in it trains
        self.head = None if self.score_head == ScoreHead.COSINE else nn.Linear(dims.hidden_size, out, bias=False)
        if self.score_head.learns_direction:
            d = dims.hidden_size
            self.text_map = nn.Linear(d, d, bias=False)  # W, at the identity: p is compared as it is
            self.logit_scale = nn.Parameter(torch.tensor(math.log(self.initial_scale)))  # s = exp(.)
            self.logit_bias = nn.Parameter(torch.tensor(self.initial_bias))
            with torch.no_grad():
                self.text_map.weight.copy_(torch.eye(d))
                self.head.weight.zero_()  # C_zeta adds to the similarity, from nothing

    #: similarity head: s at initialisation (cosines of a sentence encoder differ by a few hundredths between
    #: labels; s = 20 makes that a logit difference of about one) and b (typical text-label cosines of
    #: MiniLM are 0.1-0.3: b = -4 puts the initial pair probabilities near one half).
    initial_scale: ClassVar[float] = 20.0
    initial_bias: ClassVar[float] = -4.0
    #: anchored head: the prior's weight lambda; the loss gets anchor_loss(n) = (lambda / n) * (||W - I||^2 +
    #: ||C_zeta||^2), n the number of training texts (BENCHMARKS.md, "Choosing the defaults: learning rate and score head")
    anchor_weight: ClassVar[float] = 10.0

    @classmethod
    def head_for(cls, score_head: ScoreHead | str | None) -> ScoreHead:
        """The score head this method uses when a config asks for ``score_head``: the paper's K-way head for
        a classic method, whatever is asked; for an LT method the head asked for, or its ``default_score_head``
        when None."""
        if not cls.label_conditioned:
            return ScoreHead.PAPER
        return cls.default_score_head if score_head is None else ScoreHead(score_head)

    @classmethod
    def label_map_rank_for(cls, rank: int | None) -> int | None:
        """The label map's rank this method builds when a config asks for ``rank``: None for a method without
        a label map (whatever is asked: 0 and None are 'none', others are refused by ``check_config``); for
        lt-prefix the rank asked for (0: none), or ``default_label_map_rank`` when None."""
        if "label_map_rank" not in cls.weight_options:
            return None
        return cls.default_label_map_rank if rank is None else rank

    @classmethod
    def learning_rate_for(cls, score_head: ScoreHead | str | None = None) -> float:
        """The default AdamW learning rate of this method with ``score_head`` (None: its default head)."""
        return cls.head_learning_rates.get(cls.head_for(score_head).value, cls.default_learning_rate)

    @property
    def uses_label_vectors(self) -> bool:
        """Whether the pair score reads the labels' pooled frozen embeddings (``Injection.label_vectors``)."""
        return self.score_head.reads_label

    def anchor_loss(self, num_train_texts: int | None) -> torch.Tensor | None:
        """The ``anchored`` head's prior, the term it adds to the training loss (once per optimizer step):
        ``(anchor_weight / n) * (||W - I||^2 + ||C_zeta||^2)``, the squared distance of the head's
        direction-learning parts from their start, weighted down as the number of training texts n grows.
        None for every other head. Raises ConfigError when the head is anchored and n is not a positive int."""
        if self.score_head != ScoreHead.ANCHORED:
            return None
        n = num_train_texts
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(
                f"training {self.name} with the anchored score head (lt-prefix's default) weighs its prior by 1 / n, "
                "n the number of training texts; with the Trainer build LTuningForTrainer(model, "
                f"num_train_texts=len(train_dataset)) (got num_train_texts={n!r})")
        W = self.text_map.weight
        eye = torch.eye(W.shape[0], device=W.device, dtype=W.dtype)
        return (self.anchor_weight / n) * ((W - eye).pow(2).sum() + self.head.weight.pow(2).sum())

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        """label_states (K, l, d), label_mask (K, l) -> Injection for K labels or 1 shared group."""
        raise NotImplementedError

    def pair_logit(self, pooled: torch.Tensor, label_vectors: torch.Tensor | None = None,
                   frozen: bool = False) -> torch.Tensor:
        """Label-conditioned methods: (..., d) pooled states of (text, label) rows -> (...,) log-odds that the
        label is the text's. ``label_vectors`` (..., d): the rows' label embeddings (similarity, anchored and
        cosine heads). ``frozen``: score with the cosine head's formula whatever the trained head (labels the
        head was not trained on: ``Injection.frozen_head``); only for a head that reads the label embeddings."""
        if self.uses_label_vectors and label_vectors is None:
            raise ConfigError(
                f"{self.name} with the {self.score_head.value} head needs the labels' embeddings in the injection "
                "(Injection.label_vectors): build it with LTuningModel.injection() or "
                "ltuning.api.candidate_injection(), not by calling the method directly")
        if frozen and not self.uses_label_vectors:
            raise ConfigError(f"{self.name} with the {self.score_head.value} head reads no label embeddings: it has "
                              "no frozen similarity to score with (Injection.frozen_head needs the similarity, "
                              "anchored or cosine head)")
        if frozen or self.score_head == ScoreHead.COSINE:  # the frozen model's own similarity, at fixed s and b
            cos = F.cosine_similarity(pooled, label_vectors.to(pooled.dtype), dim=-1)
            return self.initial_scale * cos + self.initial_bias
        two = self.head(pooled)
        logit = two[..., 1] - two[..., 0]
        if self.score_head.learns_direction:
            cos = F.cosine_similarity(self.text_map(pooled), label_vectors.to(pooled.dtype), dim=-1)
            logit = logit + self.logit_scale.exp() * cos + self.logit_bias
        return logit

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int,
                score_head: ScoreHead = ScoreHead.PAPER, prefix_layers: int | None = None,
                label_map_rank: int | None = None) -> tuple[str, int]:
        """Trainable-parameter count as written in the paper (A.5), with its value here (LT methods: plus
        the similarity head's d^2 + 2 with ``score_head`` similarity, less C_zeta's 2*d with ``cosine``; prefix
        methods: m becomes j with ``prefix_layers`` j < m; lt-prefix: plus the label map's r*(d + 2*l*j*d_kv)
        with ``label_map_rank`` r)."""
        raise NotImplementedError

    @staticmethod
    def prefix_depth(dims: Dims, prefix_layers: int | None) -> tuple[int, str]:
        """(layers a prefix enters, its symbol in a formula): (m, "m") by default, (j, "j") with j < m."""
        if prefix_layers is None or prefix_layers == dims.num_layers:
            return dims.num_layers, "m"
        return prefix_layers, "j"
