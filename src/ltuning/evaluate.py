"""Evaluation per A.4: score each text against all K labels, argmax; accuracy, MCC, macro-F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import TextDataset
from .metrics import classification_metrics, confusion_matrix, macro_f1, matthews_corrcoef

__all__ = ["classification_metrics", "confusion_matrix", "evaluate", "macro_f1", "matthews_corrcoef", "scores_loss"]


def scores_loss(scores: torch.Tensor, labels: torch.Tensor, pairwise: bool) -> float:
    """Validation loss from (N, K) scores, the training objective's: ``pairwise`` (LT adapters trained with
    A.3's pair BCE), mean pair BCE over all N*K (text, label) pairs; otherwise (classic methods, listwise LT)
    K-way cross-entropy."""
    if pairwise:
        targets = F.one_hot(labels, scores.shape[1]).float()
        return F.binary_cross_entropy_with_logits(scores, targets).item()
    return F.cross_entropy(scores, labels).item()


def evaluate(model, dataset: TextDataset, batch_size: int = 64, progress: bool = False,
             task: str | None = None) -> dict:
    """Metrics of ``model`` on ``dataset`` (labels must use the model's label order; with ``task``, that task's
    label set of a multi-task adapter, :meth:`~ltuning.model.LTuningModel.for_task`)."""
    if task is not None:
        model = model.for_task(task)
    if dataset.label_names != model.label_names:
        from .errors import DataError

        raise DataError(f"the data's labels {dataset.label_names} differ from the adapter's {model.label_names}")
    scores = model.score_texts(dataset.texts, batch_size=batch_size, progress=progress)  # (N, K)
    labels = torch.as_tensor(dataset.labels)
    preds = scores.argmax(-1).tolist()
    out = classification_metrics(preds, dataset.labels, model.num_labels)
    out["loss"] = scores_loss(scores, labels, model.label_conditioned and model.config.objective != "listwise")
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
    for n, row in zip(label_names, m["confusion_matrix"], strict=False):
        lines.append(f"{n:>{w}}" + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)
