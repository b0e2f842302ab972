"""Save and load adapters: ``adapter_config.json`` + ``adapter_model.safetensors`` (trainable weights only,
never pickle). Files are written to a temporary name and renamed, so a failure leaves nothing half-written.

The files themselves are read and written by :mod:`ltuning.adapter_io` (which the model uses, and which
knows nothing of the model); this module sits above :mod:`ltuning.model` and keeps the functions that take
or build a model, plus the names callers import from here.
"""

from __future__ import annotations

from pathlib import Path

from .adapter_io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config
from .backbones import Backbone
from .config import check_arg
from .fileio import atomic_write, atomic_write_text, set_normal_mode
from .model import LTuningModel

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "atomic_write", "atomic_write_text", "load_adapter", "read_adapter_config",
    "save_adapter", "set_normal_mode",
]


def save_adapter(model: LTuningModel, directory: str | Path, extra: dict | None = None,
                 overwrite: bool = False) -> Path:
    """Write the adapter of ``model`` into ``directory``; returns the folder (see
    :meth:`LTuningModel.save_pretrained`: ``overwrite`` replaces files ltuning did not write)."""
    return model.save_pretrained(directory, overwrite=overwrite, **(extra or {}))


def load_adapter(directory: str | Path, backbone: Backbone | None = None, model: str | None = None,
                 trust_remote_code: bool = False) -> LTuningModel:
    """Rebuild the model saved in ``directory``.

    Args:
        backbone: an already loaded backbone (else the adapter's ``base_model``, or ``model``, is loaded).
    Raises:
        AdapterError: missing or corrupt files, a backbone whose config fingerprint differs from the one
            the adapter was trained on, or weights whose names or shapes do not match.
    """
    check_arg(backbone is None or isinstance(backbone, Backbone), "backbone", "a loaded Backbone or None", backbone)
    return LTuningModel.from_pretrained(directory, backbone if backbone is not None else model,
                                        trust_remote_code=trust_remote_code)
