"""Security: weights load only from safetensors (a pickle never runs), checkpoint state loads with
``weights_only``, model code from a folder runs only with --trust-remote-code, and an adapter's JSON cannot
make the loader read weights from outside its own folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ltuning.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter
from ltuning.errors import AdapterError, LTuningError

MARKER = "pwned.txt"


class Evil:
    """Unpickling this runs os.system: proof that a loader executed pickle code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def model():
    from conftest import tiny_bert

    from ltuning.backbones import Backbone
    from ltuning.config import LTuningConfig
    from ltuning.model import LTuningModel

    m, tok = tiny_bert()
    return LTuningModel(Backbone(m, tok, "tiny"), LTuningConfig(method="lt-prompt", label_names=["neg", "pos"]))


def test_pickled_weights_never_run(model, tmp_path):
    folder = save_adapter(model, tmp_path / "a")
    torch.save({"x": Evil(tmp_path / MARKER)}, folder / WEIGHTS_NAME)  # a pickle under the safetensors name
    with pytest.raises(AdapterError, match="safetensors"):
        load_adapter(folder, backbone=model.backbone)
    (folder / WEIGHTS_NAME).unlink()
    torch.save({"x": Evil(tmp_path / MARKER)}, folder / "adapter_model.bin")  # nor a .bin next to it
    torch.save({"x": Evil(tmp_path / MARKER)}, folder / "pytorch_model.bin")
    with pytest.raises(AdapterError, match=WEIGHTS_NAME):
        load_adapter(folder, backbone=model.backbone)
    assert not (tmp_path / MARKER).exists()


def test_checkpoint_state_refuses_pickle(tmp_path):
    from ltuning.checkpoint import CheckpointError, load_checkpoint

    folder = tmp_path / "checkpoints" / "step-1"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 1}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    save_file({"w": torch.zeros(1)}, str(folder / "best_model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pt"):
        torch.save({"state": Evil(tmp_path / MARKER)}, folder / name)
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        load_checkpoint(folder)
    assert not (tmp_path / MARKER).exists()
    assert issubclass(CheckpointError, LTuningError)


def test_adapter_json_cannot_point_outside_its_folder(model, tmp_path, monkeypatch):
    import safetensors.torch as st

    folder = save_adapter(model, tmp_path / "a")
    own = st.load_file(str(folder / WEIGHTS_NAME))
    outside = tmp_path / "outside.safetensors"
    st.save_file({k: torch.full_like(v, 7.0) for k, v in own.items()}, str(outside))
    opened: list[Path] = []
    real = st.load_file
    monkeypatch.setattr(st, "load_file", lambda p, *a, **k: (opened.append(Path(p).resolve()), real(p, *a, **k))[1])

    config = json.loads((folder / CONFIG_NAME).read_text())
    for key, value in [("weights", str(outside)), ("weights_file", "../outside.safetensors"),
                       ("adapter_path", str(tmp_path)), ("_meta", {"weights": str(outside)})]:
        (folder / CONFIG_NAME).write_text(json.dumps({**config, key: value}))
        try:
            loaded = load_adapter(folder, backbone=model.backbone)
        except AdapterError:
            continue  # an unknown key is refused
        for k, v in loaded.method.state_dict().items():  # or ignored: the folder's own weights were loaded
            assert torch.equal(v, own[k])
    assert opened and all(p.parent == folder.resolve() for p in opened), opened
    # label texts are texts, not paths: a path-like one is encoded as words, nothing is read from it
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "label_texts": ["../../etc/passwd", str(outside)]}))
    opened.clear()
    try:
        load_adapter(folder, backbone=model.backbone)
    except AdapterError:
        pass
    assert all(p.parent == folder.resolve() for p in opened)


def test_trust_remote_code_is_off_unless_asked(monkeypatch, tmp_path):
    from ltuning import cli

    seen = []

    def fake_load_backbone(name, dtype=None, trust_remote_code=False):
        seen.append(trust_remote_code)
        raise cli_error("stop here")

    from ltuning.errors import UnsupportedModelError as cli_error

    monkeypatch.setattr("ltuning.loading.load_backbone", fake_load_backbone)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,y\n")
    base = ["train", "--model", "m", "--train-file", "t.csv", "--text-column", "text", "--label-column", "label",
            "--quiet"]
    assert cli.main(base) == 2
    assert cli.main([*base, "--trust-remote-code"]) == 2
    assert cli.main(["params", "--model", "m"]) == 2
    assert seen == [False, True, False]
    for cmd in (["evaluate", "--adapter", "a"], ["predict", "--adapter", "a"]):
        assert cli.build_parser().parse_args(cmd).trust_remote_code is False
    import inspect

    from ltuning.loading import load_backbone

    assert inspect.signature(load_backbone).parameters["trust_remote_code"].default is False
    assert inspect.signature(load_adapter).parameters["trust_remote_code"].default is False


def test_model_folder_code_does_not_run_without_flag(tmp_path, monkeypatch):
    """A model folder whose config asks for its own code: refused without --trust-remote-code."""
    from ltuning.loading import load_backbone

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}}))
    (folder / "evil.py").write_text(f"open({str(tmp_path / MARKER)!r}, 'w').write('ran')\n")
    with pytest.raises(LTuningError):
        load_backbone(str(folder))
    assert not (tmp_path / MARKER).exists()
