"""Command line: ``ltuning train | evaluate | predict | params | report | serve | export`` (also ``python -m ltuning``).

Every user error ends in one line on stderr (``error: ...``; a malformed command line: ``ltuning train:
error: ...`` and a pointer to ``--help``) and exit status 2, with no partial output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .data import DEFAULT_GLUE_DIRS, TASKS

EXIT_USAGE = 2


@dataclass(frozen=True, eq=False)
class _Option:
    """One declared option or positional argument: the action ``add_argument`` returned (read through its
    public attributes: dest, option_strings, nargs, type, choices, required) and its ``action=`` keyword
    ("store", "store_true", "append", ...), which the action's attributes do not tell apart."""

    action: argparse.Action
    kind: str

    @property
    def many(self) -> bool:
        """Takes a list: repeated (append) or several values at once."""
        return self.kind == "append" or self.action.nargs in ("*", "+")


class _Parser(argparse.ArgumentParser):
    """argparse, but a malformed command line ends in one line (and a pointer to --help), not the usage.

    It also keeps what ``--config`` needs and argparse holds only in private attributes: ``options``, the
    table of its options as declared (dest -> :class:`_Option`, filled by ``add_argument`` and by the
    :class:`_Group` s on it), and, on the root parser, ``commands`` (name -> the command's parser)."""

    def __init__(self, *args, **kwargs) -> None:
        self.options: dict[str, _Option] = {}
        self.commands: dict[str, _Parser] = {}
        # no abbreviations: `--conf x.yaml` was taken for --config by argparse but not by the config reader (the
        # file was ignored), and `--text-col` added to a config's list where --text-column replaces it
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee {self.prog} --help\n")

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # noqa: D102 - argparse's, recorded
        return self.record(super().add_argument(*args, **kwargs), kwargs)

    def record(self, action: argparse.Action, kwargs: dict) -> argparse.Action:
        self.options[action.dest] = _Option(action, kwargs.get("action", "store"))
        return action


class _Group:
    """An argument group (for --help) whose options also go into its parser's table."""

    def __init__(self, parser: _Parser, title: str) -> None:
        self.parser, self.group = parser, parser.add_argument_group(title)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        return self.parser.record(self.group.add_argument(*args, **kwargs), kwargs)


def _methods() -> list[str]:
    from .methods import METHODS

    return sorted(METHODS)


def _default_rates() -> str:
    """'3e-3 (1e-2 with --score-head cosine) for lt-prefix, 3e-3 for lt-prompt, ...': each method's default
    learning rate, for --help."""
    from .methods import METHODS, learning_rate_text

    def rate(cls) -> str:
        by_rate: dict[float, list[str]] = {}
        for head, lr in cls.head_learning_rates.items():
            by_rate.setdefault(lr, []).append(head)
        heads = "".join(f" ({learning_rate_text(lr)} with --score-head {' or '.join(hs)})" for lr, hs in by_rate.items())
        return learning_rate_text(cls.default_learning_rate) + heads

    return ", ".join(f"{rate(cls)} for {name}" for name, cls in sorted(METHODS.items()))


def _score_heads() -> list[str]:
    from .config import ScoreHead

    return [h.value for h in ScoreHead]


def _default_score_heads() -> str:
    """'anchored for lt-prefix, similarity for lt-prompt': each LT method's default score head,
    for --help."""
    from .methods import METHODS

    by_head: dict[str, list[str]] = {}
    for name, cls in sorted(METHODS.items()):
        if cls.label_conditioned:
            by_head.setdefault(cls.default_score_head.value, []).append(name)
    return ", ".join(f"{head} for {' and '.join(names)}" for head, names in by_head.items())


# ---------------------------------------------------------------------- argument groups
def _add_model_args(p: _Parser) -> None:
    p.add_argument("--model", default="minilm",
                   help="backbone: a packaged short name (minilm: BERT MiniLM-L6, default; smollm2: Llama "
                        "SmolLM2-135M), a local model folder, or a hub id")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow model code from the model folder or hub (off by default: it runs arbitrary code)")


