"""peft-style loading: ``LTuningModel.from_pretrained(base_model, adapter_dir)`` as well as the adapter folder
first, ``model.base_model``, ``LTuningConfig.from_pretrained``, and ``transformers.Trainer`` checkpoints of
``LTuningForTrainer`` loaded as adapters."""

from __future__ import annotations

import pytest
import torch

from ltuning import AdapterError, ConfigError, LTuningConfig, LTuningModel, get_ltuning_model
from ltuning.adapter import read_adapter_config

TEXTS = ["the movie was good", "awful boring film", "i loved it"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BERT folder and an adapter trained (nudged) on it."""
    from test_cli import save_tiny_bert

    root = tmp_path_factory.mktemp("peft")
    bert = save_tiny_bert(root / "bert")
    lt = get_ltuning_model(str(bert), LTuningConfig(method="lt-prefix"), labels=["negative", "positive"])
    with torch.no_grad():
        for p in lt.method.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return bert, lt.save_pretrained(root / "adapter"), lt.score_texts(TEXTS)


def test_both_argument_orders(saved):
    from transformers import AutoTokenizer, BertModel

    bert, adapter, scores = saved
    for loaded in (LTuningModel.from_pretrained(adapter), LTuningModel.from_pretrained(adapter, str(bert)),
                   LTuningModel.from_pretrained(str(bert), adapter),  # peft's order, by name
                   LTuningModel.from_pretrained(BertModel.from_pretrained(bert), adapter,  # peft's order, an object
                                                tokenizer=AutoTokenizer.from_pretrained(bert))):
        assert torch.allclose(loaded.score_texts(TEXTS), scores, atol=1e-6)
    backbone = LTuningModel.from_pretrained(adapter).backbone
    loaded = LTuningModel.from_pretrained(backbone, adapter)  # a Backbone first
    assert loaded.backbone is backbone and loaded.base_model is backbone.model
    with pytest.raises(ConfigError, match="give the adapter folder"):
        LTuningModel.from_pretrained(backbone)
    with pytest.raises(AdapterError, match="adapter folder not found"):
        LTuningModel.from_pretrained(str(bert) + "-nowhere", "also-nowhere")


def test_config_from_pretrained(saved):
    _, adapter, _ = saved
    config = LTuningConfig.from_pretrained(adapter)
    assert config == read_adapter_config(adapter) and config.label_names == ["negative", "positive"]
    assert config.method == "lt-prefix" and config.backbone_fingerprint
    with pytest.raises(AdapterError, match="adapter_config.json is missing"):
        LTuningConfig.from_pretrained(adapter.parent / "bert")


def test_a_trainer_checkpoint_loads_as_an_adapter(saved, tmp_path):
    datasets = pytest.importorskip("datasets")
    from safetensors.torch import load_file, save_file
    from transformers import Trainer, TrainingArguments

    from ltuning.hf import LTuningForTrainer, PairCollator

    bert, adapter, _ = saved
    model = LTuningModel.from_pretrained(adapter)
    rows = {"text": ["the movie was good", "bad plot", "i loved it", "awful boring film"], "label": [1, 0, 1, 0]}
    args = TrainingArguments(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, save_steps=2,
                             report_to=[], use_cpu=True, remove_unused_columns=False, learning_rate=1e-2,
                             disable_tqdm=True)
    Trainer(model=LTuningForTrainer(model, num_train_texts=4), args=args, train_dataset=datasets.Dataset.from_dict(rows),
            data_collator=PairCollator(model)).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    assert not (ckpt / "adapter_config.json").exists()  # what the Trainer writes: model.safetensors + its state
    assert LTuningConfig.from_pretrained(ckpt) == model.config
    loaded = LTuningModel.from_pretrained(ckpt)
    assert torch.allclose(loaded.score_texts(TEXTS), model.score_texts(TEXTS), atol=1e-6)
    assert torch.allclose(LTuningModel.from_pretrained(loaded.backbone, ckpt).score_texts(TEXTS),
                          model.score_texts(TEXTS), atol=1e-6)
    # the backbone checks name the file the checkpoint's config is in (there is no adapter_config.json)
    from dataclasses import replace

    from ltuning.adapter_io import fit_config_to_backbone

    for bad, match in ((replace(model.config, backbone_fingerprint=None), "backbone_fingerprint is missing"),
                       (replace(model.config, label_length=10**9), "")):
        with pytest.raises(AdapterError, match=match) as e:
            fit_config_to_backbone(ckpt, bad, loaded.backbone)
        assert str(e.value).startswith(f"{ckpt / 'model.safetensors'}: "), e.value
    # the checkpoint resumes as before: the stored config is not a weight
    state = load_file(str(ckpt / "model.safetensors"))
    LTuningForTrainer(loaded).load_state_dict(state)
    # a clear error for checkpoint folders without the adapter's weights or config
    other = tmp_path / "other"
    other.mkdir()
    save_file({"bert.weight": torch.zeros(2)}, str(other / "model.safetensors"))
    with pytest.raises(AdapterError, match="holds no adapter weights"):
        LTuningModel.from_pretrained(other)
    save_file({k: v for k, v in state.items() if k.startswith("model.method.")}, str(other / "model.safetensors"))
    with pytest.raises(AdapterError, match="no adapter config"):
        LTuningModel.from_pretrained(other)
