"""Label sets (ltuning/labels.py): the rules hold wherever label texts meet a backbone (a new model, an adapter
being loaded, open-vocabulary candidates). Labels whose token ids are equal (the same text, or texts the
tokenizer cannot tell apart) always tie, so they are an error; a label text longer than the position table
is an error naming it, not an IndexError; l is bounded in the model itself."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import make_tokenizer, tiny_bert

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.api import candidate_injection, score_candidates
from ltuning.backbones import Backbone
from ltuning.config import LTuningConfig, TextPooling
from ltuning.errors import AdapterError, ConfigError
from ltuning.labels import LabelSet, max_label_length
from ltuning.model import LTuningModel

NAMES = ["negative", "positive"]
TEXTS = ["the movie was good", "bad plot"]
EMOJI = ["😡👎", "😍👍"]  # no emoji in a BERT WordPiece vocabulary: both become [CLS] [UNK] [SEP]


def bert(max_positions: int = 64) -> Backbone:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=max_positions)
    return Backbone(BertModel(cfg), make_tokenizer("encoder"), name="tiny-bert")


@pytest.fixture
def wordpiece(tmp_path) -> Backbone:
    """A tiny BERT with a real WordPiece tokenizer (BertTokenizerFast) whose vocabulary has no emoji."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "bad", "good", "the", "movie", "was", "plot", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    assert tok(EMOJI[0])["input_ids"] == tok(EMOJI[1])["input_ids"] == [2, 1, 3]
    assert tok("bad")["input_ids"] == [2, 5, 3]
    return Backbone(BertModel(cfg), tok, name="wordpiece-bert")


# ---------------------------------------------------------------------- empty labels
@pytest.mark.parametrize("invisible", ["\u200b", "\u00ad", " \u200b\u200b "])
def test_a_label_text_the_tokenizer_drops_entirely_is_an_error(wordpiece, invisible):
    """[CLS] [SEP] and nothing between: the label would carry no text (the special tokens do not count)."""
    assert wordpiece.tokenizer(invisible)["input_ids"] == [2, 3]
    for method in ("lt-prefix", "prefix"):
        with pytest.raises(ConfigError, match=r"label texts \[.*\] tokenize to nothing on wordpiece-bert"):
            LTuningModel(wordpiece, LTuningConfig(method=method, label_names=NAMES, label_texts=["bad", invisible]))


def test_a_label_length_that_keeps_only_special_tokens_is_an_error():
    # l = 2 keeps [CLS] [SEP] of every label: no word of any label, whatever the texts
    with pytest.raises(ConfigError, match=r"label_length=2 is too short for tiny-bert: the label tokens it keeps "
                                          r"of \['bad', 'good'\] are only the tokenizer's special tokens"):
        LTuningModel(bert(), LTuningConfig(label_names=NAMES, label_texts=["bad", "good"], label_length=2))
    assert LTuningModel(bert(), LTuningConfig(label_names=NAMES, label_texts=["bad", "good"],
                                              label_length=3)).label_mask.shape == (2, 3)


# ---------------------------------------------------------------------- identical labels
@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_identical_training_label_texts_are_an_error(method):
    with pytest.raises(ConfigError, match=r"label texts must be unique, but 'good' is given twice \(labels "
                                          r"'negative' and 'positive'\).*always tie.*--label-texts"):
        LTuningModel(bert(), LTuningConfig(method=method, label_names=NAMES, label_texts=["good", "good"]))


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_label_texts_that_tokenize_alike_are_an_error(wordpiece, method):
    config = LTuningConfig(method=method, label_names=["angry", "happy"], label_texts=EMOJI)
    with pytest.raises(ConfigError) as e:
        LTuningModel(wordpiece, config)
    message = str(e.value)
    assert "\n" not in message
    assert f"label texts {EMOJI[0]!r} and {EMOJI[1]!r} (labels 'angry' and 'happy') tokenize to the same tokens on " \
           "wordpiece-bert ('[CLS] [UNK] [SEP]')" in message
    assert "in words the tokenizer knows" in message


def test_labels_identical_within_a_given_label_length_are_an_error():
    # l = 3 keeps [CLS] the [SEP] of both: the same prefix for both labels
    with pytest.raises(ConfigError, match="identical within label_length=3 tokens.*larger label_length"):
        LTuningModel(bert(), LTuningConfig(label_names=NAMES, label_texts=["the bad movie", "the good movie"],
                                           label_length=3))


def test_classic_methods_read_no_label_tokens_and_keep_accepting_identical_texts():
    # their K-way head tells the labels apart by index: nothing ties
    model = LTuningModel(bert(), LTuningConfig(method="prefix", label_names=NAMES, label_texts=["good", "good"]))
    assert model.score_texts(TEXTS).shape == (2, 2)


def test_an_adapter_with_identical_label_texts_is_refused_on_loading(tmp_path):
    model = LTuningModel(bert(), LTuningConfig(label_names=NAMES))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["label_texts"] = ["good", "good"]  # an adapter saved by ltuning before the rule, or edited
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(AdapterError) as e:
        load_adapter(tmp_path, backbone=model.backbone)
    assert str(e.value).startswith(f"{tmp_path / CONFIG_NAME}: label texts must be unique, but 'good' is given twice")


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_identical_candidates_are_an_error_in_every_entry_point(method):
    model = LTuningModel(bert(), LTuningConfig(method=method, label_names=NAMES, label_length=4))
    with pytest.raises(ConfigError, match="candidate labels must be unique, but 'good' is given twice"):
        candidate_injection(model, ["bad", "good", "good"])
    with pytest.raises(ConfigError, match="candidate labels must be unique"):
        score_candidates(model, TEXTS, ["good", "good"])
    with pytest.raises(ConfigError, match="candidate labels must be unique"):
        model.predict(TEXTS, candidate_labels=[["bad", "good"], ["fun", "fun"]])


