"""LT-prefix (paper Eq. 1, A.5): label encodings -> self-attention pooling F -> Z -> per-layer prefix."""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import nn

from ..backbones import Dims
from ..config import LTuningConfig, PrefixPooling, ScoreHead
from ..errors import ConfigError
from .base import Injection, Method


class LTPrefix(Method):
    """F_Phi: Linear(d, 1) scores each label token; Z_Psi: Linear(l, 2*j*l*d_kv) maps the l scores to keys
    and values for the top j layers (``prefix_layers``; default j = m, every layer).
    Trainable: d + 2*l^2*j*d_kv, + 2*d (C_zeta) with the paper, similarity and anchored heads, + d^2 + 2 more
    with similarity and anchored.

    With ``label_map_rank`` r (not in the paper; the default, r = 8; 0: none): Z sees l numbers per label, so the K labels' prefixes span at
    most l directions, fewer than K where labels are one word (trec: six labels, l = 4, three of those tokens'
    scores [CLS], the word and [SEP]). The label map adds ``U V e(y)`` to each label's prefix, e(y) the mean of
    the label's frozen token states (its real tokens), V = Linear(d, r), U = Linear(r, 2*j*l*d_kv) started at
    zero (so step 0 is unchanged); + r*(d + 2*j*l*d_kv) trainable.

    Input shape: label_states (K, l, d), label_mask (K, l)
    Output shape: prefix (K, j, 2, n_kv, l, d_h)
    """

    name = "lt-prefix"
    injection = "prefix"
    label_conditioned = True
    description = "L-Tuning prefix: per-label keys/values computed from the frozen label encoding"
    #: Chosen on dev rows only, with the score head, by the rule of BENCHMARKS.md "Choosing the defaults" (the
    #: configuration never far from the best across few-shot and full-data regimes): the anchored head at 3e-3.
    #: The similarity head it replaced lost 6.3 points of few-shot dev accuracy to it; the cosine head was far
    #: below on CoLA; the anchored head at 1e-2 learned nothing on CoLA (dev MCC 0.003 against 0.135).
    default_score_head = ScoreHead.ANCHORED
    default_learning_rate = 3e-3
    #: With the cosine head (only F and Z train): the best of 1e-3, 3e-3, 1e-2 and 3e-2 on the few-shot dev
    #: rows (the prefix-only ablations: mean dev accuracy 0.697 / 0.759 / 0.775 / 0.760) and on the SST-2 and CoLA
    #: learning-rate searches (BENCHMARKS.md, "Choosing the defaults").
    head_learning_rates = {"cosine": 1e-2}
    #: Z reads exactly l scores per label (label_length); the label map's rank sets its weights' shapes
    weight_options = Method.weight_options + ("label_length", "prefix_pooling", "prefix_layers", "label_map_rank")
    #: U starts at zero: a warm start may add a label map to an adapter trained without one
    zero_start_options = MappingProxyType({"label_map_rank": ("label_down.", "label_up.")})
    #: Chosen on dev rows only by the rule of BENCHMARKS.md "Choosing the defaults", with the anchored head at
    #: 3e-3 (worst shortfall 0.015 against 0.022 without a map): few-shot dev 0.795 against 0.773, SST-2 / CoLA /
    #: RTE dev 0.864 / 0.130 / 0.606 against 0.852 / 0.135 / 0.606. r = 8 was fixed before any run; 32 scored
    #: 0.789 on the few-shot dev rows. ``label_map_rank=0`` (``--label-map-rank 0``) is the paper's Z alone.
    default_label_map_rank = 8
    label_after_refusal = ("lt-prefix injects the label as per-layer keys/values that every text token attends "
                           "to; there is no 'after' form of it")

    @classmethod
    def check_backbone(cls, config: LTuningConfig, backbone, label_mask: torch.Tensor) -> None:
        super().check_backbone(config, backbone, label_mask)
        d = backbone.dims.hidden_size
        rank = cls.label_map_rank_for(config.label_map_rank)
        if rank > d:
            # e(y) has d numbers: a larger rank adds parameters, not directions (and a hand-edited huge rank
            # would be built before any weight check)
            raise ConfigError(f"label_map_rank (--label-map-rank) must be at most the backbone's width d = {d} "
                              f"on {backbone.name}; got {rank}")
        cls.check_labels(config, config.label_texts, label_mask.sum(-1).tolist(), backbone.name)

    @classmethod
    def check_labels(cls, config: LTuningConfig, texts: list[str], tokens: list[int], backbone_name: str,
                     what: str = "label texts", remedy: str | None = None) -> None:
        one_token = [t for t, n in zip(texts, tokens, strict=True) if n == 1]
        if (config.prefix_pooling == PrefixPooling.SOFTMAX and not cls.label_map_rank_for(config.label_map_rank)
                and len(one_token) >= 2):
            # softmax over one real token is always 1: every one-token label would get the same prefix (a label
            # map, which reads each label's own encoding, still tells them apart).
            raise ConfigError(
                f"lt-prefix with softmax pooling cannot tell labels apart when two or more {what} are one "
                f"token ({one_token} of {list(texts)} on {backbone_name}): each gets the same prefix; "
                + (remedy or "use --prefix-pooling raw, a label map (--label-map-rank 8) or longer label texts "
                   "(e.g. --label-texts 'The review is negative.,The review is positive.')")
            )

    def candidate_label_length(self, longest: int) -> int:
        return self.label_length  # Z reads exactly l label tokens

    @classmethod
    def card_rows(cls, config: dict) -> list[tuple[str, str]]:
        rows = [("prefix pooling", str(config.get("prefix_pooling")))]
        rank = config.get("label_map_rank")
        rows.append(("label map rank", "none (the paper's Z alone)" if not rank else str(rank)))
        return [*rows, *super().card_rows(config)]

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__(config, dims, num_labels, label_length)
        self.pooling = PrefixPooling(config.prefix_pooling)
        l = label_length
        self.pool = nn.Linear(dims.hidden_size, 1, bias=False)  # F_Phi
        self.prefix_layers = config.prefix_layers or dims.num_layers  # j
        self.transform = nn.Linear(l, 2 * self.prefix_layers * l * dims.kv_dim, bias=False)  # Z_Psi
        if self.score_head.reads_label:
            # Every label starts with the same all-zero prefix: the text's pooled state is (nearly) the frozen
            # model's own, so the similarity head starts at the zero-shot ranking; Z learns from there.
            nn.init.zeros_(self.transform.weight)
        self.label_map_rank = self.label_map_rank_for(config.label_map_rank)  # 0: none
        if self.label_map_rank:
            out = 2 * self.prefix_layers * l * dims.kv_dim
            self.label_down = nn.Linear(dims.hidden_size, self.label_map_rank, bias=False)  # V
            self.label_up = nn.Linear(self.label_map_rank, out, bias=False)  # U
            nn.init.zeros_(self.label_up.weight)  # the label map adds nothing until it learns

    def restart_zero_start(self, option: str) -> None:
        if option != "label_map_rank" or not self.label_map_rank:
            super().restart_zero_start(option)
        nn.init.zeros_(self.label_up.weight)  # U = 0: the map adds nothing (V, whatever it holds, is unread)

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        K, l, _ = label_states.shape
        scores = self.pool(label_states).squeeze(-1)  # (K, l)
        if self.pooling == PrefixPooling.SOFTMAX:
            scores = scores.masked_fill(~label_mask, float("-inf")).softmax(-1)  # weights over real tokens
        else:
            scores = scores * label_mask  # official code: raw scores; padding contributes nothing
        d = self.dims
        kv = self.transform(scores)  # (K, 2*m*l*d_kv)
        if self.label_map_rank:
            real = label_mask.to(label_states.dtype).unsqueeze(-1)
            pooled = (label_states * real).sum(1) / real.sum(1).clamp(min=1)  # e(y): (K, d)
            kv = kv + self.label_up(self.label_down(pooled))
        return Injection(prefix=kv.view(K, self.prefix_layers, 2, d.num_kv_heads, l, d.head_dim))

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int,
                score_head: ScoreHead = ScoreHead.PAPER, prefix_layers: int | None = None,
                label_map_rank: int | None = None) -> tuple[str, int]:
        l, d, dkv = label_length, dims.hidden_size, dims.kv_dim
        m, layers = Method.prefix_depth(dims, prefix_layers)
        kv = "d" if dkv == d else "d_kv"
        lm, lm_n = ("", 0) if not label_map_rank else (
            f" + r*(d + 2*l*{layers}*{kv})", label_map_rank * (d + 2 * l * m * dkv))
        if score_head == ScoreHead.COSINE:  # F and Z only: no C_zeta
            return f"2*l^2*{layers}*{kv} + d" + lm, 2 * l * l * m * dkv + d + lm_n
        sim, sim_n = (" + d^2 + 2", d * d + 2) if ScoreHead(score_head).learns_direction else ("", 0)
        return f"2*l^2*{layers}*{kv} + 3*d" + sim + lm, 2 * l * l * m * dkv + 3 * d + sim_n + lm_n