def _add_data_args(p: _Parser, train: bool) -> None:
    g = _Group(p, "data")
    g.add_argument("--task", choices=sorted(TASKS),
                   help="a known task: " + "; ".join(f"{t.name}: {t.description}" for t in TASKS.values()))
    g.add_argument("--data-dir", help="folder laid out like shared/data/glue (<task>/train.tsv, "
                   "<task>/validation.tsv); default: $LTUNING_GLUE_DIR, else the first of "
                   + " and ".join(DEFAULT_GLUE_DIRS) + " that exists")
    if train:
        g.add_argument("--tasks", nargs="+", choices=sorted(TASKS), metavar="TASK",
                       help="multi-task training (lt-prefix / lt-prompt): one adapter on several known tasks, each "
                            "batch from one task with that task's labels, e.g. --tasks demo trec; the first task's "
                            "labels are the adapter's primary labels. Instead of --task / --train-file")
        g.add_argument("--train-file", help="training data: .csv, .tsv (or .txt, tab-separated), .jsonl or .json "
                       "(with --text-column, --label-column)")
        g.add_argument("--validation-file", help="validation data in the same format as --train-file")
        g.add_argument("--max-train-samples", type=int, help="use a seeded random subset of the training data")
        g.add_argument("--max-eval-samples", type=int,
                       help="evaluate during training on a seeded random subset of the validation data")
    else:
        g.add_argument("--file", help="data file (.csv, .tsv or .txt, .jsonl, .json) instead of --task")
        g.add_argument("--split", default="validation", help="split of --task (default: validation)")
        g.add_argument("--max-samples", type=int, help="evaluate a seeded random subset")
    g.add_argument("--text-column", action="append",
                   help="text column of a data file (a header name, or a 0-based index with --no-header); give "
                        "it twice for sentence pairs (premise, hypothesis)")
    g.add_argument("--label-column", help="label column of a data file (label names or integer indices)")
    if train:
        g.add_argument("--task-column",
                       help="multi-task training (lt-prefix / lt-prompt) on your own data: the column of --train-file "
                            "(and --validation-file) naming each row's task (a header name, or a 0-based index with "
                            "--no-header); one adapter learns every task, each with its own rows' labels, the first "
                            "task in the file giving the adapter's primary labels. --label-texts then maps task -> "
                            "label texts. Instead of --task / --tasks")
    g.add_argument("--no-header", action="store_true",
                   help="the .csv/.tsv data files have no header row: give --text-column and --label-column (and "
                        "--task-column) as 0-based column indices (e.g. CoLA: --text-column 3 --label-column 1)")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="ltuning",
        description="L-Tuning: train a few parameters, conditioned on the label texts, on a frozen transformer "
                    "to classify text (Kowsher et al., ICLR 2024 Tiny Papers).",
    )
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"ltuning {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, **kwargs) -> _Parser:
        parser.commands[name] = sub.add_parser(name, **kwargs)
        return parser.commands[name]

    # train
    p = command("train", help="train an adapter and save it",
                description="Train one method on a frozen backbone, evaluate on validation every "
                            "--eval-every steps, keep the best state and save it as an adapter.")
    _add_model_args(p)
    p.add_argument("--method", default="lt-prefix", choices=_methods(),
                   help="lt-prefix (default), lt-prompt (label-tuned, paper Eq. 1-2) or the classic "
                        "prefix / prompt baselines")
    _add_data_args(p, train=True)
    g = _Group(p, "labels")
    g.add_argument("--label-texts", help="label texts the model reads: a JSON file or inline JSON (a list in "
                   "label order, or an object name -> text), or comma-separated texts in label order; with "
                   "--task-column a JSON object (or .json file) task -> that task's label texts in either JSON form "
                   "(tasks left out read their label names)")
    g.add_argument("--label-length", type=int,
                   help="l: pad/truncate label texts to this many tokens (default: the longest label)")
    g.add_argument("--prefix-pooling", choices=["softmax", "raw"], default="raw",
                   help="LT-prefix: feed Z the raw token scores (official code, default) or their softmax "
                        "(paper A.5; learns far slower, see BENCHMARKS.md)")
    g.add_argument("--label-map-rank", type=int, metavar="R",
                   help="lt-prefix: also map each label's mean-pooled frozen encoding into its prefix through a "
                        "rank-R map, started at zero, besides Z, which reads l numbers per label (default: 8, "
                        "chosen on dev rows, BENCHMARKS.md; 0: none, the paper's Z alone)")
    g.add_argument("--score-head", choices=_score_heads(),
                   help="LT methods: how a (text, label) pair is scored: 'similarity' (cosine of the pooled text "
                        "and the label's own frozen embedding, plus the paper's head; starts at the frozen "
                        "model's zero-shot ranking), 'cosine' (that cosine alone, fixed: only the label prefix / "
                        "prompt trains; with lt-prefix the better learner from a few examples per class in "
                        "BENCHMARKS.md, at its own default rate), 'anchored' (the similarity head, trained with a "
                        "prior that holds it at its start with weight 1/n, n the training texts: the cosine head "
                        "on a few examples, free to learn on many) or 'paper' (A.3's 2-way head, random init). "
                        f"Default: the method's own: {_default_score_heads()}")
    g.add_argument("--prefix-layers", type=int, metavar="J",
                   help="prefix methods: put the label prefix in the top J of the backbone's m layers only "
                        "(default: all m). With J < m prediction computes each text's bottom m - J layers once for "
                        "all K labels: (m - J) + K*J layer passes per text instead of K*m")
    g.add_argument("--text-pooling", choices=["auto", "pooler", "cls", "mean", "last"], default="auto",
                   help="vector the head reads (auto: the pooling a sentence-transformers folder declares, e.g. mean for "
                        "minilm; else the pooler or [CLS] for encoders, the last token for decoders)")
    g.add_argument("--label-position", choices=["before", "after"], default="before",
                   help="lt-prompt on decoders: put the label's soft prompt before the text (the paper, default) or "
                        "after it, where the head reads the last prompt position; 'after' lets prediction compute "
                        "each text once for all K labels (n + K*l positions instead of K*(n + l)). It is a "
                        "different model: the adapter is trained and predicts in the order it was trained with. "
                        "Not for encoders or other methods")
    g = _Group(p, "training")
    g.add_argument("--max-steps", type=int, default=300, help="optimizer steps (default: 300)")
    g.add_argument("--batch-size", type=int, default=16,
                   help="texts per step (default: 16); an LT method scores each against all K labels, or one true "
                        "or false pair per text with --objective pairwise")
    g.add_argument("--learning-rate", type=float,
                   help="AdamW learning rate (default: the method's own: " + _default_rates() + ")")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: 0)")
    g.add_argument("--warmup-ratio", type=float, default=0.06, help="linear warmup share of the steps (default: 0.06)")
    g.add_argument("--eval-every", type=int, default=50, help="validate every N steps (default: 50)")
    g.add_argument("--eval-batch-size", type=int, default=64, help="texts per evaluation batch (default: 64)")
    g.add_argument("--metric-for-best", choices=["accuracy", "mcc", "macro_f1"], default="accuracy",
                   help="validation metric that chooses the saved state; ties go to the lower validation loss "
                        "(default: accuracy; another metric needs validation data)")
    g.add_argument("--objective", choices=["listwise", "pairwise"], default="listwise",
                   help="training loss: listwise, a K-way softmax over the scores of all K labels of each text "
                        "(LT methods: K rows per text per step; the classic methods' head always trains this); "
                        "pairwise, LT methods only, the paper's BCE on one true or false (text, label) pair per "
                        "text (A.3; the default of earlier versions). Default: listwise")
    g.add_argument("--early-stopping-patience", type=int, default=0,
                   help="stop after N evaluations without a better --metric-for-best (an equal one with a "
                        "lower validation loss counts as better, as in choosing the kept state; default: 0, "
                        "never; needs validation data)")
    g.add_argument("--init-from", metavar="ADAPTER",
                   help="start from the trained weights of this adapter folder instead of a fresh init, e.g. a "
                        "multi-task adapter adapted to a new task from a few examples. LT methods take any labels "
                        "(each label is read through its text); prefix / prompt need the adapter's labels. "
                        "--model must be the adapter's backbone and --method its method; --label-length (lt-prefix, "
                        "prefix, prompt; lt-prompt keeps its labels' own l), --prefix-layers (prefix methods), "
                        "--score-head and --label-map-rank (lt-prefix) default to the adapter's; a --score-head "
                        "given, --text-pooling, --label-position and, for lt-prefix, --prefix-pooling must match "
                        "it. --label-map-rank may add a label map (started at zero) to an lt-prefix adapter "
                        "trained without one")
    g.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens (default: 128)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 autocast (where the hardware supports it)")
    g.add_argument("--output-dir", help="where the adapter and train_results.json go "
                   "(default: runs/<task>-<method>-seed<seed>); a folder that already holds a run is refused "
                   "unless --overwrite (or --resume) is given")
    g.add_argument("--overwrite", action="store_true",
                   help="train into an --output-dir that holds a previous run, replacing the files ltuning "
                        "wrote there (adapter, its config.json marker, README.md card, run_config.json, "
                        f"train_results.json, evaluate's eval_*.json, plots, checkpoints/ of ltuning's checkpoints): they wait in {REPLACED_DIR}/ "
                        "until the new adapter is saved; if the run stops before its first checkpoint they are moved "
                        "back, after one they keep waiting (deleted when a run in the folder is saved); "
                        "other files are kept, except a file "
                        "at a name the run writes (e.g. your own README.md or config.json, another library's "
                        "adapter_config.json), which waits with them and is replaced when the adapter is saved. Without it, such a file "
                        "is never replaced")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--gradient-accumulation-steps", type=int, default=1,
                   help="batches per optimizer step (effective batch: N x --batch-size; default: 1)")
    g = _Group(p, "checkpoints and faults")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="write <output-dir>/checkpoints/step-N every N steps: weights, optimizer, scheduler, "
                        "RNG and data position, best-so-far state (default: 0, none)")
    g.add_argument("--keep-checkpoints", type=int, default=2,
                   help="keep the newest K checkpoints, plus the one at the best validation step (default: 2)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in --output-dir (same options; from step 0 in a folder "
                        "holding no run); the folder's previous run is kept: a finished run without a checkpoint "
                        "is refused, not trained again")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is NaN/inf instead of stopping the run")
    p.set_defaults(func=cmd_train)

    # evaluate
    p = command("evaluate", help="evaluate a saved adapter (argmax over all labels)",
                description="Score every text against all labels, take the argmax (paper A.4), and "
                            "report accuracy, Matthews correlation, macro-F1 and the confusion matrix. Macro-F1 "
                            "averages over all of the adapter's labels: one absent from both the data and the "
                            "predictions counts 0 (scikit-learn's f1_score averages over the labels present).")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    _add_data_args(p, train=False)
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--output", help="metrics JSON path (default: <adapter>/eval_<task>_<split>.json for --task, "
                   "<adapter>/eval_<file name without extension>_file.json for --file). It replaces an earlier "
                   "evaluate's metrics, never a file it reads; --overwrite is needed to replace another existing "
                   "file, or at the default name the metrics of another --file of the same name")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output file (and its --plot PNG) that ltuning evaluate did not write, "
                        "or the metrics of another --file of the same name")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for scoring (where the hardware "
                   "supports it; faster on CPUs with AMX / AVX512-BF16, scores differ slightly from float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--adapter-task", help="a multi-task adapter's task whose labels to evaluate with (default: --task "
                   "when the adapter has that task, else its primary labels)")
    p.set_defaults(func=cmd_evaluate)

    # predict
    p = command("predict", help="classify texts with a saved adapter",
                formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Print the predicted label, its score (softmax over the labels' scores) and "
                            "the text, tab-separated,\nfor each text: from arguments, from --file (one per "
                            "line), or from stdin. Blank lines are skipped.\n\n"
                            "Sentence pairs: an adapter trained on pairs (e.g. --task rte, or two "
                            "--text-column) reads\neach line, and each argument, as PREMISE<TAB>HYPOTHESIS "
                            "(exactly one TAB), e.g.\n  ltuning predict --adapter runs/rte "
                            "$'A man sleeps.\\tSomeone is asleep.'\n  printf 'A man sleeps.\\tSomeone is "
                            "asleep.\\n' | ltuning predict --adapter runs/rte\nOther adapters take each "
                            "line or argument as one text, TABs included.")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    p.add_argument("texts", nargs="*", help="texts to classify (PREMISE<TAB>HYPOTHESIS for a pair adapter); "
                   "never read as key=value options")
    p.add_argument("--file", help="file with one text per line, or one PREMISE<TAB>HYPOTHESIS pair per line for a "
                   "pair adapter ('-' for stdin; \\n or \\r\\n line ends)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per batch (default: 64)")
    p.add_argument("--json", action="store_true", help="print one JSON object per text, as transformers' zero-shot "
                   "pipeline returns it: \"sequence\" (the text; [premise, hypothesis] for a pair), \"labels\" and "
                   "\"scores\" sorted by score, best first; with --multi-label also \"selected\", the labels "
                   "scoring >= --threshold")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for scoring (where the hardware "
                   "supports it; faster on CPUs with AMX / AVX512-BF16, scores differ slightly from float32)")
    p.add_argument("--adapter-task", help="a multi-task adapter's task whose labels to predict (default: its primary "
                   "labels, the first task's)")
    p.set_defaults(func=cmd_predict)

    # params
    p = command("params", help="trainable parameters of each method, next to the paper's formulas",
                description="Count each method's trainable parameters on a backbone and show the "
                            "paper's formula (A.5) with this backbone's m, d, d_kv, l, K (plus d^2 + 2 for the LT "
                            "methods' similarity and anchored heads; --score-head paper gives the paper's counts, --score-head "
                            "cosine 2*d fewer: no C_zeta).")
    _add_model_args(p)
    p.add_argument("--task", choices=sorted(TASKS), default="sst2", help="labels to count with (default: sst2)")
    p.add_argument("--label-texts", help="label texts (as for train); overrides the task's")
    p.add_argument("--label-length", type=int, help="l (default: the longest tokenized label text; at most the "
                   "model's position table, or 8192 tokens for rotary / relative positions)")
    p.add_argument("--score-head", choices=_score_heads(),
                   help=f"LT methods' score head to count (default: the method's own, as train: {_default_score_heads()})")
    p.add_argument("--prefix-layers", type=int, metavar="J",
                   help="prefix methods: count a label prefix in the top J layers only (default: all m, as train)")
    p.add_argument("--label-map-rank", type=int, metavar="R",
                   help="lt-prefix: count a label map of rank R (default: 8, as train; 0: none)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_params)

    # report
    p = command("report", help="summary table of saved runs",
                description="One line per run folder (method, model, trainable parameters, best validation "
                            "metrics, time) from train_results.json / adapter_config.json, and one per "
                            "eval_*.json. A folder whose subfolders are runs lists them all.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of run folders")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_report)

    # serve
    p = command("serve", help="serve an adapter over HTTP (JSON; needs ltuning[serve])",
                description="An HTTP JSON server (FastAPI + uvicorn) over one adapter: POST /predict "
                            "{\"texts\": [...], \"candidate_labels\": [...], \"multi_label\": false}, GET /health, "
                            "GET /metadata. Requests that arrive together are scored in one batch.")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="texts scored together at most (default: 64; 1: one request at a time)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first waiting request waits for others to join its batch (default: 5)")
    p.add_argument("--max-texts", type=int, default=256, help="texts per request at most (default: 256)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text at most (default: 10000)")
    p.add_argument("--max-body-bytes", type=int,
                   help="request body size at most (default: what --max-texts texts of --max-chars take)")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default: info)")
    p.set_defaults(func=cmd_serve)

    # export
    p = command("export", help="export an adapter with its backbone as ONNX (needs ltuning[onnx])",
                description="The frozen backbone with the adapter's label prefixes / prompts baked in, for its "
                            "own labels: inputs input_ids, attention_mask (+ token_type_ids where the backbone has "
                            "them), output scores (N, K), what the library's scoring returns. The graph is checked "
                            "against PyTorch with onnxruntime before it is written.")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (default: onnx)")
    p.add_argument("--adapter", required=True, help="adapter folder written by `ltuning train`")
    p.add_argument("--output", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--opset", type=int, help="ONNX opset version, from 18 (default: the exporter's; a version the "
                   "installed onnxruntime cannot load is refused after the export)")
    p.add_argument("--model", help="load the adapter onto this backbone instead of the one it names")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the model folder or hub")
    p.set_defaults(func=cmd_export)
    _add_run_options(parser.commands)
    return parser


# ---------------------------------------------------------------------- config files, plots, run records
CONFIG_HELP = ("read options from a YAML or JSON file (keys are option names, with _ or -); options on the command "
               "line override it, and so do key=value arguments (an option's name and value) given with --config. "
               "Relative paths in it are read from the current folder, ~ is the home folder")
CONFIG_HELP_TRAIN = CONFIG_HELP.replace("(an option's name and value)", "(e.g. max_steps=600)") + (
    ". A run's run_config.json reruns it")
CONFIG_HELP_POSITIONAL = ("read options from a YAML or JSON file (keys are option names, e.g. batch_size or "
                          "batch-size); options on the command line override it. This command takes no key=value "
                          "arguments: its positional arguments are read literally")
RUN_CONFIG_NAME = "run_config.json"


def _add_run_options(commands: dict[str, _Parser]) -> None:
    """--config on every command, --plot on train and evaluate, open-vocabulary options on predict."""
    for p in commands.values():
        p.add_argument("--config", metavar="FILE",
                       help=CONFIG_HELP_POSITIONAL if _positionals(p) else
                       CONFIG_HELP_TRAIN if p is commands["train"] else CONFIG_HELP)
    commands["train"].add_argument("--plot", action="store_true",
                                   help="also write loss.png and accuracy.png into the output folder (needs matplotlib)")
    commands["evaluate"].add_argument("--plot", action="store_true",
                                      help="also write the confusion matrix as a PNG beside the metrics JSON "
                                           "(needs matplotlib)")
    p = commands["predict"]
    g = _Group(p, "open-vocabulary labels (lt-prefix, lt-prompt)")
    g.add_argument("--candidate-labels", help="score these label names instead of the adapter's (comma-separated "
                   "or a JSON list of names); the frozen model encodes them, the trained adapter scores them")
    g.add_argument("--hypothesis-template", help="label text for each label name, e.g. 'The review is {}.': "
                   "exactly one {} where the name goes; other braces are kept as written")
    g.add_argument("--multi-label", action="store_true",
                   help="an independent sigmoid per label; print every label scoring >= --threshold (best first), then "
                   "every label's score, best first")
    g.add_argument("--threshold", type=float,
                   help="--multi-label threshold, in [0, 1] (default: 0.5)")
    g.add_argument("--unseen-label-head", choices=["trained", "cosine"], default="trained",
                   help="how candidate label texts the adapter's score head was not trained on are scored "
                   "(similarity and anchored heads): trained, the trained head (default), or cosine, the frozen "
                   "similarity of the label-prefixed text and the label's embedding: better for another task's "
                   "labels, worse for other wordings of the trained labels")


def _positionals(p: _Parser) -> list[argparse.Action]:
    """A command's positional arguments (predict's texts, report's folders), which key=value never replaces."""
    return [o.action for o in p.options.values() if not o.action.option_strings and o.action.dest != "help"]


def _load_config_file(path: str) -> dict:
    from .errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    try:
        if p.suffix.lower() == ".json":
            value = json.loads(text)
        else:
            import yaml

            value = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - JSON, YAML and decoding errors all mean a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'} ({first})") from None
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{p}: a config file must hold a mapping of option -> value")
    return value


def _override_value(text: str):
    """key=value: the value as YAML (numbers, true/false, null, [lists]), else the plain string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _flag_value(key: str, value) -> bool:
    """A config value for an on/off option (true/false, yes/no, 1/0)."""
    from .errors import ConfigError

    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        value = value.lower() in ("true", "yes", "1")
    if not isinstance(value, bool):
        raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
    return value


def _typed_value(action: argparse.Action, key: str, v):
    """One config value through the option's type and choices, as argparse checks a command-line value."""
    from .errors import ConfigError

    v = v if isinstance(v, str) else json.dumps(v) if isinstance(v, list | dict) else str(v)
    try:
        out = action.type(v) if action.type else v
    except (TypeError, ValueError):
        raise ConfigError(f"config key {key!r}: {v!r} is not a valid {action.type.__name__}") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"config key {key!r}: {out!r} is not one of {sorted(action.choices)}")
    return out


