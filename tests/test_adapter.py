"""Adapters: save -> load gives the same scores; every broken or mismatched folder is an AdapterError."""

from __future__ import annotations

import json

import pytest
import torch

from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter, read_adapter_config, save_adapter
from ltuning.backbones import Backbone
from ltuning.config import LTuningConfig
from ltuning.errors import AdapterError, ConfigError
from ltuning.model import LTuningModel

METHOD_NAMES = ["lt-prefix", "lt-prompt", "prefix", "prompt"]
TEXTS = ["the movie was very good", "bad plot", "i loved it", "awful boring film", "great actors and story"]


def make_model(backbone, method="lt-prefix") -> LTuningModel:
    cfg = LTuningConfig(method=method, base_model=backbone.name, label_names=["negative", "neutral", "positive"],
                        label_texts=["negative sentiment", "neutral", "the sentiment is positive"])
    model = LTuningModel(backbone, cfg)
    with torch.no_grad():  # move away from the initialisation, so a load that re-initialises would show
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    from conftest import tiny_bert

    bb = Backbone(*tiny_bert(), name="tiny-bert")
    model = make_model(bb)
    save_adapter(model, tmp_path / "adapter")
    return bb, model, tmp_path / "adapter"


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_save_load_gives_identical_scores(backbone, method, tmp_path):
    model = make_model(backbone, method)
    before = model.score_texts(TEXTS)
    out = save_adapter(model, tmp_path / "a")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME, "config.json"]  # no temporary files left
    loaded = load_adapter(out, backbone=backbone)
    assert loaded.config.to_dict() == model.config.to_dict()
    for k, v in model.method.state_dict().items():
        assert torch.equal(loaded.method.state_dict()[k], v), k
    assert torch.equal(loaded.score_texts(TEXTS), before)
    assert loaded.predict(TEXTS) == model.predict(TEXTS)
    meta = json.loads((out / CONFIG_NAME).read_text())["_meta"]
    assert meta["trainable_parameters"] == model.num_trainable_parameters()


def test_adapter_holds_only_trainable_weights(saved):
    from safetensors.torch import load_file

    _, model, path = saved
    state = load_file(str(path / WEIGHTS_NAME))
    assert set(state) == set(model.method.state_dict())
    assert sum(v.numel() for v in state.values()) == model.num_trainable_parameters()


def test_loading_onto_a_different_backbone_names_the_fingerprint(saved):
    from conftest import make_tokenizer
    from transformers import BertConfig, BertModel

    _, _, path = saved
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    other = Backbone(BertModel(cfg), make_tokenizer("encoder"), name="other-bert")
    with pytest.raises(AdapterError, match="fingerprint") as e:
        load_adapter(path, backbone=other)
    assert read_adapter_config(path).backbone_fingerprint in str(e.value)


def test_loading_onto_a_llama_is_refused(saved):
    from conftest import tiny_llama

    _, _, path = saved
    with pytest.raises(AdapterError, match="fingerprint"):
        load_adapter(path, backbone=Backbone(*tiny_llama(), name="tiny-llama"))


def test_missing_folder_and_files(saved, tmp_path):
    bb, _, path = saved
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "nowhere", backbone=bb)
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(AdapterError, match=WEIGHTS_NAME):
        load_adapter(path, backbone=bb)
    (path / CONFIG_NAME).unlink()
    with pytest.raises(AdapterError, match=CONFIG_NAME):
        load_adapter(path, backbone=bb)


@pytest.mark.parametrize("garbage", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_corrupted_weights(saved, garbage):
    bb, _, path = saved
    (path / WEIGHTS_NAME).write_bytes(garbage)
    with pytest.raises(AdapterError, match="safetensors"):
        load_adapter(path, backbone=bb)


def test_truncated_weights(saved):
    bb, _, path = saved
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError):
        load_adapter(path, backbone=bb)


