"""The training loop (A.3): NLI pair batches and BCE for LT methods, K-way cross-entropy for the classic
baselines; AdamW with linear warmup and decay; validation every N steps; the best state kept.

Runs on Accelerate, so the same loop places tensors on a GPU when there is one and mixes precision when
asked.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import TextDataset
from .errors import ConfigError, DataError
from .evaluate import evaluate
from .model import LTuningModel
from .pairs import PairSampler

DEFAULT_LEARNING_RATES = {"lt-prefix": 1e-2, "lt-prompt": 1e-3, "prefix": 1e-2, "prompt": 1e-2}


@dataclass
class TrainArgs:
    max_steps: int = 300
    batch_size: int = 16
    learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATES[method]
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    eval_every: int = 50
    eval_batch_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be >= 2 (half true, half false pairs), got {self.batch_size}")
        if self.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed precision must be 'no' or 'bf16', got {self.mixed_precision!r}")


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    train_log: list[dict] = field(default_factory=list)  # one row per logged step
    seconds: float = 0.0
    train_seconds: float = 0.0
    learning_rate: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def train(model: LTuningModel, train_data: TextDataset, validation_data: TextDataset | None,
          args: TrainArgs, on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model``'s method in place and leave it holding the best evaluated state.

    Returns: the best step, its validation metrics, the evaluation history and the training log.
    Raises:
        DataError: label sets differ between model and data, or too few examples.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if train_data.label_names != model.label_names:
        raise DataError(f"training labels {train_data.label_names} differ from the model's {model.label_names}")
    if len(train_data) < 2:
        raise DataError(f"need at least 2 training examples, got {len(train_data)}")
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=not torch.cuda.is_available())
    model.to(accelerator.device)
    lr = args.learning_rate or DEFAULT_LEARNING_RATES.get(model.config.method, 1e-3)
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    warmup = int(args.warmup_ratio * args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, args.max_steps, warmup))
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)
    sampler = PairSampler(train_data.labels, model.num_labels, args.batch_size, seed=args.seed)

    result = TrainResult(best_step=0, best_metrics={}, learning_rate=lr)
    best_state = copy.deepcopy(model.method.state_dict())
    best_key = (-math.inf, -math.inf)
    start = time.perf_counter()
    train_time = 0.0
    n_texts = 0
    bar = tqdm(total=args.max_steps, desc=f"train {model.config.method}", unit="step",
               disable=not (args.progress and accelerator.is_main_process))
    model.train()
    running = 0.0
    for step in range(1, args.max_steps + 1):
        t0 = time.perf_counter()
        pb = sampler.next()
        batch = model.tokenize([train_data.texts[i] for i in pb.indices.tolist()])
        dev = accelerator.device
        with accelerator.autocast():
            loss = model.loss(batch, pb.labels.to(dev), pb.label_ids.to(dev), pb.targets.to(dev))
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - t0
        n_texts += len(pb.indices)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            bar.close()
            raise FloatingPointError(f"non-finite training loss {loss_value} at step {step}; "
                                     "lower --learning-rate or check the data")
        running = loss_value if step == 1 else 0.9 * running + 0.1 * loss_value
        result.train_log.append({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{running:.4f}", texts_per_s=f"{n_texts / train_time:.1f}")
        bar.update(1)
        if validation_data is not None and (step % args.eval_every == 0 or step == args.max_steps):
            metrics = evaluate(model, validation_data, batch_size=args.eval_batch_size)
            model.train()
            row = {"step": step, "loss": metrics["loss"], "accuracy": metrics["accuracy"], "mcc": metrics["mcc"],
                   "macro_f1": metrics["macro_f1"], "train_loss": running,
                   "elapsed_seconds": time.perf_counter() - start}
            result.history.append(row)
            if on_eval is not None:
                on_eval(row)
            bar.write(f"step {step}: validation accuracy {metrics['accuracy']:.4f}, mcc {metrics['mcc']:.4f}, "
                      f"loss {metrics['loss']:.4f}")
            key = (metrics["accuracy"], -metrics["loss"])
            if key > best_key:
                best_key = key
                best_state = copy.deepcopy(model.method.state_dict())
                result.best_step = step
                result.best_metrics = metrics
    bar.close()
    if validation_data is None:
        best_state = copy.deepcopy(model.method.state_dict())
        result.best_step = args.max_steps
    model.method.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    result.train_seconds = train_time
    return result


def history_jsonl(result: TrainResult) -> str:
    return "".join(json.dumps(r) + "\n" for r in result.history)
