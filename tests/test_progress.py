"""Logs fit for files: with stderr not a terminal, progress is a plain line every N steps or seconds (step,
loss, rate, ETA), never tqdm's carriage-return redraws: in the CLI, ``train()`` and the Trainer path."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ltuning import LTuningConfig, get_ltuning_model
from ltuning.data import TextDataset
from ltuning.progress import LineProgress, progress_bar
from ltuning.train import TrainArgs, train

SRC = Path(__file__).resolve().parents[1] / "src"
LINE = re.compile(r"step (\d+)/(\d+) \(\d+%\).* \| [\d.]+ step/s, elapsed \d+:\d\d(, ETA \d+:\d\d)?$")


def test_line_progress_every_n_steps_and_at_the_end():
    out = io.StringIO()
    bar = LineProgress(10, desc="train x", every_steps=4, every_seconds=1e9, file=out)
    for step in range(10):
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [LINE.search(line).group(1) for line in lines] == ["4", "8", "10"]  # every 4 steps, and the last
    assert lines[0].startswith("train x: step 4/10 (40%) loss=0.2500 | ") and "ETA" in lines[0]
    bar = LineProgress(1000, every_steps=1000, every_seconds=0.0, file=out)  # every update: the time bound
    bar.update(1)
    assert out.getvalue().splitlines()[-1].startswith("step 1/1000")


def test_progress_bar_is_plain_off_a_terminal(capsys):
    assert isinstance(progress_bar(5), LineProgress)  # pytest's captured stderr is not a terminal


def tiny_model():
    from conftest import tiny_bert

    bert, tok = tiny_bert()
    return get_ltuning_model(bert, LTuningConfig(method="lt-prefix"), labels=["negative", "positive"], tokenizer=tok)


DATA = TextDataset(["the movie was very good", "bad plot", "i loved it", "awful boring film"], [1, 0, 1, 0],
                   ["negative", "positive"])


def test_train_prints_plain_lines(capsys):
    train(tiny_model(), DATA, DATA, TrainArgs(max_steps=10, batch_size=4, eval_every=5))
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    steps = [int(m.group(1)) for m in map(LINE.search, captured.err.splitlines()) if m]
    assert steps == list(range(1, 11))  # a tenth of the run each
    assert "loss=" in captured.err and "step 5: validation accuracy" in captured.out


def test_trainer_progress_is_plain_lines(capsys, tmp_path):
    datasets = pytest.importorskip("datasets")
    from transformers import Trainer, TrainingArguments

    from ltuning.hf import LineProgressCallback, LTuningForTrainer, PairCollator, use_line_progress

    model = tiny_model()
    ds = datasets.Dataset.from_dict({"text": DATA.texts, "label": DATA.labels})
    args = TrainingArguments(str(tmp_path / "out"), max_steps=10, per_device_train_batch_size=4, logging_steps=5,
                             report_to=[], use_cpu=True, remove_unused_columns=False, save_strategy="no",
                             learning_rate=1e-2)
    trainer = use_line_progress(Trainer(model=LTuningForTrainer(model, num_train_texts=len(ds)), args=args, train_dataset=ds,
                                        data_collator=PairCollator(model)))
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert "ProgressCallback" not in names and names.count(LineProgressCallback.__name__) == 1
    capsys.readouterr()
    trainer.train()
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "\r" not in captured.out
    steps = [int(m.group(1)) for m in map(LINE.search, captured.err.splitlines()) if m]
    assert steps == list(range(1, 11)) and "loss=" in captured.err
    assert "'loss'" in captured.out  # the Trainer's logs, one line each
    # the line of a logging step shows that step's loss, not the previous logging step's
    logged = [float(m.group(1)) for m in re.finditer(r"'loss': ([\d.]+)", captured.out)]
    shown = {int(m.group(1)): line for line in captured.err.splitlines() if (m := LINE.search(line))}
    assert len(logged) == 2 and f"loss={logged[0]:.4f}" in shown[5] and f"loss={logged[1]:.4f}" in shown[10]


def test_cli_train_to_a_file_has_no_carriage_returns(tmp_path):
    """The CLI run as a user runs it, with stderr redirected to a file."""
    from test_cli import TRAIN, save_tiny_bert, write_csv

    model = save_tiny_bert(tmp_path / "bert")
    data = write_csv(tmp_path / "train.csv", TRAIN)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "err.log", "w") as err, open(tmp_path / "out.log", "w") as out:
        proc = subprocess.run([sys.executable, "-m", "ltuning", "train", "--model", str(model), "--train-file",
                               str(data), "--validation-file", str(data), "--text-column", "text", "--label-column",
                               "label", "--max-steps", "10", "--batch-size", "4", "--eval-every", "5",
                               "--output-dir", str(tmp_path / "run")], stdout=out, stderr=err, env=env, timeout=300)
    log = (tmp_path / "err.log").read_text() + (tmp_path / "out.log").read_text()
    assert proc.returncode == 0, log
    assert "\r" not in log
    steps = [int(m.group(1)) for m in map(LINE.search, log.splitlines()) if m]
    assert steps == list(range(1, 11))


def test_loading_a_backbone_from_python_into_a_log_has_no_bar(tmp_path):
    """transformers' "Loading weights" bar is off while ltuning loads a backbone into a redirected stderr, and
    its setting is as it was after."""
    # the packaged minilm: a tiny model's few weights load without a bar
    script = ("import transformers.utils.logging as l, ltuning\n"
              "ltuning.get_ltuning_model('minilm', ltuning.LTuningConfig(method='prefix'), labels=['a', 'b'])\n"
              "print('bar', l.is_progress_bar_enabled())\n")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.run([sys.executable, "-c", script], stdout=log, stderr=log, env=env, timeout=300)
    text = (tmp_path / "log").read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text and "Loading weights" not in text and "bar True" in text, repr(text)
