"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``<output-dir>/checkpoints/step-N/``::

    adapter_model.safetensors   the method's weights now (safetensors, never pickle)
    best_model.safetensors      the best-so-far weights (what the run saves at the end)
    optimizer.pt, scheduler.pt  AdamW and LambdaLR state dicts (tensors and numbers; loaded weights_only)
    rng_state_<rank>.pt         torch, numpy and Python RNG states of each process (loaded weights_only)
    trainer_state.json          step, PairSampler position, best step and metrics, history, train log,
                                and the options that must match on resume

It is written into ``checkpoints/.tmp-step-N`` and renamed to ``step-N`` when complete, so a run killed
at any moment leaves either a whole checkpoint or none (a stale ``.tmp-*`` folder is ignored and removed).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, WriteError

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BEST_NAME = "best_model.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SCHEDULER_NAME = "scheduler.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_DIR = re.compile(r"^\.tmp-step-(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be resumed (corrupt files, or written by a run with other options)."""


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, folder), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _entries(output_dir: str | Path) -> dict[str, list[Path]]:
    """``checkpoints/``'s entries by whose they are: ``own`` (ltuning's ``step-N`` and ``.tmp-step-N`` folders),
    ``litter`` (hidden files, such as a file browser's .DS_Store) and ``foreign`` (anything else: another
    tool's checkpoints, which ``--overwrite`` must not take for a run's)."""
    root = checkpoint_root(output_dir)
    found: dict[str, list[Path]] = {"own": [], "litter": [], "foreign": []}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        kind = ("own" if p.is_dir() and (_STEP_DIR.match(p.name) or _TMP_DIR.match(p.name)) else
                "litter" if p.name.startswith(".") and p.is_file() else "foreign")
        found[kind].append(p)
    return found


def own_entries(output_dir: str | Path) -> list[Path]:
    """ltuning's checkpoint folders in ``checkpoints/`` (complete or not): a run was there."""
    return _entries(output_dir)["own"]


def foreign_entries(output_dir: str | Path) -> list[Path]:
    """What ``checkpoints/`` holds that ltuning did not write, hidden files aside (:func:`_entries`)."""
    return _entries(output_dir)["foreign"]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: strict JSON (``allow_nan=False``) has no
    NaN or Infinity, and a NaN validation loss is recorded, not hidden."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as tensors and plain numbers (so ``weights_only`` loading works)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- save
def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_checkpoint(output_dir: str | Path, step: int, *, weights: dict[str, torch.Tensor],
                    best_weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                    scheduler, trainer_state: dict, keep: int | None = None, best_step: int | None = None,
                    accelerator=None) -> Path | None:
    """Write ``checkpoints/step-<step>`` atomically; returns it on the main process (None elsewhere).

    Every process calls this (each writes its RNG state); only the main process writes the rest, renames
    the folder and prunes old checkpoints: the ``keep`` newest are kept, and the one at ``best_step``.
    """
    from safetensors.torch import save_file

    from .fileio import error_reason, make_dirs, remove_empty, set_normal_mode

    rank = accelerator.process_index if accelerator is not None else 0
    main = accelerator is None or accelerator.is_main_process

    def barrier() -> None:
        if accelerator is not None:
            accelerator.wait_for_everyone()

    root = checkpoint_root(output_dir)
    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    created: list[Path] = []
    try:
        if main:
            created = make_dirs(root)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        torch.save(rng_state(), tmp / f"rng_state_{rank}.pt")
        barrier()
        if main:
            save_file(_cpu_state(weights), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            save_file(_cpu_state(best_weights), str(tmp / BEST_NAME), metadata={"format": "pt"})
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_NAME)
            (tmp / STATE_NAME).write_text(json.dumps(json_safe(trainer_state), indent=1, allow_nan=False) + "\n",
                                          encoding="utf-8")
            for f in tmp.iterdir():  # on disk before the rename makes the checkpoint visible
                set_normal_mode(f)  # safetensors writes 0o600 whatever the umask
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # only when a run is resumed from an older step; replace it whole
                shutil.rmtree(final)
            os.rename(tmp, final)
    except Exception as e:
        # a full disk (OSError, or the SafetensorError / RuntimeError the writers raise for it): no partial
        # folder left, the earlier checkpoints untouched
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            remove_empty(created)
        last = latest_checkpoint(output_dir)
        raise WriteError(f"cannot write checkpoint {final}: {error_reason(e)}; "
                         + (f"the last good checkpoint is {last}" if last else "no checkpoint was written")) from e
    if main:
        prune_checkpoints(output_dir, keep, best_step)
    barrier()
    return final if main else None


def prune_checkpoints(output_dir: str | Path, keep: int | None, best_step: int | None = None) -> None:
    """Delete all but the ``keep`` newest checkpoints and the one at ``best_step``; drop stale temp folders."""
    root = checkpoint_root(output_dir)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep is None:
        return
    found = list_checkpoints(output_dir)
    newest = {s for s, _ in found[-keep:]} if keep > 0 else set()
    for s, p in found:
        if s not in newest and s != best_step:
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------- load
def _torch_load(path: Path) -> Any:
    try:
        # security: weights_only refuses arbitrary pickled objects
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file missing: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is one clear error
        raise CheckpointError(f"cannot read checkpoint file {path} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_checkpoint(folder: str | Path, rank: int = 0) -> dict[str, Any]:
    """Read a checkpoint folder: weights, best weights, optimizer, scheduler, RNG and trainer state."""
    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {folder / STATE_NAME} ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{folder / STATE_NAME} is not a trainer state")
    rng_path = folder / f"rng_state_{rank}.pt"
    if not rng_path.exists():  # resumed on more processes than were saved: reuse the main process's
        rng_path = folder / "rng_state_0.pt"
    return {
        "trainer_state": state,
        "weights": _load_weights(folder / WEIGHTS_NAME),
        "best_weights": _load_weights(folder / BEST_NAME),
        "optimizer": _torch_load(folder / OPTIMIZER_NAME),
        "scheduler": _torch_load(folder / SCHEDULER_NAME),
        "rng": _torch_load(rng_path),
    }
