"""Issue 16: the label prefix in the top j layers only (``prefix_layers``), and the shared bottom.

What is proven (tiny random models of tests/test_families.py, m = 2 layers, j = 1):
- test_shared_bottom_equals_rows: every text's bottom m - j layers computed once for the K labels give the
  scores of the B*K full rows with the same prefix (the bottom run on all B*K rows), to 1e-5, right- and
  left-padded: BERT, RoBERTa, ELECTRA, DeBERTa-v2, DeBERTa-v3, MPNet, Llama, Mistral, Qwen2, Qwen3.
- test_top_prefix_matches_reference: the top-j path itself against references written here layer by layer
  (BERT, RoBERTa, Llama: embeddings, layer 0 without a prefix, layer 1 with it, masks and rotary positions
  built by hand) or through the model's own forward with the patched attention holding the top layer's prefix
  only (DeBERTa-v2/v3, MPNet).
- test_invisible_prefix_is_the_plain_model: a fully masked prefix in the top layers gives the frozen model's
  own output (the layer split changes nothing else).
- test_listwise_gradients_equal_rows: training through the shared bottom gives the rows' loss and gradients.
- parameter counts, validation, old adapters, the CLI flag.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import _offline, files, models, one_error_line, params_json, train_args  # noqa: F401 - fixtures
from test_families import LABEL_TEXTS, LABELS, TEXTS, build, left_pad, make_model

from ltuning.backbones import Backbone
from ltuning.cli import main
from ltuning.config import LTuningConfig
from ltuning.errors import AdapterError, ConfigError, UnsupportedModelError
from ltuning.methods import METHODS
from ltuning.model import LTuningModel

SHARED = ["bert", "roberta", "electra", "deberta-v2", "deberta-v3", "mpnet", "llama", "mistral", "qwen2", "qwen3"]


def depth_model(family: str, method: str = "lt-prefix", j: int = 1, **kw) -> LTuningModel:
    model = make_model(family, method, prefix_layers=j, **kw)
    with torch.no_grad():  # the similarity head starts Z at zero: give every label its own prefix
        for p in model.method.parameters():
            if p.dim() >= 2 and p is not model.method.head.weight:
                p.normal_(0, 0.5)
    return model.eval()


def rows_twin(model: LTuningModel) -> LTuningModel:
    """The same model on a view of the same weights whose shared bottom is off: the B*K rows run whole (the
    bottom on every row)."""
    bb = model.backbone
    rows = Backbone(bb.model, bb.tokenizer, bb.name)
    rows.shares_bottom = lambda prefix: False
    twin = LTuningModel(rows, model.config)
    twin.method.load_state_dict(model.method.state_dict())
    return twin.eval()


@pytest.mark.parametrize("family", SHARED)
def test_shared_bottom_equals_rows(family):
    model = depth_model(family)
    assert model.method(model.label_states, model.label_mask).prefix.shape[1] == 1
    twin = rows_twin(model)
    batch = model.tokenize(TEXTS)
    with torch.no_grad():
        for b in (batch, left_pad(batch)):
            shared = model.class_scores(b)
            rows = twin.class_scores(b)
            assert shared.shape == (len(TEXTS), len(LABELS))
            torch.testing.assert_close(shared, rows, atol=1e-5, rtol=1e-5)
        # prediction goes through the shared path (score_texts -> class_scores)
        torch.testing.assert_close(model.score_texts(TEXTS), twin.score_texts(TEXTS), atol=1e-5, rtol=1e-5)
        # the prefix matters: another prefix gives other scores
        other = depth_model(family)
        with torch.no_grad():
            for p in other.method.parameters():
                p.add_(torch.randn_like(p))
        assert (other.class_scores(batch) - shared).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_shared_bottom_classic_prefix_and_candidates(family):
    """The classic prefix (one group) and open-vocabulary candidates with a depth-1 LT-prefix."""
    model = depth_model(family)
    twin = rows_twin(model)
    cands = ["good", "bad", "boring film", "fun"]
    got = model.predict_proba(TEXTS, candidate_labels=cands)
    want = twin.predict_proba(TEXTS, candidate_labels=cands)
    assert got.shape == (len(TEXTS), 4)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), atol=1e-5, rtol=1e-5)
    classic = depth_model(family, "prefix")
    assert classic.method.prefix.shape[1] == 1
    assert classic.score_texts(TEXTS).shape == (len(TEXTS), len(LABELS))


def _prefix(bb, B: int, lp: int = 3, j: int = 1) -> torch.Tensor:
    d = bb.dims
    return torch.randn(B, j, 2, d.num_kv_heads, lp, d.head_dim)


def _additive(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _reference_bert(bb, ids, mask, tt, prefix, pmask):
    from transformers import DynamicCache

    model = bb.model
    pos = bb._positions(mask, 0)
    emb = model.embeddings(input_ids=ids, token_type_ids=tt, position_ids=pos)
    h = model.encoder.layer[0](emb, _additive(mask.bool()[:, None, None, :]))
    cache = DynamicCache()
    cache.update(prefix[:, 0, 0], prefix[:, 0, 1], 0)  # slot 0 is not read by layer 1
    cache.update(prefix[:, 0, 0], prefix[:, 0, 1], 1)
    full = torch.cat([pmask, mask], 1).bool()[:, None, None, :]
    return model.encoder.layer[1](h, _additive(full), cache=cache)


def _reference_llama(bb, ids, mask, tt, prefix, pmask):
    from transformers import DynamicCache

    model = bb.model
    lp = prefix.shape[4]
    pos = bb._positions(mask, pmask.long().sum(-1, keepdim=True))
    h = model.embed_tokens(ids)
    pe = model.rotary_emb(h, pos)
    n = ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    text_allowed = causal[None] & mask.bool()[:, None, :]  # (B, q, k)
    h = model.layers[0](h, attention_mask=_additive(text_allowed[:, None]), position_embeddings=pe, position_ids=pos)
    cache = DynamicCache()
    cache.update(prefix[:, 0, 0], prefix[:, 0, 1], 0)
    cache.update(prefix[:, 0, 0], prefix[:, 0, 1], 1)
    allowed = torch.cat([pmask.bool()[:, None, :].expand(-1, n, lp), text_allowed], -1)[:, None]
    h = model.layers[1](h, attention_mask=_additive(allowed), position_embeddings=pe, position_ids=pos, cache=cache)
    return model.norm(h)


def _reference_patched(bb, ids, mask, tt, prefix, pmask):
    bb._prefix_state.set(prefix, pmask, first_layer=bb.dims.num_layers - prefix.shape[1])
    try:
        kw = {"token_type_ids": tt} if tt is not None else {}
        return bb.model(input_ids=ids, attention_mask=mask, position_ids=bb._positions(mask, 0),
                        **kw).last_hidden_state
    finally:
        bb._prefix_state.clear()


@pytest.mark.parametrize("family,reference", [
    ("bert", _reference_bert), ("roberta", _reference_bert), ("llama", _reference_llama),
    ("deberta-v2", _reference_patched), ("deberta-v3", _reference_patched), ("mpnet", _reference_patched),
])
def test_top_prefix_matches_reference(family, reference):
    bb = build(family)
    x = bb.tokenize(TEXTS, 32)
    ids, mask, tt = x["input_ids"], x["attention_mask"], x.get("token_type_ids")
    B = ids.shape[0]
    prefix = _prefix(bb, B)
    pmask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]][:B])
    with torch.no_grad():
        _, got, got_mask = bb.hidden_states(ids, mask, tt, prefix=prefix, prefix_mask=pmask)
        want = reference(bb, ids, mask, tt, prefix, pmask)
        _, full, _ = bb.hidden_states(ids, mask, tt, prefix=torch.cat([prefix, prefix], 1), prefix_mask=pmask)
    real = mask.bool()
    assert torch.equal(got_mask, mask)  # right-padded in, unchanged
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert (got[real] - full[real]).abs().max() > 1e-3  # not the every-layer prefix


@pytest.mark.parametrize("family", SHARED)
def test_invisible_prefix_is_the_plain_model(family):
    assert_invisible_prefix_is_plain(build(family))


def assert_invisible_prefix_is_plain(bb) -> None:
    """A top-layer prefix that every row masks out gives the plain model's pooled vectors."""
    x = bb.tokenize(TEXTS, 32)
    B = x["input_ids"].shape[0]
    with torch.no_grad():
        plain = bb(x["input_ids"], x["attention_mask"], x.get("token_type_ids"))
        masked = bb(x["input_ids"], x["attention_mask"], x.get("token_type_ids"), prefix=_prefix(bb, B),
                    prefix_mask=torch.zeros(B, 3))
    torch.testing.assert_close(masked, plain, atol=1e-5, rtol=1e-5)


