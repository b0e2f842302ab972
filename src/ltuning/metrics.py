"""Classification metrics from predictions: confusion matrix, accuracy, Matthews correlation, macro-F1.

Pure Python with no imports beyond ``math``, so that tools running outside ltuning's environment (the
peft peers in ``benchmarks/peers``) compute exactly the same numbers from the same file.
"""

from __future__ import annotations

import math


def confusion_matrix(preds: list[int], labels: list[int], num_labels: int) -> list[list[int]]:
    """cm[true][pred] counts."""
    cm = [[0] * num_labels for _ in range(num_labels)]
    for p, y in zip(preds, labels, strict=False):
        cm[y][p] += 1
    return cm


def matthews_corrcoef(cm: list[list[int]]) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K) from a confusion matrix; 0 when undefined."""
    K = len(cm)
    t = [sum(cm[k]) for k in range(K)]  # true counts
    p = [sum(cm[i][k] for i in range(K)) for k in range(K)]  # predicted counts
    c = sum(cm[k][k] for k in range(K))
    s = sum(t)
    num = c * s - sum(pk * tk for pk, tk in zip(p, t, strict=False))
    den = math.sqrt(s * s - sum(pk * pk for pk in p)) * math.sqrt(s * s - sum(tk * tk for tk in t))
    return num / den if den else 0.0


def macro_f1(cm: list[list[int]]) -> float:
    """The mean F1 over all K labels; a label absent from both the data and the predictions counts 0 (so a
    model is not scored on fewer labels than it has; scikit-learn's ``f1_score(average="macro")`` averages over
    the labels present and differs there)."""
    K = len(cm)
    f1s = []
    for k in range(K):
        tp = cm[k][k]
        fp = sum(cm[i][k] for i in range(K)) - tp
        fn = sum(cm[k]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / K


def classification_metrics(preds: list[int], labels: list[int], num_labels: int) -> dict:
    cm = confusion_matrix(preds, labels, num_labels)
    n = len(labels)
    return {
        "accuracy": sum(int(p == y) for p, y in zip(preds, labels, strict=False)) / n if n else 0.0,
        "mcc": matthews_corrcoef(cm),
        "macro_f1": macro_f1(cm),
        "confusion_matrix": cm,
        "num_examples": n,
    }
