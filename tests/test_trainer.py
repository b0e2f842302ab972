"""transformers.Trainer on a tiny BERT with datasets.Dataset inputs: pair collation, training a few steps,
evaluation by argmax over labels, adapter-only checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from ltuning import LTuningConfig, LTuningModel, get_ltuning_model
from ltuning.hf import LTuningForTrainer, PairCollator, compute_metrics, tokenize_dataset

datasets = pytest.importorskip("datasets")

TRAIN = [("the movie was very good", 1), ("bad plot", 0), ("i loved it", 1), ("awful boring film", 0),
         ("great actors and story", 1), ("it was dull", 0), ("wonderful", 1), ("not good", 0)]
VALID = [("a great film", 1), ("terrible story", 0), ("really fun", 1), ("boring", 0)]


def as_dataset(rows):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]}, features=features)


def tiny(method="lt-prefix") -> LTuningModel:
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    train = as_dataset(TRAIN)
    return get_ltuning_model(bert, LTuningConfig(method=method), labels=train.features["label"], tokenizer=tok)


def test_collator_pairs_half_true_half_false():
    model = tiny()
    rows = [{"text": t, "label": y} for t, y in TRAIN[:6]]
    b = PairCollator(model, seed=1)(rows)
    assert b["input_ids"].shape[0] == 6 and b["labels"].tolist() == [y for _, y in TRAIN[:6]]
    assert b["pair_target"].tolist() == [1, 1, 1, 0, 0, 0]
    true = b["pair_target"] == 1
    assert torch.equal(b["pair_class"][true], b["labels"][true])
    assert (b["pair_class"][~true] != b["labels"][~true]).all()
    named = PairCollator(model)([{"text": "bad plot", "label": "negative"}, {"text": "fun", "label": "positive"}])
    assert named["labels"].tolist() == [0, 1]


@pytest.mark.parametrize("size", [1, 3])
def test_an_odd_batch_trains_on_false_pairs_too(size):
    """A batch of 1 (gradient accumulation's usual partner) used to be a true pair every time: the model never
    saw a false one. Its row, and an odd batch's middle row, are now false half the time, at random."""
    collate = PairCollator(tiny(), seed=0)
    rows = [{"text": t, "label": y} for t, y in TRAIN[:size]]
    false = [int((collate(rows)["pair_target"] == 0).sum()) for _ in range(200)]
    assert set(false) == {size // 2, size // 2 + 1}
    assert 70 <= sum(f - size // 2 for f in false) <= 130  # about half of the 200 batches


@pytest.mark.parametrize("method", ["lt-prefix", "prompt"])
def test_trainer_trains_and_evaluates(method, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny(method)
    before = {k: v.clone() for k, v in model.method.state_dict().items()}
    args = TrainingArguments(str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4,
                             per_device_eval_batch_size=4, learning_rate=1e-2, logging_steps=1,
                             eval_strategy="steps", eval_steps=2, save_steps=2, load_best_model_at_end=True,
                             metric_for_best_model="accuracy", report_to=[], use_cpu=True,
                             remove_unused_columns=False, seed=0)
    trainer = Trainer(model=LTuningForTrainer(model, num_train_texts=len(TRAIN)), args=args, train_dataset=as_dataset(TRAIN),
                      eval_dataset=as_dataset(VALID), data_collator=PairCollator(model),
                      compute_metrics=compute_metrics)
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in model.method.state_dict().items())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    metrics = trainer.evaluate()
    assert {"eval_accuracy", "eval_mcc", "eval_macro_f1", "eval_loss"} <= set(metrics)
    preds = trainer.predict(as_dataset(VALID))
    assert preds.predictions.shape == (4, 2)
    # The Trainer's argmax metrics match ltuning's own evaluation of the same model.
    scores = model.score_texts([t for t, _ in VALID])
    assert torch.allclose(torch.as_tensor(preds.predictions), scores, atol=1e-5)
    # Checkpoints hold the adapter weights only, not the frozen backbone.
    from safetensors.torch import load_file

    ckpt = load_file(str(tmp_path / "out" / "checkpoint-4" / "model.safetensors"))
    config = ckpt.pop("ltuning_adapter_config")  # the adapter config, so that the checkpoint loads as an adapter
    assert json.loads(config.numpy().tobytes())["method"] == method
    assert ckpt and all(".method." in f".{k}" for k in ckpt)
    assert sum(v.numel() for v in ckpt.values()) == model.num_trainable_parameters()
    # and the trained adapter saves and reloads like any other
    saved = trainer.model.save_pretrained(tmp_path / "adapter")
    loaded = LTuningModel.from_pretrained(saved, model=model.backbone)
    assert loaded.predict([t for t, _ in VALID]) == model.predict([t for t, _ in VALID])
    # the Trainer trains the pair objective (A.3), and the adapter says so (multi_label is calibrated)
    assert loaded.config.objective == ("pairwise" if model.label_conditioned else None)


def test_pretokenized_dataset_keeps_default_remove_unused_columns(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny("lt-prompt")
    train = tokenize_dataset(as_dataset(TRAIN), model)
    assert {"input_ids", "attention_mask"} <= set(train.column_names)
    args = TrainingArguments(str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", learning_rate=1e-2)
    trainer = Trainer(model=LTuningForTrainer(model, num_train_texts=len(train)), args=args, train_dataset=train,
                      data_collator=PairCollator(model))
    assert trainer.train().training_loss > 0


def test_anchored_head_adds_its_prior_to_the_trainer_loss_and_needs_the_training_size():
    """score_head="anchored": LTuningForTrainer adds (anchor_weight / n) * (||W - I||^2 + ||C_zeta||^2) to the pair loss,
    n given as num_train_texts; without n it refuses, saying what to pass."""
    from conftest import tiny_bert

    from ltuning.errors import ConfigError

    bert, tok = tiny_bert()
    model = get_ltuning_model(bert, LTuningConfig(method="lt-prefix", score_head="anchored"),
                              labels=as_dataset(TRAIN).features["label"], tokenizer=tok)
    batch = PairCollator(model, seed=0)([{"text": t, "label": y} for t, y in TRAIN[:4]])
    with pytest.raises(ConfigError, match=r"num_train_texts=len\(train_dataset\)\) \(got num_train_texts=None\)"):
        LTuningForTrainer(model).train()(**batch)
    LTuningForTrainer(model).eval()(**batch)  # scoring needs no n
    wrapped = LTuningForTrainer(model, num_train_texts=len(TRAIN)).train()
    with torch.no_grad():
        model.method.text_map.weight.add_(0.01)  # away from the identity: the prior is no longer zero
    loss = wrapped(**batch)["loss"]
    logits = model({k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch},
                   batch["pair_class"])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["pair_target"].float())
    penalty = 0.01 ** 2 * model.method.text_map.weight.numel()
    assert float(loss - bce) == pytest.approx(model.method.anchor_weight / len(TRAIN) * penalty, rel=1e-4)