def test_projected_embeddings():
    """ELECTRA-small style (embeddings narrower than d, projected up by ``embeddings_project``): the top layers
    start from the bottom's output, not from the projection of the embeddings."""
    from conftest import make_tokenizer
    from test_families import SMALL
    from transformers import ElectraConfig, ElectraModel

    torch.manual_seed(0)
    bb = Backbone(ElectraModel(ElectraConfig(**SMALL, embedding_size=16, max_position_embeddings=64)),
                  make_tokenizer("encoder"), name="tiny-electra-small")
    assert bb.model.embeddings_project is not None
    assert_invisible_prefix_is_plain(bb)
    x = bb.tokenize(TEXTS, 32)
    B = x["input_ids"].shape[0]
    with torch.no_grad():
        prefix = _prefix(bb, 3)
        shared = bb.pooled_per_prefix(x["input_ids"], x["attention_mask"], None, prefix)
        rows = bb(x["input_ids"].repeat_interleave(3, 0), x["attention_mask"].repeat_interleave(3, 0),
                  prefix=prefix.repeat(B, 1, 1, 1, 1, 1)).view(B, 3, -1)
    torch.testing.assert_close(shared, rows, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["bert", "deberta-v2", "llama"])
def test_listwise_gradients_equal_rows(family):
    model = depth_model(family)
    twin = rows_twin(model)
    model.train()
    twin.train()
    batch = model.tokenize(TEXTS)
    labels = torch.tensor([1, 0, 1, 0])
    a = model.loss(batch, labels, objective="listwise")
    b = twin.loss(batch, labels, objective="listwise")
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(model.method.named_parameters(), twin.method.parameters(), strict=True):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in model.backbone.parameters())


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_pairwise_training_step(family):
    """One (text, label) row per text: the top-j prefix gets gradients; the backbone none."""
    model = depth_model(family)
    model.train()
    batch = model.tokenize(TEXTS)
    loss = model.loss(batch, None, label_ids=torch.tensor([0, 1, 2, 0]), targets=torch.tensor([1, 0, 1, 0]))
    loss.backward()
    assert model.method.transform.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())


