"""Save and load adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (trainable weights only,
never pickle). Files are written to a temporary name and renamed, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch

from . import __version__, card
from .backbones import Backbone, load_backbone
from .config import LTuningConfig
from .errors import AdapterError, ConfigError
from .methods import get_method
from .model import LTuningModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (same folder, so the rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def save_adapter(model: LTuningModel, directory: str | Path, extra: dict | None = None) -> Path:
    """Write the adapter of ``model`` into ``directory``; returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    config = model.config.to_dict()
    meta = {
        "ltuning_version": __version__,
        "trainable_parameters": model.num_trainable_parameters(),
        "backbone_dims": dataclasses.asdict(model.backbone.dims),
        **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.method.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps({**config, "_meta": meta}, indent=2, sort_keys=True) + "\n")
    # The model card: what a reader of the folder (or of a hub repo made from it) needs to know.
    card_meta = {**meta, "command": meta.get("command") or card.current_command()}
    total = meta["trainable_parameters"] + sum(p.numel() for p in model.backbone.parameters())
    atomic_write_text(directory / card.CARD_NAME, card.render_card(config, card_meta, total))
    return directory


def read_adapter_config(directory: str | Path) -> LTuningConfig:
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not directory.is_dir():
        raise AdapterError(f"adapter folder not found: {directory}")
    if not path.exists():
        raise AdapterError(f"{directory} is not an adapter folder: {CONFIG_NAME} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path} must hold a JSON object")
    raw.pop("_meta", None)
    try:
        config = LTuningConfig.from_dict(raw)
        get_method(config.method)  # an unknown method is a bad adapter file, not a bad option
        return config
    except (ConfigError, TypeError, ValueError) as e:
        raise AdapterError(f"{path}: {e}") from None


def load_adapter(directory: str | Path, backbone: Backbone | None = None, model: str | None = None,
                 trust_remote_code: bool = False) -> LTuningModel:
    """Rebuild the model saved in ``directory``.

    Args:
        backbone: an already loaded backbone (else the adapter's ``base_model``, or ``model``, is loaded).
    Raises:
        AdapterError: missing or corrupt files, a backbone whose config fingerprint differs from the one
            the adapter was trained on, or weights whose names or shapes do not match.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_adapter_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.exists():
        raise AdapterError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights} is not a readable safetensors file ({e})") from None
    if backbone is None:
        backbone = load_backbone(model or config.base_model, trust_remote_code=trust_remote_code)
    # the label texts are padded to l tokens and run through the backbone: an edited l of 10^9 must not
    # allocate that much before the weights' shapes are checked
    context = getattr(backbone.model.config, "max_position_embeddings", None) or getattr(
        backbone.model.config, "n_positions", None) or 8192
    if config.label_length is not None and not (isinstance(config.label_length, int) and
                                                1 <= config.label_length <= context):
        raise AdapterError(f"{directory / CONFIG_NAME}: label_length {config.label_length!r} is not in [1, {context}]")
    if config.backbone_fingerprint and backbone.fingerprint != config.backbone_fingerprint:
        raise AdapterError(
            f"adapter {directory} was trained on backbone {config.base_model!r} (fingerprint "
            f"{config.backbone_fingerprint}), but {backbone.name!r} has fingerprint {backbone.fingerprint}; "
            "load it with the backbone it was trained on"
        )
    try:
        lt_model = LTuningModel(backbone, config)
    except ConfigError as e:
        raise AdapterError(f"{directory / CONFIG_NAME}: {e}") from None
    expected = lt_model.method.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(f"{weights}: weights do not match method {config.method!r} "
                           f"(missing {missing}, unexpected {unexpected})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise AdapterError(f"{weights}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        if not torch.isfinite(state[k]).all():
            raise AdapterError(f"{weights}: {k} holds non-finite values")
    lt_model.method.load_state_dict(state)
    lt_model.eval()
    return lt_model
