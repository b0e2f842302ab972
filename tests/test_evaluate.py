"""Argmax evaluation (A.4) and its metrics, on examples checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ltuning.data import TextDataset
from ltuning.errors import DataError
from ltuning.evaluate import classification_metrics, confusion_matrix, evaluate, macro_f1, matthews_corrcoef

# 6 texts, 3 classes. argmax per row: 0, 1, 2, 2, 0, 1
SCORES = torch.tensor([
    [2.0, 1.0, 0.0],
    [0.1, 0.9, 0.3],
    [0.0, 0.0, 1.0],
    [-1.0, -2.0, -0.5],
    [5.0, 4.0, 4.5],
    [0.2, 0.3, 0.1],
])
LABELS = [0, 1, 2, 0, 1, 1]
PREDS = [0, 1, 2, 2, 0, 1]


class FakeModel:
    """The part of LTuningModel that evaluate() uses: fixed scores."""

    def __init__(self, scores, label_names, label_conditioned=False, objective=None):
        from types import SimpleNamespace

        self.scores, self.label_names = scores, label_names
        self.num_labels = len(label_names)
        self.label_conditioned = label_conditioned
        self.config = SimpleNamespace(objective=objective)
        self.seen = None

    def score_texts(self, texts, batch_size=64, progress=False):
        self.seen = list(texts)
        return self.scores


def test_confusion_matrix_rows_are_true_columns_predicted():
    # true 0 predicted 2 twice, true 1 predicted 0 once
    cm = confusion_matrix([2, 2, 0, 1], [0, 0, 1, 1], 3)
    assert cm == [[0, 0, 2], [1, 1, 0], [0, 0, 0]]


def test_hand_checked_three_class_example():
    m = evaluate(FakeModel(SCORES, ["a", "b", "c"]), TextDataset([f"t{i}" for i in range(6)], LABELS, ["a", "b", "c"]))
    # confusion (rows true): true 0 -> preds {0, 2}; true 1 -> {1, 0, 1}; true 2 -> {2}
    assert m["confusion_matrix"] == [[1, 0, 1], [1, 2, 0], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["num_examples"] == 6
    # per-class F1 = 2tp / (2tp + fp + fn): a: 2/(2+1+1) = 1/2; b: 4/(4+0+1) = 4/5; c: 2/(2+1+0) = 2/3
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # Gorodkin's multi-class MCC: c = 4 correct, s = 6, true counts t = (2, 3, 1), predicted p = (2, 2, 2)
    # (c*s - p.t) / sqrt((s^2 - p.p) (s^2 - t.t)) = (24 - 12) / sqrt((36 - 12) * (36 - 14))
    assert m["mcc"] == pytest.approx(12 / math.sqrt(24 * 22))
    # classic methods: K-way cross-entropy of the scores
    assert m["loss"] == pytest.approx(torch.nn.functional.cross_entropy(SCORES, torch.tensor(LABELS)).item())
    assert m["majority_accuracy"] == pytest.approx(3 / 6)


@pytest.mark.parametrize("objective", ["pairwise", None])  # None: an adapter saved before the key (pairwise)
def test_label_conditioned_loss_is_mean_pair_bce(objective):
    m = evaluate(FakeModel(SCORES, ["a", "b", "c"], label_conditioned=True, objective=objective),
                 TextDataset([f"t{i}" for i in range(6)], LABELS, ["a", "b", "c"]))
    total = 0.0
    for i, y in enumerate(LABELS):
        for k in range(3):
            p = 1 / (1 + math.exp(-SCORES[i, k].item()))
            total += -math.log(p) if k == y else -math.log(1 - p)
    assert m["loss"] == pytest.approx(total / 18, rel=1e-5)


def test_listwise_lt_loss_is_k_way_cross_entropy():
    """The validation loss is the training objective's: a listwise LT adapter's is the K-way CE."""
    m = evaluate(FakeModel(SCORES, ["a", "b", "c"], label_conditioned=True, objective="listwise"),
                 TextDataset([f"t{i}" for i in range(6)], LABELS, ["a", "b", "c"]))
    total = sum(-SCORES[i, y].item() + math.log(sum(math.exp(SCORES[i, k].item()) for k in range(3)))
                for i, y in enumerate(LABELS))
    assert m["loss"] == pytest.approx(total / 6, rel=1e-5)


@pytest.mark.parametrize("preds,labels", [
    ([1, 1, 0, 0, 1, 0, 1, 0, 0, 1], [1, 0, 0, 0, 1, 1, 1, 0, 1, 1]),
    ([1, 1, 1, 0, 0], [0, 1, 1, 1, 0]),
    ([0, 1, 0, 1], [1, 0, 1, 0]),  # all wrong: -1
])
def test_binary_mcc_is_the_textbook_formula(preds, labels):
    tp = sum(p == 1 and y == 1 for p, y in zip(preds, labels, strict=False))
    tn = sum(p == 0 and y == 0 for p, y in zip(preds, labels, strict=False))
    fp = sum(p == 1 and y == 0 for p, y in zip(preds, labels, strict=False))
    fn = sum(p == 0 and y == 1 for p, y in zip(preds, labels, strict=False))
    textbook = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(confusion_matrix(preds, labels, 2)) == pytest.approx(textbook)


def test_binary_hand_example():
    # tp=3 tn=2 fp=1 fn=1 -> mcc = (6 - 1) / sqrt(4 * 4 * 3 * 3) = 5/12; F1 pos = 6/8, neg = 4/6
    preds, labels = [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 1]
    m = classification_metrics(preds, labels, 2)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]]
    assert m["mcc"] == pytest.approx(5 / 12)
    assert m["macro_f1"] == pytest.approx((6 / 8 + 4 / 6) / 2)
    assert m["accuracy"] == pytest.approx(5 / 7)


def test_degenerate_predictions():
    # a constant predictor: MCC undefined -> 0; F1 of the never-predicted class 0
    m = classification_metrics([1, 1, 1, 1], [0, 1, 1, 0], 2)
    assert m["mcc"] == 0.0
    assert m["macro_f1"] == pytest.approx((0 + 2 * 2 / (4 + 2)) / 2)
    assert macro_f1([[4, 0], [0, 0]]) == pytest.approx(0.5)  # a class absent from data and predictions
    assert classification_metrics([0, 1], [0, 1], 2)["mcc"] == pytest.approx(1.0)


def test_evaluate_rejects_a_different_label_order():
    with pytest.raises(DataError, match="labels"):
        evaluate(FakeModel(SCORES[:2, :2], ["neg", "pos"]), TextDataset(["a", "b"], [0, 1], ["pos", "neg"]))
