"""The model card: a README.md written next to every saved adapter, as Hugging Face repos carry.

It names the base model, the method, the labels and their texts, the trainable parameters, the
validation metrics when training reported them, and the command that produced the adapter.
"""

from __future__ import annotations

import json
import shlex

from .methods import get_method

CARD_NAME = "README.md"

_command: str | None = None


def set_command(command: str | None) -> None:
    """Remember the command line of this process (the CLI sets it), for the cards it writes."""
    global _command
    _command = command


def current_command() -> str | None:
    return _command


def is_card(path) -> bool:
    """Whether ``path`` is a README.md that ltuning's model card wrote (not a user's own notes)."""
    from pathlib import Path

    path = Path(path)
    if path.name != CARD_NAME or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "library_name: ltuning" in f.read(400)
    except OSError:
        return False


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_card(config: dict, meta: dict, total_parameters: int | None = None) -> str:
    """Markdown card from the adapter config (``LTuningConfig.to_dict()``) and its ``_meta``."""
    method, base = config["method"], config["base_model"]
    trainable = meta.get("trainable_parameters")
    lines = [
        "---",
        "library_name: ltuning",
        f"base_model: {json.dumps(base)}",
        "pipeline_tag: text-classification",
        f"tags: [ltuning, {method}, l-tuning]",
        "---",
        "",
        f"# {method} adapter for {base}",
        "",
        f"An L-Tuning adapter (`{method}`) for the frozen model `{base}`, written by ltuning "
        f"{meta.get('ltuning_version', '')}. Only the adapter's weights are stored here "
        "(`adapter_model.safetensors`); the backbone is loaded from `base_model` and stays frozen.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}` |",
        f"| method | `{method}` |",
        f"| label length l | {config.get('label_length')} |",
        f"| max text length | {config.get('max_length')} |",
    ]
    lines += [f"| {name} | {value} |" for name, value in get_method(method).card_rows(config)]
    lines.append(f"| text pooling | {config.get('text_pooling')} |")
    if config.get("label_position", "before") != "before":
        lines.append(f"| label position | {config['label_position']} (label prompt after the text) |")
    if trainable is not None:
        share = f" ({100 * trainable / total_parameters:.4f}% of {total_parameters:,})" if total_parameters else ""
        lines.append(f"| trainable parameters | {trainable:,}{share} |")
    for key in ("task", "train_file", "init_from", "best_step", "final_step"):
        if meta.get(key) is not None:
            note = " (no validation data: the last step's state)" if key == "final_step" else ""
            lines.append(f"| {key.replace('_', ' ')} | {_cell(str(meta[key]))}{note} |")
    lines += ["", "## Labels", "", "| index | name | label text |", "|---|---|---|"]
    for i, (n, t) in enumerate(zip(config["label_names"], config["label_texts"], strict=True)):
        lines.append(f"| {i} | {_cell(n)} | {_cell(t)} |")
    tasks = config.get("tasks") or {}
    other_task = list(tasks)[1] if len(tasks) > 1 else None  # a multi-task adapter: its second task, for examples
    if other_task is not None:  # the labels above are the first task's
        lines += ["", "## Tasks", "",
                  f"One adapter for {len(tasks)} tasks; the labels above are the first task's. Another task's labels: "
                  "`model.for_task(name)` in Python, `--adapter-task NAME` on the command line.", "",
                  "| task | labels (label text) |", "|---|---|"]
        lines += [f"| {_cell(name)} | " + ", ".join(f"{_cell(n)} ({_cell(t)})" for n, t in
                                                      zip(task["label_names"], task["label_texts"], strict=True)) + " |"
                  for name, task in tasks.items()]
    metrics = meta.get("validation") or meta.get("metrics")
    if metrics:
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        lines += ["", "## Validation metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in shown.items()]
    command = meta.get("command")
    lines += ["", "## How it was made", ""]
    if command:
        lines += ["```bash", command, "```"]
    else:
        lines.append("Saved from Python (`LTuningModel.save_pretrained`).")
    pairs = bool(config.get("text_pairs"))  # it reads (premise, hypothesis) pairs and refuses single texts
    example = '[("a premise", "a hypothesis")]' if pairs else '["an example text"]'
    argument = "$'a premise\\ta hypothesis'" if pairs else '"an example text"'  # one TAB-separated pair
    lines += ["", "## Use", ""]
    if pairs:
        lines += ["This adapter classifies sentence pairs (premise, hypothesis); on the command line each pair is one "
                  "argument or line with a TAB between the two.", ""]
    lines += [
        "```python", "from ltuning import LTuningModel", "",
        'model = LTuningModel.from_pretrained("path/to/this/folder")',
        f"model.predict({example})",
    ]
    if method.startswith("lt-"):
        lines.append(f'model.predict({example}, candidate_labels=["other", "label names"])')
    if other_task is not None:
        lines.append(f"model.for_task({json.dumps(other_task)}).predict({example})")
    lines += ["```", "", "```bash", f"ltuning predict --adapter path/to/this/folder {argument}"]
    if other_task is not None:
        lines.append(f"ltuning predict --adapter path/to/this/folder --adapter-task {shlex.quote(other_task)} "
                     f"{argument}")
    lines += ["```", ""]
    return "\n".join(lines)
