"""Text pooling: ``auto`` follows a sentence-transformers folder's declared pooling, and the resolved choice
is what an adapter saves (so it predicts the same wherever it is loaded)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_bert, tiny_llama

from ltuning.adapter import load_adapter, save_adapter
from ltuning.backbones import Backbone, sentence_transformers_pooling
from ltuning.config import LTuningConfig, TextPooling
from ltuning.model import LTuningModel


def _sentence_folder(root, modes: dict, module_path: str = "1_Pooling"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": module_path, "type": "sentence_transformers.models.Pooling"},
    ]))
    (root / module_path).mkdir(parents=True, exist_ok=True)
    (root / module_path / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": False, **modes}))
    return root


@pytest.mark.parametrize("modes, expected", [
    ({"pooling_mode_mean_tokens": True}, TextPooling.MEAN),
    ({"pooling_mode_cls_token": True}, TextPooling.CLS),
    ({"pooling_mode_max_tokens": True}, None),  # no such pooling here: fall back to the model's own
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, None),  # ambiguous
    ({}, None),
])
def test_sentence_transformers_pooling_modes(tmp_path, modes, expected):
    assert sentence_transformers_pooling(_sentence_folder(tmp_path / "m", modes)) == expected


def test_sentence_transformers_pooling_ignores_other_and_broken_folders(tmp_path):
    assert sentence_transformers_pooling(tmp_path / "missing") is None
    assert sentence_transformers_pooling(tmp_path) is None  # no modules.json
    (tmp_path / "modules.json").write_text("{not json")
    assert sentence_transformers_pooling(tmp_path) is None
    outside = _sentence_folder(tmp_path / "other", {"pooling_mode_mean_tokens": True})
    # a modules.json pointing outside its own folder is not followed
    inside = tmp_path / "inner"
    inside.mkdir()
    (inside / "modules.json").write_text(json.dumps(
        [{"path": str(outside / "1_Pooling"), "type": "sentence_transformers.models.Pooling"}]))
    assert sentence_transformers_pooling(inside) is None
    assert sentence_transformers_pooling("") is None


def _bert_in_folder(folder, modes):
    model, tok = tiny_bert()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _sentence_folder(folder, modes)
    from transformers import AutoModel
    return Backbone(AutoModel.from_pretrained(folder), tok)


def test_auto_pooling_follows_the_folder_and_is_saved_resolved(tmp_path):
    bb = _bert_in_folder(tmp_path / "st", {"pooling_mode_mean_tokens": True})
    assert bb.native_pooling == TextPooling.MEAN
    assert bb.resolve_pooling(TextPooling.AUTO) == TextPooling.MEAN
    assert bb.resolve_pooling(TextPooling.CLS) == TextPooling.CLS  # an explicit choice wins
    config = LTuningConfig(method="lt-prefix", label_names=["neg", "pos"])
    model = LTuningModel(bb, config)
    assert model.pooling == TextPooling.MEAN and model.config.text_pooling == TextPooling.MEAN
    assert config.text_pooling == TextPooling.AUTO  # the caller's config is not changed
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["text_pooling"] == "mean"
    texts = ["good movie", "bad film here"]
    assert torch.equal(load_adapter(tmp_path / "adapter", backbone=bb).score_texts(texts), model.score_texts(texts))


def test_auto_pooling_without_sentence_config():
    model, tok = tiny_bert()
    bb = Backbone(model, tok)
    assert bb.native_pooling is None and bb.resolve_pooling(TextPooling.AUTO) == TextPooling.POOLER
    dec_model, dec_tok = tiny_llama()
    assert Backbone(dec_model, dec_tok).resolve_pooling(TextPooling.AUTO) == TextPooling.LAST


def test_adapter_saved_with_auto_keeps_the_old_rule(tmp_path):
    """Adapters saved before 'auto' followed sentence-transformers folders say "auto" and were trained with
    the pooler: they load with the pooler, not with the folder's mean pooling."""
    bb = _bert_in_folder(tmp_path / "st", {"pooling_mode_mean_tokens": True})
    model = LTuningModel(bb, LTuningConfig(method="lt-prefix", label_names=["neg", "pos"], text_pooling="pooler"))
    save_adapter(model, tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    raw = json.loads(path.read_text())
    assert raw["text_pooling"] == "pooler"
    raw["text_pooling"] = "auto"  # what an older ltuning wrote for this model
    path.write_text(json.dumps(raw))
    loaded = load_adapter(tmp_path / "adapter", backbone=bb)
    assert loaded.pooling == TextPooling.POOLER
    texts = ["good movie", "bad film here"]
    assert torch.equal(loaded.score_texts(texts), model.score_texts(texts))


def test_hub_id_pooling_is_read_from_the_local_hub_cache(tmp_path, monkeypatch):
    """A hub id (not a folder) is looked up in the local hub cache; nothing is downloaded."""
    import huggingface_hub

    folder = _sentence_folder(tmp_path / "cached", {"pooling_mode_cls_token": True})

    def fake_cache(repo_id, filename, **kw):
        assert repo_id == "org/sentence-model"
        path = folder / filename
        return str(path) if path.exists() else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fake_cache)
    assert sentence_transformers_pooling("org/sentence-model") == TextPooling.CLS
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)  # not cached
    assert sentence_transformers_pooling("org/sentence-model") is None
