"""The command line's review defects, one test each (numbers are the review's): sentence pairs in predict,
option validation, output paths and previous runs, key=value overrides, --no-header, Ctrl-C, and
one-line parser errors. Tiny BERT saved to a folder, in-process, as in test_cli.py."""
# ruff: noqa: F811 - the fixtures imported from test_cli

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from test_cli import TRAIN, VALID, _offline, files, models, train_args, trained, write_csv  # noqa: F401

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.cli import build_parser, main

PAIRS = [("the movie was good", "it was good", "entailment"), ("the film was bad", "it was great", "contradiction"),
         ("i loved the story", "the story was fun", "entailment"), ("boring plot", "the plot was fun", "contradiction"),
         ("great actors", "the actors were good", "entailment"), ("awful film", "i loved it", "contradiction")]


def one_error_line(capsys, rc: int, match: str, prefix: str = "error: ") -> str:
    """rc 2, and stderr is exactly one line that starts with ``prefix`` and contains ``match``."""
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def pair_adapter(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    data = write_csv(root / "pairs.tsv", PAIRS, header=("premise", "hypothesis", "label"), sep="\t")
    out = root / "adapter"
    assert main(["train", "--model", models["tiny"], "--train-file", str(data), "--text-column", "premise",
                 "--text-column", "hypothesis", "--label-column", "label", "--max-steps", "2", "--batch-size", "4",
                 "--output-dir", str(out), "--quiet"]) == 0
    assert json.loads((out / CONFIG_NAME).read_text())["text_pairs"] is True  # what predict reads
    return out


# 1 ---------------------------------------------------------------------------------------------------
def test_predict_pairs_from_arguments_file_and_stdin(pair_adapter, tmp_path, capsys, monkeypatch):
    pairs = [("the movie was good", "it was good"), ("awful film", "i loved it")]
    expected = load_adapter(pair_adapter).predict(pairs)
    assert main(["predict", "--adapter", str(pair_adapter), *("\t".join(p) for p in pairs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == expected
    assert [tuple(line.split("\t")[2:]) for line in lines] == pairs
    f = tmp_path / "pairs.txt"
    f.write_text("".join("\t".join(p) + "\n" for p in pairs), encoding="utf-8")
    assert main(["predict", "--adapter", str(pair_adapter), "--json", "--file", str(f)]) == 0
    rows = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in rows] == expected and [tuple(r["text"]) for r in rows] == pairs
    monkeypatch.setattr(sys, "stdin", io.StringIO("\t".join(pairs[0]) + "\n"))
    assert main(["predict", "--adapter", str(pair_adapter)]) == 0
    assert capsys.readouterr().out.split("\t")[0] == expected[0]


def test_predict_pairs_need_exactly_one_tab(pair_adapter, tmp_path, capsys, monkeypatch):
    f = tmp_path / "bad.txt"
    f.write_text("the movie\tit was good\n\nno tab here\n", encoding="utf-8")
    one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter), "--file", str(f)]), "line 3")
    one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter), "a\tb", "a\tb\tc"]), "text 2")
    monkeypatch.setattr(sys, "stdin", io.StringIO("only a premise\n"))
    line = one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter)]), "stdin, line 1")
    assert "PREMISE<TAB>HYPOTHESIS" in line
    assert capsys.readouterr().out == ""


def test_single_text_adapter_keeps_tabs(trained, capsys):
    assert main(["predict", "--adapter", str(trained), "a good\tfilm"]) == 0
    assert capsys.readouterr().out.rstrip("\n").split("\t", 2)[2] == "a good\tfilm"


def test_predict_help_documents_pairs():
    helptext = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "PREMISE<TAB>HYPOTHESIS" in helptext and "exactly one TAB" in helptext


# 2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["-1", "0"])
def test_batch_size_must_be_positive(trained, files, capsys, size):
    one_error_line(capsys, main(["evaluate", "--adapter", str(trained), "--file", files["valid"], "--text-column",
                                 "text", "--label-column", "label", "--batch-size", size, "--quiet"]),
                   f"--batch-size must be >= 1, got {size}")
    assert not list(trained.glob("eval_*"))
    one_error_line(capsys, main(["predict", "--adapter", str(trained), "--batch-size", size, "good"]), "--batch-size")
    assert capsys.readouterr().out == ""


