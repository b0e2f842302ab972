"""The command line, in-process on a tiny BERT saved to a folder: one end-to-end run; bad input that must end
in one ``error: ...`` line, a non-zero exit and no output; output folders and previous runs, Ctrl-C aside
(test_resume.py); evaluate's result files; predict's sentence pairs, text files and open-vocabulary options;
params."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from ltuning.cli import build_parser, main

TRAIN = [("the movie was very good", "positive"), ("bad plot", "negative"), ("i loved it", "positive"),
         ("awful boring film", "negative"), ("great actors and story", "positive"), ("it was dull", "negative"),
         ("wonderful", "positive"), ("not good", "negative")]
VALID = [("a great film", "positive"), ("terrible story", "negative"), ("really fun", "positive"),
         ("boring", "negative")]


def save_tiny_bert(folder: Path, layers: int = 2, extra_words: tuple[str, ...] = ()) -> Path:
    from conftest import make_tokenizer
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64 if not extra_words else 128, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    make_tokenizer("encoder", extra_words).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"tiny": str(save_tiny_bert(root / "tiny-bert")), "other": str(save_tiny_bert(root / "other-bert", 3))}


def write_csv(path: Path, rows, header=("text", "label"), sep=",") -> Path:
    path.write_text("".join(sep.join(r) + "\n" for r in [header, *rows]), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    return {"train": str(write_csv(tmp_path / "train.csv", TRAIN)),
            "valid": str(write_csv(tmp_path / "valid.tsv", VALID, sep="\t"))}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No hub here: fail at once on hub ids instead of retrying; default outputs land in tmp_path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.chdir(tmp_path)


def train_args(models, files, out, *extra):
    return ["train", "--model", models["tiny"], "--train-file", files["train"], "--validation-file", files["valid"],
            "--text-column", "text", "--label-column", "label", "--max-steps", "4", "--batch-size", "4",
            "--eval-every", "2", "--output-dir", str(out), "--quiet", *extra]


def test_train_evaluate_predict_params(models, files, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert main(train_args(models, files, out)) == 0
    assert (out / CONFIG_NAME).is_file() and (out / WEIGHTS_NAME).is_file()
    results = json.loads((out / "train_results.json").read_text())
    assert [r["step"] for r in results["history"]] == [2, 4]
    assert len(results["train_log"]) == 4
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in results["train_log"])
    assert results["best_step"] in (2, 4)
    assert 0.0 <= results["best_metrics"]["accuracy"] <= 1.0
    d, l, m = 32, 3, 2  # tiny BERT; "[CLS] negative [SEP]"
    r = 8  # lt-prefix's default label map: V (d -> r) and U (r -> the prefix, 2*l*m*d)
    assert results["trainable_parameters"] == (2 * l * l * m * d + 3 * d + d * d + 2  # + the similarity head
                                               + r * (d + 2 * l * m * d))
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["label_map_rank"] == r
    assert config["method"] == "lt-prefix" and config["label_names"] == ["negative", "positive"]
    assert config["base_model"] == models["tiny"]
    capsys.readouterr()

    # evaluate: loads the backbone the adapter names, writes metrics next to the adapter
    assert main(["evaluate", "--adapter", str(out), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--quiet"]) == 0
    metrics = json.loads((out / "eval_valid_file.json").read_text())
    assert metrics["num_examples"] == len(VALID)
    assert sum(map(sum, metrics["confusion_matrix"])) == len(VALID)
    assert "accuracy" in capsys.readouterr().out

    # predict: one line per text, the same labels as the Python API
    texts = ["what a great film", "boring and dull", "i loved the actors"]
    assert main(["predict", "--adapter", str(out), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = load_adapter(out).predict(texts)
    assert len(lines) == 3
    for line, text, label in zip(lines, texts, expected, strict=False):
        got_label, prob, got_text = line.split("\t")
        assert (got_label, got_text) == (label, text)
        assert 0.5 <= float(prob) <= 1.0
    assert main(["predict", "--adapter", str(out), "--json", *texts]) == 0
    rows = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    # the zero-shot pipeline's dict: every label, sorted by score
    assert [r["labels"][0] for r in rows] == expected and [r["sequence"] for r in rows] == texts
    assert all(abs(sum(r["scores"]) - 1) < 1e-4 and r["scores"] == sorted(r["scores"], reverse=True) for r in rows)

    # params: the counted parameters equal the formula for every method (the paper's A.5, plus d^2 + 2 for
    # the LT methods' default similarity head, plus lt-prefix's default label map)
    assert main(["params", "--model", models["tiny"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["m"], info["d"], info["d_kv"], info["l"], info["K"]) == (2, 32, 32, 3, 2)
    counts = {r["method"]: r["trainable"] for r in info["methods"]}
    assert info["label_map_rank"] == 8  # lt-prefix's default label map: + r*(d + 2*l*m*d)
    assert counts == {"lt-prefix": 2 * 9 * 2 * 32 + 96 + 32 * 32 + 2 + 8 * (32 + 2 * 3 * 2 * 32), "lt-prompt": 32 * 32 + 64 + 32 * 32 + 2,
                      "prefix": 2 * 3 * 2 * 32 + 64, "prompt": 32 * (3 + 2)}
    assert all(r["match"] for r in info["methods"])


@pytest.mark.parametrize("method", ["lt-prompt", "prefix", "prompt"])
def test_train_other_methods(models, files, tmp_path, method):
    out = tmp_path / method
    assert main(train_args(models, files, out, "--method", method, "--max-steps", "2")) == 0
    assert json.loads((out / CONFIG_NAME).read_text())["method"] == method


def assert_clean_error(capsys, rc, *, match: str):
    err = capsys.readouterr().err
    assert rc != 0
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert match in lines[0], lines[0]


def params_json(models, capsys, *extra) -> tuple[dict, dict[str, dict]]:
    """``ltuning params --json`` on the tiny model with ``extra`` flags (rc 0): its output and its rows by method."""
    capsys.readouterr()
    assert main(["params", "--model", models["tiny"], *extra, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    return info, {r["method"]: r for r in info["methods"]}


def one_error_line(capsys, rc: int, match: str, prefix: str = "error: ") -> str:
    """rc 2, and stderr is exactly one line that starts with ``prefix`` and contains ``match``."""
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case,match", [
    ("missing-file", "file not found"),
    ("missing-column", "'sentence'"),
    ("label-not-in-set", "'neutral'"),
    ("one-label", "at least 2"),
    ("empty-text", "empty text"),
    ("unknown-model", "no-such-model-xyz"),
])
def test_bad_training_input(models, files, tmp_path, capsys, case, match):
    out = tmp_path / "out"
    args = train_args(models, files, out)
    if case == "missing-file":
        args[args.index(files["train"])] = str(tmp_path / "nope.csv")
    elif case == "missing-column":
        args[args.index("--text-column") + 1] = "sentence"
    elif case == "label-not-in-set":
        write_csv(Path(files["valid"]), [*VALID, ("meh", "neutral")], sep="\t")
    elif case == "one-label":
        write_csv(Path(files["train"]), [r for r in TRAIN if r[1] == "positive"])
    elif case == "empty-text":
        write_csv(Path(files["train"]), [*TRAIN, ("", "positive")])
    elif case == "unknown-model":
        args[args.index(models["tiny"])] = "no-such-model-xyz"
    assert_clean_error(capsys, main(args), match=match)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def test_unknown_method_is_a_usage_error(models, files, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(train_args(models, files, tmp_path / "out", "--method", "lora"))
    assert e.value.code == 2
    assert "invalid choice: 'lora'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="session")
def trained(models, tmp_path_factory):
    """An adapter trained once on the tiny model (shared by the error tests below)."""
    root = tmp_path_factory.mktemp("trained")
    train_file = write_csv(root / "train.csv", TRAIN)
    out = root / "adapter"
    assert main(["train", "--model", models["tiny"], "--train-file", str(train_file), "--text-column", "text",
                 "--label-column", "label", "--max-steps", "2", "--batch-size", "4", "--output-dir", str(out),
                 "--quiet"]) == 0
    assert (out / "train_results.json").is_file()
    return out


def test_the_card_says_best_step_only_where_validation_chose_it(trained, models, files, tmp_path):
    card = (trained / "README.md").read_text()  # trained without validation data: the last step's state
    assert "| final step | 2 (no validation data: the last step's state) |" in card and "best step" not in card
    out = tmp_path / "validated"
    assert main(["train", "--model", models["tiny"], "--train-file", files["train"], "--validation-file",
                 files["valid"], "--text-column", "text", "--label-column", "label", "--max-steps", "2",
                 "--eval-every", "1", "--batch-size", "4", "--output-dir", str(out), "--quiet"]) == 0
    card = (out / "README.md").read_text()
    best = json.loads((out / "train_results.json").read_text())["best_step"]
    assert f"| best step | {best} |" in card and "final step" not in card


def test_adapter_from_another_backbone(models, files, trained, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--adapter", str(trained), "--model", models["other"], "--file", files["valid"],
               "--text-column", "text", "--label-column", "label", "--output", str(out), "--quiet"])
    assert_clean_error(capsys, rc, match="fingerprint")
    assert not out.exists()
    assert not list(trained.glob("eval_*"))
    rc = main(["predict", "--adapter", str(trained), "--model", models["other"], "a good film"])
    assert_clean_error(capsys, rc, match="fingerprint")
    assert capsys.readouterr().out == ""


def test_evaluate_bad_inputs(files, trained, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    base = ["evaluate", "--adapter", str(trained), "--text-column", "text", "--label-column", "label",
            "--output", str(out), "--quiet"]
    assert_clean_error(capsys, main([*base, "--file", str(tmp_path / "nope.tsv")]), match="file not found")
    write_csv(tmp_path / "v.tsv", [*VALID, ("meh", "neutral")], sep="\t")
    assert_clean_error(capsys, main([*base, "--file", str(tmp_path / "v.tsv")]), match="'neutral'")
    assert_clean_error(capsys, main(["evaluate", "--adapter", str(tmp_path / "no-adapter"), "--file", files["valid"],
                                     "--text-column", "text", "--label-column", "label"]), match="not found")
    assert not out.exists()


def test_predict_bad_inputs(trained, tmp_path, capsys):
    assert_clean_error(capsys, main(["predict", "--adapter", str(tmp_path), "a text"]), match=CONFIG_NAME)
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    assert_clean_error(capsys, main(["predict", "--adapter", str(trained), "--file", str(tmp_path / "blank.txt")]),
                       match="no texts")
    assert capsys.readouterr().out == ""


# ------------------------------------------ train: output folders, previous runs, usage errors, written files
def test_train_refuses_an_output_dir_that_is_a_file(models, files, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    one_error_line(capsys, main(train_args(models, files, afile)), "is a file, not a folder")
    one_error_line(capsys, main(train_args(models, files, afile / "sub")), "is a file, not a folder")
    assert afile.read_text() == "keep me" and not (tmp_path / "runs").exists()
    assert capsys.readouterr().out == ""  # failed before any work


def test_train_refuses_a_previous_run_unless_overwrite(models, files, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    (out / "eval_old_file.json").write_text(json.dumps({"run_config": {"command": "evaluate"}}))
    (out / "eval_data.json").write_text("{}")  # the user's: not ltuning evaluate's metrics
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
    assert (out / "eval_data.json").read_text() == "{}"
    capsys.readouterr()
    assert main(["report", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["evals"] == {}
    # --resume continues a folder with a checkpoint; a finished run without one is kept, not trained again
    one_error_line(capsys, main(train_args(models, files, out, "--resume")), "no checkpoint to continue from")
    assert main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2")) == 0
    assert main(train_args(models, files, out, "--resume", "--checkpoint-every", "2")) == 0


def test_overwrite_keeps_the_previous_run_when_training_is_refused(models, files, trained, tmp_path, capsys):
    """What train() refuses before its first step is refused before --overwrite removes the previous run."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    no_validation = [a for a in train_args(models, files, out) if a not in ("--validation-file", files["valid"])]
    for extra, match in ((["--early-stopping-patience", "2"], "need validation data"),
                         (["--max-train-samples", "1"], "at least 2 training examples")):
        one_error_line(capsys, main([*no_validation, "--overwrite", *extra]), match)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_overwrite_replaces_only_files_at_the_names_a_run_writes(tmp_path):
    from ltuning.cli import REPLACED_DIR, _drop_previous_run, _set_aside_previous_run

    out = tmp_path / "run"
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    # what a run writes, and at the adapter's names whoever wrote them (saving the adapter replaces them)
    ours = ["adapter_config.json", "adapter_model.safetensors", "run_config.json", "train_results.json", "loss.png",
            "accuracy.png", "eval_sst2_validation.json", "eval_sst2_validation.png", "README.md", "config.json"]
    # eval_* files that ltuning evaluate did not write (its metrics name the command) are the user's
    mine = ["notes.txt", "data.tsv", "eval.json", "adapter_config.json.bak", "eval_data.json", "eval_data.png",
            "eval_plot.png"]
    for name in ours + mine:
        (out / name).write_text("x")
    (out / "eval_sst2_validation.json").write_text(json.dumps({"run_config": {"command": "evaluate"}}))
    moved = _set_aside_previous_run(out)
    assert sorted(p.name for p in moved) == sorted([*ours, "checkpoints"])
    assert sorted(p.name for p in (out / REPLACED_DIR).iterdir()) == sorted([*ours, "checkpoints"])
    assert sorted(p.name for p in out.iterdir()) == sorted([*mine, REPLACED_DIR])
    _drop_previous_run(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(mine)


def snapshot(folder: Path) -> dict:
    """Every file below ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def previous_run(trained, out: Path) -> dict:
    """A finished run with a checkpoint, a user's own README.md (not a card: --overwrite replaces it on save) and
    notes; returns the folder's snapshot."""
    shutil.copytree(trained, out)
    (out / "checkpoints" / "step-9").mkdir(parents=True)
    (out / "checkpoints" / "step-9" / "state.pt").write_bytes(b"old")
    (out / "README.md").write_text("# my notes on this run\n")
    (out / "notes.txt").write_text("mine")
    return snapshot(out)


def interrupt_after_training(monkeypatch, failure=KeyboardInterrupt):
    """build_and_train trains (and writes checkpoints where asked), then raises ``failure``."""
    import ltuning.recipe

    real = ltuning.recipe.build_and_train

    def stops(*a, **k):
        real(*a, **k)
        raise failure()

    monkeypatch.setattr(ltuning.recipe, "build_and_train", stops)
    return lambda: monkeypatch.setattr(ltuning.recipe, "build_and_train", real)


@pytest.mark.parametrize("failure", ["interrupt", "nonfinite", "disk-full-after-save"])
def test_overwrite_puts_the_previous_run_back_when_the_new_one_stops_before_a_checkpoint(
        models, files, trained, tmp_path, capsys, monkeypatch, failure):
    """--overwrite replaces a run only once the new one is saved: one that stops before its first checkpoint
    (after training, or after saving its adapter but before its results) leaves the folder byte for byte as it
    was, the user's README.md that the save had replaced included."""
    import ltuning.adapter

    out = tmp_path / "run"
    before = previous_run(trained, out)
    seen = {}
    if failure == "disk-full-after-save":
        def no_space(path, text):
            seen["adapter"] = (out / CONFIG_NAME).read_bytes()  # the new run's adapter was saved
            raise OSError(28, "No space left on device", str(path))

        monkeypatch.setattr(ltuning.adapter, "atomic_write_text", no_space)
    else:
        interrupt_after_training(monkeypatch, KeyboardInterrupt if failure == "interrupt" else FloatingPointError)
    rc = main(train_args(models, files, out, "--overwrite"))
    assert rc == {"interrupt": 130, "nonfinite": 1, "disk-full-after-save": 2}[failure]
    if failure == "disk-full-after-save":
        assert seen["adapter"] != before[CONFIG_NAME]
    assert snapshot(out) == before
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint; the previous run in" in err and "is back as it was" in err
    if failure == "interrupt":
        assert "nothing of this run was kept" in err


def test_sigterm_stops_train_as_ctrl_c_does(models, files, trained, tmp_path, capsys, monkeypatch):
    """SIGTERM (kill, a scheduler's stop) during train puts a set-aside run back and names the checkpoint to
    resume from, as Ctrl-C does; exit status 143; the handler before the command is restored after."""
    import os
    import signal

    def term():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here, inside this call
        return RuntimeError("SIGTERM was not handled")

    def fallback(signum, frame):  # without train's own handler the test fails instead of ending pytest
        raise RuntimeError("SIGTERM reached the handler set before the command")

    previous = signal.signal(signal.SIGTERM, fallback)
    try:
        out = tmp_path / "run"
        before = previous_run(trained, out)
        restore = interrupt_after_training(monkeypatch, term)
        assert main(train_args(models, files, out, "--overwrite")) == 143
        assert snapshot(out) == before
        assert "terminated (SIGTERM) before the first checkpoint; nothing of this run was kept" in capsys.readouterr().err
        assert main(train_args(models, files, tmp_path / "new", "--checkpoint-every", "2")) == 143
        assert ("terminated (SIGTERM); last checkpoint: " in capsys.readouterr().err
                and (tmp_path / "new" / "checkpoints" / "step-4").is_dir())
        assert signal.getsignal(signal.SIGTERM) is fallback
        restore()
        # once the adapter is saved, a SIGTERM (or Ctrl-C) waits for the clean-up: the run finishes, folder whole
        import ltuning.cli

        real = ltuning.cli._drop_previous_run

        def drop_then_term(folder):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            real(folder)

        monkeypatch.setattr(ltuning.cli, "_drop_previous_run", drop_then_term)
        assert main(train_args(models, files, out, "--overwrite")) == 0
        err = capsys.readouterr().err
        assert "SIGTERM and Ctrl-C arrived after the run was saved; its files were finished first" in err
        assert (out / "run_config.json").is_file() and not any(p.name.startswith(".ltuning") for p in out.iterdir())
        assert signal.getsignal(signal.SIGTERM) is fallback and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # a SIGTERM ignored when the command started stays ignored
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        interrupt_after_training(monkeypatch, term)
        with pytest.raises(RuntimeError, match="SIGTERM was not handled"):
            main(train_args(models, files, tmp_path / "ignored"))
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_overwrite_keeps_a_stopped_run_with_a_checkpoint_to_resume(models, files, trained, tmp_path, capsys,
                                                                  monkeypatch):
    """A run stopped after a checkpoint stays (to --resume), the previous run waiting aside; a plain run is then
    refused; --overwrite starts again (the unfinished run goes, the run before it keeps waiting), and a run
    that is saved deletes the waiting one."""
    from ltuning.checkpoint import latest_checkpoint
    from ltuning.cli import REPLACED_DIR

    out = tmp_path / "run"
    before = previous_run(trained, out)
    restore = interrupt_after_training(monkeypatch)
    assert main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2")) == 130
    err = capsys.readouterr().err
    assert "the previous run still waits in" in err and "--resume in place of --overwrite" in err
    assert latest_checkpoint(out).name == "step-4" and not (out / CONFIG_NAME).exists()
    assert snapshot(out / REPLACED_DIR) == {k: v for k, v in before.items() if k != "notes.txt"}
    unfinished = snapshot(out)
    one_error_line(capsys, main(train_args(models, files, out)),
                   f"holds {REPLACED_DIR}/: a run that an --overwrite run set aside and did not finish")
    assert snapshot(out) == unfinished
    # --overwrite again, stopped before a checkpoint: back to the run before the unfinished one
    assert main(train_args(models, files, out, "--overwrite")) == 130
    assert snapshot(out) == before and "is back as it was" in capsys.readouterr().err
    restore()
    assert main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2")) == 0
    assert not any(p.name.startswith(REPLACED_DIR) for p in out.iterdir())
    assert (out / "notes.txt").read_text() == "mine" and (out / CONFIG_NAME).read_bytes() != before[CONFIG_NAME]


def test_overwrite_edge_states(models, files, trained, tmp_path, capsys, monkeypatch):
    """An empty .ltuning-replaced/ (its files moved back by hand) is no waiting run; a run stopped after a
    checkpoint leaves its own run_config.json, so the card's rerun command resumes it; a Ctrl-C before
    training began leaves the folder as it was and says so (no checkpoint advice about the old run's);
    --overwrite over only a user's file at a run's name (no run) still puts it back if the run stops."""
    import ltuning.adapter
    import ltuning.recipe
    from ltuning.cli import REPLACED_DIR

    out = tmp_path / "run"
    before = previous_run(trained, out)
    (out / REPLACED_DIR).mkdir()
    restore = interrupt_after_training(monkeypatch)
    assert main(train_args(models, files, out, "--overwrite")) == 130
    assert snapshot(out) == before  # the run moved back by hand was set aside and restored, not removed
    capsys.readouterr()
    # stopped after a checkpoint: `--config <out>/run_config.json --resume` continues it
    assert main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2", "--max-steps", "6")) == 130
    rerun = ["train", "--config", str(out / "run_config.json"), "--resume", "quiet=true"]
    assert json.loads((out / "run_config.json").read_text())["checkpoint_every"] == 2
    restore()
    assert main(rerun) == 0 and not any(p.name.startswith(REPLACED_DIR) for p in out.iterdir())
    # Ctrl-C while the model is built: nothing moved, and the message says so
    capsys.readouterr()
    kept = snapshot(out)

    def interrupted_early(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ltuning.recipe, "build_and_train", interrupted_early)
    assert main(train_args(models, files, out, "--overwrite")) == 130
    assert snapshot(out) == kept
    assert capsys.readouterr().err.strip() == f"interrupted before training began; {out} is unchanged"
    restore()
    # a user's README.md alone (no run): --overwrite sets it aside too, and a stop puts it back
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# mine\n")

    def no_space(path, text):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ltuning.adapter, "atomic_write_text", no_space)
    assert main(train_args(models, files, mine, "--overwrite")) == 2
    assert snapshot(mine) == {"README.md": b"# mine\n"}


