"""``ltuning report RUN_DIR ...``: one summary table of saved runs, from the files each run leaves
(``adapter_config.json``, ``train_results.json``, ``eval_*.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from .adapter import CONFIG_NAME
from .adapter_io import WEIGHTS_DIGEST_KEY, weights_digest
from .errors import DataError

RESULTS_NAME = "train_results.json"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object")
    return value


def _is_evaluate_record(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get("run_config"), dict) \
        and value["run_config"].get("command") == "evaluate"


def is_evaluate_metrics(path: Path) -> bool:
    """Whether ``path`` is a metrics JSON that ``ltuning evaluate`` wrote (its ``run_config`` names the command):
    what ``report`` lists and ``train --overwrite`` and ``evaluate`` may replace."""
    try:
        return _is_evaluate_record(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return False


def _is_run(d: Path) -> bool:
    return (d / CONFIG_NAME).is_file() or (d / RESULTS_NAME).is_file()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Each path is a run folder, or a folder whose subfolders are runs."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise DataError(f"run folder not found: {p}")
        # hidden folders are not runs of their own (train --overwrite's .ltuning-replaced/ waiting aside)
        found = [p] if _is_run(p) else sorted(d for d in p.iterdir()
                                              if d.is_dir() and not d.name.startswith(".") and _is_run(d))
        if not found:
            raise DataError(f"{p} holds no run ({CONFIG_NAME} or {RESULTS_NAME}), nor do its subfolders")
        runs += found
    return runs


def summarize(run: Path) -> dict:
    """One row: what was trained, how big, how good, how long. A record written for other weights than the
    folder's (an adapter saved over the run since) is left out and named under ``other_weights``."""
    row: dict = {"run": str(run), "other_weights": []}
    digest = weights_digest(run)

    def of_other_weights(record: dict, name: str) -> bool:
        recorded = record.get(WEIGHTS_DIGEST_KEY)  # absent: written before the record (taken as it is)
        if recorded is not None and digest is not None and recorded != digest:
            row["other_weights"].append(name)
            return True
        return False

    if (run / CONFIG_NAME).is_file():
        cfg = _read_json(run / CONFIG_NAME)
        meta = cfg.get("_meta", {})
        row.update(method=cfg.get("method"), base_model=cfg.get("base_model"), labels=cfg.get("label_names"),
                   label_length=cfg.get("label_length"), trainable_parameters=meta.get("trainable_parameters"))
    res = _read_json(run / RESULTS_NAME) if (run / RESULTS_NAME).is_file() else None
    if res is not None and not of_other_weights(res, RESULTS_NAME):
        best = res.get("best_metrics") or {}
        args = res.get("args") or {}
        row.setdefault("method", args.get("method"))
        row.setdefault("base_model", args.get("model"))
        # the steps run: a run stopped early ran fewer than it was given
        stopped = res.get("stopped_early_at")
        row.update(steps=args.get("max_steps") if stopped is None else stopped, best_step=res.get("best_step"),
                   accuracy=best.get("accuracy"), mcc=best.get("mcc"), macro_f1=best.get("macro_f1"),
                   seconds=res.get("seconds"))
        if row.get("trainable_parameters") is None:
            row["trainable_parameters"] = res.get("trainable_parameters")
    row["evals"] = {}
    for f in sorted(run.glob("eval_*.json")):
        m = _read_json(f)
        if not _is_evaluate_record(m) or of_other_weights(m, f.name):
            continue  # not ltuning evaluate's metrics (a user's own eval_*.json), or another adapter's
        # eval_<task>_<split>.json from --task, eval_<file stem>_file.json from --file; "data" says which
        row["evals"][f.stem[len("eval_"):]] = {k: m.get(k) for k in ("accuracy", "mcc", "macro_f1", "num_examples",
                                                                     "data")}
    return row


def _cell(v, fmt: str = "") -> str:
    if v is None:
        return "-"
    return format(v, fmt) if fmt else str(v)


def format_report(rows: list[dict]) -> str:
    """A fixed-width table: one line per run, then one indented line per evaluation file."""
    head = f"{'run':<28} {'method':<10} {'model':<14} {'trainable':>11} {'steps':>6} {'best':>5} " \
           f"{'val acc':>8} {'mcc':>7} {'f1':>7} {'seconds':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        name = Path(r["run"]).name or r["run"]
        model = str(r.get("base_model") or "-")
        model = model if len(model) <= 14 else "..." + model[-11:]
        lines.append(f"{name[:28]:<28} {_cell(r.get('method')):<10} {model:<14} "
                     f"{_cell(r.get('trainable_parameters'), ','):>11} {_cell(r.get('steps')):>6} "
                     f"{_cell(r.get('best_step')):>5} {_cell(r.get('accuracy'), '.4f'):>8} "
                     f"{_cell(r.get('mcc'), '.4f'):>7} {_cell(r.get('macro_f1'), '.4f'):>7} "
                     f"{_cell(r.get('seconds'), '.1f'):>8}")
        for name, m in r["evals"].items():
            lines.append(f"    eval {name}: accuracy {_cell(m['accuracy'], '.4f')}, mcc {_cell(m['mcc'], '.4f')}, "
                         f"macro_f1 {_cell(m['macro_f1'], '.4f')} on {_cell(m['num_examples'])} examples")
        if r.get("other_weights"):
            lines.append(f"    left out: {', '.join(r['other_weights'])} (written for other weights than the "
                         "folder's adapter, saved over the run since)")
    return "\n".join(lines)