def _convert(option: _Option, key: str, value):
    """A config value as argparse would have parsed it from the command line (type, choices)."""
    if option.kind == "store_true":
        return _flag_value(key, value)
    if value is None:
        return None
    if option.many and not isinstance(value, list):
        value = [value]
    if not option.many and isinstance(value, list | dict):
        value = json.dumps(value)  # e.g. label_texts given as a YAML list: the JSON the option accepts
    if option.many:
        return [_typed_value(option.action, key, v) for v in value]
    return _typed_value(option.action, key, value)


def _option_action(cmd_parser: _Parser, tok: str) -> _Option | None:
    """The option a command-line token names (exactly, or by a unique prefix as argparse allows)."""
    by_string = {s: o for o in cmd_parser.options.values() for s in o.action.option_strings}
    exact = by_string.get(tok)
    if exact is not None or not tok.startswith("--"):
        return exact
    hits = {o for s, o in by_string.items() if s.startswith(tok)}
    return hits.pop() if len(hits) == 1 else None


def _split_config_args(cmd_parser: _Parser, argv: list[str], options: dict[str, _Option]):
    """A command's argv sorted into the command line proper (``rest``), the ``--config`` path (None: not
    given) and the ``key=value`` overrides (dest -> (token, value))."""
    takes_overrides = not _positionals(cmd_parser)
    rest, path, overrides, i = [argv[0]], None, {}, 1
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            rest += argv[i:]
            break
        if tok == "--config" and i + 1 < len(argv):
            path, i = argv[i + 1], i + 2
            continue
        if tok.startswith("--config="):
            path, i = tok.split("=", 1)[1], i + 1
            continue
        option = _option_action(cmd_parser, tok) if tok.startswith("-") and "=" not in tok else None
        if option is not None and option.action.nargs is None and i + 1 < len(argv):
            rest += [tok, argv[i + 1]]  # an option and its value, whatever the value looks like
            i += 2
            continue
        key, eq, val = tok.partition("=")
        if takes_overrides and eq and not tok.startswith("-") and key.replace("-", "_") in options:
            overrides[key.replace("-", "_")] = (tok, _override_value(val))
        else:
            rest.append(tok)
        i += 1
    return rest, path, overrides


#: What a run recorded in an older ``run_config.json`` used where the file has no key (or, with the third
#: field, null) for an option: (option, value its run used, null too). Before --score-head existed every run
#: used the paper's head; before lt-prefix's label map was on by default, no key or null was a run without one.
_OLDER_RUN_CONFIGS = (("score_head", "paper", False), ("label_map_rank", 0, True))


#: Options naming files or folders: "~" expanded in config files, absolute in run_config.json.
_PATH_OPTIONS = {"output_dir", "train_file", "validation_file", "data_dir", "init_from", "model", "adapter", "file",
                 "output", "label_texts"}


def _config_values(path: str, command: str, overrides: dict, options: dict[str, _Option]) -> dict:
    """The config file's options (keys as destinations), with the key=value overrides on top."""
    from .errors import ConfigError

    values = {}
    for k, v in (_load_config_file(path) if path else {}).items():
        values[str(k).replace("-", "_")] = v
    file_command = values.pop("command", command)
    if file_command != command:
        raise ConfigError(f"{path} is a config for `ltuning {file_command}`, not `ltuning {command}`")
    if command == "train" and Path(path).name == RUN_CONFIG_NAME and {"label_position", "prefix_pooling"} <= set(values):
        # a run_config.json (it lists every option of its run) written by an older ltuning: what its run used
        # (a config of one's own, which names only some options, takes today's defaults)
        for key, used, null_too in _OLDER_RUN_CONFIGS:
            if key not in values or (null_too and values[key] is None):
                values[key] = used
        from .methods import get_method

        method = values.get("method", options["method"].action.default)
        if "objective" not in values and get_method(method).label_conditioned:
            values["objective"] = "pairwise"  # before --objective, LT methods trained on pairs (A.3)
    values.update(overrides)
    for key in _PATH_OPTIONS & set(values):  # a shell expands ~ on the command line, never in a file or key=value
        if isinstance(values[key], str) and (values[key] == "~" or values[key].startswith("~/")):
            values[key] = str(Path(values[key]).expanduser())
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for `ltuning {command}`; known: {sorted(options)}")
    return values


def _apply_config(parser: _Parser, argv: list[str]) -> tuple[list[str], str | None]:
    """Read ``--config FILE`` and its ``key=value`` overrides into the command's parser defaults, so options
    given on the command line still win. Returns argv without them, and the file.

    ``key=value`` is an override only where the user asked for a config: with ``--config``, on a command
    without positional arguments (train, evaluate, params, serve, export), and never as the value of an option
    (``--label-texts a=b``). predict's texts and report's folders are always taken literally."""
    from .errors import ConfigError

    if not argv or argv[0] not in parser.commands:
        return argv, None
    command, cmd_parser = argv[0], parser.commands[argv[0]]
    options = {dest: o for dest, o in cmd_parser.options.items() if dest not in ("help", "config")}
    rest, path, overrides = _split_config_args(cmd_parser, argv, options)
    if overrides and path is None:
        dest, (tok, _) = next(iter(overrides.items()))
        action = options[dest].action
        option = action.option_strings[-1] + ("" if action.nargs == 0 else " VALUE")
        raise ConfigError(f"{tok!r}: key=value overrides apply to a --config FILE; on the command line write "
                          f"{option}")
    if path is None:
        return argv, None
    values = _config_values(path, command, {k: v for k, (_, v) in overrides.items()}, options)
    given = {s for s in rest if s.startswith("--")} | {s.split("=", 1)[0] for s in rest if s.startswith("--")}
    defaults = {}
    for key, value in values.items():
        option = options[key]
        if option.kind == "append" and given & set(option.action.option_strings):
            continue  # the command line's --text-column replaces the file's, not adds to it
        defaults[key] = _convert(option, key, value)
        option.action.required = False  # given by the file
    cmd_parser.set_defaults(**defaults)
    return rest, path


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # inline text longer than a file name can be, or with a NUL
        return False