def test_weights_of_another_method_or_shape_or_nan(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    bb, _, path = saved
    state = load_file(str(path / WEIGHTS_NAME))
    w = path / WEIGHTS_NAME
    save_file({k: v for k, v in state.items() if k != "head.weight"}, str(w))
    with pytest.raises(AdapterError, match="missing"):
        load_adapter(path, backbone=bb)
    save_file({**state, "extra": torch.zeros(2)}, str(w))
    with pytest.raises(AdapterError, match="unexpected"):
        load_adapter(path, backbone=bb)
    save_file({**state, "head.weight": torch.zeros(3, 3)}, str(w))
    with pytest.raises(AdapterError, match="shape"):
        load_adapter(path, backbone=bb)
    save_file({**state, "head.weight": torch.full_like(state["head.weight"], float("nan"))}, str(w))
    with pytest.raises(AdapterError, match="non-finite"):
        load_adapter(path, backbone=bb)


def _edit(path, fn):
    cfg = json.loads((path / CONFIG_NAME).read_text())
    out = fn(cfg)
    (path / CONFIG_NAME).write_text(out if isinstance(out, str) else json.dumps(out))


@pytest.mark.parametrize("edit,match", [
    (lambda c: "{not json", "JSON"),
    (lambda c: "[1, 2]", "object"),
    (lambda c: {**c, "surprise": 1}, "unknown"),
    (lambda c: {**c, "label_names": ["only"], "label_texts": ["only"]}, "2 labels"),
    (lambda c: {**c, "label_texts": c["label_texts"][:2]}, "label texts"),
    (lambda c: {**c, "prefix_pooling": "median"}, "median"),
    (lambda c: {**c, "method": "prompt"}, "method"),  # weights of lt-prefix do not fit the prompt baseline
    (lambda c: {**c, "label_length": c["label_length"] + 1}, "shape"),
    (lambda c: {**c, "method": "no-such-method"}, "no-such-method"),
    (lambda c: {**c, "max_length": 0}, "max_length"),
])
def test_edited_json(saved, edit, match):
    bb, _, path = saved
    _edit(path, edit)
    with pytest.raises(AdapterError, match=match):
        load_adapter(path, backbone=bb)


@pytest.fixture
def tiny_model():
    from conftest import tiny_bert

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.model import LTuningModel

    return LTuningModel(Backbone(*tiny_bert(), name="tiny-bert"),
                        LTuningConfig(method="lt-prefix", label_names=["negative", "positive"]))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_normal_mode(tiny_model, tmp_path, umask):
    import os

    from ltuning.adapter import atomic_write_text, save_adapter

    old = os.umask(umask)
    try:
        folder = save_adapter(tiny_model, tmp_path / "adapter")
        atomic_write_text(tmp_path / "out" / "train_results.json", "{}\n")
    finally:
        os.umask(old)
    files = [*folder.iterdir(), tmp_path / "out" / "train_results.json"]
    assert {f.name for f in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("key,value,says", [
    ("label_length", "3", "label_length must be an integer or null"),
    ("max_length", "128", "max_length must be an integer"),
    ("max_length", 1.5, "max_length must be an integer"),
    ("label_length", True, "label_length must be an integer or null"),
    ("label_names", None, "label_names must be a list of strings"),
    ("label_names", "negative", "label_names must be a list of strings"),
    ("label_texts", [1, 2], "label_texts must be a list of strings"),
    ("method", 3, "method must be a string"),
    ("prefix_pooling", None, "prefix_pooling must be a string"),
    ("text_pairs", "yes", "text_pairs must be true, false or null"),
    ("backbone_fingerprint", 7, "backbone_fingerprint must be a string or null"),
])
def test_adapter_config_field_of_the_wrong_type_is_named(tiny_model, tmp_path, key, value, says):
    import json

    from ltuning.adapter import CONFIG_NAME, load_adapter, read_adapter_config, save_adapter
    from ltuning.errors import AdapterError

    folder = save_adapter(tiny_model, tmp_path / "adapter")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(AdapterError) as e:
        read_adapter_config(folder)
    assert says in str(e.value) and CONFIG_NAME in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AdapterError, match=says):
        load_adapter(folder, backbone=tiny_model.backbone)


@pytest.mark.parametrize("pairs", [True, False])
def test_training_records_whether_texts_are_pairs(tiny_model, tmp_path, pairs):
    import json

    from ltuning.adapter import CONFIG_NAME, read_adapter_config, save_adapter
    from ltuning.data import TextDataset
    from ltuning.train import TrainArgs, train

    texts = [("it rains", "it is wet"), ("it rains", "it is dry"), ("a good film", "the film is good"),
             ("bad plot", "the plot is great")]
    data = TextDataset(texts if pairs else [p for p, _ in texts], [0, 1, 0, 1], ["negative", "positive"])
    tiny_model.config.text_pairs = not pairs  # whatever it held before, training sets it from the data
    train(tiny_model, data, None, TrainArgs(max_steps=1, batch_size=4, progress=False))
    assert tiny_model.config.text_pairs is pairs
    folder = save_adapter(tiny_model, tmp_path / "a")
    assert json.loads((folder / CONFIG_NAME).read_text())["text_pairs"] is pairs
    assert read_adapter_config(folder).text_pairs is pairs


@pytest.mark.parametrize("method", ["lt-prompt", "prefix", "prompt"])
def test_an_adapter_recording_a_prefix_pooling_it_never_used_still_loads(backbone, method, tmp_path):
    """Before the option was refused for the methods without label-token pooling, an adapter of theirs could
    record prefix_pooling 'softmax' (taken and unused): it loads and scores exactly as saved."""
    model = make_model(backbone, method)
    out = save_adapter(model, tmp_path / "a")
    raw = json.loads((out / CONFIG_NAME).read_text())
    (out / CONFIG_NAME).write_text(json.dumps({**raw, "prefix_pooling": "softmax"}))
    loaded = load_adapter(out, backbone=backbone)
    assert loaded.config.prefix_pooling.value == "raw"
    assert torch.equal(loaded.score_texts(TEXTS), model.score_texts(TEXTS))
    with pytest.raises(ConfigError, match=f"{method} has none"):
        LTuningModel(backbone, LTuningConfig.from_dict({**model.config.to_dict(), "prefix_pooling": "softmax"}))

