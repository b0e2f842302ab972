"""Command line: ``ltuning train | evaluate | predict | params`` (also ``python -m ltuning``).

Every user error ends in one line on stderr (``error: ...``) and exit status 2, with no partial output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from .data import TASKS

EXIT_USAGE = 2


def _methods() -> list[str]:
    from .methods import METHODS

    return sorted(METHODS)


# ---------------------------------------------------------------------- argument groups
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="minilm",
                   help="backbone: a packaged short name (minilm: BERT MiniLM-L6, default; smollm2: Llama "
                        "SmolLM2-135M), a local model folder, or a hub id")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the model folder or hub (off by default: it runs arbitrary code)")


def _add_data_args(p: argparse.ArgumentParser, train: bool) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--task", choices=sorted(TASKS),
                   help="a known task: " + "; ".join(f"{t.name}: {t.description}" for t in TASKS.values()))
    g.add_argument("--data-dir", help="folder laid out like shared/data/glue (<task>/train.tsv, "
                   "<task>/validation.tsv); default: $LTUNING_GLUE_DIR or ../shared/data/glue")
    if train:
        g.add_argument("--train-file", help="training data: .csv, .tsv or .jsonl (with --text-column, --label-column)")
        g.add_argument("--validation-file", help="validation data in the same format as --train-file")
        g.add_argument("--max-train-samples", type=int, help="use a seeded random subset of the training data")
        g.add_argument("--max-eval-samples", type=int,
                       help="evaluate during training on a seeded random subset of the validation data")
    else:
        g.add_argument("--file", help="data file (.csv, .tsv, .jsonl) instead of --task")
        g.add_argument("--split", default="validation", help="split of --task (default: validation)")
        g.add_argument("--max-samples", type=int, help="evaluate a seeded random subset")
    g.add_argument("--text-column", action="append",
                   help="text column of a data file; give it twice for sentence pairs (premise, hypothesis)")
    g.add_argument("--label-column", help="label column of a data file (label names or integer indices)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltuning",
        description="L-Tuning: train a few parameters, conditioned on the label texts, on a frozen transformer "
                    "to classify text (Kowsher et al., ICLR 2024 Tiny Papers).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ltuning {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    # train
    p = sub.add_parser("train", help="train an adapter and save it",
                       description="Train one method on a frozen backbone, evaluate on validation every "
                                   "--eval-every steps, keep the best state and save it as an adapter.")
    _add_model_args(p)
    p.add_argument("--method", default="lt-prefix", choices=_methods(),
                   help="lt-prefix (default), lt-prompt (label-tuned, paper Eq. 1-2) or the classic "
                        "prefix / prompt baselines")
    _add_data_args(p, train=True)
    g = p.add_argument_group("labels")
    g.add_argument("--label-texts", help="label texts the model reads: a JSON file or inline JSON (a list in "
                   "label order, or an object name -> text), or comma-separated texts in label order")
    g.add_argument("--label-length", type=int,
                   help="l: pad/truncate label texts to this many tokens (default: the longest label)")
    g.add_argument("--prefix-pooling", choices=["softmax", "raw"], default="raw",
                   help="LT-prefix: feed Z the raw token scores (official code, default) or their softmax "
                        "(paper A.5; learns far slower, see BENCHMARKS.md)")
    g.add_argument("--text-pooling", choices=["auto", "pooler", "cls", "mean", "last"], default="auto",
                   help="vector the head reads (auto: pooler/[CLS] for encoders, last token for decoders)")
    g = p.add_argument_group("training")
    g.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default: 300)")
    g.add_argument("--batch-size", type=int, default=16, help="texts per step, half true and half false pairs (default: 16)")
    g.add_argument("--learning-rate", type=float,
                   help="AdamW learning rate (default: 1e-2 for every method)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    g.add_argument("--warmup-ratio", type=float, default=0.06, help="linear warmup share of the steps (default: 0.06)")
    g.add_argument("--eval-every", type=int, default=50, help="validate every N steps (default: 50)")
    g.add_argument("--eval-batch-size", type=int, default=64, help="texts per evaluation batch (default: 64)")
    g.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens (default: 128)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (where the hardware supports it)")
    g.add_argument("--output-dir", help="where the adapter and train_results.json go "
                   "(default: runs/<task>-<method>-seed<seed>)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="batches per optimizer step (effective batch: N x --batch-size; default: 1)")
    g = p.add_argument_group("checkpoints and faults")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="write <output-dir>/checkpoints/step-N every N steps: weights, optimizer, scheduler, "
                        "RNG and data position, best-so-far state (default: 0, none)")
    g.add_argument("--keep-checkpoints", type=int, default=2,
                   help="keep the newest K checkpoints, plus the one at the best validation step (default: 2)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --output-dir (same options; from step 0 if none)")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is NaN/inf instead of stopping the run")
    p.set_defaults(func=cmd_train)

    # evaluate
    p = sub.add_parser("evaluate", help="evaluate a saved adapter (argmax over all labels)",
                       description="Score every text against all labels, take the argmax (paper A.4), and "
                                   "report accuracy, Matthews correlation, macro-F1 and the confusion matrix.")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    _add_data_args(p, train=False)
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--output", help="metrics JSON path (default: <adapter>/eval_<task or file>_<split>.json)")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    # predict
    p = sub.add_parser("predict", help="classify texts with a saved adapter",
                       description="Print the predicted label and its score (softmax over the labels' scores) "
                                   "for each text: from arguments, from --file (one per line), or from stdin.")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", help="file with one text per line ('-' for stdin)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text with all label scores")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.set_defaults(func=cmd_predict)

    # params
    p = sub.add_parser("params", help="trainable parameters of each method, next to the paper's formulas",
                       description="Count each method's trainable parameters on a backbone and show the "
                                   "paper's formula (A.5) with this backbone's m, d, d_kv, l, K.")
    _add_model_args(p)
    p.add_argument("--task", choices=sorted(TASKS), default="sst2", help="labels to count with (default: sst2)")
    p.add_argument("--label-texts", help="label texts (as for train); overrides the task's")
    p.add_argument("--label-length", type=int, help="l (default: the longest tokenized label text)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_params)
    return parser


# ---------------------------------------------------------------------- helpers
def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _read_data(args, split: str, file: str | None, label_names: list[str] | None):
    """A dataset from a file (with columns) or the task's split."""
    from .data import get_task, read_glue, read_table
    from .errors import DataError

    task = get_task(args.task) if args.task else None
    if file:
        text_cols = args.text_column or (task.text_columns if task else None)
        label_col = args.label_column if args.label_column is not None else (task.label_column if task else None)
        if not text_cols or label_col is None:
            raise DataError(f"{file}: give --text-column and --label-column (or a --task whose columns it has)")
        header = task.header if task and not args.text_column else True
        return read_table(file, text_cols, label_col, label_names or (task.label_names if task else None),
                          header=header)
    if task is None:
        raise DataError("no data: give --task, or a data file with --text-column and --label-column")
    return read_glue(task, split, args.data_dir)


