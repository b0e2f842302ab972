"""Atomic file writes: a file is written to a temporary name in its folder and renamed, so a failure leaves
nothing half-written; the file gets the mode any new file gets (0o666 less the umask)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
