"""Every architecture family of docs/support.md x every method, on tiny random models built from configs.

What is proven per family (test names are cited in docs/support.md):
- test_method_matrix: forward, backward, gradients only on the method's parameters, the backbone bit-identical
  after an optimizer step, and the trainable count equal to the method's formula with this model's dims.
- test_padding_side: left- and right-padded batches give the same scores (every method).
- test_label_padding: padded label positions never influence the scores (LT methods).
- test_decoder_prefix_exact / test_encoder_prefix_exact: the prefix path is exact (see each test).
- test_deberta_* / test_mpnet_*: relative positions and the prefix inside attention.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer

from ltuning.backbones import FAMILIES, Backbone, read_dims
from ltuning.config import LTuningConfig, TextPooling
from ltuning.errors import UnsupportedModelError
from ltuning.methods import METHODS
from ltuning.model import LTuningModel

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _bert():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**SMALL, max_position_embeddings=64)), "encoder"


def _roberta():
    from transformers import RobertaConfig, RobertaModel

    # pad_token_id 0 = the test tokenizer's [PAD]; positions start at pad_token_id + 1.
    return RobertaModel(RobertaConfig(**SMALL, max_position_embeddings=72, pad_token_id=0)), "encoder"


def _electra():
    from transformers import ElectraConfig, ElectraModel

    return ElectraModel(ElectraConfig(**SMALL, embedding_size=32, max_position_embeddings=64)), "encoder"


def _deberta_v3():
    from transformers import DebertaV2Config, DebertaV2Model

    # v3 style: no absolute positions, bucketed relative positions, shared attention key, c2p + p2c.
    cfg = DebertaV2Config(**SMALL, max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"],
                          position_buckets=8, max_relative_positions=-1, position_biased_input=False,
                          share_att_key=True, norm_rel_ebd="layer_norm", type_vocab_size=0, pad_token_id=0)
    return DebertaV2Model(cfg), "encoder"


def _deberta_v2():
    from transformers import DebertaV2Config, DebertaV2Model

    # v2 style: absolute positions too, separate position projections, a conv layer, token types.
    cfg = DebertaV2Config(**SMALL, max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"],
                          position_buckets=-1, max_relative_positions=16, position_biased_input=True,
                          share_att_key=False, conv_kernel_size=3, type_vocab_size=2, pad_token_id=0)
    return DebertaV2Model(cfg), "encoder"


def _mpnet():
    from transformers import MPNetConfig, MPNetModel

    return MPNetModel(MPNetConfig(**SMALL, max_position_embeddings=72, relative_attention_num_buckets=32)), "encoder"


def _llama():
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(LlamaConfig(**SMALL, num_key_value_heads=2, max_position_embeddings=128)), "decoder"


def _smollm2():
    from transformers import LlamaConfig, LlamaModel

    # SmolLM2 is a Llama with 3 query heads per kv head and tied embeddings.
    cfg = LlamaConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1,
                      intermediate_size=64, max_position_embeddings=128, tie_word_embeddings=True)
    return LlamaModel(cfg), "decoder"


def _mistral():
    from transformers import MistralConfig, MistralModel

    return MistralModel(MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None)), "decoder"


def _qwen2():
    from transformers import Qwen2Config, Qwen2Model

    return Qwen2Model(Qwen2Config(**SMALL, num_key_value_heads=2)), "decoder"


def _qwen3():
    from transformers import Qwen3Config, Qwen3Model

    # head_dim from the config, not d / heads.
    return Qwen3Model(Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=16)), "decoder"


def _falcon_7b():
    from transformers import FalconConfig, FalconModel

    # Falcon-7B style: multi-query (one kv head), parallel attention, rotary.
    cfg = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                       new_decoder_architecture=False, parallel_attn=True, alibi=False, bias=False)
    return FalconModel(cfg), "decoder"


def _falcon_new():
    from transformers import FalconConfig, FalconModel

    # Falcon-40B/180B "new decoder architecture": grouped kv heads.
    cfg = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                       new_decoder_architecture=True, alibi=False, bias=False)
    return FalconModel(cfg), "decoder"


def _falcon_alibi():
    from transformers import FalconConfig, FalconModel

    # Falcon-RW style: ALiBi, no multi-query, sequential attention.
    cfg = FalconConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=False,
                       new_decoder_architecture=False, parallel_attn=False, alibi=True, bias=True)
    return FalconModel(cfg), "decoder"


def _bloom():
    from transformers import BloomConfig, BloomModel

    return BloomModel(BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4)), "decoder"


def _gpt2():
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64)), "decoder"


def _opt():
    from transformers import OPTConfig, OPTModel

    cfg = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0)
    return OPTModel(cfg), "decoder"


def _gemma2():
    from transformers import Gemma2Config, Gemma2Model

    # sliding window of 4 on alternate layers, soft-capped logits, head_dim != d / heads.
    cfg = Gemma2Config(**SMALL, num_key_value_heads=2, head_dim=16, sliding_window=4, max_position_embeddings=128)
    return Gemma2Model(cfg), "decoder"


def _gemma3():
    from transformers import Gemma3TextConfig, Gemma3TextModel

    cfg = Gemma3TextConfig(**SMALL, num_key_value_heads=1, head_dim=16, sliding_window=4, max_position_embeddings=128,
                           layer_types=["sliding_attention", "full_attention"])
    return Gemma3TextModel(cfg), "decoder"


BUILDERS = {
    "bert": _bert, "roberta": _roberta, "electra": _electra, "deberta-v2": _deberta_v2, "deberta-v3": _deberta_v3,
    "mpnet": _mpnet, "llama": _llama, "smollm2": _smollm2, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3,
    "falcon-7b": _falcon_7b, "falcon-new": _falcon_new, "falcon-alibi": _falcon_alibi, "bloom": _bloom,
    "gpt2": _gpt2, "opt": _opt, "gemma2": _gemma2, "gemma3": _gemma3,
}
ENCODERS = [f for f in BUILDERS if f in ("bert", "roberta", "electra", "deberta-v2", "deberta-v3", "mpnet")]
DECODERS = [f for f in BUILDERS if f not in ENCODERS]
LABELS = ["negative", "positive", "neutral"]
LABEL_TEXTS = ["bad", "the movie was good", "not good or bad"]  # different lengths: padded with a mask
TEXTS = ["the movie was very good", "boring", "i loved the plot and the actors", "awful film"]


def build(family: str) -> Backbone:
    torch.manual_seed(0)
    model, kind = BUILDERS[family]()
    return Backbone(model, make_tokenizer(kind), name=f"tiny-{family}")


def make_model(family: str, method: str, **kw) -> LTuningModel:
    cfg = LTuningConfig(method=method, label_names=LABELS, label_texts=LABEL_TEXTS, max_length=32, **kw)
    torch.manual_seed(1)
    return LTuningModel(build(family), cfg)


def left_pad(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows with their padding moved to the left."""
    mask = batch["attention_mask"]
    order = torch.argsort(mask, dim=1, stable=True)  # padding (0) first, real tokens after in order
    return {k: v.gather(1, order) for k, v in batch.items()}