# 3 ---------------------------------------------------------------------------------------------------
def test_evaluate_file_with_task_is_named_after_the_file(trained, files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "eval_sst2_validation.json").write_text(json.dumps({"accuracy": 0.9, "num_examples": 872}))
    assert main(["evaluate", "--adapter", str(run), "--task", "sst2", "--file", files["valid"], "--text-column",
                 "text", "--label-column", "label", "--quiet"]) == 0
    assert json.loads((run / "eval_sst2_validation.json").read_text())["accuracy"] == 0.9  # not overwritten
    assert json.loads((run / "eval_valid_file.json").read_text())["num_examples"] == len(VALID)
    capsys.readouterr()
    assert main(["report", "--json", str(run)]) == 0
    evals = json.loads(capsys.readouterr().out)[0]["evals"]
    assert set(evals) == {"sst2_validation", "valid_file"}
    assert evals["valid_file"]["data"] == files["valid"]


# 4 ---------------------------------------------------------------------------------------------------
def test_train_output_dir_that_is_a_file(models, files, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    one_error_line(capsys, main(train_args(models, files, afile)), "is a file, not a folder")
    one_error_line(capsys, main(train_args(models, files, afile / "sub")), "is a file, not a folder")
    assert afile.read_text() == "keep me" and not (tmp_path / "runs").exists()
    assert capsys.readouterr().out == ""  # failed before any work


def test_evaluate_output_paths(trained, files, tmp_path, capsys):
    base = ["evaluate", "--adapter", str(trained), "--file", files["valid"], "--text-column", "text",
            "--label-column", "label", "--quiet", "--output"]
    folder = tmp_path / "folder"
    folder.mkdir()
    one_error_line(capsys, main([*base, str(folder)]), "is a folder")
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error_line(capsys, main([*base, str(afile / "x.json")]), "is a file, not a folder")
    assert list(folder.iterdir()) == [] and afile.read_text() == "x" and not list(trained.glob("eval_*"))


# 5 ---------------------------------------------------------------------------------------------------
def test_train_refuses_a_previous_run_unless_overwrite(models, files, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "eval_old_file.json").write_text("{}")
    (out / "checkpoints" / "step-9").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    one_error_line(capsys, main(train_args(models, files, out)), "already holds a run")
    assert sorted(p.name for p in out.iterdir()) == before
    one_error_line(capsys, main(train_args(models, files, out, "--overwrite", "--resume")), "--overwrite")
    assert main(train_args(models, files, out, "--overwrite")) == 0
    names = {p.name for p in out.iterdir()}
    assert "eval_old_file.json" not in names and "checkpoints" not in names
    assert (out / "notes.txt").read_text() == "mine" and (out / CONFIG_NAME).is_file()
    capsys.readouterr()
    assert main(["report", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["evals"] == {}
    # --resume continues a folder on purpose
    assert main(train_args(models, files, out, "--resume")) == 0


def test_overwrite_removes_only_what_ltuning_wrote(tmp_path):
    from ltuning.cli import _remove_previous_run

    out = tmp_path / "run"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    ours = ["adapter_config.json", "adapter_model.safetensors", "run_config.json", "train_results.json", "loss.png",
            "accuracy.png", "eval_sst2_validation.json", "eval_sst2_validation.png"]
    mine = ["README.md", "notes.txt", "data.tsv", "eval.json", "adapter_config.json.bak"]
    for name in ours + mine:
        (out / name).write_text("x")
    _remove_previous_run(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)  # a README.md that is not our card stays
    (out / "README.md").write_text("---\nlibrary_name: ltuning\n---\n# card")
    _remove_previous_run(out)
    assert not (out / "README.md").exists()


# 6 ---------------------------------------------------------------------------------------------------
def test_predict_texts_are_never_key_value_overrides(trained, capsys):
    texts = ["model=terrible acting", "json=true", "batch_size=2"]
    assert main(["predict", "--adapter", str(trained), *texts]) == 0
    assert [line.split("\t")[2] for line in capsys.readouterr().out.strip().splitlines()] == texts


def test_key_value_needs_config(models, files, tmp_path, capsys):
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


# 7 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,match", [("0", ">= 1, got 0"), ("100000", "[1, 64]"), ("-5", ">= 1")])
def test_params_label_length_bounds(models, capsys, length, match):
    one_error_line(capsys, main(["params", "--model", models["tiny"], "--label-length", length]), match)


def test_params_label_length_at_the_bound_allocates_nothing(models, capsys):
    assert main(["params", "--model", models["tiny"], "--label-length", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["l"] == 64 and all(r["match"] for r in info["methods"])


# 8 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["{", "no field", "{} and {}", "", "{0}"])
def test_bad_hypothesis_template(trained, capsys, template):
    one_error_line(capsys, main(["predict", "--adapter", str(trained), "--hypothesis-template", template, "good"]),
                   "hypothesis_template must contain")
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_hypothesis_template_keeps_other_braces(trained, capsys, monkeypatch):
    import ltuning.api as api

    seen = []
    original = api.candidate_injection

    def spy(model, label_texts):
        seen.append(list(label_texts))
        return original(model, label_texts)

    monkeypatch.setattr(api, "candidate_injection", spy)
    assert main(["predict", "--adapter", str(trained), "--candidate-labels", "good,bad",
                 "--hypothesis-template", "{} {0} {", "a good film"]) == 0
    assert seen == [["good {0} {", "bad {0} {"]]  # the labels go in the slot; other braces stay as written


# 9 ---------------------------------------------------------------------------------------------------
def test_no_header_takes_column_indices(models, trained, tmp_path, capsys):
    trained = Path(shutil.copytree(trained, tmp_path / "adapter"))
    rows = [(f"src{i}", str(int(label == "positive")), "", text) for i, (text, label) in enumerate(TRAIN)]
    f = tmp_path / "cv.tsv"
    f.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    base = ["evaluate", "--adapter", str(trained), "--file", str(f), "--text-column", "3", "--label-column", "1",
            "--quiet"]
    one_error_line(capsys, main(base), "--no-header")
    assert main([*base, "--no-header"]) == 0
    assert json.loads((trained / "eval_cv_file.json").read_text())["num_examples"] == len(TRAIN)
    out = tmp_path / "run"
    assert main(["train", "--model", models["tiny"], "--train-file", str(f), "--text-column", "3", "--label-column",
                 "1", "--no-header", "--max-steps", "2", "--batch-size", "4", "--output-dir", str(out), "--quiet"]) == 0
    assert json.loads((out / CONFIG_NAME).read_text())["label_names"] == ["0", "1"]


# 10 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,match", [
    (["--candidate-labels", '{"a": "b"}'], "--candidate-labels must be"),
    (["--candidate-labels", ""], "--candidate-labels is empty"),
    (["--candidate-labels", "good,,bad"], "--candidate-labels: label 2 is empty"),
    (["--multi-label", "--threshold", "5"], "--threshold must be in [0, 1]"),
    (["--multi-label", "--threshold", "nan"], "--threshold must be in [0, 1]"),
    (["--threshold", "0.3"], "--multi-label only"),
])
def test_open_vocabulary_options(trained, capsys, args, match):
    one_error_line(capsys, main(["predict", "--adapter", str(trained), *args, "a text"]), match)
    assert capsys.readouterr().out == ""


# 11 --------------------------------------------------------------------------------------------------
def test_ctrl_c_names_the_last_checkpoint(models, files, tmp_path, capsys, monkeypatch):
    import ltuning.checkpoint as ckpt

    real = ckpt.save_checkpoint

    def save_then_interrupt(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "run"
    assert main(train_args(models, files, out, "--checkpoint-every", "1")) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted; last checkpoint: {out / 'checkpoints' / 'step-1'}; continue with the same " \
                  "command and --resume"
    monkeypatch.setattr(ckpt, "save_checkpoint", real)
    assert main(train_args(models, files, out, "--checkpoint-every", "1", "--resume")) == 0


def test_ctrl_c_without_checkpoint(models, files, tmp_path, capsys, monkeypatch):
    import ltuning.train

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ltuning.train, "train", interrupt)
    assert main(train_args(models, files, tmp_path / "run")) == 130
    assert capsys.readouterr().err.strip() == "interrupted; nothing was saved"


# 12 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,match", [(["--method", "lora"], "invalid choice: 'lora'"),
                                         (["--max-steps", "ten"], "invalid int value: 'ten'")])
def test_parser_errors_are_one_line(models, files, tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        main(train_args(models, files, tmp_path / "out", *extra))
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ltuning train: error: ") and match in lines[0], lines
    assert lines[1] == "see ltuning train --help"
    assert not (tmp_path / "out").exists()


# 13 --------------------------------------------------------------------------------------------------
def test_predict_file_with_windows_line_ends(trained, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_bytes(b"good film\r\n\r\nbad plot\r\n")
    assert main(["predict", "--adapter", str(trained), "--json", "--file", str(f)]) == 0
    assert [json.loads(s)["text"] for s in capsys.readouterr().out.splitlines()] == ["good film", "bad plot"]


def test_predict_file_with_a_byte_order_mark(trained, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_bytes("good film\nbad plot\n".encode("utf-8-sig"))  # as Excel / Notepad save "UTF-8"
    assert main(["predict", "--adapter", str(trained), "--json", "--file", str(f)]) == 0
    assert [json.loads(s)["text"] for s in capsys.readouterr().out.splitlines()] == ["good film", "bad plot"]


# 14 --------------------------------------------------------------------------------------------------
def test_docstring_and_data_dir_help():
    import ltuning.cli
    from ltuning.data import DEFAULT_GLUE_DIRS

    assert "report" in ltuning.cli.__doc__.splitlines()[0]
    helptext = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    flat = " ".join(helptext.split())
    assert "LTUNING_GLUE_DIR" in flat and all(d in flat for d in DEFAULT_GLUE_DIRS)
    assert "../../shared/data/glue" in flat


# --bf16 for evaluate / predict (the review's item 11: BENCHMARKS.md credits bf16 prediction) -----------
def test_predict_and_evaluate_take_bf16(trained, files, tmp_path, capsys):
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 autocast on this CPU build")
    texts = ["the movie was good", "awful boring film"]
    assert main(["predict", "--adapter", str(trained), "--json", *texts]) == 0
    fp32 = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--adapter", str(trained), "--json", "--bf16", *texts]) == 0
    bf16 = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in bf16] == texts
    for a, b in zip(fp32, bf16, strict=True):  # same scores up to bfloat16 rounding
        assert a["scores"].keys() == b["scores"].keys()
        assert all(abs(a["scores"][k] - b["scores"][k]) < 0.05 for k in a["scores"])
    out = tmp_path / "m.json"
    assert main(["evaluate", "--adapter", str(trained), "--file", str(files["valid"]), "--text-column", "text",
                 "--label-column", "label", "--output", str(out), "--bf16", "--quiet"]) == 0
    assert 0.0 <= json.loads(out.read_text())["accuracy"] <= 1.0


def test_run_config_does_not_keep_one_shot_actions():
    """--overwrite / --resume act once: a rerun from run_config.json must not delete or resume unasked."""
    from ltuning.cli import _resolved_config

    args = build_parser().parse_args(["train", "--task", "demo", "--overwrite", "--output-dir", "x"])
    resolved = _resolved_config(args)
    assert "overwrite" not in resolved and "resume" not in resolved and resolved["output_dir"] == "x"


def test_evaluate_refuses_integer_labels_for_an_adapter_with_file_names(models, tmp_path, capsys):
    """An adapter whose label names came from a file (not a task): an integer label in an evaluation file
    is not a known class index, so it is an error, not a guess by sorted position."""
    rows = [("the movie was very good", "good"), ("bad plot", "bad"), ("it was fine", "meh"),
            ("i loved it", "good"), ("awful boring film", "bad"), ("not good not bad", "meh")]
    out = tmp_path / "three"
    assert main(["train", "--model", models["tiny"], "--train-file", str(write_csv(tmp_path / "t.csv", rows)),
                 "--text-column", "text", "--label-column", "label", "--max-steps", "2", "--batch-size", "6",
                 "--output-dir", str(out), "--quiet"]) == 0
    capsys.readouterr()
    ints = write_csv(tmp_path / "ints.csv", [("a great film", "2"), ("terrible story", "0")])
    rc = main(["evaluate", "--adapter", str(out), "--file", str(ints), "--text-column", "text",
               "--label-column", "label"])
    one_error_line(capsys, rc, "are integers")
    assert not list(out.glob("eval_ints*"))
    named = write_csv(tmp_path / "named.csv", [("a great film", "good"), ("terrible story", "bad")])
    assert main(["evaluate", "--adapter", str(out), "--file", str(named), "--text-column", "text",
                 "--label-column", "label", "--quiet"]) == 0
