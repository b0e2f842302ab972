"""How a prefix enters the frozen model (DESIGN.md section 3).

Decoder: the cache of real tokens t, injected as the prefix for x, reproduces the run on [t; x].
Encoder: a prefix whose attention mask is all zeros reproduces the run without a prefix.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import tiny_bert, tiny_llama

from ltuning.backbones import Backbone
from ltuning.config import TextPooling

ATOL = 1e-5


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, rows))
    input_ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    return input_ids, mask


def cache_as_prefix(cache, num_layers: int) -> torch.Tensor:
    """A model's DynamicCache -> (B, m, 2, n_kv, l, d_h), the layout methods hand the backbone."""
    return torch.stack([torch.stack([cache.layers[i].keys, cache.layers[i].values], dim=1)
                        for i in range(num_layers)], dim=1)


# ---------------------------------------------------------------------- decoder
@pytest.fixture
def llama():
    model, tok = tiny_llama()
    return Backbone(model, tok, name="tiny-llama")


def test_decoder_cache_of_real_tokens_equals_running_on_the_concatenation(llama):
    tok, model = llama.tokenizer, llama.model
    t = ids(tok, "the label is positive sentiment")
    xs = [ids(tok, "what a wonderful film i loved it"), ids(tok, "bad plot")]  # different lengths: padding
    l = len(t)
    with torch.no_grad():
        out_t = model(input_ids=torch.tensor([t]), use_cache=True)
        prefix = cache_as_prefix(out_t.past_key_values, llama.dims.num_layers)  # (1, m, 2, n_kv, l, d_h)
        assert prefix.shape == (1, llama.dims.num_layers, 2, llama.dims.num_kv_heads, l, llama.dims.head_dim)
        prefix = prefix.expand(len(xs), -1, -1, -1, -1, -1)
        input_ids, mask = right_pad(xs, tok.pad_token_id)
        _, hidden, out_mask = llama.hidden_states(input_ids, mask, prefix=prefix)
        last = llama(input_ids, mask, prefix=prefix, pooling=TextPooling.LAST)
        mean = llama(input_ids, mask, prefix=prefix, pooling=TextPooling.MEAN)
        no_prefix_last = llama(input_ids, mask, pooling=TextPooling.LAST)
        for b, x in enumerate(xs):
            ref = model(input_ids=torch.tensor([t + x])).last_hidden_state[0, l:]  # hidden states of x
            n = len(x)
            assert out_mask[b, :n].all() and not out_mask[b, n:].any()
            torch.testing.assert_close(hidden[b, :n], ref, atol=ATOL, rtol=0)
            torch.testing.assert_close(last[b], ref[-1], atol=ATOL, rtol=0)
            torch.testing.assert_close(mean[b], ref.mean(0), atol=ATOL, rtol=0)
            # the prefix matters: without it the last token's state is different
            assert (no_prefix_last[b] - ref[-1]).abs().max() > 1e-3


def test_decoder_prefix_is_the_same_for_left_and_right_padding(llama):
    tok = llama.tokenizer
    rows = [ids(tok, "the movie was good"), ids(tok, "bad")]
    prefix = torch.randn(2, llama.dims.num_layers, 2, llama.dims.num_kv_heads, 3, llama.dims.head_dim)
    right_ids, right_mask = right_pad(rows, tok.pad_token_id)
    n = right_ids.shape[1]
    left_ids = torch.stack([torch.cat([r[m.bool()].new_full((n - int(m.sum()),), tok.pad_token_id), r[m.bool()]])
                            for r, m in zip(right_ids, right_mask, strict=False)])
    left_mask = right_mask.flip(-1)
    with torch.no_grad():
        a = llama(right_ids, right_mask, prefix=prefix)
        b = llama(left_ids, left_mask, prefix=prefix)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------- encoder
@pytest.fixture
def bert():
    model, tok = tiny_bert()
    return Backbone(model, tok, name="tiny-bert")