def _resolved_config(args) -> dict:
    """Every option of this run, as a config file that reruns it (``--config run_config.json``)."""
    # --overwrite and --resume act on the folder once; a rerun from this file must ask for them again.
    skip = {"func", "config", "command", "overwrite", "resume"}
    values = {k: v for k, v in sorted(vars(args).items()) if k not in skip and not k.startswith("_")}
    from .loading import portable_name

    # paths as absolute ones, so that the file reruns the run from any folder (a local --model as its adapter
    # names it; --label-texts only when it names a file)
    for key in _PATH_OPTIONS & set(values):
        value = values[key]
        if isinstance(value, str) and value and (key != "label_texts" or _is_file(value)):
            values[key] = portable_name(value) if key == "model" else os.path.abspath(value)  # links kept
    if values.get("method"):  # the head and map rank the run used, not "the default" (which may change)
        from .methods import get_method

        method = get_method(values["method"])
        built = getattr(args, "_built", None)  # the model's own (a warm start takes the source adapter's)
        if "score_head" in values:
            if not method.label_conditioned:
                values["score_head"] = None  # a classic method's K-way head is no choice
            elif built is not None:
                values["score_head"] = built["score_head"]
            elif values["score_head"] is None:
                values["score_head"] = method.head_for(None).value
        if "label_map_rank" in values:  # lt-prefix: 8 or 0; the other methods: None
            values["label_map_rank"] = (built["label_map_rank"] if built is not None
                                        else method.label_map_rank_for(values["label_map_rank"]))
    return {"command": args.command, **values}


def _default_train_output(args) -> None:
    # The same default as cmd_train, decided here so the run's config and plots can name the folder.
    if args.command == "train" and not args.output_dir and (args.task or args.train_file or args.tasks):
        name = "+".join(args.tasks) if args.tasks else args.task or Path(args.train_file).stem
        args.output_dir = f"runs/{name}-{args.method}-seed{args.seed}"


def _after_train(args) -> None:
    """Write run_config.json (and the plots) into the folder a successful `ltuning train` filled."""
    from .adapter import atomic_write_text
    from .train import is_main_process

    if not is_main_process():  # under `accelerate launch` only the main process writes
        return
    out = Path(args.output_dir)
    atomic_write_text(out / RUN_CONFIG_NAME, json.dumps(_resolved_config(args), indent=2) + "\n")
    if args.plot and (out / "train_results.json").is_file():
        from .plots import plot_training

        written = plot_training(json.loads((out / "train_results.json").read_text(encoding="utf-8")), out)
        print("plots written: " + ", ".join(str(w) for w in written))


def cmd_report(args) -> int:
    from .report import find_runs, format_report, summarize

    rows = [summarize(r) for r in find_runs(args.runs)]
    print(json.dumps(rows, indent=2) if args.json else format_report(rows))
    return 0


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
        header = False if getattr(args, "no_header", False) else task.header if task and not args.text_column else True
        with _no_header_hint(header, [*text_cols, label_col]):
            return read_table(file, text_cols, label_col, label_names or (task.label_names if task else None),
                              header=header)
    if task is None:
        raise DataError("no data: give --task, or a data file with --text-column and --label-column")
    return read_glue(task, split, args.data_dir)


def _read_task_file(args, file: str, label_names: dict[str, list[str]] | None):
    """--task-column: {task: dataset} of a data file (``label_names``: {task: labels}, for the validation file).
    Raises: DataError: columns not given, or what :func:`ltuning.data.read_table_tasks` raises."""
    from .data import read_table_tasks
    from .errors import DataError

    if not args.text_column or args.label_column is None:
        raise DataError(f"{file}: give --text-column and --label-column with --task-column")
    header = not args.no_header
    with _no_header_hint(header, [*args.text_column, args.label_column, args.task_column]):
        return read_table_tasks(file, args.text_column, args.label_column, args.task_column, label_names,
                                header=header)


@contextlib.contextmanager
def _no_header_hint(header: bool, columns: list):
    """A missing-column error for index-like columns of a file read with a header says --no-header."""
    from .errors import DataError

    try:
        yield
    except DataError as e:
        if header and any(str(c).isdigit() for c in columns) and "column" in str(e):
            raise DataError(f"{e}; a file without a header row takes column indices with --no-header") from None
        raise


def _check_positive(name: str, value: int | None) -> None:
    from .errors import ConfigError

    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _check_writable_parent(path: Path, option: str) -> None:
    """The nearest existing folder above ``path`` must be a folder we may write into."""
    from .errors import ConfigError

    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write into {parent} (permission denied)")


def _check_output_dir(path: Path, option: str) -> None:
    from .errors import ConfigError

    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write into it (permission denied)")
    _check_writable_parent(path, option)


def _check_output_file(path: Path, option: str) -> None:
    from .errors import ConfigError

    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file path such as {path / 'metrics.json'}")
    _check_writable_parent(path, option)


# Files `ltuning train --plot` writes into a run folder (with the adapter's): what --overwrite removes, with
# evaluate's results and checkpoints/ (_run_outputs), nothing else.
_RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "run_config.json", "train_results.json",
              "loss.png", "accuracy.png")


def _previous_run(out: Path) -> list[Path]:
    """What a previous run left in ``out``: adapter, results, config, checkpoints (empty: not a run)."""
    from .adapter_io import is_ltuning_config
    from .checkpoint import CHECKPOINTS_DIR, own_entries

    if not out.is_dir():
        return []
    # another library's adapter_config.json (peft's has the same name) is not a run: it is a foreign file
    found = [out / "adapter_config.json"] if is_ltuning_config(out / "adapter_config.json") else []
    found += [out / n for n in ("train_results.json", "run_config.json") if (out / n).is_file()]
    if own_entries(out):  # (another tool's checkpoints, or a file browser's litter, are no run)
        found.append(out / CHECKPOINTS_DIR)
    return found


#: Where ``train --overwrite`` keeps the previous run's files until the new run is saved.
REPLACED_DIR = ".ltuning-replaced"


def _evaluate_outputs(out: Path) -> list[Path]:
    """The ``eval_*`` files of ``ltuning evaluate`` in ``out``: its metrics JSONs and the plots beside them
    (a user's own ``eval_*`` files are not among them)."""
    metrics = sorted(f for f in out.glob("eval_*.json") if f.is_file() and _is_metrics_file(f))
    plots = [f.with_suffix(".png") for f in metrics if f.with_suffix(".png").is_file()]
    return sorted(metrics + plots)


def _run_outputs(out: Path) -> list[Path]:
    """What ``--overwrite`` replaces in ``out``: every file at a name a run writes (the adapter's files, whoever
    wrote them, since saving the adapter replaces them; run_config.json, train_results.json, the plots),
    ``evaluate``'s results (:func:`_evaluate_outputs`) and ``checkpoints/`` when all it holds is ltuning's
    checkpoints (:func:`_train_output` refuses a run that would mix its checkpoints with another tool's).
    Nothing else (a user's notes, data, own ``eval_*`` files) is touched."""
    from .adapter_io import ADAPTER_FILES
    from .checkpoint import CHECKPOINTS_DIR, foreign_entries

    found = [out / n for n in dict.fromkeys((*_RUN_FILES, *ADAPTER_FILES)) if (out / n).is_file()]
    found += _evaluate_outputs(out)
    if (out / CHECKPOINTS_DIR).is_dir() and not foreign_entries(out):
        found.append(out / CHECKPOINTS_DIR)
    return found


def _waiting(out: Path) -> bool:
    """Whether a run set aside by an unfinished --overwrite run waits in ``out`` (an empty folder is none)."""
    aside = out / REPLACED_DIR
    return aside.is_dir() and any(aside.iterdir())


def _remove(paths: list[Path]) -> None:
    import shutil

    for f in paths:
        shutil.rmtree(f) if f.is_dir() else f.unlink()


def _set_aside_previous_run(out: Path) -> list[Path]:
    """Move what a previous run wrote in ``out`` into ``out/.ltuning-replaced`` (renames, nothing copied):
    :func:`_drop_previous_run` deletes it once the new run is saved, :func:`_restore_previous_run` moves it
    back if the new run fails before leaving anything to resume. Returns what was moved (its old paths; none:
    no folder is made)."""
    moved = _run_outputs(out)
    if not moved:
        return []
    aside = out / REPLACED_DIR
    aside.mkdir(exist_ok=True)  # (an empty one: what is left when its files were moved back by hand)
    for f in moved:
        f.rename(aside / f.name)
    return moved


def _drop_previous_run(out: Path) -> None:
    """Delete the set-aside run (renamed first, so that a deletion cut short leaves no ``.ltuning-replaced``
    to be taken for a run still waiting)."""
    import shutil
    import tempfile

    doomed = Path(tempfile.mkdtemp(dir=out, prefix=f"{REPLACED_DIR}.deleting-"))
    (out / REPLACED_DIR).rename(doomed)  # onto the empty folder just made: a name no other run holds
    shutil.rmtree(doomed, ignore_errors=True)


def _restore_previous_run(out: Path) -> None:
    """Remove what the failed run wrote and move the set-aside run back: the folder is as it was."""
    aside = out / REPLACED_DIR
    _remove(_run_outputs(out))
    for f in sorted(aside.iterdir()):
        f.rename(out / f.name)
    aside.rmdir()


def _predict_inputs(args, pairs: bool) -> list:
    """predict's inputs: arguments, else the lines of --file, else stdin (blank lines skipped, \\r\\n or \\n
    line ends). For a pair adapter each one is split at its one TAB into (premise, hypothesis)."""
    from .data import read_text_lines
    from .errors import DataError

    if args.texts and args.file is not None:  # one of them would be ignored
        raise DataError(f"give texts as arguments or --file {args.file}, not both")
    numbered = read_text_lines(args.file, args.texts)
    where = "text" if args.texts else "stdin, line" if args.file in (None, "-") else f"{args.file}, line"
    if not pairs:
        return [t for _, t in numbered]
    items = []
    for n, t in numbered:
        parts = t.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            found = f"{len(parts) - 1} TABs" if len(parts) != 2 else "an empty side"
            raise DataError(f"{where} {n}: this adapter was trained on sentence pairs; give PREMISE<TAB>HYPOTHESIS "
                            f"(exactly one TAB, text on both sides), found {found}")
        items.append((parts[0], parts[1]))
    return items


