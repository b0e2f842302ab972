"""CLI runs from config files and their key=value overrides, the run_config.json that reruns them, --plot,
the model card's command, `ltuning report`, and open-vocabulary `ltuning predict` (tiny BERT saved to a
folder, in-process)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from test_cli import _offline, files, models, one_error_line, train_args  # noqa: F401 - fixtures

from ltuning.adapter import CONFIG_NAME
from ltuning.cli import build_parser, main

pytest.importorskip("matplotlib")


def test_train_with_plot_writes_run_config_and_reruns_from_it(models, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(train_args(models, files, out, "--plot", "--method", "lt-prompt")) == 0
    for name in ("loss.png", "accuracy.png", "run_config.json", "README.md", "train_results.json"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["command"] == "train" and rc["method"] == "lt-prompt" and rc["max_steps"] == 4
    assert rc["output_dir"] == str(out) and rc["text_column"] == ["text"]
    card = (out / "README.md").read_text()
    assert "ltuning train --model" in card and "--plot" in card  # the command that produced it
    # rerun from the stored config, overriding two options with key=value
    out2 = tmp_path / "rerun"
    assert main(["train", "--config", str(out / "run_config.json"), "max_steps=2", f"output_dir={out2}",
                 "plot=false"]) == 0
    rc2 = json.loads((out2 / "run_config.json").read_text())
    assert {k: v for k, v in rc2.items() if k not in ("max_steps", "output_dir", "plot")} == \
        {k: v for k, v in rc.items() if k not in ("max_steps", "output_dir", "plot")}
    assert rc2["max_steps"] == 2 and not (out2 / "loss.png").exists()
    assert f"ltuning train --config {out2 / 'run_config.json'}" in (out2 / "README.md").read_text()
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "run " in table and "rerun" in table and "lt-prompt" in table and "2,114" in table


def test_yaml_config_and_command_line_precedence(models, files, tmp_path):  # noqa: F811
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"""
model: {models['tiny']}
method: lt-prefix
train-file: {files['train']}
validation_file: {files['valid']}
text_column: text
label_column: label
max_steps: 2
batch_size: 4
eval_every: 2
label_texts: [negative review, positive review]
quiet: true
""")
    out = tmp_path / "yaml-run"
    assert main(["train", "--config", str(cfg), "--output-dir", str(out), "--batch-size", "2"]) == 0
    rc = json.loads((out / "run_config.json").read_text())
    assert rc["batch_size"] == 2 and rc["max_steps"] == 2 and rc["method"] == "lt-prefix"
    cfg_out = json.loads((out / "adapter_config.json").read_text())
    assert cfg_out["label_texts"] == ["negative review", "positive review"]


@pytest.mark.parametrize("content,message", [
    ("max_stepz: 3\n", "unknown option"),
    ("max_steps: many\n", "max_steps"),
    ("method: lora\n", "not one of"),
    ("- a\n- b\n", "mapping"),
    ("command: evaluate\n", "not `ltuning train`"),
    ("max_steps: [1\n", "not valid YAML"),
])
def test_bad_config_files_end_in_one_error_line(tmp_path, capsys, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    assert main(["train", "--config", str(cfg), "--output-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_evaluate_plot_and_report(models, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "adapter"
    assert main(train_args(models, files, out)) == 0
    metrics_path = tmp_path / "m.json"
    assert main(["evaluate", "--adapter", str(out), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--output", str(metrics_path), "--plot", "--quiet"]) == 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads(metrics_path.read_text())["run_config"]["command"] == "evaluate"
    # an --output ending in .png is where --plot writes: refused before any work, nothing written
    capsys.readouterr()
    assert main(["evaluate", "--adapter", str(out), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--output", str(tmp_path / "m2.png"), "--plot", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "m2.json" in err and err.count("\n") == 1
    assert not (tmp_path / "m2.png").exists()
    assert main(["evaluate", "--adapter", str(out), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["method"] == "lt-prefix" and row["steps"] == 4 and "valid_file" in row["evals"]
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    # a hidden folder (train --overwrite's set-aside run) is not listed as a run of its own
    shutil.copytree(out, tmp_path / "runs" / ".ltuning-replaced")
    shutil.copytree(out, tmp_path / "runs" / "a")
    assert main(["report", str(tmp_path / "runs"), "--json"]) == 0
    assert [r["run"] for r in json.loads(capsys.readouterr().out)] == [str(tmp_path / "runs" / "a")]
    # a run that stopped early shows the steps it ran, not the steps it was given
    results = json.loads((out / "train_results.json").read_text())
    (out / "train_results.json").write_text(json.dumps({**results, "stopped_early_at": 3}))
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["steps"] == 3


def test_plot_without_matplotlib_is_one_clear_error(models, files, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "never"
    assert main(train_args(models, files, out, "--plot")) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install" in err and not out.exists()


def test_predict_open_vocabulary_from_the_command_line(models, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "adapter"
    assert main(train_args(models, files, out, "--method", "lt-prompt")) == 0
    capsys.readouterr()
    assert main(["predict", "--adapter", str(out), "--candidate-labels", "bad,good,fun", "--json",
                 "i loved it", "boring"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r["labels"]) for r in rows] == [{"bad", "good", "fun"}] * 2
    assert main(["predict", "--adapter", str(out), "--multi-label", "--threshold", "0", "i loved it"]) == 0
    selected, scores, text = capsys.readouterr().out.rstrip("\n").split("\t")
    assert sorted(selected.split(",")) == ["negative", "positive"] and text == "i loved it"
    values = [float(kv.split("=")[1]) for kv in scores.split()]
    assert values == sorted(values, reverse=True)  # best first
    prefix = tmp_path / "classic"
    assert main(train_args(models, files, prefix, "--method", "prompt")) == 0
    capsys.readouterr()
    assert main(["predict", "--adapter", str(prefix), "--candidate-labels", "bad,good", "fine"]) == 2
    assert "label-conditioned" in capsys.readouterr().err


def test_key_value_overrides_need_a_config_file(models, files, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    one_error_line(capsys, main([*train_args(models, files, out), "max_steps=2"]), "--max-steps VALUE")
    assert not out.exists()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"quiet": True}))
    args = train_args(models, files, out, "--config", str(cfg))
    del args[args.index("--max-steps"):args.index("--max-steps") + 2]  # the command line would win
    assert main([*args, "max_steps=2", "label_texts=bad film,good film"]) == 0
    assert json.loads((out / "train_results.json").read_text())["args"]["max_steps"] == 2
    # an option's value is never an override, even one shaped like key=value
    out2 = tmp_path / "out2"
    assert main([*train_args(models, files, out2, "--config", str(cfg)), "--label-texts", "method=no,method=yes"]) == 0
    assert json.loads((out2 / CONFIG_NAME).read_text())["label_texts"] == ["method=no", "method=yes"]


def test_run_config_does_not_keep_overwrite_or_resume():
    """--overwrite / --resume act once: a rerun from run_config.json must not delete or resume unasked."""
    from ltuning.cli import _resolved_config

    args = build_parser().parse_args(["train", "--task", "demo", "--overwrite", "--output-dir", "x"])
    resolved = _resolved_config(args)
    assert "overwrite" not in resolved and "resume" not in resolved and resolved["output_dir"] == str(Path("x").resolve())


def test_report_leaves_out_records_of_other_weights(models, files, tmp_path, capsys):  # noqa: F811
    """An adapter saved over a run (save_pretrained into its folder) makes the run's train_results.json and
    evaluate's metrics another adapter's: report leaves them out and says so."""
    from ltuning.adapter import load_adapter

    out, other = tmp_path / "run", tmp_path / "other"
    assert main(train_args(models, files, out)) == 0
    assert main(train_args(models, files, other, "--method", "prefix", "--seed", "1")) == 0
    assert main(["evaluate", "--adapter", str(out), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["other_weights"] == [] and row["accuracy"] is not None and "valid_file" in row["evals"]
    load_adapter(other).save_pretrained(out)  # another method's adapter over the run
    assert main(["report", str(out), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["method"] == "prefix" and row.get("accuracy") is None and row["evals"] == {}
    assert row["other_weights"] == ["train_results.json", "eval_valid_file.json"]
    assert main(["report", str(out)]) == 0
    assert "left out: train_results.json, eval_valid_file.json (written for other weights" in capsys.readouterr().out
