"""Atomic file writes: a file is written to a temporary name in its folder and renamed, so a failure leaves
nothing half-written; the file gets the mode any new file gets (0o666 less the umask). A failed write (a full
disk: ``OSError``, or the ``SafetensorError`` / ``RuntimeError`` a library raises for it) removes its
temporary files, and a folder it created, and raises :class:`~ltuning.errors.WriteError`."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import WriteError


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


def error_reason(e: BaseException) -> str:
    """The one-line reason of a failed write (the OS message for an OSError: "No space left on device")."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def make_dirs(folder: Path) -> list[Path]:
    """``folder.mkdir(parents=True)``; returns the folders it created, deepest first (for :func:`remove_empty`)."""
    created, p = [], folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove the given folders that are empty (deepest first): a failed write leaves no empty folder behind."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            break


def atomic_write_many(files: Sequence[tuple[Path, Callable[[Path], object]]]) -> None:
    """Write several files as one: each ``write(tmp_path)`` into a temporary file beside its ``path``, then,
    when all are written, each renamed onto its path (same folder: atomic). If any write fails, every
    temporary file is removed, no path is touched, and folders made for them are removed again. (A rename
    that fails after earlier ones succeeded cannot undo them: the error then names the files replaced.)

    Files get the mode any new file gets (0o666 less the umask), not ``mkstemp``'s private 0o600.

    Raises:
        WriteError: a write failed (its cause chained), e.g. on a full disk.
    """
    created: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    replaced: list[Path] = []
    path = None
    try:
        for path, write in files:
            path = Path(path)
            created += make_dirs(path.parent)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            staged.append((Path(tmp), path))
            write(Path(tmp))
            set_normal_mode(tmp)
        for tmp, path in staged:
            os.replace(tmp, path)
            replaced.append(path)
    except BaseException as e:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        remove_empty(created)
        if isinstance(e, Exception) and not isinstance(e, WriteError):
            # a rename failing after others succeeded (rare: the data is already on disk) leaves a mix
            outcome = "nothing was written there" if not replaced else (
                f"{', '.join(p.name for p in replaced)} already replaced, the other files left as they were")
            raise WriteError(f"cannot write {path}: {error_reason(e)}; {outcome}") from e
        raise


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename tmp_path to ``path`` (same folder, so the rename is atomic); see
    :func:`atomic_write_many`."""
    atomic_write_many([(Path(path), write)])


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))