def _parse_candidates(spec: str) -> list[str]:
    """--candidate-labels: comma-separated names, or a JSON list of names."""
    from .errors import ConfigError

    if not spec.strip():
        raise ConfigError("--candidate-labels is empty; give label names, comma-separated or as a JSON list")
    if spec.lstrip().startswith(("[", "{", '"')):
        try:
            value = json.loads(spec)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"--candidate-labels: invalid JSON ({str(e)[:200]})") from None
        if not isinstance(value, list):
            raise ConfigError(f"--candidate-labels must be comma-separated names or a JSON list of names, got a "
                              f"JSON {type(value).__name__.replace('dict', 'object').replace('str', 'string')}")
    else:
        value = spec.split(",")
    names = []
    for i, v in enumerate(value, 1):
        if isinstance(v, list | dict) or v is None:
            raise ConfigError(f"--candidate-labels: label {i} must be a name, got {json.dumps(v)}")
        if not str(v).strip():
            raise ConfigError(f"--candidate-labels: label {i} is empty")
        names.append(str(v).strip())
    return names


def _check_template(template: str) -> None:
    """--hypothesis-template, checked by the rule predict applies (one ``{}``), before any work."""
    from .errors import ConfigError
    from .prediction import _apply_template

    try:
        _apply_template(["label"], template)  # ConfigError: the usual one-line error
    except ConfigError as e:
        raise type(e)(_as_options(str(e), _PREDICT_OPTIONS)) from None


def _strict_json(value) -> str:
    """Indented strict JSON (no NaN / Infinity: a non-finite number is written as null)."""
    from .checkpoint import json_safe

    return json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------- commands
def _train_args(args):
    """train's options, checked, as :class:`ltuning.train.TrainArgs` (the output folder is set later)."""
    from .train import TrainArgs

    _check_positive("--max-train-samples", args.max_train_samples)
    _check_positive("--max-eval-samples", args.max_eval_samples)
    _check_positive("--max-length", args.max_length)
    _check_bf16(args.bf16)
    return TrainArgs(max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                     weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, eval_every=args.eval_every,
                     eval_batch_size=args.eval_batch_size, seed=args.seed,
                     mixed_precision="bf16" if args.bf16 else "no", progress=not args.quiet,
                     gradient_accumulation_steps=args.gradient_accumulation_steps,
                     checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                     resume=args.resume, skip_nonfinite=args.skip_nonfinite, output_dir=".",
                     metric_for_best=args.metric_for_best, early_stopping_patience=args.early_stopping_patience,
                     objective=args.objective)


def _train_output(args) -> Path:
    """The output folder; one holding a previous run is refused unless --overwrite or --resume; also
    refused: --resume with nothing to resume (a finished run, no checkpoint), and files there that ltuning did
    not write (a user's README.md) unless --overwrite."""
    from .adapter_io import ADAPTER_FILES
    from .checkpoint import CHECKPOINTS_DIR, foreign_entries, latest_checkpoint, own_entries
    from .errors import ConfigError
    from .loading import model_folder

    _check_multitask_args(args)
    if not args.train_file and not args.task and not args.tasks:
        raise ConfigError("no training data: give --task (e.g. --task demo), --tasks (several) or --train-file")
    name = "+".join(args.tasks) if args.tasks else args.task or Path(args.train_file).stem
    out_dir = Path(args.output_dir or f"runs/{name}-{args.method}-seed{args.seed}")
    # The output folder first: a run that cannot be saved, or would mix with an older one, never starts.
    _check_output_dir(out_dir, "--output-dir")
    if args.overwrite and args.resume:
        raise ConfigError("--overwrite deletes the run that --resume continues; give one of them")
    if args.init_from:
        source, out = Path(args.init_from).resolve(), out_dir.resolve()
        if source == out or out in source.parents:
            raise ConfigError(f"--init-from {args.init_from} is inside --output-dir {out_dir}, which this run writes "
                              "into; give another --output-dir (or copy the adapter elsewhere first)")
    if _waiting(out_dir) and not args.overwrite and not args.resume:
        raise ConfigError(f"--output-dir {out_dir} holds {REPLACED_DIR}/: a run that an --overwrite run set aside "
                          "and did not finish; give --resume to continue the unfinished run (from its last checkpoint, if it wrote one), "
                          "--overwrite to start it again, or move the set-aside files back (in place of the unfinished "
                          f"run's) and delete the empty {REPLACED_DIR}/ to keep that run")
    backbone = model_folder(args.model)
    if backbone is not None and out_dir.is_dir() and _same_file(out_dir, backbone):
        raise ConfigError(f"--output-dir {out_dir} is the backbone's folder (--model {args.model}), which the run "
                          "reads: the adapter's files (config.json, README.md) would replace the model's; give "
                          "another --output-dir")
    others = foreign_entries(out_dir)
    mixed = bool(others) and bool(own_entries(out_dir))  # and ltuning's checkpoints
    if others and (args.checkpoint_every or mixed):
        # the run's checkpoints, or the previous run's (which --overwrite and --resume act on), would mix with them
        why = "a previous run's checkpoints are mixed with them" if mixed else "this run writes its checkpoints there"
        raise ConfigError(f"--output-dir {out_dir}: {CHECKPOINTS_DIR}/ holds {', '.join(p.name for p in others[:3])}"
                          f"{' and more' if len(others) > 3 else ''}, which ltuning did not write, and {why}: move "
                          "them away or give another --output-dir")
    previous = _previous_run(out_dir)
    if previous and not args.overwrite and not args.resume:
        raise ConfigError(f"--output-dir {out_dir} already holds a run ({', '.join(p.name for p in previous)}); "
                          "give --overwrite to replace it, --resume to continue it, or another --output-dir")
    finished = [p for p in previous if p.is_file()]  # what only a finished run writes (not checkpoints/)
    if args.resume and finished and latest_checkpoint(out_dir) is None:
        # nothing to continue: starting over would replace the finished run, which --resume promises to keep
        raise ConfigError(f"--resume: {out_dir} holds a finished run ({', '.join(p.name for p in finished)}) but no "
                          "checkpoint to continue from; give --overwrite to train it again from step 0 (replacing "
                          "it), or another --output-dir")
    written = [out_dir / n for n in dict.fromkeys((*_RUN_FILES, *ADAPTER_FILES))]
    written += _evaluate_outputs(out_dir) if args.overwrite and out_dir.is_dir() else []
    for f, option in ((args.train_file, "--train-file"), (args.validation_file, "--validation-file")):
        if f and any(_same_file(Path(f), w) for w in written):
            raise ConfigError(f"{option} {f} is a file this run would write over in --output-dir {out_dir}; "
                              "give another --output-dir")
    foreign = _foreign_files(out_dir, args.plot and not previous)
    if foreign and not args.overwrite:
        raise ConfigError(f"--output-dir {out_dir} holds {', '.join(p.name for p in foreign)}, which ltuning did not "
                          "write and the run would replace; move it away, give another --output-dir, or --overwrite "
                          "to replace it")
    return out_dir


def _foreign_files(out: Path, plots: bool) -> list[Path]:
    """Files in ``out`` that training would write over and that no ltuning run wrote: the adapter's (a user's
    README.md, another library's adapter; :func:`ltuning.adapter_io.foreign_adapter_files`) and, in a folder
    holding no run, the plots ``--plot`` writes."""
    from .adapter_io import foreign_adapter_files

    if not out.is_dir():
        return []
    found = foreign_adapter_files(out)
    if plots:
        found += [out / n for n in ("loss.png", "accuracy.png") if (out / n).exists()]
    return found


def _check_multitask_args(args) -> None:
    """--tasks: several distinct known tasks, without the single-task data options; --task-column: a
    --train-file to split, without --task or --tasks.
    Raises: ConfigError saying which options to leave out or give."""
    from .errors import ConfigError

    if args.task_column is not None:
        if args.tasks:
            raise ConfigError("--task-column takes the tasks from a column of --train-file and --tasks takes known "
                              "tasks; give one of them")
        if args.task:
            raise ConfigError(f"--task-column takes each task's labels from its rows in --train-file; leave out "
                              f"--task {args.task} (the file's columns are --text-column and --label-column)")
        if not args.train_file:
            raise ConfigError("--task-column needs --train-file: a data file with a column naming each row's task "
                              "(and --text-column, --label-column)")
    if not args.tasks:
        return
    given = [o for o, v in (("--task", args.task), ("--train-file", args.train_file),
                            ("--validation-file", args.validation_file), ("--label-texts", args.label_texts)) if v]
    if given:
        raise ConfigError(f"--tasks takes each task's data and label texts from the task; leave out {', '.join(given)}")
    dup = sorted({t for t in args.tasks if args.tasks.count(t) > 1})
    if dup:
        raise ConfigError(f"--tasks names {dup} more than once; give each task once")


def _multitask_data(args):
    """--tasks: {task: training data}, {task: validation data}, each subset as the single-task options say."""
    from .data import read_glue

    train = {t: read_glue(t, "train", args.data_dir).subset(args.max_train_samples, seed=args.seed) for t in args.tasks}
    val = {t: read_glue(t, "validation", args.data_dir).subset(args.max_eval_samples, seed=args.seed)
           for t in args.tasks}
    return train, val


def _task_column_data(args):
    """--task-column: {task: training data}, {task: validation data} (None without --validation-file), each
    subset as the single-task options say, and {task: label texts} (--label-texts', else the label names:
    never a known task's, whose name a file's task may share with other labels).
    Raises: DataError: what the file reader and the label texts refuse."""
    from .data import load_task_label_texts

    train = _read_task_file(args, args.train_file, None)
    val = None
    if args.validation_file:
        val = _read_task_file(args, args.validation_file, {t: d.label_names for t, d in train.items()})
    texts = load_task_label_texts(args.label_texts, {t: d.label_names for t, d in train.items()})
    train = {t: d.subset(args.max_train_samples, seed=args.seed) for t, d in train.items()}
    if val is not None:
        val = {t: d.subset(args.max_eval_samples, seed=args.seed) for t, d in val.items()}
    return train, val, texts