def test_resume_finishes_a_stopped_overwrite_run_and_deletes_the_run_it_replaces(models, files, trained, tmp_path,
                                                                                   capsys, monkeypatch):
    from ltuning.cli import REPLACED_DIR

    out = tmp_path / "run"
    previous_run(trained, out)
    restore = interrupt_after_training(monkeypatch)
    assert main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2", "--max-steps", "6")) == 130
    restore()
    capsys.readouterr()
    # a --resume (or --overwrite) that stops before a checkpoint of its own leaves the folder as it found it: the
    # unfinished run's run_config.json is what reruns it
    unfinished = snapshot(out)
    assert main(train_args(models, files, out, "--resume", "--checkpoint-every", "2", "--max-steps", "6",
                           "--batch-size", "2")) == 2
    err = capsys.readouterr().err
    assert "is as it was (the unfinished run" in err and "it was written with other options" in err
    assert snapshot(out) == unfinished
    assert main(train_args(models, files, out, "--overwrite", "--model", str(tmp_path / "no-model"))) == 2
    assert snapshot(out) == unfinished and "is as it was (the unfinished run" in capsys.readouterr().err
    assert main(train_args(models, files, out, "--resume", "--checkpoint-every", "2", "--max-steps", "6")) == 0
    assert not any(p.name.startswith(REPLACED_DIR) for p in out.iterdir())
    assert (out / CONFIG_NAME).is_file() and (out / "notes.txt").read_text() == "mine"
    assert not (out / "README.md").read_text().startswith("# my notes")  # the card replaced it


