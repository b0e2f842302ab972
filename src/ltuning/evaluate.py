"""Evaluation per A.4: score each text against all K labels, argmax; accuracy, MCC, macro-F1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import TextDataset


def confusion_matrix(preds: list[int], labels: list[int], num_labels: int) -> list[list[int]]:
    """cm[true][pred] counts."""
    cm = [[0] * num_labels for _ in range(num_labels)]
    for p, y in zip(preds, labels):
        cm[y][p] += 1
    return cm


def matthews_corrcoef(cm: list[list[int]]) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K) from a confusion matrix; 0 when undefined."""
    K = len(cm)
    t = [sum(cm[k]) for k in range(K)]  # true counts
    p = [sum(cm[i][k] for i in range(K)) for k in range(K)]  # predicted counts
    c = sum(cm[k][k] for k in range(K))
    s = sum(t)
    num = c * s - sum(pk * tk for pk, tk in zip(p, t))
    den = math.sqrt(s * s - sum(pk * pk for pk in p)) * math.sqrt(s * s - sum(tk * tk for tk in t))
    return num / den if den else 0.0


def macro_f1(cm: list[list[int]]) -> float:
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
        "accuracy": sum(int(p == y) for p, y in zip(preds, labels)) / n if n else 0.0,
        "mcc": matthews_corrcoef(cm),
        "macro_f1": macro_f1(cm),
        "confusion_matrix": cm,
        "num_examples": n,
    }


def scores_loss(scores: torch.Tensor, labels: torch.Tensor, label_conditioned: bool) -> float:
    """Validation loss from (N, K) scores: mean pair BCE over all N*K (text, label) pairs for LT methods,
    K-way cross-entropy for classic methods."""
    if label_conditioned:
        targets = F.one_hot(labels, scores.shape[1]).float()
        return F.binary_cross_entropy_with_logits(scores, targets).item()
    return F.cross_entropy(scores, labels).item()


def evaluate(model, dataset: TextDataset, batch_size: int = 64, progress: bool = False) -> dict:
    """Metrics of ``model`` on ``dataset`` (labels must use the model's label order)."""
    if dataset.label_names != model.label_names:
        from .errors import DataError

        raise DataError(f"the data's labels {dataset.label_names} differ from the adapter's {model.label_names}")
    scores = model.score_texts(dataset.texts, batch_size=batch_size, progress=progress)  # (N, K)
    labels = torch.as_tensor(dataset.labels)
    preds = scores.argmax(-1).tolist()
    out = classification_metrics(preds, dataset.labels, model.num_labels)
    out["loss"] = scores_loss(scores, labels, model.label_conditioned)
    out["majority_accuracy"] = max(dataset.label_counts()) / len(dataset) if len(dataset) else 0.0
    return out


def format_metrics(m: dict, label_names: list[str]) -> str:
    """A short table: headline metrics and the confusion matrix."""
    lines = [
        f"{'examples':>10} {'accuracy':>9} {'mcc':>7} {'macro_f1':>9} {'loss':>7} {'majority':>9}",
        f"{m['num_examples']:>10} {m['accuracy']:>9.4f} {m['mcc']:>7.4f} {m['macro_f1']:>9.4f} "
        f"{m.get('loss', float('nan')):>7.4f} {m.get('majority_accuracy', float('nan')):>9.4f}",
        "confusion matrix (rows: true, columns: predicted):",
    ]
    w = max(8, *(len(n) for n in label_names)) + 1
    lines.append(" " * w + "".join(f"{n:>{w}}" for n in label_names))
    for n, row in zip(label_names, m["confusion_matrix"]):
        lines.append(f"{n:>{w}}" + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)
