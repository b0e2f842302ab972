"""The peft-shaped API: get_ltuning_model from a model object or a folder, save_pretrained /
from_pretrained with a model card, predict with scores; the docstring examples run."""

from __future__ import annotations

import doctest
import json

import pytest
import torch

from ltuning import LTuningConfig, LTuningModel, get_ltuning_model
from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME
from ltuning.errors import ConfigError

TEXTS = ["the movie was very good", "bad plot", "i loved it", "awful boring film"]


def nudge(model: LTuningModel) -> LTuningModel:
    with torch.no_grad():  # away from the initialisation, so a load that re-initialises would show
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture
def bert_folder(tmp_path):
    from test_cli import save_tiny_bert

    return save_tiny_bert(tmp_path / "tiny-bert")


def test_docstring_examples_run():
    import ltuning.api

    result = doctest.testmod(ltuning.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_get_ltuning_model_from_a_model_object(family):
    from conftest import TINY

    model, tok = TINY[family]()
    lt = get_ltuning_model(model, LTuningConfig(method="lt-prefix"), labels={"neg": "negative", "pos": "positive"},
                           tokenizer=tok)
    assert lt.label_names == ["neg", "pos"] and lt.config.label_texts == ["negative", "positive"]
    assert not any(p.requires_grad for p in lt.backbone.parameters())
    assert all(p.requires_grad for p in lt.trainable_parameters())
    assert len(lt.predict(TEXTS)) == 4


def test_get_ltuning_model_needs_labels_and_a_tokenizer():
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    with pytest.raises(ConfigError, match="labels"):
        get_ltuning_model(bert, LTuningConfig(), tokenizer=tok)
    with pytest.raises(ConfigError, match="tokenizer"):
        get_ltuning_model(bert, LTuningConfig(), labels=["a", "b"])
    config = LTuningConfig(method="lt-prompt")
    get_ltuning_model(bert, config, labels=["negative", "positive"], tokenizer=tok)
    assert config.label_names == [] and config.backbone_fingerprint is None  # the caller's config is untouched


def test_save_pretrained_from_pretrained_by_folder_name(bert_folder, tmp_path, capsys):
    lt = nudge(get_ltuning_model(str(bert_folder), LTuningConfig(method="lt-prompt"), labels=["negative", "positive"]))
    assert lt.config.base_model == str(bert_folder)
    lt.print_trainable_parameters()
    assert "trainable params: 2,114 || all params:" in capsys.readouterr().out  # d^2 + 2d + (d^2 + 2): similarity
    out = lt.save_pretrained(tmp_path / "adapter", validation={"accuracy": 0.75})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME, "config.json"]
    loaded = LTuningModel.from_pretrained(out)  # the backbone named in the adapter
    assert torch.equal(loaded.score_texts(TEXTS), lt.score_texts(TEXTS))
    card = (out / "README.md").read_text()
    for needle in ("base_model:", str(bert_folder), "`lt-prompt`", "| 0 | negative | negative |",
                   "| trainable parameters | 2,114", "| score head | similarity |", "| accuracy | 0.7500 |", "LTuningModel.from_pretrained"):
        assert needle in card, needle
    assert json.loads((out / CONFIG_NAME).read_text())["_meta"]["validation"] == {"accuracy": 0.75}


def test_from_pretrained_onto_a_model_object(tmp_path):
    from conftest import tiny_llama

    llama, tok = tiny_llama()
    lt = nudge(get_ltuning_model(llama, LTuningConfig(method="lt-prefix"), labels=["negative", "positive"],
                                 tokenizer=tok))
    lt.save_pretrained(tmp_path / "a")
    loaded = LTuningModel.from_pretrained(tmp_path / "a", model=llama, tokenizer=tok)
    assert torch.equal(loaded.score_texts(TEXTS), lt.score_texts(TEXTS))


def test_a_model_built_directly_names_its_backbone_and_refuses_an_unused_tokenizer(bert_folder, tmp_path):
    """LTuningModel(backbone, config) with the default base_model names the backbone it was built on (it saved
    'minilm' whatever the backbone); from_pretrained refuses a tokenizer= it would not use."""
    from ltuning.backbones import Backbone
    from ltuning.loading import load_backbone

    backbone = load_backbone(str(bert_folder))
    lt = nudge(LTuningModel(backbone, LTuningConfig(method="lt-prefix", label_names=["negative", "positive"])))
    assert lt.config.base_model == str(bert_folder) == backbone.name
    assert isinstance(backbone, Backbone) and next(lt.method.parameters()).device == backbone.device
    out = lt.save_pretrained(tmp_path / "a")
    assert torch.equal(LTuningModel.from_pretrained(out).score_texts(TEXTS), lt.score_texts(TEXTS))
    with pytest.raises(ConfigError, match="tokenizer= is only for a model object"):
        LTuningModel.from_pretrained(out, tokenizer=backbone.tokenizer)
    with pytest.raises(ConfigError, match="tokenizer= is only for a model object"):
        LTuningModel.from_pretrained(out, str(bert_folder), tokenizer=backbone.tokenizer)


def test_a_fused_optimizer_step_is_not_hidden_by_the_prediction_cache():
    """AdamW(fused=True) updates the weights without bumping their version counter: a model left in eval mode
    and trained in a loop of one's own still scores with its new weights."""
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    lt = nudge(get_ltuning_model(bert, LTuningConfig(method="lt-prefix"), labels=["negative", "positive"],
                                 tokenizer=tok)).eval()
    before = lt.score_texts(TEXTS)
    params = lt.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=0.1, fused=True)
    for _ in range(3):
        sum((p * p).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()
    after = lt.score_texts(TEXTS)
    lt.clear_injection_cache()
    torch.testing.assert_close(after, lt.score_texts(TEXTS), atol=0, rtol=0)  # what a fresh injection gives
    assert not torch.allclose(after, before)


def test_predict_scores_and_single_text():
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    lt = nudge(get_ltuning_model(bert, LTuningConfig(method="prompt"), labels=["negative", "positive"], tokenizer=tok))
    names = lt.predict(TEXTS)
    scored = lt.predict(TEXTS, return_scores=True)
    # the zero-shot pipeline's dict: sequence, every label, scores sorted best first
    assert [s["labels"][0] for s in scored] == names and [s["sequence"] for s in scored] == TEXTS
    for s in scored:
        assert set(s) == {"sequence", "labels", "scores"} and set(s["labels"]) == {"negative", "positive"}
        assert abs(sum(s["scores"]) - 1) < 1e-5
        assert s["scores"] == sorted(s["scores"], reverse=True)
    assert lt.predict(TEXTS[0]) == names[0]
    assert lt.predict([]) == []