@pytest.mark.parametrize("extra,match", [(["--method", "lora"], "invalid choice: 'lora'"),
                                         (["--max-steps", "ten"], "invalid int value: 'ten'")])
def test_usage_errors_are_one_line_and_point_to_help(models, files, tmp_path, capsys, extra, match):
    with pytest.raises(SystemExit) as e:
        main(train_args(models, files, tmp_path / "out", *extra))
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("ltuning train: error: ") and match in lines[0], lines
    assert lines[1] == "see ltuning train --help"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("abbreviated", [["--conf", "run.yaml"], ["--max-step", "2"]])
def test_abbreviated_options_are_refused(models, files, tmp_path, capsys, abbreviated):
    """argparse took --conf for --config, which the config reader did not (the file was ignored, the run went
    on with the defaults): no option is abbreviated."""
    (tmp_path / "run.yaml").write_text("max_steps: 2\n")
    with pytest.raises(SystemExit) as e:
        main(train_args(models, files, tmp_path / "out", *abbreviated))
    assert e.value.code == 2 and f"unrecognized arguments: {abbreviated[0]}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_refuses_integer_validation_labels_against_named_training_labels(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", [("a good film", "neg"), ("bad", "neu"), ("great", "pos")])
    val = write_csv(tmp_path / "val.csv", [("a", "0"), ("b", "1")])
    assert main(["train", "--train-file", str(train), "--validation-file", str(val), "--text-column", "text",
                 "--label-column", "label", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are integers" in err[0] and "neg" in err[0]
    assert not (tmp_path / "out").exists()


def test_train_writes_files_others_can_read(models, tmp_path):
    """The files a training run writes (adapter, card, run config, results) under the usual umask 022."""
    old = os.umask(0o022)
    try:
        assert main(["train", "--model", models["tiny"], "--train-file", str(write_csv(tmp_path / "t.csv", TRAIN)),
                     "--validation-file", str(write_csv(tmp_path / "v.csv", VALID)), "--text-column", "text",
                     "--label-column", "label", "--max-steps", "2", "--batch-size", "4", "--quiet",
                     "--checkpoint-every", "1", "--output-dir", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old)
    written = [f for f in (tmp_path / "out").rglob("*") if f.is_file()]
    names = {str(f.relative_to(tmp_path / "out")) for f in written}
    assert {"adapter_model.safetensors", "train_results.json", "README.md", "run_config.json",
            "checkpoints/step-2/adapter_model.safetensors", "checkpoints/step-2/best_model.safetensors"} <= names
    for f in written:
        assert f.stat().st_mode & 0o777 == 0o644, f.name


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


def test_module_docstring_and_data_dir_help():
    import ltuning.cli
    from ltuning.data import DEFAULT_GLUE_DIRS

    assert "report" in ltuning.cli.__doc__.splitlines()[0]
    helptext = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    flat = " ".join(helptext.split())
    assert "LTUNING_GLUE_DIR" in flat and all(d in flat for d in DEFAULT_GLUE_DIRS)
    assert "../../shared/data/glue" in flat


# ----------------------------------------------- evaluate: batch size, where results go, integer labels, bf16
@pytest.mark.parametrize("size", ["-1", "0"])
def test_evaluate_and_predict_batch_size_must_be_positive(trained, files, capsys, size):
    one_error_line(capsys, main(["evaluate", "--adapter", str(trained), "--file", files["valid"], "--text-column",
                                 "text", "--label-column", "label", "--batch-size", size, "--quiet"]),
                   f"--batch-size must be >= 1, got {size}")
    assert not list(trained.glob("eval_*"))
    one_error_line(capsys, main(["predict", "--adapter", str(trained), "--batch-size", size, "good"]), "--batch-size")
    assert capsys.readouterr().out == ""


def test_evaluate_file_with_task_is_named_after_the_file(trained, files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "eval_sst2_validation.json").write_text(json.dumps({"accuracy": 0.9, "num_examples": 872,
                                                               "run_config": {"command": "evaluate"}}))
    assert main(["evaluate", "--adapter", str(run), "--task", "sst2", "--file", files["valid"], "--text-column",
                 "text", "--label-column", "label", "--quiet"]) == 0
    assert json.loads((run / "eval_sst2_validation.json").read_text())["accuracy"] == 0.9  # not overwritten
    assert json.loads((run / "eval_valid_file.json").read_text())["num_examples"] == len(VALID)
    capsys.readouterr()
    assert main(["report", "--json", str(run)]) == 0
    evals = json.loads(capsys.readouterr().out)[0]["evals"]
    assert set(evals) == {"sst2_validation", "valid_file"}
    assert evals["valid_file"]["data"] == files["valid"]


def test_evaluate_files_of_the_same_name_do_not_share_metrics(trained, files, tmp_path, capsys, monkeypatch):
    # data/a/valid.csv and data/b/valid.csv both default to eval_valid_file.json: the second is refused
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    other = tmp_path / "b" / Path(files["valid"]).name
    other.parent.mkdir()
    shutil.copy(files["valid"], other)
    base = ["evaluate", "--adapter", str(run), "--text-column", "text", "--label-column", "label", "--quiet"]
    assert main([*base, "--file", files["valid"]]) == 0
    capsys.readouterr()
    first = (run / "eval_valid_file.json").read_bytes()
    one_error_line(capsys, main([*base, "--file", str(other)]),
                   f"holds the metrics of --file {files['valid']}, another file named like {other}")
    assert (run / "eval_valid_file.json").read_bytes() == first and not (run / "eval_b_valid_file.json").exists()
    # the same file again replaces its own metrics; --output keeps both; --overwrite replaces
    assert main([*base, "--file", files["valid"]]) == 0
    assert main([*base, "--file", str(other), "--output", str(run / "eval_b_valid_file.json")]) == 0
    assert json.loads((run / "eval_b_valid_file.json").read_text())["run_config"]["file"] == str(other)
    assert main([*base, "--file", str(other), "--overwrite"]) == 0
    assert json.loads((run / "eval_valid_file.json").read_text())["run_config"]["file"] == str(other)
    # from another folder, by a relative name: the same file is the same, another is another
    capsys.readouterr()
    monkeypatch.chdir(other.parent)
    assert main([*base, "--file", other.name]) == 0
    first = Path(files["valid"])
    monkeypatch.chdir(first.parent)
    one_error_line(capsys, main([*base, "--file", first.name]), f"holds the metrics of --file {other}")


def test_ctrl_c_during_evaluate_overwrite_is_one_line(trained, files, tmp_path, capsys, monkeypatch):
    import ltuning.evaluate

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ltuning.evaluate, "evaluate", interrupted)
    assert main(["evaluate", "--adapter", str(trained), "--file", files["valid"], "--text-column", "text",
                 "--label-column", "label", "--quiet", "--overwrite", "--output", str(tmp_path / "m.json")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted; nothing was saved"
    assert not (tmp_path / "m.json").exists()


def test_evaluate_refuses_an_output_that_is_a_folder_or_under_a_file(trained, files, tmp_path, capsys):
    base = ["evaluate", "--adapter", str(trained), "--file", files["valid"], "--text-column", "text",
            "--label-column", "label", "--quiet", "--output"]
    folder = tmp_path / "folder"
    folder.mkdir()
    one_error_line(capsys, main([*base, str(folder)]), "is a folder")
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_error_line(capsys, main([*base, str(afile / "x.json")]), "is a file, not a folder")
    assert list(folder.iterdir()) == [] and afile.read_text() == "x" and not list(trained.glob("eval_*"))


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


def test_predict_and_evaluate_take_bf16(trained, files, tmp_path, capsys):
    import torch

    if not torch.backends.mkldnn.is_available():
        pytest.skip("no bf16 autocast on this CPU build")
    texts = ["the movie was good", "awful boring film"]
    assert main(["predict", "--adapter", str(trained), "--json", *texts]) == 0
    fp32 = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--adapter", str(trained), "--json", "--bf16", *texts]) == 0
    bf16 = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [r["sequence"] for r in bf16] == texts
    for a, b in zip(fp32, bf16, strict=True):  # same scores up to bfloat16 rounding
        a_scores, b_scores = dict(zip(a["labels"], a["scores"], strict=True)), dict(zip(b["labels"], b["scores"], strict=True))
        assert a_scores.keys() == b_scores.keys()
        assert all(abs(a_scores[k] - b_scores[k]) < 0.05 for k in a_scores)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--adapter", str(trained), "--file", str(files["valid"]), "--text-column", "text",
                 "--label-column", "label", "--output", str(out), "--bf16", "--quiet"]) == 0
    assert 0.0 <= json.loads(out.read_text())["accuracy"] <= 1.0


# ----------------------------------------- predict: sentence pairs, texts, line ends, open-vocabulary options
PAIRS = [("the movie was good", "it was good", "entailment"), ("the film was bad", "it was great", "contradiction"),
         ("i loved the story", "the story was fun", "entailment"), ("boring plot", "the plot was fun", "contradiction"),
         ("great actors", "the actors were good", "entailment"), ("awful film", "i loved it", "contradiction")]


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
    assert [r["labels"][0] for r in rows] == expected and [tuple(r["sequence"]) for r in rows] == pairs
    monkeypatch.setattr(sys, "stdin", io.StringIO("\t".join(pairs[0]) + "\n"))
    assert main(["predict", "--adapter", str(pair_adapter)]) == 0
    assert capsys.readouterr().out.split("\t")[0] == expected[0]


def test_a_pair_adapters_card_shows_pairs_and_its_python_example_runs(pair_adapter, capsys):
    """The card's usage was single texts, which a pair adapter refuses."""
    card = (pair_adapter / "README.md").read_text()
    assert "classifies sentence pairs" in card and "$'a premise\\ta hypothesis'" in card
    assert 'model.predict([("a premise", "a hypothesis")])' in card
    assert len(load_adapter(pair_adapter).predict([("a premise", "a hypothesis")])) == 1
    assert main(["predict", "--adapter", str(pair_adapter), "a premise\ta hypothesis"]) == 0  # the bash line's text


def test_predict_pairs_need_exactly_one_tab(pair_adapter, tmp_path, capsys, monkeypatch):
    f = tmp_path / "bad.txt"
    f.write_text("the movie\tit was good\n\nno tab here\n", encoding="utf-8")
    one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter), "--file", str(f)]), "line 3")
    one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter), "a\tb", "a\tb\tc"]), "text 2")
    monkeypatch.setattr(sys, "stdin", io.StringIO("only a premise\n"))
    line = one_error_line(capsys, main(["predict", "--adapter", str(pair_adapter)]), "stdin, line 1")
    assert "PREMISE<TAB>HYPOTHESIS" in line
    assert capsys.readouterr().out == ""