def _train_data(args):
    """Training data, validation data (None for a --train-file without --validation-file), the label-text
    options of build_and_train; with --tasks or --task-column, dicts {task: data}."""
    from .data import load_label_texts

    if args.tasks:
        train, val = _multitask_data(args)
        return train, val, {}
    if args.task_column is not None:
        train, val, texts = _task_column_data(args)
        return train, val, {"task_label_texts": texts}

    train_data = _read_data(args, "train", args.train_file, None)
    if args.train_file and not args.validation_file:
        val_data = None
    else:
        val_data = _read_data(args, "validation", args.validation_file, train_data.label_names)
    label_texts = load_label_texts(args.label_texts, train_data.label_names)
    train_data = train_data.subset(args.max_train_samples, seed=args.seed)
    eval_data = val_data.subset(args.max_eval_samples, seed=args.seed) if val_data is not None else None
    return train_data, eval_data, {"label_texts": label_texts}


def _train_and_save(args, train_data, eval_data, label_options, targs, on_built):
    """Train (``on_built`` runs once the model is built and checked) and write the adapter and
    train_results.json into ``targs.output_dir``; the run, or None in a process that is not the main one."""
    from .adapter import atomic_write_text, save_adapter
    from .adapter_io import WEIGHTS_DIGEST_KEY, weights_digest
    from .recipe import build_and_train
    from .train import is_main_process

    run = build_and_train(args.model, train_data, eval_data, targs, trust_remote_code=args.trust_remote_code,
                          on_built=on_built, method=args.method, task=args.task, **label_options,
                          label_length=args.label_length, max_length=args.max_length,
                          prefix_pooling=args.prefix_pooling, text_pooling=args.text_pooling,
                          label_position=args.label_position, score_head=args.score_head, base_model=args.model,
                          prefix_layers=args.prefix_layers, label_map_rank=args.label_map_rank,
                          init_from=args.init_from)
    if not is_main_process():
        return None
    out_dir, result = Path(targs.output_dir), run.result
    # without validation nothing was chosen: the adapter holds the last step's state
    extra = {"task": args.task, "train_file": args.train_file,
             ("best_step" if eval_data is not None else "final_step"): result.best_step,
             **({"tasks": list(train_data)} if isinstance(train_data, dict) else {}),
             **({"task_column": args.task_column} if args.task_column is not None else {}),
             **({"init_from": args.init_from} if args.init_from else {}),
             "validation": {k: v for k, v in result.best_metrics.items() if k not in ("confusion_matrix", "tasks")}}
    save_adapter(run.model, out_dir, extra=extra, overwrite=args.overwrite)
    summary = {
        "command": "ltuning " + " ".join(sys.argv[1:]) if sys.argv and "ltuning" in sys.argv[0] else None,
        "args": {k: v for k, v in vars(args).items() if k != "func" and not k.startswith("_")},
        **run.summary(),
        # the adapter these results are of: a later save_pretrained into the folder makes them another's (report)
        WEIGHTS_DIGEST_KEY: weights_digest(out_dir),
    }
    atomic_write_text(out_dir / "train_results.json", _strict_json(summary))
    return run


def _after_unfinished_overwrite(out_dir: Path, args, start: Path | None) -> None:
    """A run with a set-aside previous run stopped (an error, Ctrl-C, SIGTERM). With a checkpoint to resume from,
    it stays (the error's --resume advice holds) and the previous run keeps waiting; without one, the folder goes
    back to the previous run as it was. ``start``: the newest checkpoint before this command (an unfinished run's,
    which --resume continues): a command that wrote none of its own leaves the folder as it found it."""
    from .adapter import atomic_write_text
    from .checkpoint import latest_checkpoint

    flag = "--overwrite" if args.overwrite else "--resume"
    last = latest_checkpoint(out_dir)
    if last is None:
        _restore_previous_run(out_dir)
        args._restored_previous_run = True
        print(f"{flag}: this run stopped before its first checkpoint; the previous run in {out_dir} is back as "
              "it was", file=sys.stderr)
    elif not getattr(args, "_training_began", False) or (args.resume and last == start):
        # before training (nothing set aside or removed yet), or a --resume that wrote no checkpoint: the
        # unfinished run, its run_config.json and the waiting run are as they were
        print(f"{flag}: this run stopped before writing a checkpoint; {out_dir} is as it was (the unfinished run, "
              f"last checkpoint {last}, and the run waiting in {REPLACED_DIR}/)", file=sys.stderr)
    else:
        # the run's own config, so that `--config <out>/run_config.json --resume` (the card's rerun) finds it
        atomic_write_text(out_dir / RUN_CONFIG_NAME, json.dumps(_resolved_config(args), indent=2) + "\n")
        print(f"{flag}: this run stopped; the previous run still waits in {out_dir / REPLACED_DIR} (deleted when a "
              "run in this folder is saved: a --resume of this one, or another --overwrite; to keep it instead, "
              "move its files back in place of this run's and delete the empty folder)", file=sys.stderr)


def cmd_train(args) -> int:
    from .checkpoint import latest_checkpoint
    from .evaluate import format_metrics
    from .train import is_main_process

    targs = _train_args(args)
    out_dir = _train_output(args)
    # Read and check all input before anything is written.
    train_data, eval_data, label_options = _train_data(args)
    multi = isinstance(train_data, dict)
    # --overwrite keeps the previous run in REPLACED_DIR until this run is saved; one may wait there already,
    # set aside by an --overwrite run that did not finish (then this folder's run is that unfinished one)
    waiting = _waiting(out_dir)
    start = latest_checkpoint(out_dir) if waiting else None

    def before_training(model) -> None:
        # under `accelerate launch` only the main process prints and writes
        if not is_main_process():
            return
        args._training_began = True  # (for the Ctrl-C message: the folder may have changed from here on)
        head = model.config.score_head
        args._built = {"score_head": getattr(head, "value", head), "label_map_rank": model.config.label_map_rank}
        if args.overwrite and waiting:
            unfinished = _run_outputs(out_dir)
            _remove(unfinished)
            print(f"--overwrite: removed the unfinished run's {len(unfinished)} files/folders from {out_dir}; the run "
                  f"before it still waits in {REPLACED_DIR}/ until this run is saved")
        elif args.overwrite and (moved := _set_aside_previous_run(out_dir)):
            print(f"--overwrite: the previous run's {len(moved)} files/folders in {out_dir} wait in {REPLACED_DIR}/ "
                  "until this run is saved (moved back if it stops before writing a checkpoint)")
        config, backbone = model.config, model.backbone
        sets = {None: (train_data, eval_data)} if not multi else {
            t: (train_data[t], (eval_data or {}).get(t)) for t in train_data}
        for task, (tr, ev) in sets.items():
            names, texts = ((config.label_names, config.label_texts) if task is None else
                            (config.tasks[task]["label_names"], config.tasks[task]["label_texts"]))
            labels = dict(zip(names, texts, strict=False))
            prefix = "" if task is None else f"{task}: "
            print(f"ltuning train: {args.method} on {args.model} ({backbone.kind}, m={backbone.dims.num_layers}, "
                  f"d={backbone.dims.hidden_size}), {prefix}{len(tr)} train / {len(ev) if ev is not None else 0} "
                  f"validation texts, labels {labels}, l={config.label_length}")
        if args.init_from:
            print(f"starting from the weights of {args.init_from}")
        model.print_trainable_parameters()

    targs.output_dir = str(out_dir)
    try:
        run = _train_and_save(args, train_data, eval_data, label_options, targs, before_training)
    except BaseException:
        if is_main_process() and _waiting(out_dir):
            _after_unfinished_overwrite(out_dir, args, start)
        raise
    if run is None:  # not the main process
        return 0
    args._saved = True  # (for a Ctrl-C from here on: the adapter is saved)
    if stops := getattr(args, "_stop_signals", None):
        stops.defer()  # the rest is clean-up: a SIGTERM waits until it is done
    if (out_dir / REPLACED_DIR).is_dir():
        _drop_previous_run(out_dir)
    model, result = run.model, run.result
    for task, metrics in (result.best_metrics.get("tasks") or {"": result.best_metrics}).items():
        if not metrics:
            continue
        labels = model.config.tasks[task]["label_names"] if task else model.config.label_names
        print(f"best validation (step {result.best_step}){' on ' + task if task else ''}:")
        print(format_metrics(metrics, labels))
    if multi and result.best_metrics and len(result.best_metrics.get("tasks") or {}) > 1:
        print(f"mean over the tasks: accuracy {result.best_metrics['accuracy']:.4f}, mcc {result.best_metrics['mcc']:.4f}")
    steps = (f"{result.stopped_early_at} steps (stopped early, of --max-steps {args.max_steps})"
             if result.stopped_early_at is not None else f"{args.max_steps} steps")
    print(f"trained {steps} in {result.seconds:.1f} s; adapter saved to {out_dir}")
    return 0


def _check_bf16(enabled: bool) -> None:
    import torch

    from .errors import ConfigError

    if enabled and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()) \
            and not torch.backends.mkldnn.is_available():
        raise ConfigError("--bf16 is not supported on this hardware")


def _scoring_precision(model, bf16: bool):
    """bfloat16 autocast on the model's device for --bf16, else nothing."""
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(model.backbone.device.type, dtype=torch.bfloat16)


