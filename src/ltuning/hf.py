"""``transformers.Trainer`` and ``datasets`` integration.

Three pieces plug an :class:`~ltuning.model.LTuningModel` into a Trainer:

- :class:`LTuningForTrainer`: the module the Trainer trains. In training mode it scores (text, label)
  pairs and returns the pair BCE loss (A.3; K-way cross-entropy for the classic baselines); in eval mode
  it returns (B, K) scores of every text against every label, so ``compute_metrics`` can take the argmax
  (A.4). Its ``state_dict`` holds only the adapter's weights, so Trainer checkpoints stay small.
- :class:`PairCollator`: tokenizes (or pads pre-tokenized) rows and pairs the first ``B - B // 2``
  texts with their true label and the other ``B // 2`` with a random wrong one, as
  :mod:`ltuning.pairs` does.
- :func:`compute_metrics`: accuracy, Matthews correlation and macro-F1 from the argmax over labels.

Two more: checkpoints (``checkpoint-N/model.safetensors``) carry the adapter config beside the weights, so
``LTuningModel.from_pretrained("out/checkpoint-N")`` loads one as an adapter; and :func:`use_line_progress`
swaps transformers' tqdm bar for plain progress lines when stderr is a file or a pipe.

Example:
    >>> from transformers import Trainer, TrainingArguments  # doctest: +SKIP
    >>> model = get_ltuning_model("minilm", LTuningConfig(method="lt-prefix"), labels=["negative", "positive"])
    >>> trainer = Trainer(model=LTuningForTrainer(model, num_train_texts=len(train_ds)), args=TrainingArguments(
    ...     "runs/trainer", max_steps=300, per_device_train_batch_size=16,
    ...     learning_rate=model.method.default_learning_rate,  # what ltuning train uses for this method
    ...     remove_unused_columns=False),  # the collator reads the raw "text" column
    ...     train_dataset=train_ds, eval_dataset=val_ds, data_collator=PairCollator(model),
    ...     compute_metrics=compute_metrics)  # doctest: +SKIP
    >>> trainer.train(); model.save_pretrained("runs/trainer/adapter")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from .config import TRAINER_CONFIG_KEY, config_json
from .errors import DataError
from .evaluate import classification_metrics
from .model import LTuningModel
from .progress import EVERY_SECONDS, LineProgress, is_terminal


class LTuningForTrainer(nn.Module):
    """Adapts :class:`LTuningModel` to the Trainer's calling convention (keyword tensors in, a dict with
    ``loss`` and ``logits`` out).

    Input: input_ids, attention_mask (B, n); token_type_ids (B, n) or None; labels (B,) true classes;
        pair_class (B,) the label each text is paired with; pair_target (B,) 1 true pair / 0 false pair.
    Output: training: loss, logits (B,) pair log-odds (LT) or (B, K) (classic); eval: loss, logits (B, K).

    ``num_train_texts``: the training set's size n, needed to train with the ``anchored`` score head (LT-prefix's
    default; its prior on the head is weighted ``anchor_weight / n`` and added to the training loss, as
    ``ltuning train`` does). Training without it raises ConfigError; loading and evaluating do not need it.
    """

    def __init__(self, model: LTuningModel, num_train_texts: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.num_train_texts = num_train_texts

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                pair_class: torch.Tensor | None = None, pair_target: torch.Tensor | None = None) -> dict:
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            batch["token_type_ids"] = token_type_ids
        m = self.model
        if self.training and m.label_conditioned:
            if pair_class is None or pair_target is None:
                raise DataError("training an LT method needs pair_class and pair_target: use ltuning.hf.PairCollator")
            m.config.objective = "pairwise"  # what this trains; saved with the adapter
            logits = m(batch, pair_class)  # (B,)
            loss = F.binary_cross_entropy_with_logits(logits, pair_target.to(logits.dtype))
            prior = m.method.anchor_loss(self.num_train_texts)  # the anchored head's; None for the others
            if prior is not None:
                loss = loss + prior
            return {"loss": loss, "logits": logits}
        scores = m.class_scores(batch)  # (B, K)
        out: dict[str, torch.Tensor] = {"logits": scores}
        if labels is not None:
            if m.label_conditioned:  # mean BCE over all B*K pairs, as ltuning.evaluate reports
                out["loss"] = F.binary_cross_entropy_with_logits(scores, F.one_hot(labels, m.num_labels).to(scores.dtype))
            else:
                out["loss"] = F.cross_entropy(scores, labels)
        return out

    # Checkpoints hold the adapter only: the backbone is frozen and reloaded from its name.
    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The method's weights, plus the adapter config as JSON bytes (a uint8 tensor under
        ``TRAINER_CONFIG_KEY``): the Trainer writes this dict, and nothing else of the model, into each
        ``checkpoint-N/model.safetensors``, which then loads as an adapter
        (``LTuningModel.from_pretrained("out/checkpoint-N")``)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        out = {k: v for k, v in state.items() if ".method." in f".{k}"}
        config = config_json(self.model.config.to_dict()).encode("utf-8")
        out[prefix + TRAINER_CONFIG_KEY] = torch.frombuffer(bytearray(config), dtype=torch.uint8)
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load an adapter-only state (a Trainer checkpoint); the frozen backbone's keys may be absent, and the
        stored config is not a weight."""
        state_dict = {k: v for k, v in state_dict.items() if k != TRAINER_CONFIG_KEY}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if ".method." in f".{k}"]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"adapter state does not match: missing {missing}, unexpected {result.unexpected_keys}")
        return result._replace(missing_keys=missing)

    def save_pretrained(self, directory: str | Path, **extra) -> Path:
        return self.model.save_pretrained(directory, **extra)


