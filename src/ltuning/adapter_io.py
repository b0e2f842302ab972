"""The adapter folder's files, without the model: ``adapter_config.json`` + ``adapter_model.safetensors``
(trainable weights only, never pickle) + the ``README.md`` model card. Reading checks every field and
tensor; writing goes through :mod:`ltuning.fileio`, so a failure leaves nothing half-written.

:class:`~ltuning.model.LTuningModel` writes and loads its adapter through these functions;
:mod:`ltuning.adapter` keeps the model-level ``save_adapter`` / ``load_adapter``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import card
from .backbones import TOKENIZER_DIFFERS, TOKENIZER_REMEDY, same_weights, settings_differ
from .config import (
    ADAPTER_CONFIG_NAME,
    TRAINER_WEIGHTS_NAME,
    TRAINER_WEIGHTS_PREFIX,
    LTuningConfig,
    PrefixPooling,
    TextPooling,
    config_json,
    config_source,
)
from .errors import AdapterError, ConfigError
from .fileio import atomic_write_many
from .labels import check_label_length
from .methods import get_method

if TYPE_CHECKING:
    from .backbones import Backbone

CONFIG_NAME = ADAPTER_CONFIG_NAME
WEIGHTS_NAME = "adapter_model.safetensors"
#: A marker for transformers: ``pipeline(task, model=<folder>)`` reads a folder's config.json before anything
#: else (ltuning.pipelines registers this model_type); ltuning itself never reads it.
HF_CONFIG_NAME = "config.json"
#: every file :func:`write_adapter` writes (the commands that must never read what they write check these)
ADAPTER_FILES = (WEIGHTS_NAME, card.CARD_NAME, HF_CONFIG_NAME, CONFIG_NAME)
HF_MODEL_TYPE = "ltuning"


#: Where train_results.json and evaluate's metrics record the weights they were written for (report compares)
WEIGHTS_DIGEST_KEY = "adapter_weights_sha256"


def weights_digest(directory: str | Path) -> str | None:
    """16 hex digits of the sha256 of an adapter folder's weights file (a Trainer checkpoint's
    model.safetensors when there is no adapter_model.safetensors); None when there is neither."""
    import hashlib

    for name in (WEIGHTS_NAME, TRAINER_WEIGHTS_NAME):
        path = Path(directory) / name
        if path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()[:16]
    return None


def hf_config(config: dict) -> dict:
    """The ``config.json`` written beside an adapter: the model_type transformers dispatches on, and what the
    adapter is for a reader (the adapter itself is ``adapter_config.json``)."""
    return {"model_type": HF_MODEL_TYPE, "ltuning_method": config["method"], "base_model": config["base_model"],
            "label_names": list(config["label_names"])}


def is_ltuning_hf_config(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` that :func:`write_adapter` wrote (not someone else's)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type") == HF_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def is_ltuning_config(path: str | Path) -> bool:
    """Whether ``path`` holds an ``adapter_config.json`` that ltuning wrote (a JSON object with its keys),
    not another library's (peft's has the same file name) or a user's file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and {"method", "label_names", "base_model"} <= set(raw)


def foreign_adapter_files(directory: str | Path) -> list[Path]:
    """The files in ``directory`` that writing an adapter there would replace and that no ltuning run wrote:
    a config that is not ltuning's (and the weights beside it), a README.md that is not ltuning's card, or
    anything that is not a plain file at those names."""
    directory = Path(directory)
    config, weights, readme = directory / CONFIG_NAME, directory / WEIGHTS_NAME, directory / card.CARD_NAME
    ours = is_ltuning_config(config)
    found = [config] if config.exists() and not ours else []
    if weights.exists() and not (ours and weights.is_file()):
        found.append(weights)
    if readme.exists() and not card.is_card(readme):
        found.append(readme)
    marker = directory / HF_CONFIG_NAME
    if marker.exists() and not is_ltuning_hf_config(marker):  # a user's or a transformers model's config.json
        found.append(marker)
    return found