def test_every_layer_is_the_default():
    """prefix_layers = m is the default model (same shapes, same scores); None stays None in the config."""
    a = make_model("bert", "lt-prefix")
    b = make_model("bert", "lt-prefix", prefix_layers=2)
    assert a.config.prefix_layers is None
    b.method.load_state_dict(a.method.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a.score_texts(TEXTS), b.score_texts(TEXTS), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["bert", "llama"])
@pytest.mark.parametrize("score_head", ["paper", "similarity", "cosine"])
def test_parameter_counts(family, score_head):
    """LT-prefix: 2*l^2*j*d_kv + 3*d (+ d^2 + 2 with the similarity head, - 2*d with the cosine head: no
    C_zeta); prefix: 2*l*j*d_kv + d*K."""
    for j in (1, 2):
        lt = make_model(family, "lt-prefix", prefix_layers=j, score_head=score_head, label_map_rank=0)  # paper's Z
        d, dkv, l, K = lt.backbone.dims.hidden_size, lt.backbone.dims.kv_dim, lt.config.label_length, len(LABELS)
        sim = {"paper": 0, "similarity": d * d + 2, "cosine": -2 * d}[score_head]
        assert lt.num_trainable_parameters() == 2 * l * l * j * dkv + 3 * d + sim
        expr, value = METHODS["lt-prefix"].formula(lt.backbone.dims, l, K, lt.config.score_head, j)
        assert value == lt.num_trainable_parameters()
        assert ("*j*" in expr) == (j < 2)
        cl = make_model(family, "prefix", prefix_layers=j)
        assert cl.num_trainable_parameters() == 2 * cl.config.label_length * j * dkv + d * K
        assert METHODS["prefix"].formula(cl.backbone.dims, cl.config.label_length, K, None, j)[1] == \
            cl.num_trainable_parameters()


