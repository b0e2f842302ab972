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
from .backbones import Backbone
from .config import LTuningConfig, TextPooling
from .errors import AdapterError, ConfigError
from .loading import load_backbone
from .methods import get_method
from .model import LTuningModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def _umask() -> int:
    """The process's umask (read from /proc where it can be, so no other thread sees it changed)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_normal_mode(path: str | Path) -> None:
    """Give ``path`` the mode a new file gets (0o666 less the umask). ``mkstemp`` makes files 0o600, and so
    does ``safetensors.torch.save_file`` (0.8: it writes through a private temporary file), which would
    leave adapters and checkpoints unreadable to other users and containers."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (same folder, so the rename is atomic).

    The file gets the mode any new file gets (0o666 less the umask), not ``mkstemp``'s private 0o600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        set_normal_mode(tmp)
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# adapter_config.json keys: (check, what the value must be); unknown keys are refused by LTuningConfig
_CONFIG_TYPES = {
    "method": (lambda v: isinstance(v, str), "a string"),
    "base_model": (lambda v: isinstance(v, str), "a string"),
    "label_names": (_is_str_list, "a list of strings"),
    "label_texts": (_is_str_list, "a list of strings"),
    "label_length": (lambda v: v is None or _is_int(v), "an integer or null"),
    "max_length": (_is_int, "an integer"),
    "prefix_pooling": (lambda v: isinstance(v, str), "a string"),
    "text_pooling": (lambda v: isinstance(v, str), "a string"),
    "label_position": (lambda v: isinstance(v, str), "a string"),
    "score_head": (lambda v: isinstance(v, str), "a string"),
    "text_pairs": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "backbone_fingerprint": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def _check_config_types(raw: dict, path: Path) -> None:
    """Refuse a hand-edited or corrupted config field by its type, naming the file and the key (the
    config's own checks then compare values: a string label_length would fail there with a TypeError)."""
    for key, value in raw.items():
        check = _CONFIG_TYPES.get(key)
        if check is not None and not check[0](value):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise AdapterError(f"{path}: {key} must be {check[1]}, got {shown}")


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
    _check_config_types(raw, path)
    # Adapters saved before score_head existed were trained with the paper's head.
    raw.setdefault("score_head", "paper")
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
    context = backbone.max_label_tokens()
    if config.label_length is not None and not (isinstance(config.label_length, int) and
                                                1 <= config.label_length <= context):
        raise AdapterError(f"{directory / CONFIG_NAME}: label_length {config.label_length!r} is not in [1, {context}]")
    if config.text_pooling == TextPooling.AUTO:
        # Adapters now save the resolved pooling; "auto" comes from an adapter saved before auto followed
        # sentence-transformers folders, and was trained with the pooler / [CLS] / last token.
        config.text_pooling = backbone.resolve_pooling(TextPooling.AUTO, follow_folder=False)
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