def test_encoder_masked_prefix_is_invisible_at_model_level(bert):
    """With the conventions Backbone uses (a fresh DynamicCache per call, zeros prepended to the mask,
    position ids from 0), a prefix nobody may attend to leaves BERT's output unchanged."""
    from transformers import DynamicCache

    model, tok, dims = bert.model, bert.tokenizer, bert.dims
    enc = tok(["the movie was very good", "bad plot"], padding=True, return_tensors="pt")
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    B, n = input_ids.shape
    l = 4
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def run(prefix_mask):
        cache = DynamicCache()
        for i in range(dims.num_layers):
            cache.update(torch.randn(B, dims.num_kv_heads, l, dims.head_dim) * 3,
                         torch.randn(B, dims.num_kv_heads, l, dims.head_dim) * 3, i)
        return model(input_ids=input_ids, attention_mask=torch.cat([prefix_mask, mask], 1),
                     position_ids=torch.arange(n).expand(B, n), use_cache=False,
                     **{cache_arg: cache}).last_hidden_state

    with torch.no_grad():
        plain = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        hidden = run(torch.zeros(B, l, dtype=mask.dtype))
        visible = run(torch.ones(B, l, dtype=mask.dtype))
    real = mask.bool()
    torch.testing.assert_close(hidden[real], plain[real], atol=ATOL, rtol=0)
    assert (visible[real] - plain[real]).abs().max() > 1e-3  # an attended prefix does change the output


def test_encoder_masked_prefix_is_invisible_through_backbone(bert):
    """Backbone's own prefix_mask: a prefix nobody may attend to gives the output without a prefix, for every
    pooling; the same prefix unmasked changes it."""
    tok, dims = bert.tokenizer, bert.dims
    enc = tok(["the movie was very good", "bad plot"], padding=True, return_tensors="pt")
    B = enc["input_ids"].shape[0]
    prefix = torch.randn(B, dims.num_layers, 2, dims.num_kv_heads, 4, dims.head_dim) * 3
    with torch.no_grad():
        for pooling in (TextPooling.POOLER, TextPooling.CLS, TextPooling.MEAN):
            plain = bert(enc["input_ids"], enc["attention_mask"], pooling=pooling)
            masked = bert(enc["input_ids"], enc["attention_mask"], prefix=prefix,
                          prefix_mask=torch.zeros(B, 4, dtype=torch.long), pooling=pooling)
            seen = bert(enc["input_ids"], enc["attention_mask"], prefix=prefix, pooling=pooling)
            torch.testing.assert_close(masked, plain, atol=ATOL, rtol=0)
            assert (seen - plain).abs().max() > 1e-3


def test_encoder_prefix_does_not_shift_positions(bert):
    """With a prefix, BERT's text positions still start at 0 (the model alone would shift them by the cache
    length): Backbone equals the model called with explicit position ids from 0."""
    from transformers import DynamicCache

    model, tok, dims = bert.model, bert.tokenizer, bert.dims
    enc = tok(["the movie was very good"], return_tensors="pt")
    input_ids, mask = enc["input_ids"], enc["attention_mask"]
    n = input_ids.shape[1]
    prefix = torch.randn(1, dims.num_layers, 2, dims.num_kv_heads, 3, dims.head_dim)
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache()
    for i in range(dims.num_layers):
        cache.update(prefix[:, i, 0], prefix[:, i, 1], i)
    with torch.no_grad():
        ref = model(input_ids=input_ids, attention_mask=torch.cat([torch.ones(1, 3, dtype=mask.dtype), mask], 1),
                    position_ids=torch.arange(n)[None], use_cache=False, **{cache_arg: cache}).last_hidden_state
        _, hidden, _ = bert.hidden_states(input_ids, mask, prefix=prefix)
    torch.testing.assert_close(hidden, ref, atol=ATOL, rtol=0)