@pytest.mark.parametrize("bad", [0, 3, -1])
def test_out_of_range_is_refused(bad):
    with pytest.raises(ConfigError, match=r"prefix_layers \(--prefix-layers\) must be an integer from 1 to m = 2"):
        make_model("bert", "lt-prefix", prefix_layers=bad)


def test_out_of_range_names_m():
    with pytest.raises(ConfigError) as e:
        make_model("bert", "prefix", prefix_layers=3)
    assert "prefix_layers (--prefix-layers)" in str(e.value) and "m = 2" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("bad", ["1", 1.0, True])
def test_not_an_integer_is_refused(bad):
    with pytest.raises(ConfigError, match="prefix_layers"):
        LTuningConfig(method="lt-prefix", label_names=LABELS, label_texts=LABEL_TEXTS, prefix_layers=bad)


@pytest.mark.parametrize("method", ["lt-prompt", "prompt"])
def test_prompt_methods_refuse_it(method):
    with pytest.raises(ConfigError, match="prefix_layers.*prefix methods"):
        make_model("bert", method, prefix_layers=1)


def test_family_without_layout_refuses_below_m():
    with pytest.raises(UnsupportedModelError, match="prefix_layers.*gpt2"):
        make_model("gpt2", "lt-prefix", prefix_layers=1)
    assert make_model("gpt2", "lt-prefix", prefix_layers=2).config.prefix_layers == 2  # j = m: every layer


