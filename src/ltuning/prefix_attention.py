"""Prefix keys and values inserted *inside* self-attention, for encoders that take no cache.

DeBERTa-v2/v3 and MPNet add relative-position terms to their attention scores and have no ``cache``
argument, so a prefix cannot enter through a ``DynamicCache``. Here each self-attention module of such a
model gets its ``forward`` replaced (on the instance, not the class) by one that prepends the prefix keys
and values of its layer to the text's keys and values, as P-tuning v2 does:

- content scores cover the ``l + n`` columns (prefix first, then text);
- the relative-position terms (DeBERTa's c2p and p2c, MPNet's bucketed bias) are computed for the text
  columns exactly as the model does, and are **zero for the prefix columns**: a prefix has no position;
- prefix columns are masked by the row's ``prefix_mask``; text columns by the model's own mask.

With no prefix set, the original ``forward`` runs unchanged. A prefix is set only for the duration of one
``Backbone`` call (:class:`PrefixState`), so a model that was patched behaves as before everywhere else.

Only :mod:`ltuning.backbones` imports this module.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch
from torch import nn


class PrefixState:
    """Per-call prefix seen by the patched attention modules: layer index -> (keys, values, mask).

    keys, values: (B, n_heads, l, d_h); mask: (B, l) bool (True = attend). Held per thread: one backbone
    scored from two threads at once (a web server's thread pool) gives each call its own prefix, as the
    key/value-cache families do (their prefix travels with the call).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def __getstate__(self) -> dict:  # a copy of the model (copy.deepcopy) starts with no prefix set
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()

    @property
    def layers(self) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return getattr(self._local, "layers", {})

    def set(self, prefix: torch.Tensor, prefix_mask: torch.Tensor, first_layer: int = 0) -> None:
        """prefix (B, j, 2, n_heads, l, d_h) for layers ``first_layer`` .. ``first_layer + j - 1`` (the top j
        layers with ``first_layer = m - j``; the others run unchanged), prefix_mask (B, l)."""
        self._local.layers = {first_layer + i: (prefix[:, i, 0], prefix[:, i, 1], prefix_mask.bool())
                              for i in range(prefix.shape[1])}

    def clear(self) -> None:
        self._local.layers = {}

    def get(self, layer: int):
        return self.layers.get(layer)


def _prefix_columns_mask(text_mask: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast the (B, l) prefix mask to the text mask's leading shape: (B, 1 or H, q, l)."""
    B, lp = prefix_mask.shape
    lead = text_mask.shape[:-1]
    return prefix_mask.view(B, *([1] * (len(lead) - 1)), lp).expand(*lead, lp)


# ----------------------------------------------------------------------------------- DeBERTa-v2 / v3
def _deberta_v2_forward(module: nn.Module, state: PrefixState, layer: int, original: Callable) -> Callable:
    """A forward for ``DisentangledSelfAttention`` (transformers 5.x) that prepends the layer's prefix."""

    def forward(hidden_states, attention_mask, output_attentions=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        inj = state.get(layer)
        if inj is None:
            return original(hidden_states, attention_mask, output_attentions, query_states=query_states,
                            relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        pk, pv, pmask = inj  # (B, H, l, d_h) x2, (B, l)
        H = module.num_attention_heads
        B, n = hidden_states.shape[:2]
        lp, d_h = pk.shape[-2], pk.shape[-1]
        q_in = hidden_states if query_states is None else query_states
        q = module.transpose_for_scores(module.query_proj(q_in), H)  # (B*H, n, d_h)
        k = module.transpose_for_scores(module.key_proj(hidden_states), H)
        v = module.transpose_for_scores(module.value_proj(hidden_states), H)
        keys = torch.cat([pk.to(k.dtype).reshape(B * H, lp, d_h), k], dim=1)  # (B*H, l + n, d_h)
        values = torch.cat([pv.to(v.dtype).reshape(B * H, lp, d_h), v], dim=1)

        scale_factor = 1 + ("c2p" in module.pos_att_type) + ("p2c" in module.pos_att_type)
        scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * scale_factor)
        scores = torch.bmm(q, keys.transpose(-1, -2) / scale.to(dtype=q.dtype))  # (B*H, n, l + n)
        if module.relative_attention:
            # Relative terms for the text columns exactly as the model computes them; none for the prefix.
            rel = module.disentangled_attention_bias(q, k, relative_pos, module.pos_dropout(rel_embeddings),
                                                     scale_factor)  # (B*H, n, n)
            scores = torch.cat([scores[..., :lp], scores[..., lp:] + rel], dim=-1)
        scores = scores.view(-1, H, n, lp + n)

        text_mask = attention_mask.bool()  # (B, 1, n, n) from the encoder's get_attention_mask
        mask = torch.cat([_prefix_columns_mask(text_mask, pmask), text_mask], dim=-1)
        scores = scores.masked_fill(~mask, torch.finfo(q.dtype).min)
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        context = torch.bmm(probs.view(-1, n, lp + n), values)  # (B*H, n, d_h)
        context = context.view(B, H, n, d_h).permute(0, 2, 1, 3).reshape(B, n, H * d_h)
        return (context, probs if output_attentions else None)

    return forward


# ----------------------------------------------------------------------------------- MPNet
def _mpnet_forward(module: nn.Module, state: PrefixState, layer: int, original: Callable) -> Callable:
    """A forward for ``MPNetSelfAttention`` (transformers 5.x) that prepends the layer's prefix."""

    def forward(hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        inj = state.get(layer)
        if inj is None:
            return original(hidden_states, attention_mask, position_bias, output_attentions=output_attentions,
                            **kwargs)
        pk, pv, pmask = inj  # (B, H, l, d_h) x2, (B, l)
        B, n = hidden_states.shape[:2]
        d_h = module.attention_head_size
        shape = (B, n, -1, d_h)
        q = module.q(hidden_states).view(shape).transpose(1, 2)  # (B, H, n, d_h)
        k = torch.cat([pk.to(q.dtype), module.k(hidden_states).view(shape).transpose(1, 2)], dim=2)
        v = torch.cat([pv.to(q.dtype), module.v(hidden_states).view(shape).transpose(1, 2)], dim=2)
        lp = pk.shape[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d_h)  # (B, H, n, l + n)
        if position_bias is not None:  # relative bias for the text columns only
            scores = torch.cat([scores[..., :lp], scores[..., lp:] + position_bias], dim=-1)
        neg = torch.finfo(scores.dtype).min
        if attention_mask is None:
            text_add = scores.new_zeros(B, 1, n, n)
        elif attention_mask.dtype == torch.bool:
            text_add = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(~attention_mask, neg)
        else:
            text_add = attention_mask.to(scores.dtype)
        text_add = text_add.expand(B, text_add.shape[1], n, n)
        prefix_add = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(
            ~_prefix_columns_mask(text_add, pmask), neg)
        scores = scores + torch.cat([prefix_add, text_add], dim=-1)
        probs = module.dropout(nn.functional.softmax(scores, dim=-1))
        c = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(B, n, module.all_head_size)
        o = module.o(c)
        return (o, probs) if output_attentions else (o,)

    return forward


# ----------------------------------------------------------------------------------- install
_PATCHES: dict[str, tuple[Callable[[nn.Module], list[nn.Module]], Callable]] = {
    "deberta-v2": (lambda model: [layer.attention.self for layer in model.encoder.layer], _deberta_v2_forward),
    "mpnet": (lambda model: [layer.attention.attn for layer in model.encoder.layer], _mpnet_forward),
}


class _PatchedForward:
    """A patched attention forward (``make(module, state, layer, original)``) that a copy of the model
    (``copy.deepcopy``) rebuilds around the copied module, state and original forward; a plain closure would
    be shared by the copy and keep reading the original model's prefix state."""

    def __init__(self, make: Callable, module: nn.Module, state: PrefixState, layer: int, original: Callable) -> None:
        self.make, self.parts = make, (module, state, layer, original)
        self.forward = make(module, state, layer, original)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _PatchedForward:
        import copy

        return _PatchedForward(self.make, *(copy.deepcopy(p, memo) for p in self.parts))


def install(model: nn.Module, model_type: str) -> PrefixState:
    """Patch every self-attention module of ``model`` (once) and return the state that feeds them.

    Raises:
        KeyError: no patch for this model type; AttributeError: the module layout is not the expected one.
    """
    existing = getattr(model, "_ltuning_prefix_state", None)
    if existing is not None:
        return existing
    find, make = _PATCHES[model_type]
    state = PrefixState()
    for i, attn in enumerate(find(model)):  # an instance attribute: the class stays untouched
        attn.forward = _PatchedForward(make, attn, state, i, attn.forward)
    object.__setattr__(model, "_ltuning_prefix_state", state)
    return state
