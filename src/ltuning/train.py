"""The training loop (A.3): NLI pair batches and BCE for LT methods, K-way cross-entropy for the classic
baselines; AdamW with linear warmup and decay; validation every N steps; the best state kept.

Runs on Accelerate: the same loop places tensors on a GPU when there is one, mixes precision when asked,
and under ``accelerate launch`` splits each global batch across processes and sums the gradients of the
trainable parameters (the backbone is frozen, so nothing else needs synchronizing). Checkpoints
(``ltuning.checkpoint``) let a killed run continue bit-exactly with ``resume``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .checkpoint import json_safe
from .config import LabelPosition, PrefixPooling, ScoreHead, TextPooling
from .data import TextDataset
from .errors import ConfigError, DataError
from .evaluate import evaluate
from .model import LTuningModel
from .pairs import PairBatch, PairSampler

DEFAULT_LEARNING_RATES = {"lt-prefix": 1e-2, "lt-prompt": 1e-2, "prefix": 1e-2, "prompt": 1e-2}


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradients became NaN or infinite (the weights were not updated with them)."""


@dataclass
class TrainArgs:
    max_steps: int = 300
    batch_size: int = 16  # global: split across processes when distributed
    learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATES[method]
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    eval_every: int = 50
    eval_batch_size: int = 64
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16"
    progress: bool = True
    gradient_accumulation_steps: int = 1  # batches per optimizer step (effective batch = this * batch_size)
    output_dir: str | None = None  # where checkpoints/ goes
    checkpoint_every: int = 0  # 0: no checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept (plus the best)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    skip_nonfinite: bool = False  # skip steps with a non-finite loss instead of stopping

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size must be >= 2 (half true, half false pairs), got {self.batch_size}")
        if self.eval_every < 1:
            raise ConfigError(f"--eval-every must be >= 1, got {self.eval_every}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size must be >= 1, got {self.eval_batch_size}")
        if self.learning_rate is not None and not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"--learning-rate must be a finite number > 0, got {self.learning_rate}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if not 0 <= self.seed < 1_000_000:  # PairSampler mixes the seed into 64-bit generator seeds
            raise ConfigError(f"--seed must be in [0, 999999], got {self.seed}")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError(f"--gradient-accumulation-steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0 (0: no checkpoints), got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        if (self.checkpoint_every or self.resume) and not self.output_dir:
            raise ConfigError("checkpoints need an output folder (--output-dir)")


@dataclass
class TrainResult:
    best_step: int
    best_metrics: dict
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    train_log: list[dict] = field(default_factory=list)  # one row per logged step
    seconds: float = 0.0
    train_seconds: float = 0.0
    learning_rate: float = 0.0
    resumed_from: int = 0  # the checkpoint step this run continued from (0: from scratch)
    skipped_steps: list[int] = field(default_factory=list)  # steps skipped for a non-finite loss

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def linear_schedule(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def distributed_state():
    """Accelerate's process state: one process, or one per device under ``accelerate launch``."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return distributed_state().is_main_process


def shard(pb: PairBatch, rank: int, world: int) -> PairBatch:
    """This process's share of a global batch: every ``world``-th row from ``rank``; the shares' union is
    the batch, so N processes see exactly what one process sees."""
    return PairBatch(pb.indices[rank::world], pb.label_ids[rank::world], pb.targets[rank::world],
                     pb.labels[rank::world])


def _all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum ``tensors`` in place across processes (one flat buffer, one collective)."""
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def _finite_weights(params) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _check_final_state(model: LTuningModel, probe: list, step: int) -> None:
    """The state about to be returned (and saved) must hold finite weights that give finite scores: weights
    of ~1e30 are finite, yet score NaN."""
    if not _finite_weights(model.method.parameters()):
        problem = "hold non-finite values"
    else:
        with torch.no_grad():
            scores = model.score_texts(probe, batch_size=len(probe))
        if bool(torch.isfinite(scores).all()):
            return
        problem = "give non-finite scores (weights too large)"
    raise NonFiniteLossError(
        f"the trained weights (step {step}) {problem}; no adapter is saved. Lower --learning-rate or check the data")


def _run_signature(model: LTuningModel, train_data: TextDataset, args: TrainArgs, lr: float) -> dict:
    """Options a checkpoint must share with the run that resumes it (the data order and schedule)."""
    return {"method": model.config.method, "label_names": list(model.label_names),
            "backbone_fingerprint": model.config.backbone_fingerprint, "train_examples": len(train_data),
            "max_steps": args.max_steps, "batch_size": args.batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": lr,
            "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio, "seed": args.seed,
            "eval_every": args.eval_every,
            "weights": {k: list(v.shape) for k, v in model.method.state_dict().items()},
            "text_pooling": model.pooling.value,
            # only when not the default, so checkpoints written before the option still resume
            **({"label_position": model.config.label_position.value}
               if model.config.label_position != LabelPosition.BEFORE else {}),
            **({"prefix_pooling": model.config.prefix_pooling.value}
               if model.config.prefix_pooling != PrefixPooling.RAW else {}),
            **({"score_head": model.config.score_head.value}
               if model.config.score_head != ScoreHead.PAPER else {})}


def train(model: LTuningModel, train_data: TextDataset, validation_data: TextDataset | None,
          args: TrainArgs, on_eval: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model``'s method in place and leave it holding the best evaluated state.

    Under ``accelerate launch`` each process takes its share of every global batch and the gradients of
    the (few) trainable parameters are summed across processes, so N processes follow the same path as
    one. Only the main process writes checkpoints' shared files and shows progress.

    Returns: the best step, its validation metrics, the evaluation history and the training log.
    Raises:
        DataError: label sets differ between model and data, or too few examples.
        CheckpointError: ``resume`` from a checkpoint written with other options, or an unreadable one.
        NonFiniteLossError: a NaN/inf loss or gradient (unless ``skip_nonfinite``); the weights and the
            checkpoints on disk stay as they were before that step.
    """
    from tqdm.auto import tqdm

    from .checkpoint import (
        CheckpointError,
        latest_checkpoint,
        load_checkpoint,
        save_checkpoint,
        set_rng_state,
    )

    if train_data.label_names != model.label_names:
        raise DataError(f"training labels {train_data.label_names} differ from the model's {model.label_names}")
    if len(train_data) < 2:
        raise DataError(f"need at least 2 training examples, got {len(train_data)}")
    # saved with the adapter: a model trained on (premise, hypothesis) pairs classifies pairs
    model.config.text_pairs = any(isinstance(t, tuple) for t in train_data.texts)
    state = distributed_state()
    world, rank, main = state.num_processes, state.process_index, state.is_main_process
    if args.batch_size < world:
        raise ConfigError(f"--batch-size {args.batch_size} is smaller than the {world} processes; "
                          "the batch is split across processes")
    dev = state.device
    model.to(dev)
    # bf16 from --bf16, or from `accelerate launch --mixed_precision bf16`
    bf16 = args.mixed_precision == "bf16" or os.environ.get("ACCELERATE_MIXED_PRECISION") == "bf16"
    lr = args.learning_rate or DEFAULT_LEARNING_RATES.get(model.config.method, 1e-2)
    params = model.trainable_parameters()
    if world > 1:  # every process starts from the main process's initial weights
        import torch.distributed as dist

        for p in params:
            dist.broadcast(p.data, src=0)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    warmup = int(args.warmup_ratio * args.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, args.max_steps, warmup))
    sampler = PairSampler(train_data.labels, model.num_labels, args.batch_size, seed=args.seed)
    signature = _run_signature(model, train_data, args, lr)

    result = TrainResult(best_step=0, best_metrics={}, learning_rate=lr)
    best_state = copy.deepcopy(model.method.state_dict())
    best_key = (-math.inf, -math.inf)
    train_time, n_texts, running, elapsed_before, start_step = 0.0, 0, 0.0, 0.0, 0
    last_checkpoint = None
    if args.resume:
        folder = latest_checkpoint(args.output_dir)
        if folder is None:
            if main:
                print(f"--resume: no checkpoint in {args.output_dir}/checkpoints; starting from step 0")
        else:
            ckpt = load_checkpoint(folder, rank)
            ts = ckpt["trainer_state"]
            saved = dict(ts.get("run", {}))
            if "text_pooling" not in saved:  # written before the signature held it: auto's old rule
                saved["text_pooling"] = model.backbone.resolve_pooling(TextPooling.AUTO, follow_folder=False).value
            diff = sorted(k for k in set(signature) | set(saved) if signature.get(k) != saved.get(k))
            if diff:
                shown = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {signature.get(k)!r}" for k in diff[:4])
                raise CheckpointError(f"cannot resume from {folder}: it was written with other options ({shown}); "
                                      "rerun with the same options or another --output-dir")
            try:
                model.method.load_state_dict(ckpt["weights"])
                best_state = {k: v.to(dev) for k, v in ckpt["best_weights"].items()}
                model.method.load_state_dict(best_state)  # checks names and shapes
                model.method.load_state_dict(ckpt["weights"])
                optimizer.load_state_dict(ckpt["optimizer"])
                scheduler.load_state_dict(ckpt["scheduler"])
                sampler.load_state_dict(ts["sampler"])
                set_rng_state(ckpt["rng"])
                start_step = int(ts["step"])
                result.best_step, result.best_metrics = ts["best_step"], ts["best_metrics"]
                best_key = tuple(ts["best_key"]) if ts["best_key"] is not None else best_key
                result.history, result.train_log = ts["history"], ts["train_log"]
                result.skipped_steps = ts.get("skipped_steps", [])
                train_time, n_texts, running = ts["train_seconds"], ts["n_texts"], ts["running_loss"]
                elapsed_before = ts["elapsed_seconds"]
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                raise CheckpointError(f"cannot resume from {folder}: {type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
            result.resumed_from = start_step
            last_checkpoint = folder
            if main:
                print(f"resumed from {folder} (step {start_step} of {args.max_steps})")

    start = time.perf_counter()
    A = args.gradient_accumulation_steps
    bar = tqdm(total=args.max_steps, initial=start_step, desc=f"train {model.config.method}", unit="step",
               disable=not (args.progress and main))
    started = any(r.get("loss") is not None for r in result.train_log)  # running loss has a value
    model.train()
    for step in range(start_step + 1, args.max_steps + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        for _ in range(A):
            pb = sampler.next()
            B = len(pb.indices)
            local = shard(pb, rank, world)
            batch = model.tokenize([train_data.texts[i] for i in local.indices.tolist()])
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(batch, local.labels.to(dev), local.label_ids.to(dev), local.targets.to(dev))
            # this process's share of the global mean: summed over processes and micro-batches it is the
            # mean loss of the A * B pairs
            part = loss.float() * (len(local.indices) / B) / A
            part.backward()
            loss_sum += part.detach()
            n_texts += B
        for p in params:
            if p.grad is None and world > 1:  # every process must send the same tensors
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        if world > 1:
            _all_reduce_([*grads, loss_sum.view(1)])
        loss_value = loss_sum.item()
        finite = math.isfinite(loss_value) and all(bool(torch.isfinite(g).all()) for g in grads)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        train_time += time.perf_counter() - t0
        if not finite:
            if not args.skip_nonfinite:
                bar.close()
                where = (f"the last good checkpoint is {last_checkpoint}; continue from it with --resume"
                         if last_checkpoint is not None else "no checkpoint was written yet")
                raise NonFiniteLossError(
                    f"non-finite training {'loss ' + str(loss_value) if not math.isfinite(loss_value) else 'gradient'} "
                    f"at step {step}; the weights were not updated with it and {where}. Lower --learning-rate, "
                    "check the data, or pass --skip-nonfinite to skip such steps")
            result.skipped_steps.append(step)
            result.train_log.append({"step": step, "loss": None, "lr": scheduler.get_last_lr()[0], "skipped": True})
            if main:
                bar.write(f"step {step}: non-finite loss {loss_value}; step skipped (--skip-nonfinite)")
        else:
            running = loss_value if not started else 0.9 * running + 0.1 * loss_value
            started = True
            result.train_log.append({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]})
        bar.set_postfix(loss=f"{running:.4f}", texts_per_s=f"{n_texts / max(train_time, 1e-9):.1f}")
        bar.update(1)
        if validation_data is not None and (step % args.eval_every == 0 or step == args.max_steps):
            # every process evaluates the same (identical) weights, so all keep the same best state
            metrics = evaluate(model, validation_data, batch_size=args.eval_batch_size)
            model.train()
            # a NaN validation loss (weights too large to score) is recorded as null and is never the best
            finite_eval = math.isfinite(metrics["loss"]) and _finite_weights(params)
            row = json_safe({"step": step, "loss": metrics["loss"], "accuracy": metrics["accuracy"],
                             "mcc": metrics["mcc"], "macro_f1": metrics["macro_f1"], "train_loss": running,
                             "elapsed_seconds": elapsed_before + time.perf_counter() - start})
            if not finite_eval:
                row["nonfinite"] = True
            result.history.append(row)
            if main:
                if on_eval is not None:
                    on_eval(row)
                bar.write(f"step {step}: validation accuracy {metrics['accuracy']:.4f}, mcc {metrics['mcc']:.4f}, "
                          f"loss {metrics['loss']:.4f}")
            key = (metrics["accuracy"], -metrics["loss"])
            if finite_eval and key > best_key:
                best_key = key
                best_state = copy.deepcopy(model.method.state_dict())
                result.best_step = step
                result.best_metrics = metrics
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            trainer_state = {
                "step": step, "sampler": sampler.state_dict(), "best_step": result.best_step,
                "best_key": list(best_key) if result.best_metrics else None, "best_metrics": result.best_metrics,
                "history": result.history, "train_log": result.train_log, "skipped_steps": result.skipped_steps,
                "running_loss": running, "train_seconds": train_time, "n_texts": n_texts,
                "elapsed_seconds": elapsed_before + time.perf_counter() - start, "run": signature,
            }
            last_checkpoint = save_checkpoint(
                args.output_dir, step, weights=model.method.state_dict(), best_weights=best_state,
                optimizer=optimizer, scheduler=scheduler, trainer_state=trainer_state,
                keep=args.keep_checkpoints, best_step=result.best_step or None,
                accelerator=state if world > 1 else None) or last_checkpoint
    bar.close()
    if validation_data is None:
        best_state = copy.deepcopy(model.method.state_dict())
        result.best_step = args.max_steps
    elif not result.best_metrics:
        bad = [r["step"] for r in result.history if r.get("nonfinite")]
        raise NonFiniteLossError(
            f"no evaluation had a finite validation loss (non-finite at steps {bad[:8]}"
            f"{'...' if len(bad) > 8 else ''}{', ' + str(len(result.skipped_steps)) + ' steps skipped' if result.skipped_steps else ''}); "
            "the weights became non-finite or too large to score, and no adapter is saved. Lower --learning-rate "
            "or check the data")
    model.method.load_state_dict(best_state)
    model.eval()
    _check_final_state(model, (validation_data or train_data).texts[:8], result.best_step)
    result.seconds = elapsed_before + time.perf_counter() - start
    result.train_seconds = train_time
    return result


def history_jsonl(result: TrainResult) -> str:
    return "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in result.history)