@pytest.mark.parametrize("method", ["lt-prefix", "lt-prompt"])
def test_candidates_that_tokenize_alike_are_an_error(wordpiece, method):
    model = LTuningModel(wordpiece, LTuningConfig(method=method, label_names=["bad", "good"], label_length=3))
    with pytest.raises(ConfigError, match=r"candidate labels '😡👎' and '😍👍' tokenize to the same tokens on "
                                          r"wordpiece-bert \('\[CLS\] \[UNK\] \[SEP\]'\)"):
        model.predict(TEXTS, candidate_labels=EMOJI)
    assert len(candidate_injection(model, ["bad", "good"]).label_vectors) == 2  # distinct ones still work


def test_the_label_set_keeps_the_token_ids_its_encodings_hold():
    bb = bert()
    labels = LabelSet.build(bb, ["the good movie", "bad"], 3)
    cls, sep, the, bad = (bb.tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "the", "bad"))
    assert labels.token_ids == [(cls, the, sep), (cls, bad, sep)]
    assert labels.cut == ["the good movie"] and labels.length == 3
    assert labels.states.shape == (2, 3, 32) and labels.mask.tolist() == [[True] * 3, [True] * 3]
    assert labels.vectors is None and labels.encode_vectors(bb, TextPooling.CLS).shape == (2, 32)


# ---------------------------------------------------------------------- lengths
def test_a_label_text_longer_than_the_position_table_is_a_config_error():
    bb = bert(max_positions=16)
    long_text = " ".join(["good"] * 30)  # 32 tokens on a 16-position table: was an IndexError
    config = LTuningConfig(label_names=NAMES, label_texts=["bad", long_text])
    with pytest.raises(ConfigError, match=r"label text 'good good good .*\.\.\.' is 32 tokens on tiny-bert, more than "
                                          r"the 16 positions the model can run; shorten it"):
        LTuningModel(bb, config)
    # a given l cuts label texts to their first l tokens, as max_length cuts texts; the similarity head's
    # label vector reads the text up to the table's size
    model = LTuningModel(bb, LTuningConfig(label_names=NAMES, label_texts=["bad", long_text], label_length=4))
    assert model.label_states.shape[1] == 4 and torch.isfinite(model.score_texts(TEXTS)).all()


def test_a_candidate_longer_than_the_position_table_is_a_config_error():
    bb = bert(max_positions=16)
    long_text = " ".join(["good"] * 30)
    prompt = LTuningModel(bb, LTuningConfig(method="lt-prompt", label_names=NAMES))
    with pytest.raises(ConfigError, match="candidate label 'good good .* is 32 tokens on tiny-bert"):
        prompt.predict(TEXTS, candidate_labels=["bad", long_text])
    prefix = LTuningModel(bb, LTuningConfig(method="lt-prefix", label_names=NAMES))  # Z reads l tokens: cut
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(prefix.predict(TEXTS, candidate_labels=["bad", long_text])) == 2
    assert any("truncated" in str(w.message) for w in caught)


@pytest.mark.parametrize("method", ["lt-prefix", "prefix"])
def test_the_model_itself_bounds_label_length(method):
    bb = bert()
    with pytest.raises(ConfigError, match=r"label_length must be in \[1, 64\] for tiny-bert, got 65"):
        LTuningModel(bb, LTuningConfig(method=method, label_names=NAMES, label_length=65))


def test_roberta_label_length_bound_counts_its_shifted_positions():
    from transformers import RobertaConfig, RobertaModel

    cfg = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=20, pad_token_id=1)
    bb = Backbone(RobertaModel(cfg), make_tokenizer("encoder"), name="tiny-roberta")
    assert max_label_length(bb) == 18  # positions 2..19
    with pytest.raises(ConfigError, match=r"label_length must be in \[1, 18\]"):
        LTuningModel(bb, LTuningConfig(label_names=NAMES, label_length=19))
    assert LTuningModel(bb, LTuningConfig(label_names=NAMES, label_length=18)).label_states.shape[1] == 18


def test_the_tiny_vocabulary_knows_the_label_names_tests_use():
    # the tiny word-level test tokenizer knows the label names the tests use
    bb = Backbone(*tiny_bert(), name="tiny")
    assert len({tuple(bb.tokenizer(t)["input_ids"]) for t in ("neg", "pos", "neu", "b", "c", "a", "0", "1")}) == 8


# ---------------------------------------------------------------------- command line
def test_cli_train_refuses_identical_label_texts_in_one_line(tmp_path, capsys, monkeypatch):
    from test_cli import TRAIN, VALID, one_error_line, save_tiny_bert, train_args, write_csv

    from ltuning.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models = {"tiny": str(save_tiny_bert(tmp_path / "m"))}
    files = {"train": str(write_csv(tmp_path / "t.csv", TRAIN)), "valid": str(write_csv(tmp_path / "v.csv", VALID))}
    out = tmp_path / "out"
    capsys.readouterr()  # the tiny model's save progress bar
    rc = main(train_args(models, files, out, "--label-texts", "same,same"))
    one_error_line(capsys, rc, "label texts must be unique, but 'same' is given twice")
    assert not (out / CONFIG_NAME).exists()
