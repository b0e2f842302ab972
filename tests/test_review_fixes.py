"""Review fixes: each error says what it is, BOM files read, JSONL line numbers, no silent integer -> name
guess, normal file modes, typed adapter-config checks, no NaN adapter, the text_pairs config field."""

from __future__ import annotations

from pathlib import Path

import pytest

from ltuning.data import read_table
from ltuning.errors import DataError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------- 1. errors say what they are
def test_missing_file_folder_and_non_object_rows_are_not_invalid_json(tmp_path, capsys):
    from ltuning.cli import main

    assert main(["train", "--train-file", "nope.csv", "--text-column", "text", "--label-column", "label"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: file not found: nope.csv"]
    with pytest.raises(DataError) as e:
        read_table(tmp_path, ["text"], "label")
    assert "is a folder" in str(e.value) and "JSON" not in str(e.value)
    (tmp_path / "rows.jsonl").write_text('{"text": "a", "label": "x"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3 is not a JSON object") as e:
        read_table(tmp_path / "rows.jsonl", ["text"], "label")
    assert "invalid JSON" not in str(e.value)
    (tmp_path / "rows.json").write_text('[{"text": "a", "label": "x"}, "b"]', encoding="utf-8")
    with pytest.raises(DataError, match=r"item 2 of the array is not a JSON object"):
        read_table(tmp_path / "rows.json", ["text"], "label")


# ---------------------------------------------------------------------- 2. byte-order mark
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_utf8_bom_files_read(tmp_path, fmt):
    if fmt == "jsonl":
        body = '{"text": "a good film", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
    else:
        sep = "," if fmt == "csv" else "\t"
        body = f"text{sep}label\na good film{sep}pos\nbad{sep}neg\n"
    p = tmp_path / f"bom.{fmt}"
    p.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    ds = read_table(p, ["text"], "label")
    assert ds.texts == ["a good film", "bad"] and ds.label_names == ["neg", "pos"] and ds.labels == [1, 0]


# ---------------------------------------------------------------------- 3. JSONL line numbers
def test_jsonl_parse_error_names_the_files_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: invalid JSON at line 4"):
        read_table(p, ["text"], "label")
    p.write_text('{"text": "a", "label": "x"}\n{"text": "a", "label": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"invalid JSON at line 2"):
        read_table(p, ["text"], "label")


# ---------------------------------------------------------------------- 4. integer labels vs named labels
def _csv(path: Path, rows) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


def test_integer_validation_labels_against_named_training_labels_are_an_error(tmp_path):
    train = read_table(_csv(tmp_path / "train.csv", [("a", "neg"), ("b", "neu"), ("c", "pos")]), ["text"], "label")
    val = _csv(tmp_path / "val.csv", [("a", "0"), ("b", "1")])
    with pytest.raises(DataError) as e:
        read_table(val, ["text"], "label", train.label_names)
    msg = str(e.value)
    assert "\n" not in msg and "val.csv" in msg and "['0', '1']" in msg and "['neg', 'neu', 'pos']" in msg
    # after subset (what the CLI does) too
    with pytest.raises(DataError, match="are integers"):
        read_table(val, ["text"], "label", train.subset(2, seed=0).label_names)
    # names still map by name
    ok = _csv(tmp_path / "ok.csv", [("a", "pos"), ("b", "neg")])
    assert read_table(ok, ["text"], "label", train.label_names).labels == [2, 0]


def test_integer_labels_still_map_by_index_where_documented(tmp_path):
    val = _csv(tmp_path / "val.csv", [("a", "0"), ("b", "1"), ("c", "1.0")])
    # an explicit (task's) label set: GLUE files hold 0/1
    assert read_table(val, ["text"], "label", ["negative", "positive"]).labels == [0, 1, 1]
    # integer training labels: the same integers
    train = read_table(_csv(tmp_path / "t.csv", [("a", "1"), ("b", "0")]), ["text"], "label")
    assert train.label_names == ["0", "1"]
    assert read_table(val, ["text"], "label", train.label_names).labels == [0, 1, 1]
    # integer training labels that are not indices: an unknown integer is not in the set (no index guess)
    train = read_table(_csv(tmp_path / "s.csv", [("a", "1"), ("b", "2")]), ["text"], "label")
    with pytest.raises(DataError, match=r"label '0' is not in the label set \['1', '2'\]"):
        read_table(_csv(tmp_path / "z.csv", [("a", "0"), ("b", "1")]), ["text"], "label", train.label_names)


def test_cli_named_training_labels_with_integer_validation_file(tmp_path, capsys):
    from ltuning.cli import main

    train = _csv(tmp_path / "train.csv", [("a good film", "neg"), ("bad", "neu"), ("great", "pos")])
    val = _csv(tmp_path / "val.csv", [("a", "0"), ("b", "1")])
    assert main(["train", "--train-file", str(train), "--validation-file", str(val), "--text-column", "text",
                 "--label-column", "label", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are integers" in err[0] and "neg" in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- 5. file modes
@pytest.fixture
def tiny_model():
    from conftest import tiny_bert

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.model import LTuningModel

    return LTuningModel(Backbone(*tiny_bert(), name="tiny-bert"),
                        LTuningConfig(method="lt-prefix", label_names=["negative", "positive"]))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_get_the_normal_mode(tiny_model, tmp_path, umask):
    import os

    from ltuning.adapter import atomic_write_text, save_adapter

    old = os.umask(umask)
    try:
        folder = save_adapter(tiny_model, tmp_path / "adapter")
        atomic_write_text(tmp_path / "out" / "train_results.json", "{}\n")
    finally:
        os.umask(old)
    files = [*folder.iterdir(), tmp_path / "out" / "train_results.json"]
    assert {f.name for f in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f.name, oct(f.stat().st_mode))
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_outputs_are_not_private(tmp_path):
    """The files a training run writes (adapter, card, run config, results) under the usual umask 022."""
    import os

    from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

    from ltuning.cli import main

    model = save_tiny_bert(tmp_path / "m")
    old = os.umask(0o022)
    try:
        assert main(["train", "--model", str(model), "--train-file", str(write_csv(tmp_path / "t.csv", TRAIN)),
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


# ---------------------------------------------------------------------- 6. typed adapter config
@pytest.mark.parametrize("key,value,says", [
    ("label_length", "3", "label_length must be an integer or null"),
    ("max_length", "128", "max_length must be an integer"),
    ("max_length", 1.5, "max_length must be an integer"),
    ("label_length", True, "label_length must be an integer or null"),
    ("label_names", None, "label_names must be a list of strings"),
    ("label_names", "negative", "label_names must be a list of strings"),
    ("label_texts", [1, 2], "label_texts must be a list of strings"),
    ("method", 3, "method must be a string"),
    ("prefix_pooling", None, "prefix_pooling must be a string"),
    ("text_pairs", "yes", "text_pairs must be true, false or null"),
    ("backbone_fingerprint", 7, "backbone_fingerprint must be a string or null"),
])
def test_corrupted_adapter_config_names_the_key(tiny_model, tmp_path, key, value, says):
    import json

    from ltuning.adapter import CONFIG_NAME, load_adapter, read_adapter_config, save_adapter
    from ltuning.errors import AdapterError

    folder = save_adapter(tiny_model, tmp_path / "adapter")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(AdapterError) as e:
        read_adapter_config(folder)
    assert says in str(e.value) and CONFIG_NAME in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(AdapterError, match=says):
        load_adapter(folder, backbone=tiny_model.backbone)


# ---------------------------------------------------------------------- 7. no NaN adapter
@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

    root = tmp_path_factory.mktemp("nan")
    return {"model": str(save_tiny_bert(root / "m")), "train": str(write_csv(root / "t.csv", TRAIN)),
            "valid": str(write_csv(root / "v.csv", VALID))}


def _train_argv(f, out, *extra, validation=True):
    return ["train", "--model", f["model"], "--train-file", f["train"],
            *(["--validation-file", f["valid"]] if validation else []), "--text-column", "text",
            "--label-column", "label", "--method", "lt-prompt", "--max-steps", "6", "--batch-size", "4",
            "--eval-every", "2", "--output-dir", str(out), "--quiet", *extra]


@pytest.mark.parametrize("validation", [True, False])
def test_huge_learning_rate_with_skip_nonfinite_saves_no_nan_adapter(run_files, tmp_path, capsys, validation):
    from ltuning.cli import main

    out = tmp_path / "out"
    rc = main(_train_argv(run_files, out, "--learning-rate", "1e30", "--skip-nonfinite", "--checkpoint-every", "2",
                           validation=validation))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: "), err
    assert "no adapter is saved" in err[0] and "--learning-rate" in err[0]
    if validation:
        assert "no evaluation had a finite validation loss" in err[0]
    assert not (out / "adapter_model.safetensors").exists() and not (out / "train_results.json").exists()
    # the checkpoints written on the way are strict JSON (a NaN validation loss is null)
    import json

    for state in out.glob("checkpoints/step-*/trainer_state.json"):
        text = state.read_text()
        assert "NaN" not in text and "Infinity" not in text, state
        ts = json.loads(text)
        if validation:
            assert any(r["loss"] is None and r.get("nonfinite") for r in ts["history"])


def test_nan_evaluation_is_never_the_best(run_files, tmp_path, monkeypatch):
    """One evaluation with a NaN loss among finite ones: recorded as null, never kept; the rest train on."""
    import json

    import ltuning.train as train_mod

    orig = train_mod.evaluate
    calls = [0]

    def evaluate(*a, **k):
        calls[0] += 1
        m = orig(*a, **k)
        if calls[0] == 2:  # step 4: a NaN loss with the best accuracy there could be
            m = {**m, "loss": float("nan"), "accuracy": 1.0}
        return m

    monkeypatch.setattr(train_mod, "evaluate", evaluate)
    from ltuning.cli import main

    out = tmp_path / "out"
    assert main(_train_argv(run_files, out)) == 0
    text = (out / "train_results.json").read_text()
    assert "NaN" not in text
    res = json.loads(text)
    assert res["best_step"] != 4 and res["best_metrics"]["loss"] is not None
    assert [r["loss"] is None for r in res["history"]] == [False, True, False]


def test_history_jsonl_and_result_dict_are_strict_json():
    import json

    from ltuning.train import TrainResult, history_jsonl

    r = TrainResult(best_step=2, best_metrics={"loss": 0.5},
                    history=[{"step": 2, "loss": float("nan"), "train_loss": float("inf")}])
    assert json.loads(history_jsonl(r)) == {"step": 2, "loss": None, "train_loss": None}
    json.dumps(r.to_dict(), allow_nan=False)


# ---------------------------------------------------------------------- 8. text_pairs
@pytest.mark.parametrize("pairs", [True, False])
def test_training_records_whether_texts_are_pairs(tiny_model, tmp_path, pairs):
    import json

    from ltuning.adapter import CONFIG_NAME, read_adapter_config, save_adapter
    from ltuning.data import TextDataset
    from ltuning.train import TrainArgs, train

    texts = [("it rains", "it is wet"), ("it rains", "it is dry"), ("a good film", "the film is good"),
             ("bad plot", "the plot is great")]
    data = TextDataset(texts if pairs else [p for p, _ in texts], [0, 1, 0, 1], ["negative", "positive"])
    tiny_model.config.text_pairs = not pairs  # whatever it held before, training sets it from the data
    train(tiny_model, data, None, TrainArgs(max_steps=1, batch_size=4, progress=False))
    assert tiny_model.config.text_pairs is pairs
    folder = save_adapter(tiny_model, tmp_path / "a")
    assert json.loads((folder / CONFIG_NAME).read_text())["text_pairs"] is pairs
    assert read_adapter_config(folder).text_pairs is pairs