def write_adapter(directory: str | Path, config: dict, state: Mapping[str, torch.Tensor], meta: dict,
                  total_parameters: int, overwrite: bool = False) -> Path:
    """Write an adapter folder: ``config`` (+ ``meta`` under ``_meta``), the method's ``state`` and the model
    card (``total_parameters``: backbone + trainable); returns the folder.

    The four files (with the ``config.json`` marker for ``transformers.pipeline``) are written as one (:func:`ltuning.fileio.atomic_write_many`): a failure (a full disk)
    leaves the folder as it was. A file at those names that ltuning did not write (a user's README.md,
    another library's adapter) is never replaced unless ``overwrite``.

    Raises:
        AdapterError: ``directory`` holds files ltuning did not write (without ``overwrite``).
        WriteError: a file could not be written; nothing was changed.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise AdapterError(f"cannot save an adapter into {directory}: it is a file, not a folder")
    foreign = [] if overwrite else foreign_adapter_files(directory)
    if foreign:
        raise AdapterError(f"{directory} holds {', '.join(p.name for p in foreign)}, which ltuning did not write; "
                           "move it away or choose another folder (--overwrite, or overwrite=True, replaces it)")
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    # The model card: what a reader of the folder (or of a hub repo made from it) needs to know.
    card_meta = {**meta, "command": meta.get("command") or card.current_command()}
    config_text = config_json({**config, "_meta": meta}, indent=2) + "\n"
    card_text = card.render_card(config, card_meta, total_parameters)
    atomic_write_many([
        (directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"})),
        (directory / card.CARD_NAME, lambda p: p.write_text(card_text, encoding="utf-8")),
        (directory / HF_CONFIG_NAME, lambda p: p.write_text(json.dumps(hf_config(config), indent=2) + "\n",
                                                           encoding="utf-8")),
        (directory / CONFIG_NAME, lambda p: p.write_text(config_text, encoding="utf-8")),  # last: marks a whole adapter
    ])
    return directory


def read_adapter_config(directory: str | Path) -> LTuningConfig:
    """The adapter's config (:meth:`LTuningConfig.from_pretrained`: ``adapter_config.json``, or the config
    inside a Trainer checkpoint), with the method's own checks: an unknown method, or an option it refuses, is
    a bad adapter file, said before a backbone is loaded."""
    config = LTuningConfig.from_pretrained(directory)
    try:
        method = get_method(config.method)
        if "prefix_pooling" not in method.weight_options:  # recorded, and unused, before other methods refused it
            config.prefix_pooling = PrefixPooling.RAW
        method.check_config(config)
    except (ConfigError, TypeError, ValueError) as e:
        raise AdapterError(f"{config_source(directory)}: {e}") from None
    return config


def read_adapter_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors`` (names and shapes are checked by
    :func:`check_adapter_weights` against the method built from the config)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    trainer = config_source(directory).name == TRAINER_WEIGHTS_NAME
    if trainer:
        weights = directory / TRAINER_WEIGHTS_NAME
    elif not weights.exists():
        raise AdapterError(f"{directory} has no {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{weights} is not a readable safetensors file ({e})") from None
    if not trainer:
        return state
    # a Trainer checkpoint of ltuning.hf.LTuningForTrainer: the method's weights under "model.method."
    state = {k[len(TRAINER_WEIGHTS_PREFIX):]: v for k, v in state.items() if k.startswith(TRAINER_WEIGHTS_PREFIX)}
    if not state:
        raise AdapterError(f"{weights} holds no adapter weights (no '{TRAINER_WEIGHTS_PREFIX}*' tensors): it was not "
                           "written by a Trainer training ltuning.hf.LTuningForTrainer")
    return state


def fit_config_to_backbone(directory: str | Path, config: LTuningConfig, backbone: Backbone) -> None:
    """Check the adapter's config against the backbone it is loaded onto (label_length within the
    backbone's context, the backbone fingerprint) and resolve a legacy ``text_pooling="auto"``."""
    directory = Path(directory)
    # the label texts are padded to l tokens and run through the backbone: an edited l of 10^9 must not
    # allocate that much before the weights' shapes are checked
    try:
        check_label_length(backbone, config.label_length)
    except ConfigError as e:
        raise AdapterError(f"{config_source(directory)}: {e}") from None
    if config.text_pooling == TextPooling.AUTO:
        # Adapters now save the resolved pooling; "auto" comes from an adapter saved before auto followed
        # sentence-transformers folders, and was trained with the pooler / [CLS] / last token.
        config.text_pooling = backbone.resolve_pooling(TextPooling.AUTO, follow_folder=False)
    if not config.backbone_fingerprint:
        # every adapter ltuning wrote names its backbone's fingerprint: without it nothing is checked
        raise AdapterError(f"{config_source(directory)}: backbone_fingerprint is missing; it names the backbone the "
                           "adapter was trained on: restore the file, or train the adapter again")
    if backbone.fingerprint != config.backbone_fingerprint:
        raise AdapterError(
            f"adapter {directory} was trained on backbone {config.base_model!r} (fingerprint "
            f"{config.backbone_fingerprint}), but {backbone.name!r} has fingerprint {backbone.fingerprint}; "
            "load it with the backbone it was trained on"
        )
    changed = settings_differ(config.backbone_settings, backbone.settings)
    if changed:
        raise AdapterError(
            f"adapter {directory} was trained on backbone {config.base_model!r} with other settings than "
            f"{backbone.name!r} has (same architecture and shapes; {'; '.join(changed)}); load it with the "
            f"backbone (config and tokenizer) it was trained on{TOKENIZER_REMEDY if TOKENIZER_DIFFERS in changed else ''}"
        )
    if config.backbone_weights is None:
        warnings.warn(f"adapter {directory} was saved before ltuning recorded its backbone's weights: it cannot "
                      f"check that {backbone.name!r} has the weights it was trained on", UserWarning, stacklevel=3)
    elif backbone.weights_sample is not None and not same_weights(config.backbone_weights, backbone.weights_sample):
        raise AdapterError(
            f"adapter {directory} was trained on other weights than those of {backbone.name!r} (same architecture, "
            f"different values); load it with the backbone it was trained on ({config.base_model!r})"
        )


def check_adapter_weights(directory: str | Path, method: str, expected: Mapping[str, torch.Tensor],
                          state: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights whose names or shapes differ from the method's ``expected`` state dict, or that hold
    non-finite values."""
    weights = Path(directory) / WEIGHTS_NAME
    if config_source(directory).name == TRAINER_WEIGHTS_NAME:  # a Trainer checkpoint
        weights = Path(directory) / TRAINER_WEIGHTS_NAME
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterError(f"{weights}: weights do not match method {method!r} "
                           f"(missing {missing}, unexpected {unexpected})")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise AdapterError(f"{weights}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        if not torch.isfinite(state[k]).all():
            raise AdapterError(f"{weights}: {k} holds non-finite values")