def test_predict_keeps_tabs_in_texts_for_a_single_text_adapter(trained, capsys):
    assert main(["predict", "--adapter", str(trained), "a good\tfilm"]) == 0
    assert capsys.readouterr().out.rstrip("\n").split("\t", 2)[2] == "a good\tfilm"


def test_train_help_names_each_methods_default_learning_rate():
    from ltuning.methods import METHODS

    helptext = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    assert ("(default: the method's own: 3e-3 (1e-2 with --score-head cosine) for lt-prefix, 3e-3 for lt-prompt, "
            "3e-2 for prefix, 3e-2 for prompt)") in helptext, helptext
    assert {name: cls.default_learning_rate for name, cls in METHODS.items()} == {
        "lt-prefix": 3e-3, "lt-prompt": 3e-3, "prefix": 3e-2, "prompt": 3e-2}
    assert {name: cls.head_learning_rates for name, cls in METHODS.items()} == {
        "lt-prefix": {"cosine": 1e-2}, "lt-prompt": {}, "prefix": {}, "prompt": {}}


def test_predict_help_documents_pairs():
    helptext = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "PREMISE<TAB>HYPOTHESIS" in helptext and "exactly one TAB" in helptext


def test_predict_texts_are_never_key_value_overrides(trained, capsys):
    texts = ["model=terrible acting", "json=true", "batch_size=2"]
    assert main(["predict", "--adapter", str(trained), *texts]) == 0
    assert [line.split("\t")[2] for line in capsys.readouterr().out.strip().splitlines()] == texts