def cmd_evaluate(args) -> int:
    from .adapter import atomic_write_text, load_adapter, read_adapter_config
    from .adapter_io import WEIGHTS_DIGEST_KEY, weights_digest
    from .data import FileLabels
    from .errors import ConfigError
    from .evaluate import evaluate, format_metrics

    _check_positive("--max-samples", args.max_samples)
    _check_positive("--batch-size", args.batch_size)
    _check_bf16(args.bf16)
    config = read_adapter_config(args.adapter)
    # A --file names its own output (eval_<stem>_file.json): it never replaces the task split's metrics.
    name, part = (Path(args.file).stem, "file") if args.file else (args.task, args.split)
    out = Path(args.output) if args.output else Path(args.adapter) / f"eval_{name}_{part}.json"
    _check_output_file(out, "--output")
    if args.plot:
        if out.suffix.lower() == ".png":  # the plot's name is the metrics file's with .png: one would replace the other
            raise ConfigError(f"--output {out} ends in .png, the name --plot gives the confusion matrix beside the "
                              f"metrics; give the metrics a .json name (e.g. {out.with_suffix('.json')})")
        _check_output_file(out.with_suffix(".png"), "--output (its .png plot)")
    _check_evaluate_outputs(args, out, config)
    task = _adapter_task(config, args.adapter_task, args.task)
    names = config.label_names if task is None else config.tasks[task]["label_names"]
    if args.file and not any(t.label_names == list(names) for t in TASKS.values()):
        # names not from a task: an integer in the file is not a known class index (see data.FileLabels)
        names = FileLabels(names, source=f"the adapter {args.adapter}")
    data = _read_data(args, args.split, args.file, names).subset(args.max_samples)
    digest = weights_digest(args.adapter)  # of the weights loaded now (not of a file replaced meanwhile)
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    model = model if task is None else model.for_task(task)
    t0 = time.perf_counter()
    with _scoring_precision(model, args.bf16):
        metrics = evaluate(model, data, batch_size=args.batch_size, progress=not args.quiet)
    metrics["seconds"] = time.perf_counter() - t0
    metrics["data"] = data.source
    metrics[WEIGHTS_DIGEST_KEY] = digest  # the adapter these metrics are of (report)
    if args.file:  # where the data was, from any folder: another file of the same name is told apart by it
        metrics["data_file"] = str(Path(args.file).resolve())
    metrics["run_config"] = _resolved_config(args)
    atomic_write_text(out, _strict_json(metrics))
    print(f"{config.method} on {config.base_model}: {data.source}")
    print(format_metrics(metrics, model.label_names))
    print(f"metrics written to {out}")
    if args.plot:
        from .plots import plot_confusion

        png = plot_confusion(metrics["confusion_matrix"], model.label_names, out.with_suffix(".png"),
                             title=f"{config.method}: {name} {part if args.task and not args.file else ''}".strip())
        print(f"confusion matrix written to {png}")
    return 0


def _adapter_task(config, adapter_task: str | None, data_task: str | None) -> str | None:
    """The multi-task adapter's task whose labels to use: --adapter-task (which it must have), else a --task it
    has; None: its primary labels.
    Raises: ConfigError: an --adapter-task the adapter lacks; a --task the adapter has a task of that name for
    with other labels (a --task-column file's task named like a known one: the known task's data is not its)."""
    from .errors import ConfigError

    tasks = config.tasks or {}
    if adapter_task is not None and adapter_task not in tasks:
        have = f"its tasks are {list(tasks)}" if tasks else "it was trained on one label set"
        raise ConfigError(f"--adapter-task {adapter_task!r}: the adapter has no task of that name; {have}")
    if adapter_task is None and data_task in tasks and tasks[data_task]["label_names"] != TASKS[data_task].label_names:
        raise ConfigError(f"--task {data_task}: the adapter's task {data_task!r} has the labels "
                          f"{tasks[data_task]['label_names']}, not the known task's {TASKS[data_task].label_names} "
                          f"(it was trained on other data of that name); evaluate that task on its own data: --file FILE "
                          f"--text-column C --label-column C --adapter-task {data_task}, without --task")
    task = adapter_task if adapter_task is not None else data_task if data_task in tasks else None
    return None if task is None or task == next(iter(tasks)) else task


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _is_metrics_file(path: Path) -> bool:
    from .report import is_evaluate_metrics

    return is_evaluate_metrics(path)


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (links resolved)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _check_not_an_input(outputs: list[Path], args, config, command: str) -> None:
    """An adapter command's output never replaces a file it reads, whatever the flags: --file, --config, the
    adapter's files, or any file in the backbone's folder (--model, else the one the adapter names)."""
    from .adapter_io import ADAPTER_FILES
    from .config import TRAINER_WEIGHTS_NAME
    from .errors import ConfigError
    from .loading import model_folder

    adapter = Path(args.adapter)
    inputs = [(Path(f), o) for f, o in ((getattr(args, "file", None), "--file"), (args.config, "--config")) if f]
    # a Trainer checkpoint folder's adapter is its model.safetensors
    inputs += [(adapter / n, "--adapter") for n in (*ADAPTER_FILES, TRAINER_WEIGHTS_NAME)]
    backbone = model_folder(args.model or config.base_model)
    for o in outputs:
        for path, option in inputs:
            if _same_file(o, path):
                raise ConfigError(f"--output {o} is {path}, which {command} reads ({option}); give another --output")
        # below the backbone folder but in the adapter's folder (an adapter kept inside its model's folder): the
        # adapter's own outputs, which evaluate and export write there
        if backbone is not None and o.exists() and _inside(o, backbone) \
                and not (_inside(o, adapter) and not _inside(backbone, adapter)):
            raise ConfigError(f"--output {o} is a file in the backbone's folder {backbone}, which {command} reads; "
                              "give another --output")


def _check_evaluate_outputs(args, out: Path, config) -> None:
    """evaluate never writes over a file it reads (:func:`_check_not_an_input`), whatever the flags; nor over a
    file that an earlier ``ltuning evaluate`` did not write, unless --overwrite."""
    from .errors import ConfigError

    outputs = [out] + ([out.with_suffix(".png")] if args.plot else [])
    _check_not_an_input(outputs, args, config, "evaluate")
    ours = _is_metrics_file(out)
    if ours and args.file and not args.output and not args.overwrite:
        # the default name comes from the file's stem: data/a/test.csv and data/b/test.csv share it
        metrics = json.loads(out.read_text(encoding="utf-8"))
        # the file's absolute path (metrics written before 2026-11-30: --file as typed, from an unknown folder)
        earlier = metrics.get("data_file", metrics["run_config"].get("file"))
        if isinstance(earlier, str) and not (_same_file(Path(earlier), Path(args.file))
                                             or Path(earlier).resolve() == Path(args.file).resolve()):
            here = Path(args.file).resolve()
            keep = out.with_name(f"eval_{here.parent.name}_{here.stem}_file.json")
            raise ConfigError(f"{out} holds the metrics of --file {earlier}, another file named like {args.file}; "
                              f"give --output to keep both (e.g. --output {keep}), or --overwrite to replace them")
    for o in outputs:
        # the plot is ours when the metrics JSON beside it is
        if o.exists() and not ours and not args.overwrite:
            raise ConfigError(f"--output {o} exists and ltuning evaluate did not write it; give --overwrite to replace "
                              "it, or another --output")


#: ``predict``'s Python arguments that are ``ltuning predict`` options, by their option names
_PREDICT_OPTIONS = {"candidate_labels": "--candidate-labels", "hypothesis_template": "--hypothesis-template",
                    "multi_label": "--multi-label", "unseen_label_head": "--unseen-label-head",
                    "threshold": "--threshold", "batch_size": "--batch-size"}


def _as_options(message: str, options: dict[str, str]) -> str:
    """An API error that starts with an argument's name (``candidate_labels: ...``), starting with its option's
    name instead (the rest of the message, label names included, as written)."""
    name = re.match(r"\w+", message)
    if name and name.group() in options and message[name.end():name.end() + 1] in (":", " ", ""):
        return options[name.group()] + message[name.end():]
    return message


def cmd_predict(args) -> int:
    from .adapter import load_adapter, read_adapter_config
    from .errors import ConfigError
    from .prediction import DEFAULT_THRESHOLD

    # Every option and the adapter folder are checked before stdin is read or the model loaded.
    _check_positive("--batch-size", args.batch_size)
    _check_bf16(args.bf16)
    config = read_adapter_config(args.adapter)
    candidates = None if args.candidate_labels is None else _parse_candidates(args.candidate_labels)
    if args.hypothesis_template is not None:
        _check_template(args.hypothesis_template)
    if args.threshold is not None:
        if not args.multi_label:
            raise ConfigError("--threshold applies to --multi-label only")
        if not 0 <= args.threshold <= 1:  # a sigmoid score is in [0, 1]; 0 shows every label, 1 none
            raise ConfigError(f"--threshold must be in [0, 1], got {args.threshold}")
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    task = _adapter_task(config, args.adapter_task, None)
    texts = _predict_inputs(args, pairs=bool(config.text_pairs))
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    model = model if task is None else model.for_task(task)
    try:
        with _scoring_precision(model, args.bf16):
            results = model.predict(texts, batch_size=args.batch_size, candidate_labels=candidates,
                                    hypothesis_template=args.hypothesis_template, multi_label=args.multi_label,
                                    threshold=args.threshold, return_scores=True,
                                    unseen_label_head=args.unseen_label_head)
    except ConfigError as e:  # the API names its arguments; here they are options
        raise type(e)(_as_options(str(e), _PREDICT_OPTIONS)) from None
    # r is the zero-shot pipeline's dict: sequence, labels and scores, best first
    for item, r in zip(texts, results, strict=True):
        text = "\t".join(item) if isinstance(item, tuple) else item
        selected = [n for n, p in zip(r["labels"], r["scores"], strict=True) if p >= threshold]
        if args.json:
            row = {**r, "sequence": list(item) if isinstance(item, tuple) else item}
            print(json.dumps({**row, "selected": selected} if args.multi_label else row))
        elif args.multi_label:
            print(f"{','.join(selected) or '-'}\t" +
                  " ".join(f"{k}={v:.4f}" for k, v in zip(r["labels"], r["scores"], strict=True)) + f"\t{text}")
        else:
            print(f"{r['labels'][0]}\t{r['scores'][0]:.4f}\t{text}")
    return 0