def test_every_supported_family_is_tested():
    tested = {BUILDERS[f]()[0].config.model_type for f in BUILDERS}
    assert tested == set(FAMILIES)


# ------------------------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", list(BUILDERS))
def test_method_matrix(family, method):
    model = make_model(family, method)
    dims, lp, K = model.backbone.dims, model.config.label_length, len(LABELS)
    assert dims == read_dims(model.backbone.model.config)
    # Parameter count = the method's formula with this model's m, d, n_kv, d_h.
    _, expected = METHODS[method].formula(dims, lp, K, model.config.score_head,
                                          label_map_rank=model.config.label_map_rank)  # lt-prefix: its default map
    assert model.num_trainable_parameters() == expected
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    model.train()
    batch = model.tokenize(TEXTS)
    labels = torch.tensor([1, 0, 1, 0])
    if model.label_conditioned:
        loss = model.loss(batch, labels, label_ids=torch.tensor([1, 2, 0, 0]), targets=torch.tensor([1, 0, 0, 1]))
    else:
        loss = model.loss(batch, labels)
    assert torch.isfinite(loss)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    loss.backward()
    for name, p in model.backbone.named_parameters():
        assert p.grad is None, f"backbone parameter {name} got a gradient"
    # LT-prefix's F reaches the loss through Z, which every head that reads the label's embedding
    # (similarity, anchored, cosine) starts at zero: its first gradient is zero (tests/test_methods.py checks
    # it flows after one step)
    zero_at_init = {"pool.weight"} if model.config.score_head.reads_label else set()
    if model.config.label_map_rank:  # lt-prefix's default label map: V reaches the loss through U, started at zero
        zero_at_init.add("label_down.weight")
    for name, p in model.method.named_parameters():
        assert p.grad is not None, f"method parameter {name} got no gradient"
        assert (p.grad.abs().sum() > 0) != (name in zero_at_init), f"method parameter {name}: gradient {p.grad.abs().sum()}"
    before = model.class_scores(batch).detach()
    opt.step()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), f"backbone {k} changed"
    after = model.class_scores(batch).detach()
    assert after.shape == (4, K) and torch.isfinite(after).all()
    assert not torch.allclose(before, after)  # the step moved the method's parameters, and they matter