def test_predict_file_with_windows_line_ends(trained, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_bytes(b"good film\r\n\r\nbad plot\r\n")
    assert main(["predict", "--adapter", str(trained), "--json", "--file", str(f)]) == 0
    assert [json.loads(s)["sequence"] for s in capsys.readouterr().out.splitlines()] == ["good film", "bad plot"]


def test_predict_file_lines_end_as_stdin_lines_do_and_texts_with_a_file_are_refused(trained, tmp_path, capsys,
                                                                                    monkeypatch):
    """A lone \r stays inside its text, from a file as from stdin (a file split there, stdin did not); texts
    given as arguments beside --file are refused (the file was ignored)."""
    import io

    f = tmp_path / "texts.txt"
    f.write_bytes(b"good\rfilm\nbad plot\n")
    assert main(["predict", "--adapter", str(trained), "--json", "--file", str(f)]) == 0
    from_file = [json.loads(s)["sequence"] for s in capsys.readouterr().out.splitlines()]
    monkeypatch.setattr("sys.stdin", io.StringIO("good\rfilm\nbad plot\n", newline="\n"))  # as sys.stdin reads
    assert main(["predict", "--adapter", str(trained), "--json"]) == 0
    assert [json.loads(s)["sequence"] for s in capsys.readouterr().out.splitlines()] == from_file == \
        ["good\rfilm", "bad plot"]
    one_error_line(capsys, main(["predict", "--adapter", str(trained), "--file", str(f), "fine"]),
                   f"give texts as arguments or --file {f}, not both")


def test_a_closed_pipe_ends_predict_quietly_and_warnings_read_as_one_line(trained, models, files, tmp_path, capsys,
                                                                          monkeypatch):
    """`ltuning predict ... | head -1`: the reader closing the pipe is no error (it printed "error: Broken pipe",
    exit 2): nothing on stderr, exit 141 as the shell reports it. A library warning reads `warning: ...`."""
    import warnings

    from ltuning.cli import _format_warning

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["predict", "--adapter", str(trained), "good film", "bad plot"]) == 141
    assert capsys.readouterr().err == ""
    # a training run's output lost is an error still
    rc = main(["train", "--model", str(models["tiny"]), "--train-file", files["train"], "--text-column", "text",
               "--label-column", "label", "--max-steps", "2", "--batch-size", "4", "--output-dir",
               str(tmp_path / "piped")])
    assert rc == 2 and "error: Broken pipe" in capsys.readouterr().err
    assert _format_warning(UserWarning("multi_label reads ..."), UserWarning, "/x/bin/ltuning", 8) == \
        "warning: multi_label reads ...\n"
    assert warnings.formatwarning is not _format_warning  # main put Python's back


