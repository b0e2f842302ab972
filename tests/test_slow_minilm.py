"""The packaged MiniLM (BERT, 6 layers, d=384) on the packaged demo data: a short LT-prefix run with finite
losses and metrics, whose saved adapter scores exactly as the trained model did. Run with ``-m slow``."""

from __future__ import annotations

import math

import pytest
import torch

pytestmark = pytest.mark.slow


def minilm_and_demo(n_train: int, n_val: int):
    """The packaged minilm and seeded subsets of the packaged demo data; skip where they are not installed."""
    from ltuning.data import read_demo
    from ltuning.loading import load_backbone

    try:
        return (load_backbone("minilm"), read_demo("train").subset(n_train, seed=0),
                read_demo("validation").subset(n_val, seed=0))
    except Exception as e:  # packaged model or data not installed here
        pytest.skip(f"packaged minilm / demo data unavailable: {e}")


def test_minilm_lt_prefix_demo(tmp_path):
    from ltuning.adapter import load_adapter, save_adapter
    from ltuning.config import LTuningConfig
    from ltuning.evaluate import evaluate
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, train

    backbone, train_data, val_data = minilm_and_demo(2000, 200)
    dims = backbone.dims
    assert (dims.num_layers, dims.hidden_size, dims.num_kv_heads) == (6, 384, 12)

    config = LTuningConfig(method="lt-prefix", base_model="minilm", label_names=train_data.label_names,
                           label_texts=["The review is negative.", "The review is positive."])
    model = LTuningModel(backbone, config)
    l = model.config.label_length  # filled in by the model (on its own copy of the config)
    assert model.num_trainable_parameters() == 2 * l * l * dims.num_layers * dims.hidden_size + 3 * dims.hidden_size
    initial = {k: v.clone() for k, v in model.method.state_dict().items()}
    before = evaluate(model, val_data)
    assert math.isfinite(before["loss"])
    result = train(model, train_data, val_data,
                   TrainArgs(max_steps=40, batch_size=16, eval_every=20, progress=False, seed=0))
    losses = [r["loss"] for r in result.train_log]
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    after = result.best_metrics
    assert math.isfinite(after["loss"]) and 0.0 <= after["accuracy"] <= 1.0
    assert after["num_examples"] == len(val_data)
    assert result.best_step in (20, 40)
    assert all(not torch.equal(v, initial[k]) for k, v in model.method.state_dict().items())

    texts = val_data.texts[:50]
    scores = model.score_texts(texts)
    save_adapter(model, tmp_path / "adapter")
    loaded = load_adapter(tmp_path / "adapter", backbone=backbone)
    assert torch.equal(loaded.score_texts(texts), scores)
    assert loaded.predict(texts) == model.predict(texts)
    # loading by name (the adapter's base_model) gives the same scores too
    assert torch.equal(load_adapter(tmp_path / "adapter").score_texts(texts), scores)


def test_demo_defaults_learn():
    """The README's demo settings (default lt-prefix config and label texts on minilm) learn: a short run
    ends clearly above the majority class. Guards the defaults themselves (pooling, prefix pooling,
    learning rate): with the BERT pooler instead of the model's mean pooling this run stayed at majority."""
    from ltuning.config import LTuningConfig, TextPooling
    from ltuning.data import get_task
    from ltuning.model import LTuningModel
    from ltuning.train import TrainArgs, train

    backbone, train_data, val_data = minilm_and_demo(3000, 300)
    task = get_task("demo")
    model = LTuningModel(backbone, LTuningConfig(method="lt-prefix", base_model="minilm",
                                                 label_names=task.label_names, label_texts=task.label_texts))
    assert model.pooling == TextPooling.MEAN  # read from the sentence-transformers folder
    result = train(model, train_data, val_data,
                   TrainArgs(max_steps=200, batch_size=16, eval_every=100, progress=False, seed=0))
    counts = [val_data.labels.count(k) for k in range(2)]
    majority = max(counts) / len(val_data)
    assert result.best_metrics["accuracy"] >= majority + 0.1, (result.best_metrics, majority)
