"""Nothing lost, nothing silently wrong (issue 14): no command writes over a file it did not create or reads
(a user's README.md, evaluate's own input), --resume never replaces a finished run, the backbone guard
(a missing fingerprint, other weights of the same shape, a relative base_model), unreadable inputs and
non-UTF-8 arguments end in one line, a full disk leaves the last good state and no partial files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import TRAIN, VALID, save_tiny_bert, write_csv

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.cli import main
from ltuning.errors import AdapterError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    tiny = save_tiny_bert(root / "tiny-bert")
    # the same architecture with other weights (another seed)
    other = root / "other-weights"
    shutil.copytree(tiny, other)
    from transformers import BertModel

    torch.manual_seed(1)
    BertModel(BertModel.config_class.from_pretrained(tiny)).save_pretrained(other)
    train = write_csv(root / "train.csv", TRAIN)
    valid = write_csv(root / "valid.csv", VALID)
    adapter = root / "adapter"
    assert main(train_argv(tiny, train, adapter)) == 0
    return {"root": root, "tiny": tiny, "other": other, "train": train, "valid": valid, "adapter": adapter}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.chdir(tmp_path)


def train_argv(model, train, out, *extra):
    return ["train", "--model", str(model), "--train-file", str(train), "--text-column", "text", "--label-column",
            "label", "--max-steps", "2", "--batch-size", "4", "--output-dir", str(out), "--quiet", *extra]


def one_line(capsys, rc, match: str) -> str:
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def copy_adapter(env, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(env["adapter"], dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


# ---------------------------------------------------------------------- 4, 5: the backbone guard
@pytest.mark.parametrize("value", [..., None, ""])
def test_a_missing_or_null_fingerprint_is_refused(env, tmp_path, value):
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_fingerprint=value)
    with pytest.raises(AdapterError, match="backbone_fingerprint is missing"):
        load_adapter(folder, model=str(env["tiny"]))


def test_an_adapter_refuses_other_weights_of_the_same_shape(env, tmp_path, capsys):
    assert load_adapter(env["adapter"], model=str(env["tiny"])) is not None
    with pytest.raises(AdapterError, match="other weights"):
        load_adapter(env["adapter"], model=str(env["other"]))
    rc = main(["predict", "--adapter", str(env["adapter"]), "--model", str(env["other"]), "a good film"])
    one_line(capsys, rc, "other weights")


def test_the_weights_check_holds_across_dtypes(env):
    from transformers import BertModel

    from ltuning.backbones import same_weights, weights_sample

    model = BertModel.from_pretrained(env["tiny"])
    sample = weights_sample(model)
    assert len(sample) == 32
    for dtype in (torch.bfloat16, torch.float16):
        assert same_weights(sample, weights_sample(model.to(dtype)))
    assert not same_weights(sample, weights_sample(BertModel.from_pretrained(env["other"])))


def test_an_adapter_without_a_weights_sample_loads_with_a_warning(env, tmp_path):
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_weights=...)
    with pytest.warns(UserWarning, match="cannot check"):
        load_adapter(folder, model=str(env["other"]))  # an old adapter: the architecture check only


def test_a_relative_base_model_is_never_read_from_the_working_directory(env, tmp_path, monkeypatch, capsys):
    # an adapter trained with a relative --model names the folder by its absolute path
    monkeypatch.chdir(env["root"])
    out = tmp_path / "rel"
    assert main(train_argv("tiny-bert", env["train"], out)) == 0
    base = json.loads((out / CONFIG_NAME).read_text())["base_model"]
    assert base == str(env["tiny"].resolve())
    # an adapter (legacy or edited) that names a relative path is not resolved against the current folder
    edit_config(out, base_model="tiny-bert")
    with pytest.raises(AdapterError, match="relative path"):
        load_adapter(out)
    rc = main(["predict", "--adapter", str(out), "a good film"])
    one_line(capsys, rc, "--model")
    assert load_adapter(out, model="tiny-bert") is not None  # named by the user: fine