def test_predict_file_with_a_byte_order_mark(trained, tmp_path, capsys):
    f = tmp_path / "texts.txt"
    f.write_bytes("good film\nbad plot\n".encode("utf-8-sig"))  # as Excel / Notepad save "UTF-8"
    assert main(["predict", "--adapter", str(trained), "--json", "--file", str(f)]) == 0
    assert [json.loads(s)["sequence"] for s in capsys.readouterr().out.splitlines()] == ["good film", "bad plot"]


@pytest.mark.parametrize("template", ["{", "no field", "{} and {}", "", "{0}"])
def test_predict_refuses_a_bad_hypothesis_template(trained, capsys, template):
    one_error_line(capsys, main(["predict", "--adapter", str(trained), "--hypothesis-template", template, "good"]),
                   "error: --hypothesis-template must contain")
    assert capsys.readouterr().out == ""


@pytest.mark.filterwarnings("ignore:.*truncated")
def test_predict_hypothesis_template_keeps_other_braces(trained, capsys, monkeypatch):
    import ltuning.prediction as api

    seen = []
    original = api.candidate_injection

    def spy(model, label_texts, unseen_label_head="trained"):
        seen.append(list(label_texts))
        return original(model, label_texts, unseen_label_head)

    monkeypatch.setattr(api, "candidate_injection", spy)
    assert main(["predict", "--adapter", str(trained), "--candidate-labels", "good,bad",
                 "--hypothesis-template", "{} {0} {", "a good film"]) == 0
    assert seen == [["good {0} {", "bad {0} {"]]  # the labels go in the slot; other braces stay as written


