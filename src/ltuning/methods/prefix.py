"""Classic prefix tuning (P-tuning v2 style): the same l learned keys/values in every layer for all
classes, and a K-way head."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Dims
from ..config import LTuningConfig
from .base import Injection, Method


class Prefix(Method):
    """Trainable: 2*l*j*d_kv (keys and values of the top j layers, ``prefix_layers``; default j = m) + d*K
    (head).

    Output shape: prefix (1, j, 2, n_kv, l, d_h)
    """

    name = "prefix"
    injection = "prefix"
    label_conditioned = False
    description = "classic prefix tuning: shared learned keys/values, K-way head"
    #: Chosen on dev rows only (BENCHMARKS.md, "Choosing the defaults"): the best measured rate on
    #: the SST-2, CoLA and RTE dev splits, and level with 1e-2 on the few-shot dev rows.
    default_learning_rate = 3e-2
    init_std = 0.2  # about the scale of LT-prefix's keys/values at initialisation
    #: l virtual tokens in the top j layers
    weight_options = Method.weight_options + ("label_length", "prefix_layers")
    label_after_refusal = "classic prefix tuning has no label in its prefix"

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__(config, dims, num_labels, label_length)
        shape = (1, config.prefix_layers or dims.num_layers, 2, dims.num_kv_heads, label_length, dims.head_dim)
        self.prefix = nn.Parameter(torch.randn(shape) * self.init_std)

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        return Injection(prefix=self.prefix)

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int, score_head=None,
                prefix_layers: int | None = None,
                label_map_rank: int | None = None) -> tuple[str, int]:
        l, d, dkv, K = label_length, dims.hidden_size, dims.kv_dim, num_labels
        m, layers = Method.prefix_depth(dims, prefix_layers)
        kv = "d" if dkv == d else "d_kv"
        return f"2*l*{layers}*{kv} + d*K", 2 * l * m * dkv + d * K
