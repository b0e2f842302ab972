"""Prediction inputs through the Python API: batch sizes, sentence pairs, candidate labels, templates,
thresholds, and texts longer than a learned position table. Each bad input is a clear ltuning error."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_bert

from ltuning import LTuningConfig, get_ltuning_model
from ltuning.backbones import Backbone
from ltuning.errors import ConfigError, DataError

TEXTS = ["the movie was very good", "bad plot", "i loved it"]


def make(method="lt-prefix", label_length=None, labels=None, **kw):
    model, tok = tiny_bert()
    lt = get_ltuning_model(Backbone(model, tok, name="tiny-bert"),
                           LTuningConfig(method=method, label_length=label_length, **kw),
                           labels=labels or {"neg": "negative", "pos": "positive"})
    with torch.no_grad():
        for p in lt.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return lt.eval()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "8"])
def test_batch_size_must_be_a_positive_integer(bad):
    lt = make()
    with pytest.raises(ConfigError, match="batch_size"):
        lt.predict(TEXTS, batch_size=bad)
    with pytest.raises(ConfigError, match="batch_size"):
        lt.score_texts(TEXTS, batch_size=bad)


def test_batch_size_does_not_change_scores():
    lt = make()
    # equal up to float rounding: other batch shapes take other matmul blockings (oneDNN / AMX kernels)
    torch.testing.assert_close(lt.score_texts(TEXTS, batch_size=1), lt.score_texts(TEXTS, batch_size=64),
                               atol=1e-5, rtol=0)


def test_pair_model_takes_pairs_and_refuses_single_texts():
    lt = make()
    lt.config.text_pairs = True  # as train() / PairCollator set it for (premise, hypothesis) data
    pair = ("the movie was good", "it was fun")
    one = lt.predict(pair)
    assert one in lt.label_names  # one pair in, one label out
    assert lt.predict([pair, pair]) == [one, one]
    with pytest.raises(DataError, match="pairs"):
        lt.predict("the movie was good")
    with pytest.raises(DataError, match="text 1 is a single text"):
        lt.predict([pair, "bad plot"])
    with pytest.raises(DataError, match="text 1 is a single text"):
        lt.score_texts([pair, "bad plot"])
    with pytest.raises(DataError, match="3 parts"):
        lt.predict([("a", "b", "c")])


def test_single_text_model_reads_a_tuple_of_two_texts_as_two_texts():
    lt = make()
    assert lt.config.text_pairs is None  # not known before training: a 2-tuple is one pair, as before
    assert lt.predict(("the movie was good", "bad plot")) in lt.label_names
    lt.config.text_pairs = False  # as train() sets it for single-text data
    out = lt.predict(("the movie was good", "bad plot"))
    assert isinstance(out, list) and len(out) == 2
    assert out == lt.predict(["the movie was good", "bad plot"])


def test_candidate_labels_as_a_comma_string_like_the_pipeline():
    lt = make(label_length=4)
    assert lt.predict(TEXTS, candidate_labels="bad, good", return_scores=True) == \
        lt.predict(TEXTS, candidate_labels=["bad", "good"], return_scores=True)
    for empty in ("", " , "):
        with pytest.raises(ConfigError, match="candidate_labels is empty"):
            lt.predict(TEXTS, candidate_labels=empty)


@pytest.mark.parametrize("bad", [1.01, -0.1, float("nan"), "0.5"])
def test_threshold_must_be_a_probability(bad):
    with pytest.raises(ConfigError, match="threshold"):
        make().predict(TEXTS, multi_label=True, threshold=bad)


def test_candidates_identical_within_label_length_are_an_error():
    lt = make()  # l = 3: [CLS] negative [SEP]
    assert lt.config.label_length == 3
    # "the review is bad ." keeps [CLS] the [SEP] for both labels: always a tie
    with pytest.raises(ConfigError, match="identical within the adapter's label_length=3"):
        lt.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="the movie is {}.")
    # LT-prompt reads candidate texts at full length: the same template works
    lp = make("lt-prompt")
    out = lp.predict(TEXTS, candidate_labels=["bad", "good"], hypothesis_template="the movie is {}.",
                     return_scores=True)
    assert all(len(set(o["scores"])) == 2 for o in out)


def test_truncation_warning_points_at_the_caller():
    lt = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lt.predict(TEXTS, candidate_labels=["bad movie", "good movie"])
    mine = [w for w in caught if "truncated" in str(w.message)]
    assert mine and mine[0].filename == __file__


def test_hypothesis_template_needs_exactly_one_slot_and_keeps_other_braces():
    from ltuning.api import _apply_template

    assert _apply_template(["bad"], "x {} {0} {{") == ["x bad {0} {{"]
    for bad in ("no slot", "{} and {}", 3):
        with pytest.raises(ConfigError, match="exactly once"):
            _apply_template(["bad"], bad)


def test_long_texts_are_cut_to_what_the_position_table_holds():
    lt = make(max_length=512)  # the tiny BERT has 64 positions
    l = lt.config.label_length
    assert lt.text_max_length == 64 - l
    long_text = " ".join(["good"] * 300)
    scores = lt.score_texts([long_text, "bad plot"])
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()
    assert lt.predict(long_text) in lt.label_names


def test_pair_collator_marks_pair_models():
    from ltuning.hf import PairCollator

    lt = make()
    PairCollator(lt, text_columns=["premise", "hypothesis"])
    assert lt.config.text_pairs is True
    PairCollator(lt, text_columns="text")  # e.g. over pre-tokenized pair rows: must not unmark the model
    assert lt.config.text_pairs is True
    with pytest.raises(DataError, match="1 column"):
        PairCollator(lt, text_columns=["a", "b", "c"])


@pytest.mark.parametrize("kw, key", [({"prefix_pooling": "x"}, "prefix_pooling"),
                                     ({"text_pooling": "max"}, "text_pooling"),
                                     ({"text_pairs": "yes"}, "text_pairs")])
def test_config_enums_and_flags_are_config_errors(kw, key):
    with pytest.raises(ConfigError, match=key):
        LTuningConfig(label_names=["a", "b"], **kw)


def test_mixed_single_texts_and_pairs_are_refused():
    lt = make()
    with pytest.raises(DataError, match="all single texts or all"):
        lt.predict(["a long text about a good movie", ("the movie", "it was good")])
    with pytest.raises(DataError, match="all single texts or all"):
        lt.score_texts([("the movie", "it was good"), "a long text about a good movie"])


def test_config_is_not_changed_by_building_a_model():
    from conftest import tiny_llama

    cfg = LTuningConfig(method="lt-prefix", label_names=["neg", "pos"])
    model, tok = tiny_bert()
    enc = get_ltuning_model(Backbone(model, tok), cfg, labels=["neg", "pos"])
    from ltuning.model import LTuningModel

    direct = LTuningModel(Backbone(model, tok), cfg)
    assert cfg.text_pooling.value == "auto" and cfg.label_length is None and cfg.backbone_fingerprint is None
    assert direct.config.text_pooling.value == "pooler" and enc.config.label_length == direct.config.label_length
    dec_model, dec_tok = tiny_llama()
    assert LTuningModel(Backbone(dec_model, dec_tok), cfg).pooling.value == "last"  # the same config, reused


def test_autocast_does_not_leak_a_bf16_injection_into_float32_calls():
    lt = make()
    fp32 = lt.score_texts(TEXTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lt.score_texts(TEXTS)
        assert lt.injection().prefix.dtype == torch.bfloat16
    assert lt.injection().prefix.dtype == torch.float32
    assert torch.equal(lt.score_texts(TEXTS), fp32)


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt", "prefix", "prompt"])
def test_a_model_cast_to_bf16_scores_and_trains(method):
    """model.to(torch.bfloat16) casts the trainable maps too: the head computes in their dtype (it used to cast
    the backbone's output to float32 and fail on the bf16 head), close to the float32 scores."""
    lt = make(method)
    fp32 = lt.score_texts(TEXTS)
    lt.to(torch.bfloat16)
    assert lt.head_dtype == torch.bfloat16 and lt.dtype == torch.bfloat16
    bf16 = lt.score_texts(TEXTS)
    assert bf16.shape == fp32.shape and torch.isfinite(bf16).all()
    assert torch.allclose(bf16.float(), fp32, atol=0.1, rtol=0.05)
    batch = lt.tokenize(TEXTS)
    labels = torch.tensor([1, 0, 1])
    lt.train()
    loss = (lt.loss(batch, labels, objective="listwise") if lt.label_conditioned else lt.loss(batch, labels))
    loss.backward()
    grads = [p.grad for p in lt.method.parameters() if p.requires_grad]
    assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert grads and all(g is not None and g.dtype == torch.bfloat16 for g in grads)
    if lt.label_conditioned:  # the pairwise loss too (its float targets follow the logits' dtype)
        lt.zero_grad()
        pair = lt.loss(batch, labels, label_ids=torch.tensor([1, 1, 0]), targets=torch.tensor([1, 0, 0]))
        assert pair.dtype == torch.bfloat16 and torch.isfinite(pair)


def test_threshold_without_multi_label_is_refused_not_ignored():
    lt = make()
    with pytest.raises(ConfigError, match="threshold applies to multi_label=True only"):
        lt.predict(TEXTS, threshold=0.2)
    assert lt.predict(TEXTS, threshold=None) == lt.predict(TEXTS)
    assert lt.predict(TEXTS, multi_label=True) == lt.predict(TEXTS, multi_label=True, threshold=0.5)


def test_the_callers_tokenizer_is_left_as_it_was():
    """A decoder's tokenizer set up for generate() (left padding, no pad token) is not changed by wrapping its
    model; ltuning pads a copy on the right."""
    from conftest import tiny_llama

    llama, tok = tiny_llama()
    tok.padding_side, tok.pad_token = "left", None
    lt = get_ltuning_model(llama, LTuningConfig(method="lt-prompt"), labels=["neg", "pos"], tokenizer=tok)
    assert tok.padding_side == "left" and tok.pad_token is None
    assert lt.backbone.tokenizer.padding_side == "right" and lt.backbone.tokenizer.pad_token is not None
    assert len(lt.predict(["good film", "a much longer and rather bad film"])) == 2


def test_model_call_takes_what_predict_takes():
    """model(texts) reads any iterable of texts, as predict does (a datasets column is not a list)."""
    lt = make()
    want = lt(list(TEXTS))
    assert lt(iter(TEXTS)) == want and lt(texts=(t for t in TEXTS)) == want
    datasets = pytest.importorskip("datasets")
    assert lt(datasets.Dataset.from_dict({"text": list(TEXTS)})["text"]) == want
    with pytest.raises(DataError, match="texts"):
        lt(None)