def test_predict_unseen_label_head_reaches_the_scoring(trained, capsys, monkeypatch):
    import ltuning.prediction as api

    seen = []
    original = api.candidate_injection

    def spy(model, label_texts, unseen_label_head="trained"):
        seen.append(unseen_label_head)
        return original(model, label_texts, unseen_label_head)

    monkeypatch.setattr(api, "candidate_injection", spy)
    for extra in ([], ["--unseen-label-head", "cosine"]):
        assert main(["predict", "--adapter", str(trained), "--candidate-labels", "fine,awful", *extra,
                     "a good film"]) == 0
    assert seen == ["trained", "cosine"]
    with pytest.raises(SystemExit):  # argparse's choices
        main(["predict", "--adapter", str(trained), "--candidate-labels", "fine,awful", "--unseen-label-head",
              "frozen", "a good film"])
    assert "invalid choice: 'frozen'" in capsys.readouterr().err


@pytest.mark.parametrize("args,match", [
    (["--candidate-labels", '{"a": "b"}'], "--candidate-labels must be"),
    (["--candidate-labels", ""], "--candidate-labels is empty"),
    (["--candidate-labels", "good,,bad"], "--candidate-labels: label 2 is empty"),
    (["--multi-label", "--threshold", "5"], "--threshold must be in [0, 1]"),
    (["--multi-label", "--threshold", "nan"], "--threshold must be in [0, 1]"),
    (["--threshold", "0.3"], "--multi-label only"),
])
def test_predict_refuses_bad_open_vocabulary_options(trained, capsys, args, match):
    one_error_line(capsys, main(["predict", "--adapter", str(trained), *args, "a text"]), match)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("method, args, match", [
    ("lt-prefix", ["--candidate-labels", "bad"], "error: --candidate-labels: need at least 2 candidate labels"),
    ("prefix", ["--candidate-labels", "bad,good"], "error: --candidate-labels needs a label-conditioned method"),
    ("prefix", ["--multi-label"], "error: --multi-label needs a label-conditioned method"),
    ("prefix", ["--hypothesis-template", "It is {}."], "error: --hypothesis-template needs a label-conditioned"),
])
def test_predict_errors_name_the_option_not_the_api_argument(models, files, tmp_path, capsys, method, args, match):
    out = tmp_path / method
    assert main(["train", "--model", models["tiny"], "--train-file", files["train"], "--text-column", "text",
                 "--label-column", "label", "--max-steps", "1", "--batch-size", "4", "--output-dir", str(out),
                 "--method", method, "--quiet"]) == 0
    capsys.readouterr()
    one_error_line(capsys, main(["predict", "--adapter", str(out), *args, "a text"]), match)


# ---------------------------------------------------------------------- params
@pytest.mark.parametrize("length,match", [("0", ">= 1, got 0"), ("100000", "[1, 64]"), ("-5", ">= 1")])
def test_params_refuses_a_label_length_out_of_bounds(models, capsys, length, match):
    one_error_line(capsys, main(["params", "--model", models["tiny"], "--label-length", length]), match)


