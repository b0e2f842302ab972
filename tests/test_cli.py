"""The command line, in-process on a tiny BERT saved to a folder: one end-to-end run, and bad input that
must end in one ``error: ...`` line, a non-zero exit and no output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from ltuning.cli import main

TRAIN = [("the movie was very good", "positive"), ("bad plot", "negative"), ("i loved it", "positive"),
         ("awful boring film", "negative"), ("great actors and story", "positive"), ("it was dull", "negative"),
         ("wonderful", "positive"), ("not good", "negative")]
VALID = [("a great film", "positive"), ("terrible story", "negative"), ("really fun", "positive"),
         ("boring", "negative")]


def save_tiny_bert(folder: Path, layers: int = 2) -> Path:
    from conftest import make_tokenizer
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    make_tokenizer("encoder").save_pretrained(folder)
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
    assert results["trainable_parameters"] == 2 * l * l * m * d + 3 * d
    config = json.loads((out / CONFIG_NAME).read_text())
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
    assert [r["label"] for r in rows] == expected
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-4 for r in rows)

    # params: the counted parameters equal the paper's formula for every method
    assert main(["params", "--model", models["tiny"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["m"], info["d"], info["d_kv"], info["l"], info["K"]) == (2, 32, 32, 3, 2)
    counts = {r["method"]: r["trainable"] for r in info["methods"]}
    assert counts == {"lt-prefix": 2 * 9 * 2 * 32 + 96, "lt-prompt": 32 * 32 + 64,
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