def _text_columns(model: LTuningModel, text_columns: str | Sequence[str]) -> list[str]:
    """The 1 (texts) or 2 (sentence pairs) text columns. Two columns mark the model as a pair model (saved
    with the adapter: predict then takes pairs); one column changes nothing, since the collator of
    pre-tokenized pair rows is built with the default single column."""
    cols = [text_columns] if isinstance(text_columns, str) else list(text_columns)
    if len(cols) not in (1, 2):
        raise DataError(f"text_columns must name 1 column (texts) or 2 (sentence pairs), got {cols}")
    if len(cols) == 2:
        model.config.text_pairs = True
    return cols


class PairCollator:
    """Rows (dicts) -> a Trainer batch of NLI pairs.

    Rows hold raw text (``text_columns``: one column, or two for sentence pairs) or pre-tokenized
    ``input_ids`` (see :func:`tokenize_dataset`), and a label (``label_column``, else ``label`` or
    ``labels``) as a class index or a label name. Pairs are drawn from a seeded generator: the first half of a
    batch paired with its true label, the rest with a random other one (an odd batch's middle row either way,
    at random: a batch of 1 is a true or a false pair).
    """

    def __init__(self, model: LTuningModel, text_columns: Sequence[str] = ("text",), label_column: str | None = None,
                 seed: int = 0) -> None:
        self.backbone = model.backbone
        self.max_length = model.text_max_length
        self.label_names = list(model.label_names)
        self.text_columns = _text_columns(model, text_columns)
        self.label_column = label_column
        self.generator = torch.Generator().manual_seed(seed)

    def _label(self, row: dict) -> int:
        col = self.label_column or ("label" if "label" in row else "labels")
        if col not in row:
            raise DataError(f"row has no label column {col!r} (columns: {sorted(row)})")
        v = row[col]
        if isinstance(v, str):
            if v not in self.label_names:
                raise DataError(f"label {v!r} is not in the model's labels {self.label_names}")
            return self.label_names.index(v)
        v = int(v)
        if not 0 <= v < len(self.label_names):
            raise DataError(f"label index {v} is outside 0..{len(self.label_names) - 1}")
        return v

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if "input_ids" in rows[0]:
            keep = ("input_ids", "attention_mask", "token_type_ids")
            enc = self.backbone.tokenizer.pad([{k: r[k] for k in keep if k in r} for r in rows], padding_side="right",
                                              return_tensors="pt")
            batch = {k: enc[k] for k in keep if k in enc}
        else:
            for c in self.text_columns:
                if c not in rows[0]:
                    raise DataError(f"rows have no text column {c!r} (columns: {sorted(rows[0])}); pass "
                                    "text_columns=, and TrainingArguments(remove_unused_columns=False)")
            texts = [r[self.text_columns[0]] if len(self.text_columns) == 1 else
                     (r[self.text_columns[0]], r[self.text_columns[1]]) for r in rows]
            batch = self.backbone.tokenize(texts, self.max_length)  # CPU tensors; the Trainer moves them
        y = torch.tensor([self._label(r) for r in rows], dtype=torch.long)
        B, K = len(rows), len(self.label_names)
        # half the pairs false; an odd batch's extra row (a batch of 1, with gradient accumulation: its only row) is
        # false with probability 1/2, so that every batch size trains on true and false pairs alike
        n_neg = B // 2 + (int(torch.randint(0, 2, (1,), generator=self.generator)) if B % 2 else 0)
        pair_class = y.clone()
        offset = torch.randint(1, K, (n_neg,), generator=self.generator)  # never 0: never the true label
        pair_class[B - n_neg:] = (y[B - n_neg:] + offset) % K
        pair_target = torch.ones(B, dtype=torch.long)
        pair_target[B - n_neg:] = 0
        return {**batch, "labels": y, "pair_class": pair_class, "pair_target": pair_target}