def test_adapters_round_trip_and_old_ones_load_as_every_layer(tmp_path):
    model = depth_model("bert")
    model.save_pretrained(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["prefix_layers"] == 1
    loaded = LTuningModel.from_pretrained(tmp_path / "a", build("bert"))
    assert loaded.config.prefix_layers == 1
    torch.testing.assert_close(loaded.score_texts(TEXTS), model.score_texts(TEXTS), atol=1e-6, rtol=1e-6)
    # an adapter saved before the option existed: no key -> every layer, exactly as before
    old = make_model("bert", "lt-prefix")
    old.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert "prefix_layers" not in raw  # unset: not written, as before the option existed
    raw["prefix_layers"] = None  # written as null: the same
    path.write_text(json.dumps(raw))
    back = LTuningModel.from_pretrained(tmp_path / "old", build("bert"))
    assert back.config.prefix_layers is None
    assert back.method.transform.weight.shape == old.method.transform.weight.shape
    torch.testing.assert_close(back.score_texts(TEXTS), old.score_texts(TEXTS), atol=0, rtol=0)
    # a hand-edited value is refused naming the file and key
    raw["prefix_layers"] = "2"
    path.write_text(json.dumps(raw))
    with pytest.raises(AdapterError, match="prefix_layers must be an integer or null"):
        LTuningModel.from_pretrained(tmp_path / "old", build("bert"))


def test_cli_train_params_and_errors(models, files, tmp_path, capsys):  # noqa: F811 - fixtures
    out = tmp_path / "top1"
    assert main(train_args(models, files, out, "--prefix-layers", "1", "--max-steps", "2")) == 0
    assert json.loads((out / "adapter_config.json").read_text())["prefix_layers"] == 1
    assert "prefix layers | top 1" in (out / "README.md").read_text()
    info, rows = params_json(models, capsys, "--prefix-layers", "1")
    assert info["prefix_layers"] == 1 and all(r["match"] for r in rows.values())
    assert "*j*" in rows["lt-prefix"]["formula"] and "*j*" in rows["prefix"]["formula"]
    assert main(train_args(models, files, tmp_path / "x", "--prefix-layers", "3")) == 2
    one_error_line(capsys, 2, "prefix_layers (--prefix-layers) must be an integer from 1 to m = 2")
    assert main(train_args(models, files, tmp_path / "y", "--prefix-layers", "0")) == 2
    one_error_line(capsys, 2, "prefix_layers (--prefix-layers) must be an integer from 1 to m = 2")
    assert main(train_args(models, files, tmp_path / "z", "--method", "lt-prompt", "--prefix-layers", "1")) == 2
    one_error_line(capsys, 2, "is for the prefix methods")
    assert main(["params", "--model", models["tiny"], "--prefix-layers", "5"]) == 2
    one_error_line(capsys, 2, "--prefix-layers must be an integer from 1 to m = 2")


def test_mixed_attention_types_refuse_below_m():
    """Qwen2 with sliding-window layers picks each layer's mask by its position in the layer loop, which
    restarts in the top-layers pass: j < m would give a sliding-window layer full attention, silently."""
    from conftest import make_tokenizer
    from transformers import Qwen2Config, Qwen2Model

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=128, use_sliding_window=True, sliding_window=2,
                      max_window_layers=1, attn_implementation="eager")
    assert cfg.layer_types == ["full_attention", "sliding_attention"]
    backbone = Backbone(Qwen2Model(cfg), make_tokenizer("decoder"), name="tiny-qwen2-sliding")
    config = LTuningConfig(method="lt-prefix", label_names=LABELS, label_texts=LABEL_TEXTS, max_length=32)
    with pytest.raises(UnsupportedModelError, match=r"prefix_layers \(--prefix-layers\) = 1 < m = 2 .*mix attention types"):
        LTuningModel(backbone, LTuningConfig(**{**config.to_dict(), "prefix_layers": 1}))
    assert LTuningModel(backbone, LTuningConfig(**{**config.to_dict(), "prefix_layers": 2})) is not None


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_adapters_sharing_a_model_score_right_from_two_threads(family):
    """A prefix in the top j < m layers swaps the shared model's layers for a forward; another adapter on the
    same model scoring from another thread meanwhile used to run the swapped layers (wrong scores, no error).
    The model's layer lock (backbones.LayerLock) lets the swap run alone."""
    import copy
    import threading

    deep = depth_model(family, "lt-prefix", j=1)
    shared = Backbone(deep.backbone.model, deep.backbone.tokenizer, deep.backbone.name)
    deep2 = LTuningModel(shared, deep.config)  # a second top-layers swap, with its own weights
    with torch.no_grad():
        for p in deep2.method.parameters():
            p.normal_(0, 0.5)
    # and one that runs the model whole, tokenizing with another max length on the same tokenizer object
    other = LTuningModel(shared, LTuningConfig(method="lt-prompt", label_names=LABELS, label_texts=LABEL_TEXTS,
                                               max_length=6)).eval()
    adapters = {"deep": deep, "deep2": deep2.eval(), "other": other}
    with torch.no_grad():
        want = {n: m.score_texts(TEXTS) for n, m in adapters.items()}
    wrong = dict.fromkeys(adapters, 0)
    errors = []

    def score(name, model):
        try:
            with torch.no_grad():
                for _ in range(40):
                    if not torch.allclose(model.score_texts(TEXTS), want[name], atol=1e-5):
                        wrong[name] += 1
        except Exception as e:  # noqa: BLE001 - the thread's failure is the test's
            errors.append(e)

    threads = [threading.Thread(target=score, args=item) for item in adapters.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and wrong == dict.fromkeys(adapters, 0)
    copy.deepcopy(deep)  # the lock is kept beside the model, not on it: a copy is still possible


def test_a_swap_interrupted_while_it_waits_blocks_nobody():
    """A KeyboardInterrupt in the wait of an exclusive acquisition must not leave it counted as waiting (every
    later shared acquisition, every forward on the model, would wait for ever)."""
    import threading

    from ltuning.backbones import LayerLock

    lock = LayerLock()
    held, release = threading.Event(), threading.Event()

    def hold():
        with lock.shared():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    real_wait = lock._cond.wait

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    lock._cond.wait = interrupted
    with pytest.raises(KeyboardInterrupt):
        with lock.exclusive():
            pass
    lock._cond.wait = real_wait
    release.set()
    t.join()
    got = threading.Event()
    t2 = threading.Thread(target=lambda: (lock.shared().__enter__(), got.set()))
    t2.start()
    assert got.wait(5)
