"""Progress that reads well in a terminal and in a log file.

On a terminal, a tqdm bar (redrawn in place with carriage returns). Anywhere else (stderr redirected to a
file or a pipe, a CI log, a notebook's captured stream), a tqdm bar would write every redraw as another
``\\r``-separated chunk: the 400-step demo log held 814 of them (98 KB). :func:`progress_bar` then returns a
:class:`LineProgress` instead: one plain line every :data:`EVERY_SECONDS` seconds or every tenth of the run,
whichever comes first, with the step, the postfix values (loss, ...), the rate and the ETA.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["EVERY_SECONDS", "LineProgress", "is_terminal", "progress_bar"]

#: Seconds between two plain progress lines (at the latest).
EVERY_SECONDS = 30.0


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class LineProgress:
    """tqdm's interface (``update``, ``set_postfix``, ``write``, ``close``) as plain lines, e.g.
    ``train lt-prefix: step 120/400 (30%) loss=0.5123 texts_per_s=41.2 | 2.58 step/s, elapsed 0:46, ETA 1:48``.

    A line is printed when ``every_steps`` steps have passed since the last one (default: a tenth of
    ``total``) or ``every_seconds`` have (checked at each update), and at :meth:`close` if the last step was
    not shown yet.
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "step", initial: int = 0,
                 every_seconds: float = EVERY_SECONDS, every_steps: int | None = None, file: IO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = self.shown_n = initial
        self.every_seconds = every_seconds
        self.every_steps = every_steps or max(1, (total or 10) // 10)
        self.file = file
        self.postfix: dict[str, Any] = {}
        self.start = self.shown_at = time.monotonic()
        self.closed = False

    def _stream(self) -> IO:
        return sys.stderr if self.file is None else self.file

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self.shown_n >= self.every_steps or now - self.shown_at >= self.every_seconds:
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = now - self.start
        done = self.n - self.start_n
        rate = done / elapsed if elapsed > 0 else 0.0
        where = f"{self.unit} {self.n}"
        if self.total:
            where += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        values = "".join(f" {k}={v}" for k, v in self.postfix.items())
        timing = f"{rate:.2f} {self.unit}/s, elapsed {_clock(elapsed)}"
        if self.total and rate > 0:
            timing += f", ETA {_clock((self.total - self.n) / rate)}"
        stream = self._stream()
        stream.write(f"{self.desc + ': ' if self.desc else ''}{where}{values} | {timing}\n")
        stream.flush()
        self.shown_n, self.shown_at = self.n, now

    def write(self, message: str) -> None:
        """A message between progress lines, to stdout (as ``tqdm.write``)."""
        print(message, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.shown_n:
            self._show(time.monotonic())
        self.closed = True


class _Silent:
    """A disabled progress: ``write`` still prints to stdout (as a disabled tqdm bar's ``write`` does)."""

    def set_postfix(self, **values: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str = "", unit: str = "step", initial: int = 0, disable: bool = False,
                 every_seconds: float = EVERY_SECONDS, every_steps: int | None = None):
    """A tqdm bar on a terminal, :class:`LineProgress` when stderr is not one; nothing shown if ``disable``
    (but ``write`` prints). Progress goes to stderr, ``write`` to stdout. All three take ``update``, ``set_postfix``, ``write`` and ``close``."""
    if disable:
        return _Silent()
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit)
    return LineProgress(total, desc, unit, initial, every_seconds=every_seconds, every_steps=every_steps)