def _check_positive(name: str, value: int | None) -> None:
    from .errors import ConfigError

    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _position_table(backbone) -> int | None:
    """Size of a backbone's learned absolute position table (None: rotary / relative / ALiBi positions)."""
    cfg = backbone.model.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute" or getattr(cfg, "rope_theta", None) \
            or getattr(cfg, "rope_parameters", None) or getattr(cfg, "alibi", False):
        return None
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return limit if isinstance(limit, int) else None


def _fitting_max_length(model) -> int | None:
    """Most text tokens a model with learned absolute positions takes beside its l injected positions."""
    limit = _position_table(model.backbone)
    if limit is None:
        return None
    start = model.backbone._position_start() if hasattr(model.backbone, "_position_start") else 2
    return max(1, limit - start - model.config.label_length)


# ---------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    import torch

    from .adapter import atomic_write_text, save_adapter
    from .backbones import load_backbone
    from .config import LTuningConfig
    from .data import get_task, load_label_texts
    from .errors import ConfigError
    from .evaluate import format_metrics
    from .model import LTuningModel
    from .train import TrainArgs, is_main_process, set_seed, train

    _check_positive("--max-train-samples", args.max_train_samples)
    _check_positive("--max-eval-samples", args.max_eval_samples)
    _check_positive("--max-length", args.max_length)
    if args.bf16 and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) and not torch.backends.mkldnn.is_available():
        raise ConfigError("--bf16 is not supported on this hardware")
    targs = TrainArgs(max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                      weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, eval_every=args.eval_every,
                      eval_batch_size=args.eval_batch_size, seed=args.seed,
                      mixed_precision="bf16" if args.bf16 else "no", progress=not args.quiet,
                      gradient_accumulation_steps=args.gradient_accumulation_steps,
                      checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                      resume=args.resume, skip_nonfinite=args.skip_nonfinite, output_dir=".")
    if not args.train_file and not args.task:
        raise ConfigError("no training data: give --task (e.g. --task demo) or --train-file")
    # Read and check all input before anything is written.
    train_data = _read_data(args, "train", args.train_file, None)
    if args.train_file and not args.validation_file:
        val_data = None
    else:
        val_data = _read_data(args, "validation", args.validation_file, train_data.label_names)
    task = get_task(args.task) if args.task else None
    label_texts = load_label_texts(args.label_texts, train_data.label_names)
    if label_texts is None and task is not None and task.label_names == train_data.label_names:
        label_texts = task.label_texts
    train_data = train_data.subset(args.max_train_samples, seed=args.seed)
    eval_data = val_data.subset(args.max_eval_samples, seed=args.seed) if val_data is not None else None

    set_seed(args.seed)
    backbone = load_backbone(args.model, trust_remote_code=args.trust_remote_code)
    # the label texts run through the model itself, so l cannot exceed its context (nor pad to 10^9 tokens)
    context = _position_table(backbone) or getattr(backbone.model.config, "max_position_embeddings", None) or 8192
    if args.label_length is not None and not 1 <= args.label_length <= context:
        raise ConfigError(f"--label-length must be in [1, {context}] for {args.model}, got {args.label_length}")
    config = LTuningConfig(method=args.method, base_model=args.model, label_names=train_data.label_names,
                           label_texts=label_texts or [], label_length=args.label_length,
                           max_length=args.max_length, prefix_pooling=args.prefix_pooling,
                           text_pooling=args.text_pooling)
    model = LTuningModel(backbone, config)
    fits = _fitting_max_length(model)
    if fits is not None and config.max_length > fits:
        # Longer texts would index past the model's position table (a crash mid-training, or in predict).
        (print if is_main_process() else (lambda *a: None))(f"note: --max-length {config.max_length} is more than {backbone.name} fits with a "
              f"{config.label_length}-token prefix/prompt; texts are truncated to {fits} tokens")
        config.max_length = fits
    name = args.task or Path(args.train_file).stem
    out_dir = Path(args.output_dir or f"runs/{name}-{args.method}-seed{args.seed}")
    targs.output_dir = str(out_dir)
    main_process = is_main_process()  # under `accelerate launch` only the main process prints and writes
    say = print if main_process else (lambda *a, **k: None)
    say(f"ltuning train: {args.method} on {args.model} ({backbone.kind}, m={backbone.dims.num_layers}, "
          f"d={backbone.dims.hidden_size}), {len(train_data)} train / "
          f"{len(eval_data) if eval_data is not None else 0} validation texts, labels "
          f"{dict(zip(config.label_names, config.label_texts))}, l={config.label_length}")
    if main_process:
        model.print_trainable_parameters()
    result = train(model, train_data, eval_data, targs)
    if not main_process:
        return 0

    extra = {"task": args.task, "train_file": args.train_file, "best_step": result.best_step,
             "validation": {k: v for k, v in result.best_metrics.items() if k != "confusion_matrix"}}
    save_adapter(model, out_dir, extra=extra)
    summary = {
        "command": "ltuning " + " ".join(sys.argv[1:]) if sys.argv and "ltuning" in sys.argv[0] else None,
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "learning_rate": result.learning_rate,
        "best_step": result.best_step,
        "best_metrics": result.best_metrics,
        "history": result.history,
        "train_log": result.train_log,
        "seconds": result.seconds,
        "train_seconds": result.train_seconds,
        "trainable_parameters": model.num_trainable_parameters(),
        "resumed_from_step": result.resumed_from,
        "skipped_steps": result.skipped_steps,
    }
    atomic_write_text(out_dir / "train_results.json", json.dumps(summary, indent=2) + "\n")
    if result.best_metrics:
        print(f"best validation (step {result.best_step}):")
        print(format_metrics(result.best_metrics, config.label_names))
    print(f"trained {args.max_steps} steps in {result.seconds:.1f} s; adapter saved to {out_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .adapter import atomic_write_text, load_adapter, read_adapter_config
    from .evaluate import evaluate, format_metrics

    _check_positive("--max-samples", args.max_samples)
    config = read_adapter_config(args.adapter)
    data = _read_data(args, args.split, args.file, config.label_names).subset(args.max_samples)
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    t0 = time.perf_counter()
    metrics = evaluate(model, data, batch_size=args.batch_size, progress=not args.quiet)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["data"] = data.source
    name = args.task or Path(args.file).stem
    out = Path(args.output) if args.output else Path(args.adapter) / f"eval_{name}_{args.split if args.task else 'file'}.json"
    atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
    print(f"{config.method} on {config.base_model}: {data.source}")
    print(format_metrics(metrics, config.label_names))
    print(f"metrics written to {out}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from .adapter import load_adapter, read_adapter_config
    from .data import read_texts

    read_adapter_config(args.adapter)  # fail fast on a bad folder before reading stdin
    texts = read_texts(args.file, args.texts)
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    scores = model.score_texts(texts, batch_size=args.batch_size)
    probs = torch.softmax(scores, dim=-1)
    for text, p in zip(texts, probs):
        k = int(p.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": model.label_names[k],
                              "scores": dict(zip(model.label_names, [round(float(v), 6) for v in p]))}))
        else:
            print(f"{model.label_names[k]}\t{float(p[k]):.4f}\t{text}")
    return 0


