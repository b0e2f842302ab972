"""What every method is: an ``nn.Module`` holding only its trainable parameters.

A method turns the cached label encodings into an *injection* for the frozen backbone: per-layer keys
and values (``prefix``) or soft-prompt embeddings (``prompt``). Label-conditioned methods (LT-*) give
one injection per label and score (text, label) pairs with a 2-way head; the classic baselines give one
shared injection and classify with a K-way head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..backbones import Dims
from ..config import LTuningConfig


@dataclass
class Injection:
    """What a method hands the backbone, for G groups (G = K labels, or 1 shared).

    prefix: (G, m, 2, n_kv, l, d_h) or None; prompt: (G, l, d) and prompt_mask (G, l) or None.
    """

    prefix: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Injection:
        """Rows for a batch: index (B,) into the G groups."""
        def pick(t):
            return (None if t is None else t.index_select(0, index))
        return Injection(pick(self.prefix), pick(self.prompt), pick(self.prompt_mask))


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement ``forward`` and ``formula``."""

    name: ClassVar[str]
    injection: ClassVar[Literal["prefix", "prompt"]]
    label_conditioned: ClassVar[bool]  # True: NLI pairs + BCE; False: K-way cross-entropy
    description: ClassVar[str]

    def __init__(self, config: LTuningConfig, dims: Dims, num_labels: int, label_length: int) -> None:
        super().__init__()
        self.dims = dims
        self.num_labels = num_labels
        self.label_length = label_length
        out = 2 if self.label_conditioned else num_labels
        self.head = nn.Linear(dims.hidden_size, out, bias=False)  # C_zeta

    def forward(self, label_states: torch.Tensor, label_mask: torch.Tensor) -> Injection:
        """label_states (K, l, d), label_mask (K, l) -> Injection for K labels or 1 shared group."""
        raise NotImplementedError

    @staticmethod
    def formula(dims: Dims, label_length: int, num_labels: int) -> tuple[str, int]:
        """Trainable-parameter count as written in the paper (A.5), with its value here."""
        raise NotImplementedError
