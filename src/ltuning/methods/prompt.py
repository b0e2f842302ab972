"""Classic prompt tuning (Lester et al.): the same l learned input embeddings for all classes, and a
K-way head."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones import Dims
from ..config import LTuningConfig
from .base import Injection, Method


class Prompt(Method):
    """Trainable: l*d (soft prompt) + d*K (head) = d*(l + K), as the paper states.

    Output shape: prompt (1, l, d), prompt_mask (1, l)
    """

    name = "prompt"
    injection = "prompt"
    label_conditioned = False
    description = "classic prompt tuning: shared learned soft prompt, K-way head"
    #: Chosen on dev rows only (BENCHMARKS.md, "Choosing the defaults"): the rate never far from the
    #: best across the few-shot dev rows and the SST-2, CoLA and RTE dev splits.
    default_learning_rate = 3e-2
    init_std = 0.02
    #: l soft-prompt vectors
    weight_options = Method.weight_options + ("label_length",)
    label_after_refusal = ("classic prompt tuning has no label in its prompt (and runs one row per text whatever "
                           "the order, so there is nothing to share)")

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__(config, dims, num_labels, label_length)
        self.prompt = nn.Parameter(torch.randn(1, label_length, dims.hidden_size) * self.init_std)

    def init_from_vocab(self, embeddings: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Lester et al.'s initialisation: copy the embeddings of l random vocabulary tokens."""
        idx = torch.randint(0, embeddings.shape[0], (self.label_length,), generator=generator)
        with torch.no_grad():
            self.prompt.copy_(embeddings[idx].float().unsqueeze(0))

    def init_from_backbone(self, backbone) -> None:
        self.init_from_vocab(backbone.model.get_input_embeddings().weight.detach())

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        mask = torch.ones(1, self.label_length, dtype=torch.bool, device=self.prompt.device)
        return Injection(prompt=self.prompt, prompt_mask=mask)

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int, score_head=None,
                prefix_layers: int | None = None,
                label_map_rank: int | None = None) -> tuple[str, int]:
        d = dims.hidden_size
        return "d*(l + K)", d * (label_length + num_labels)