def cmd_params(args) -> int:
    from .backbones import load_backbone
    from .config import LTuningConfig
    from .data import get_task, load_label_texts
    from .methods import METHODS

    task = get_task(args.task)
    texts = load_label_texts(args.label_texts, task.label_names) or task.label_texts
    backbone = load_backbone(args.model, trust_remote_code=args.trust_remote_code)
    l = args.label_length or backbone.label_token_length(texts)
    _check_positive("--label-length", l)
    K = len(task.label_names)
    dims = backbone.dims
    config = LTuningConfig(label_names=task.label_names, label_texts=texts, label_length=l)
    rows = []
    for name, cls in sorted(METHODS.items()):
        counted = sum(p.numel() for p in cls(config, dims, K, l).parameters())
        expr, value = cls.formula(dims, l, K)
        rows.append({"method": name, "trainable": counted, "formula": expr, "formula_value": value,
                     "match": counted == value})
    info = {"model": args.model, "m": dims.num_layers, "d": dims.hidden_size, "n_heads": dims.num_heads,
            "n_kv": dims.num_kv_heads, "d_h": dims.head_dim, "d_kv": dims.kv_dim, "l": l, "K": K,
            "backbone_params": sum(p.numel() for p in backbone.parameters()), "methods": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}: m={dims.num_layers} d={dims.hidden_size} heads={dims.num_heads} n_kv={dims.num_kv_heads} "
          f"d_h={dims.head_dim} d_kv={dims.kv_dim}; labels {texts} -> l={l}, K={K}; "
          f"backbone {info['backbone_params']:,} params (frozen)")
    print(f"{'method':<10} {'trainable':>12} {'paper formula':<22} {'= value':>12}  match")
    for r in rows:
        print(f"{r['method']:<10} {r['trainable']:>12,} {r['formula']:<22} {r['formula_value']:>12,}  "
              f"{'yes' if r['match'] else 'NO'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .errors import LTuningError

    _quiet_libraries()
    try:
        return args.func(args)
    except LTuningError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