def pooled_rows(model: LTuningModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The backbone's pooled vector for every (text, label) row that class_scores scores: (B*K or B, d).
    Compared before the head, whose tiny initial weights would hide differences in the scores."""
    inj = model.injection()
    B = batch["input_ids"].shape[0]
    if model.label_conditioned:
        K = model.num_labels
        batch = {k: v.repeat_interleave(K, dim=0) for k, v in batch.items()}
        inj = inj.select(torch.arange(K).repeat(B))
    else:
        inj = inj.select(torch.zeros(B, dtype=torch.long))
    return model.backbone(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                          prefix=inj.prefix, prompt=inj.prompt, prompt_mask=inj.prompt_mask, pooling=model.pooling)


def assert_same_scores(model: LTuningModel, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        torch.testing.assert_close(pooled_rows(model, a), pooled_rows(model, b), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.class_scores(a), model.class_scores(b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", list(BUILDERS))
def test_padding_side(family, method):
    model = make_model(family, method)
    model.eval()
    batch = model.tokenize(TEXTS)
    assert not batch["attention_mask"].all()  # the batch is padded
    assert_same_scores(model, batch, left_pad(batch))


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
@pytest.mark.parametrize("family", list(BUILDERS))
def test_label_padding(family, method):
    """Label texts of different lengths are padded with a mask; what sits at padded label positions never
    reaches the scores."""
    model = make_model(family, method)
    model.eval()
    mask = model.label_mask
    assert not mask.all() and mask.any(-1).all()
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        before = pooled_rows(model, batch), model.class_scores(batch)
        model.label_states[~mask] = torch.randn_like(model.label_states[~mask]) * 10
        after = pooled_rows(model, batch), model.class_scores(batch)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_prompt_padding_is_invisible(family):
    """A soft prompt with masked positions (at its end, or inside it) gives the hidden states of the prompt
    without them: padding inside the sequence shifts no position, absolute or relative, and is never read."""
    bb = build(family)
    x = _ids(bb, ["the movie was very good", "boring", "i loved the plot"])
    B, d = 3, bb.dims.hidden_size
    prompt = torch.randn(B, 4, d)
    with torch.no_grad():
        _, want, want_mask = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"),
                                              prompt=prompt)
        # Padded to 7: masked slots after the prompt and between its tokens, holding garbage.
        padded = torch.randn(B, 7, d) * 10
        padded[:, [0, 2, 3, 5]] = prompt
        pmask = torch.tensor([[1, 0, 1, 1, 0, 1, 0]] * B)
        _, got, got_mask = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"),
                                            prompt=padded, prompt_mask=pmask)
    k = want_mask.shape[1]
    assert torch.equal(got_mask[:, :k], want_mask) and not got_mask[:, k:].any()
    real = want_mask.bool()
    torch.testing.assert_close(got[:, :k][real], want[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "deberta-v3", "llama", "gemma2"])
def test_longer_label_length_same_scores(family):
    """LT-prompt with the label texts padded further (a larger l) scores exactly as before."""
    short = make_model(family, "lt-prompt")
    long = make_model(family, "lt-prompt", label_length=short.config.label_length + 3)
    long.method.load_state_dict(short.method.state_dict())
    batch = short.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(pooled_rows(long, batch), pooled_rows(short, batch), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ exactness of prefixes
def _ids(bb: Backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    return bb.tokenize(texts, 32)


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_prefix_exact(family):
    """Injecting the cache of real tokens t as the prefix for x reproduces running on [t; x]: the hidden states
    of x agree to 1e-5, with x right- or left-padded."""
    from transformers import DynamicCache

    bb = build(family)
    B = 3
    t = torch.randint(4, 40, (B, 5))
    x = _ids(bb, ["the movie was very good", "boring", "i loved the plot"])
    n = x["input_ids"].shape[1]
    with torch.no_grad():
        cache = DynamicCache()  # a plain cache keeps every token, also on sliding-window layers
        kw = {bb._cache_arg: cache}
        bb.model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=True, **kw)
        rep = bb._cache_heads // bb.dims.num_kv_heads  # Falcon's new architecture caches repeated kv heads
        prefix = torch.stack([torch.stack([layer.keys[:, ::rep], layer.values[:, ::rep]], 1)
                              for layer in cache.layers], 1)  # (B, m, 2, n_kv, l, d_h)
        assert prefix.shape == (B, bb.dims.num_layers, 2, bb.dims.num_kv_heads, 5, bb.dims.head_dim)
        for ids, mask in [(x["input_ids"], x["attention_mask"]), tuple(left_pad(x).values())]:
            _, got, got_mask = bb.hidden_states(ids, mask, prefix=prefix)
            for i in range(B):
                real = ids[i][mask[i].bool()]
                full = torch.cat([t[i], real])[None]
                kw = {"position_ids": torch.arange(full.shape[1])[None]} if bb._takes_positions else {}
                want = bb.model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False,
                                **kw).last_hidden_state[0, 5:]
                k = int(mask[i].sum())
                assert got_mask[i, :k].all() and not got_mask[i, k:].any()
                torch.testing.assert_close(got[i, :k], want, atol=1e-5, rtol=1e-5)
            assert got.shape[1] == n
        # A prefix whose first positions are masked acts as the shorter prefix of its attended positions
        # (text positions continue after the attended ones).
        pm = torch.tensor([[0, 0, 1, 1, 1]] * B)
        _, masked, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], prefix=prefix, prefix_mask=pm)
        _, short, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], prefix=prefix[..., 2:, :].contiguous())
        real = x["attention_mask"].bool()
        torch.testing.assert_close(masked[real], short[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ENCODERS)
def test_encoder_prefix_exact(family):
    """An all-masked prefix reproduces the no-prefix output exactly; an attended one changes it."""
    bb = build(family)
    x = _ids(bb, ["the movie was very good", "boring", "i loved the plot"])
    d = bb.dims
    prefix = torch.randn(3, d.num_layers, 2, d.num_kv_heads, 4, d.head_dim)
    with torch.no_grad():
        _, plain, mask = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"))
        _, masked, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"),
                                        prefix=prefix, prefix_mask=torch.zeros(3, 4))
        _, seen, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"), prefix=prefix)
        pooled_plain = bb(x["input_ids"], x["attention_mask"], x.get("token_type_ids"))
        pooled_masked = bb(x["input_ids"], x["attention_mask"], x.get("token_type_ids"), prefix=prefix,
                           prefix_mask=torch.zeros(3, 4))
    real = mask.bool()
    torch.testing.assert_close(masked[real], plain[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_masked, pooled_plain, atol=1e-5, rtol=1e-5)
    assert (seen[real] - plain[real]).abs().max() > 1e-3
    # Partly masked: only the attended prefix positions count.
    pm = torch.tensor([[1, 1, 0, 0]] * 3)
    with torch.no_grad():
        _, half, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"),
                                      prefix=prefix, prefix_mask=pm)
        _, cut, _ = bb.hidden_states(x["input_ids"], x["attention_mask"], x.get("token_type_ids"),
                                     prefix=prefix[..., :2, :].contiguous())
    torch.testing.assert_close(half[real], cut[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["deberta-v2", "deberta-v3", "mpnet"])
def test_relative_position_terms_are_zero_for_prefix_columns(family):
    """Prefix columns get content scores only: with zero prefix keys every prefix column has score 0 (so the
    l prefix probabilities are equal), and the text columns keep the relative-position scores they have
    without a prefix (their probabilities, renormalised, are the no-prefix ones)."""
    bb = build(family)
    x = _ids(bb, ["the movie was very good", "i loved the plot and the actors"])
    d = bb.dims
    lp = 3
    prefix = torch.zeros(2, d.num_layers, 2, d.num_kv_heads, lp, d.head_dim)
    prefix[:, :, 1] = torch.randn(2, d.num_layers, d.num_kv_heads, lp, d.head_dim)  # values only
    with torch.no_grad():
        out_plain = bb.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], output_attentions=True,
                             position_ids=bb._positions(x["attention_mask"], 0))
        bb._prefix_state.set(prefix, torch.ones(2, lp))
        try:
            out_pref = bb.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], output_attentions=True,
                                position_ids=bb._positions(x["attention_mask"], 0))
        finally:
            bb._prefix_state.clear()
    # Layer 0 sees the same hidden states with or without prefix; compare its attention there.
    plain = out_plain.attentions[0]  # (B, H, n, n)
    pref = out_pref.attentions[0].reshape(*plain.shape[:-1], lp + plain.shape[-1])  # (B, H, n, l + n)
    real = x["attention_mask"].bool()
    for b in range(2):
        p = pref[b][:, real[b]][..., :lp]  # prefix columns of real query rows
        torch.testing.assert_close(p, p[..., :1].expand_as(p))  # equal: no position term
        text = pref[b][:, real[b]][..., lp:]
        torch.testing.assert_close(text / text.sum(-1, keepdim=True), plain[b][:, real[b]], atol=1e-6, rtol=1e-5)
    assert (pref[..., :lp] > 0).all()  # the prefix is attended


@pytest.mark.parametrize("family", ["deberta-v2", "deberta-v3", "mpnet"])
def test_prefix_inside_attention_is_per_call(family):
    """The patched attention runs unchanged when no prefix is given, also after a call with one."""
    bb = build(family)
    x = _ids(bb, ["the movie was very good", "boring"])
    d = bb.dims
    prefix = torch.randn(2, d.num_layers, 2, d.num_kv_heads, 4, d.head_dim)
    with torch.no_grad():
        first = bb(x["input_ids"], x["attention_mask"], pooling=TextPooling.CLS)
        with_prefix = bb(x["input_ids"], x["attention_mask"], prefix=prefix, pooling=TextPooling.CLS)
        again = bb(x["input_ids"], x["attention_mask"], pooling=TextPooling.CLS)
        direct = bb.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                          position_ids=bb._positions(x["attention_mask"], 0)).last_hidden_state[:, 0]
    assert torch.equal(first, again)
    torch.testing.assert_close(first, direct)
    assert not torch.allclose(first, with_prefix)


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet"])
def test_prefix_inside_attention_is_per_thread(family):
    """Two threads scoring one backbone with different prefixes at once each see their own (the prefix state
    was one per backbone: one thread's set or clear landed in the other's forward). Deterministic: each
    thread sets its prefix, then both run their forward after the other has set (and one has cleared) its own."""
    import threading

    bb = build(family)
    x = _ids(bb, ["the movie was very good", "boring"])
    d = bb.dims
    prefixes = [torch.randn(2, d.num_layers, 2, d.num_kv_heads, 4, d.head_dim) for _ in range(2)]
    with torch.no_grad():
        want = [bb(x["input_ids"], x["attention_mask"], prefix=p, pooling=TextPooling.CLS) for p in prefixes]
    barrier, got = threading.Barrier(2), [None, None]

    def run(i: int) -> None:
        bb._prefix_state.set(prefixes[i], torch.ones(2, 4))
        barrier.wait()  # both are set
        if i == 1:
            bb._prefix_state.clear()  # thread 1's clear must not reach thread 0
            bb._prefix_state.set(prefixes[1], torch.ones(2, 4))
        barrier.wait()
        with torch.no_grad():
            out = bb.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                           position_ids=bb._positions(x["attention_mask"], 0)).last_hidden_state[:, 0]
        got[i] = out
        bb._prefix_state.clear()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(2):
        torch.testing.assert_close(got[i], want[i])


@pytest.mark.parametrize("family", ["deberta-v2", "mpnet", "llama"])
def test_a_deep_copy_scores_as_the_original_and_apart_from_it(family):
    """copy.deepcopy of a model: the same scores, and its own prefix (the patched attention of the copy read
    the original's prefix state: it scored without a prefix)."""
    import copy

    model = make_model(family, "lt-prefix")
    with torch.no_grad():
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.clear_injection_cache()
    twin = copy.deepcopy(model)
    with torch.no_grad():
        want = model.score_texts(TEXTS)
        torch.testing.assert_close(twin.score_texts(TEXTS), want, atol=1e-5, rtol=0)
        for p in twin.method.parameters():
            p.add_(1.0)
        twin.clear_injection_cache()
        assert not torch.allclose(twin.score_texts(TEXTS), want, atol=1e-3)
        torch.testing.assert_close(model.score_texts(TEXTS), want, atol=0, rtol=0)


# ------------------------------------------------------------------------------------ what is not supported
def test_unsupported_family_names_what_is_missing():
    from transformers import GPTNeoXConfig, GPTNeoXModel

    model = GPTNeoXModel(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64))
    with pytest.raises(UnsupportedModelError) as e:
        Backbone(model, make_tokenizer("decoder"))
    msg = str(e.value)
    assert "gpt_neox" in msg and "key/value heads" in msg and "position ids" in msg and "llama" in msg


def test_per_layer_head_sizes_are_refused():
    from types import SimpleNamespace

    cfg = SimpleNamespace(model_type="gemma4_text", num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, global_head_dim=32)
    with pytest.raises(UnsupportedModelError, match="head size 16 on some layers and 32"):
        read_dims(cfg)


def test_prompt_methods_need_embeddings_of_width_d():
    from transformers import ElectraConfig, ElectraModel

    model = ElectraModel(ElectraConfig(**SMALL, embedding_size=16, max_position_embeddings=64))
    bb = Backbone(model, make_tokenizer("encoder"), name="electra-small-like")
    for method in ("prefix", "lt-prefix"):  # prefixes live in the attention's width: fine
        m = LTuningModel(bb, LTuningConfig(method=method, label_names=LABELS, label_texts=LABEL_TEXTS))
        assert m.class_scores(m.tokenize(TEXTS)).shape == (4, 3)
    for method in ("prompt", "lt-prompt"):  # refused when the model is built, before any training
        with pytest.raises(UnsupportedModelError, match="embeds tokens in 16 dimensions"):
            LTuningModel(bb, LTuningConfig(method=method, label_names=LABELS, label_texts=LABEL_TEXTS))
    # The backbone itself also refuses a soft prompt of the wrong width.
    ids = bb.tokenize(TEXTS, 16)
    with pytest.raises(UnsupportedModelError, match="input embeddings have width 16"):
        bb(ids["input_ids"], ids["attention_mask"], prompt=torch.zeros(4, 2, 32))
