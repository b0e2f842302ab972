"""LT-prompt (paper Eq. 2, A.5): label encodings -> G -> soft prompt before the text's embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Dims
from ..config import LTuningConfig, ScoreHead
from .base import Injection, Method


class LTPrompt(Method):
    """G_gamma: Linear(d, d) maps the frozen label encoding h_k to l soft-prompt vectors e(y_k).
    Trainable: d^2, + 2*d (C_zeta) with the paper, similarity and anchored heads, + d^2 + 2 more with similarity
    and anchored.

    Input shape: label_states (K, l, d), label_mask (K, l)
    Output shape: prompt (K, l, d), prompt_mask (K, l) (padded label positions stay masked)
    """

    name = "lt-prompt"
    injection = "prompt"
    label_conditioned = True
    description = "L-Tuning prompt: per-label soft prompt computed from the frozen label encoding"
    #: Chosen on dev rows only (BENCHMARKS.md, "Choosing the defaults"): the best of the rates
    #: measured on the few-shot dev rows and on the SST-2, CoLA and RTE dev splits alike.
    default_learning_rate = 3e-3

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__(config, dims, num_labels, label_length)
        self.project = nn.Linear(dims.hidden_size, dims.hidden_size, bias=False)  # G_gamma

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        return Injection(prompt=self.project(label_states), prompt_mask=label_mask)  # (K, l, d), (K, l)

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int,
                score_head: ScoreHead = ScoreHead.PAPER, prefix_layers: int | None = None,
                label_map_rank: int | None = None) -> tuple[str, int]:
        d = dims.hidden_size
        if score_head == ScoreHead.COSINE:  # G only: no C_zeta
            return "d^2", d * d
        if ScoreHead(score_head).learns_direction:
            return "2*d^2 + 2*d + 2", 2 * d * d + 2 * d + 2
        return "d^2 + 2*d", d * d + 2 * d