def test_params_label_length_at_the_bound_allocates_nothing(models, capsys):
    assert main(["params", "--model", models["tiny"], "--label-length", "64", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["l"] == 64 and all(r["match"] for r in info["methods"])


def test_another_tools_checkpoints_are_never_taken_for_a_run(models, files, trained, tmp_path, capsys):
    """checkpoints/ holding files ltuning did not write: not a previous run (nothing to --overwrite), kept by
    --overwrite, and a run that would write its own checkpoints beside them is refused."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "epoch=3.ckpt").write_text("theirs")
    assert main(train_args(models, files, out)) == 0  # not a run: no --overwrite needed, nothing touched
    assert (out / "checkpoints" / "epoch=3.ckpt").read_text() == "theirs"
    one_error_line(capsys, main(train_args(models, files, out, "--overwrite", "--checkpoint-every", "2")),
                   "checkpoints/ holds epoch=3.ckpt, which ltuning did not write")
    assert main(train_args(models, files, out, "--overwrite")) == 0
    assert (out / "checkpoints" / "epoch=3.ckpt").read_text() == "theirs"
    # ltuning's checkpoints mixed with another tool's: --overwrite and --resume are refused, nothing moved
    (out / "checkpoints" / "step-2").mkdir()
    (out / "checkpoints" / "step-2" / "trainer_state.json").write_text("{}")
    for flag in ("--overwrite", "--resume"):
        one_error_line(capsys, main(train_args(models, files, out, flag)), "which ltuning did not write")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch=3.ckpt", "step-2"]


def test_no_command_writes_over_the_backbone_or_its_own_inputs(models, files, trained, tmp_path, capsys):
    """Whatever the flags: train into the backbone's folder, evaluate or export over the backbone's or the
    adapter's files are refused before any work, and every file stays as it was."""
    backbone = tmp_path / "backbone"
    shutil.copytree(models["tiny"], backbone)
    adapter = tmp_path / "adapter"
    shutil.copytree(trained, adapter)
    before = snapshot(backbone), snapshot(adapter)
    one_error_line(capsys, main([*train_args({**models, "tiny": str(backbone)}, files, backbone), "--overwrite"]),
                   "is the backbone's folder")
    evaluate = ["evaluate", "--adapter", str(adapter), "--model", str(backbone), "--file", files["valid"],
                "--text-column", "text", "--label-column", "label", "--overwrite", "--quiet", "--output"]
    one_error_line(capsys, main([*evaluate, str(backbone / "config.json")]), "a file in the backbone's folder")
    one_error_line(capsys, main([*evaluate, str(adapter / "adapter_config.json")]), "which evaluate reads")
    if importlib.util.find_spec("onnxruntime") is not None:
        export = ["export", "--adapter", str(adapter), "--model", str(backbone), "--overwrite", "--output"]
        one_error_line(capsys, main([*export, str(adapter / "adapter_model.safetensors")]), "which export reads")
        one_error_line(capsys, main([*export, str(backbone / "config.json")]), "a file in the backbone's folder")
    assert (snapshot(backbone), snapshot(adapter)) == before


def test_an_adapter_whose_backbone_folder_moved_says_so(models, files, tmp_path, capsys):
    backbone = tmp_path / "backbone"
    shutil.copytree(models["tiny"], backbone)
    out = tmp_path / "adapter"
    assert main(train_args({**models, "tiny": str(backbone)}, files, out)) == 0
    backbone.rename(tmp_path / "moved")
    capsys.readouterr()
    one_error_line(capsys, main(["predict", "--adapter", str(out), "good film"]),
                   f"names its backbone by the folder {backbone}, which does not exist (moved or deleted?); "
                   "pass the backbone explicitly (--model PATH")
    assert main(["predict", "--adapter", str(out), "--model", str(tmp_path / "moved"), "good film"]) == 0


def test_run_config_reruns_into_the_same_folder_from_any_folder(models, files, tmp_path, monkeypatch, capsys):
    """run_config.json stores absolute paths: rerun from another folder, it replaces the run it came from; "~"
    in a config file is the home folder, never a folder named "~"."""
    monkeypatch.chdir(tmp_path)
    train_file = Path(files["train"])
    assert train_file.parent == tmp_path
    args = [a if a != files["train"] else "train.csv" for a in train_args(models, files, Path("runs/base"))]
    assert main(args) == 0
    saved = json.loads((tmp_path / "runs/base/run_config.json").read_text())
    assert saved["output_dir"] == str(tmp_path / "runs/base") and saved["train_file"] == str(train_file)
    monkeypatch.chdir(tmp_path / "runs")
    assert main(["train", "--config", "base/run_config.json", "--overwrite", "max_steps=2"]) == 0
    assert not (tmp_path / "runs/runs").exists()
    assert json.loads((tmp_path / "runs/base/train_results.json").read_text())["args"]["max_steps"] == 2
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "c.yaml").write_text("output_dir: ~/tilde-run\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--model", models["tiny"], "--train-file",
                 str(train_file), "--text-column", "text", "--label-column", "label", "--max-steps", "2",
                 "--batch-size", "4", "--quiet"]) == 0
    assert (home / "tilde-run" / "adapter_config.json").is_file() and not (tmp_path / "runs" / "~").exists()


def test_an_adapter_kept_inside_its_backbones_folder_evaluates_and_exports_again(models, files, tmp_path, capsys):
    """The backbone guard protects the model's files, not the adapter's own outputs below the model's folder."""
    backbone = tmp_path / "backbone"
    shutil.copytree(models["tiny"], backbone)
    adapter = backbone / "adapters" / "a1"
    assert main(train_args({**models, "tiny": str(backbone)}, files, adapter)) == 0
    evaluate = ["evaluate", "--adapter", str(adapter), "--file", files["valid"], "--text-column", "text",
                "--label-column", "label", "--quiet"]
    assert main(evaluate) == 0 and main(evaluate) == 0  # the second replaces the first's metrics
    if importlib.util.find_spec("onnxruntime") is not None:
        export = ["export", "--adapter", str(adapter), "--output", str(adapter / "model.onnx")]
        assert main(export) == 0 and main([*export, "--overwrite"]) == 0
    capsys.readouterr()
    (adapter / "checkpoints").mkdir()
    (adapter / "checkpoints" / ".DS_Store").write_text("litter")  # a file browser's: not another tool's checkpoint
    from ltuning.cli import _previous_run

    assert (adapter / "checkpoints") not in _previous_run(adapter)  # nor a run's
    assert main(train_args({**models, "tiny": str(backbone)}, files, adapter, "--overwrite", "--checkpoint-every",
                           "2")) == 0