def cmd_params(args) -> int:
    import torch

    from .config import LTuningConfig
    from .data import get_task, load_label_texts
    from .errors import ConfigError
    from .labels import check_label_length, default_label_length
    from .loading import load_backbone
    from .methods import METHODS

    _check_positive("--label-length", args.label_length)
    if args.label_map_rank is not None and args.label_map_rank < 0:
        raise ConfigError(f"--label-map-rank must be >= 0 (0: no label map), got {args.label_map_rank}")
    task = get_task(args.task)
    texts = load_label_texts(args.label_texts, task.label_names) or task.label_texts
    backbone = load_backbone(args.model, trust_remote_code=args.trust_remote_code)
    # the rules train uses: l label tokens run through the model itself
    check_label_length(backbone, args.label_length, "--label-length", args.model)
    l = args.label_length if args.label_length is not None else default_label_length(backbone, texts)
    K = len(task.label_names)
    dims = backbone.dims
    if args.prefix_layers is not None:
        backbone.check_prefix_layers(args.prefix_layers, "--prefix-layers")
    config = LTuningConfig(label_names=task.label_names, label_texts=texts, label_length=l,
                           score_head=args.score_head)
    rows = []
    for name, cls in sorted(METHODS.items()):
        depth = args.prefix_layers if cls.injection == "prefix" else None  # prompts have no depth
        rank = cls.label_map_rank_for(args.label_map_rank)  # lt-prefix's alone (its default where not given)
        config.prefix_layers, config.label_map_rank = depth, rank
        with torch.device("meta"):  # shapes only: counting needs no memory, whatever l is
            counted = sum(p.numel() for p in cls(config, dims, K, l).parameters())
        expr, value = cls.formula(dims, l, K, cls.head_for(config.score_head), depth, rank)
        rows.append({"method": name, "trainable": counted, "formula": expr, "formula_value": value,
                     "match": counted == value})
    info = {"model": args.model, "m": dims.num_layers, "d": dims.hidden_size, "n_heads": dims.num_heads,
            "n_kv": dims.num_kv_heads, "d_h": dims.head_dim, "d_kv": dims.kv_dim, "l": l, "K": K, "prefix_layers": args.prefix_layers,
            "label_map_rank": METHODS["lt-prefix"].label_map_rank_for(args.label_map_rank),
            "backbone_params": sum(p.numel() for p in backbone.parameters()), "methods": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.model}: m={dims.num_layers} d={dims.hidden_size} heads={dims.num_heads} n_kv={dims.num_kv_heads} "
          f"d_h={dims.head_dim} d_kv={dims.kv_dim}; labels {texts} -> l={l}, K={K}"
          + (f"; prefix layers j={args.prefix_layers}" if args.prefix_layers is not None else "")
          + f"; label map rank r={info['label_map_rank']} (lt-prefix{', 0: none' if not info['label_map_rank'] else ''})"
          + f"; backbone {info['backbone_params']:,} params (frozen)")
    print(f"{'method':<10} {'trainable':>12} {'formula':<30} {'= value':>12}  match")
    for r in rows:
        print(f"{r['method']:<10} {r['trainable']:>12,} {r['formula']:<30} {r['formula_value']:>12,}  "
              f"{'yes' if r['match'] else 'NO'}")
    return 0


def cmd_serve(args) -> int:
    from .adapter import load_adapter, read_adapter_config
    from .errors import ConfigError
    from .serve import Limits, check_max_wait_ms, require_serve, serve

    require_serve()  # before the model loads
    for name in ("--max-batch", "--max-texts", "--max-chars", "--max-body-bytes"):
        _check_positive(name, getattr(args, name[2:].replace("-", "_")))
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    check_max_wait_ms(args.max_wait_ms)
    read_adapter_config(args.adapter)
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes or 0)
    serve(model, host=args.host, port=args.port, limits=limits, max_batch=args.max_batch,
          max_wait_ms=args.max_wait_ms, log_level=args.log_level)
    return 0


def cmd_export(args) -> int:
    from .adapter import load_adapter, read_adapter_config
    from .export import check_output, export_onnx, require_onnx

    require_onnx()
    check_output(args.output, args.overwrite)  # before the model loads
    _check_not_an_input([Path(args.output)], args, read_adapter_config(args.adapter), "export")
    model = load_adapter(args.adapter, model=args.model, trust_remote_code=args.trust_remote_code)
    info = export_onnx(model, args.output, overwrite=args.overwrite, opset=args.opset)
    print(f"{model.config.method} on {model.config.base_model}: labels {info['labels']} -> {info['output']} "
          f"(opset {info['opset']}; inputs {', '.join(info['inputs'])}; output scores (N, {len(info['labels'])}); "
          f"onnxruntime vs PyTorch max |diff| {info['max_abs_diff']:.1e})")
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler's stop) during ``ltuning train``, ``evaluate`` or ``export``: handled as
    Ctrl-C is, so temporary files are removed, a run that --overwrite set aside is put back and the message
    names the checkpoint to --resume from."""


class _StopSignals:
    """``with _StopSignals():`` SIGTERM raises :class:`Terminated` (in the main thread, where handlers can be set,
    and unless SIGTERM was ignored when the command started). After :meth:`defer` (the run is saved; what is left
    is clean-up that must not be cut short) SIGTERM and Ctrl-C are only noted, and reported when the block ends.
    The previous handlers are restored after."""

    def __init__(self) -> None:
        self.previous: dict = {}  # signal -> the handler before ours
        self.arrived: list[str] = []

    def __enter__(self) -> _StopSignals:
        import signal

        if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            self._install(signal.SIGTERM, self._stop)
        return self

    def _install(self, signum, handler) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signum, handler)
            self.previous.setdefault(signum, signal.SIG_DFL if previous is None else previous)

    @staticmethod
    def _stop(signum, frame) -> None:
        raise Terminated

    def _note(self, signum, frame) -> None:
        import signal

        self.arrived.append("SIGTERM" if signum == signal.SIGTERM else "Ctrl-C")

    def defer(self) -> None:
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum in self.previous or signal.getsignal(signum) is signal.default_int_handler:
                self._install(signum, self._note)

    def __exit__(self, *exc) -> None:
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        if self.arrived:
            print(f"{' and '.join(dict.fromkeys(self.arrived))} arrived after the run was saved; its files were "
                  "finished first", file=sys.stderr)


def _interrupted_message(args, stopped: str = "interrupted") -> str:
    """What a Ctrl-C (or SIGTERM: ``stopped`` says which) leaves: for train, the newest checkpoint it can
    --resume from, if one was written."""
    train = args is not None and getattr(args, "command", None) == "train"
    if train and getattr(args, "_saved", False):
        return (f"{stopped} after the run was saved to {args.output_dir}; {RUN_CONFIG_NAME} (and --plot's plots) "
                "may be missing")
    if getattr(args, "_restored_previous_run", False):
        return f"{stopped} before the first checkpoint; nothing of this run was kept"
    if train and getattr(args, "overwrite", False) and not getattr(args, "_training_began", False):
        return f"{stopped} before training began; {args.output_dir} is unchanged"
    if train and getattr(args, "output_dir", None):
        from .checkpoint import latest_checkpoint

        try:
            last = latest_checkpoint(args.output_dir)
        except OSError:
            last = None
        if last is not None:
            instead = " in place of --overwrite" if getattr(args, "overwrite", False) else ""
            return f"{stopped}; last checkpoint: {last}; continue with the same command and --resume{instead}"
    return f"{stopped}; nothing was saved"


def _check_utf8_argv(argv: list[str]) -> None:
    """Every argument must be UTF-8: other bytes arrive as lone surrogates, which a tokenizer (texts, label
    texts, candidate labels) refuses with a TypeError and a card or JSON file cannot hold. Names the option."""
    from .data import is_utf8, shown_bytes
    from .errors import ConfigError

    for i, tok in enumerate(argv):
        if is_utf8(tok):
            continue
        if tok.startswith("--") and "=" in tok:
            name = tok.split("=", 1)[0]
        elif i and argv[i - 1].startswith("-") and "=" not in argv[i - 1]:
            name = argv[i - 1]
        else:
            name = f"argument {i + 1}"
        name = name if is_utf8(name) else f"argument {i + 1}"
        raise ConfigError(f"{name}: not UTF-8 text ({shown_bytes(tok)}); give UTF-8 text (and UTF-8 file names)")


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A library warning on the command line: ``warning: <message>``, not Python's file, line and source line
    (which named the ltuning script itself)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import shlex

    from . import card
    from .errors import LTuningError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = None
    try:
        _check_utf8_argv(argv)
        argv, config_file = _apply_config(parser, argv)
    except LTuningError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    args.config = config_file
    _quiet_libraries()
    shown_warning = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        if getattr(args, "plot", False):
            from .plots import require_matplotlib

            require_matplotlib()  # before any work: no half-finished run for want of a plotting library
        if args.command == "train":
            _default_train_output(args)
        # The command the model card shows: with a config file, the run's own run_config.json reruns it.
        card.set_command(f"ltuning train --config {shlex.quote(str(Path(args.output_dir) / RUN_CONFIG_NAME))}"
                         if config_file is not None and args.command == "train" and args.output_dir
                         else "ltuning " + shlex.join(argv))
        if args.command in ("train", "evaluate", "export"):  # the commands that write files: clean up on SIGTERM
            with _StopSignals() as args._stop_signals:
                rc = args.func(args)
                if rc == 0 and args.command == "train":
                    _after_train(args)
            return rc
        return args.func(args)
    except LTuningError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError as e:
        if getattr(args, "command", None) not in ("predict", "report", "params"):  # a run's output lost: an error
            print(f"error: {e.strerror or e}", file=sys.stderr)
            return EXIT_USAGE
        # `ltuning predict ... | head`: the reader stopped reading, which is no error
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no more writes to the closed pipe at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a command the closed pipe ended
    except OSError as e:  # a file the OS refused (permission, a lost mount) where no reader named it
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Terminated:
        print(_interrupted_message(args, "terminated (SIGTERM)"), file=sys.stderr)
        return 143  # 128 + SIGTERM, as a shell reports a process it ended
    except KeyboardInterrupt:
        print(_interrupted_message(args), file=sys.stderr)
        return 130
    finally:
        card.set_command(None)  # an in-process caller's later save_pretrained is not this command
        warnings.formatwarning = shown_warning


if __name__ == "__main__":
    raise SystemExit(main())