def compute_metrics(eval_pred) -> dict[str, float]:
    """Trainer ``compute_metrics``: argmax over the (N, K) label scores; accuracy, mcc, macro_f1."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    preds = np.asarray(logits).argmax(-1)
    m = classification_metrics(preds.tolist(), np.asarray(labels).tolist(), np.asarray(logits).shape[-1])
    return {"accuracy": m["accuracy"], "mcc": m["mcc"], "macro_f1": m["macro_f1"]}


def tokenize_dataset(dataset, model: LTuningModel, text_columns: Sequence[str] = ("text",)):
    """``datasets.Dataset.map`` that adds input_ids / attention_mask (unpadded; :class:`PairCollator` pads),
    so the Trainer may drop the text columns (its default ``remove_unused_columns=True``)."""
    cols = _text_columns(model, text_columns)
    backbone, max_length = model.backbone, model.text_max_length

    def encode(rows):
        args = [rows[c] for c in cols]
        if len(cols) == 2 and backbone.tokenizer.sep_token is None:  # decoders: join the pair with a newline
            args = [[f"{a}\n{b}" for a, b in zip(*args, strict=True)]]
        enc = backbone.tokenizer(*args, truncation=True, max_length=max_length)
        keep = ["input_ids", "attention_mask"] + (["token_type_ids"] if backbone._takes_token_types else [])
        return {k: enc[k] for k in keep if k in enc}

    return dataset.map(encode, batched=True)


class LineProgressCallback(TrainerCallback):
    """The Trainer's progress as plain lines (:class:`ltuning.progress.LineProgress`: step, loss, rate, ETA,
    every N seconds or a tenth of the run) and its logs as one line each, instead of transformers' tqdm bar,
    whose carriage-return redraws flood a log file. Evaluation shows no bar."""

    def __init__(self, every_seconds: float = EVERY_SECONDS, every_steps: int | None = None) -> None:
        self.every_seconds, self.every_steps = every_seconds, every_steps
        self.bar: LineProgress | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = LineProgress(state.max_steps, desc="train", unit="step", initial=state.global_step,
                                    every_seconds=self.every_seconds, every_steps=self.every_steps)

    def _advance(self, state) -> None:
        """Move the bar to the Trainer's step, showing the newest logged loss. Called when the next step begins
        (and at the end), not at ``on_step_end``: the Trainer logs a step's loss after that callback, so a line
        drawn there showed the loss of the previous logging step."""
        if self.bar is not None and state.global_step > self.bar.n:
            loss = next((r["loss"] for r in reversed(state.log_history) if "loss" in r), None)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(state.global_step - self.bar.n)

    def on_step_begin(self, args, state, control, **kwargs):
        self._advance(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            print({k: v for k, v in logs.items() if k != "total_flos"}, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self._advance(state)
            self.bar.close()
            self.bar = None


def use_line_progress(trainer, every_seconds: float = EVERY_SECONDS, every_steps: int | None = None, force: bool = False):
    """When stderr is not a terminal (or ``force``), replace ``trainer``'s tqdm progress callback (or the
    printer that ``disable_tqdm=True`` installs) with :class:`LineProgressCallback`; returns the trainer.

    A callback cannot be chosen by the model, and transformers adds its own bar to every Trainer, so this is
    one call on the trainer: ``trainer = use_line_progress(Trainer(...))``.
    """
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    if force or not is_terminal():
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LineProgressCallback(every_seconds, every_steps))
    return trainer
