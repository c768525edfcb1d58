"""Progress of an environment build: a bar on a terminal, a few plain lines otherwise.

Kinds only call ``advance``/``update``/``close`` on what ``Context.step`` gives them; the CLI decides
what that is (``for_stream``), so a sweep, a CI log and a terminal each get what suits them.
"""
from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import IO, Any, Protocol

from projectrun import report


class Progress(Protocol):
    def update(self, *, total: int | None = None, description: str | None = None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """For callers that want no display (the Python API, sweeps' workers)."""

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """Not a terminal: one line per phase ("downloading 12 packages"), nothing per item."""

    def __init__(self, description: str, write: Callable[[str], None]) -> None:
        self._description = description
        self._write = write

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        if description and description != self._description:
            self._description = description
            self._write(description)

    def advance(self, amount: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """A rich progress bar on stderr; thread-safe (rattler's reporter calls from its threads)."""

    def __init__(self, description: str, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._lock = threading.Lock()
        self._bar = Progress(TextColumn("projectrun: {task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(file=stream), transient=True)
        self._task: Any = self._bar.add_task(description, total=None)
        self._bar.start()

    def update(self, *, total: int | None = None, description: str | None = None) -> None:
        with self._lock:
            self._bar.update(self._task, total=total, description=description)

    def advance(self, amount: int = 1) -> None:
        with self._lock:
            self._bar.advance(self._task, amount)

    def close(self) -> None:
        with self._lock:
            self._bar.stop()


def for_stream(stream: IO[str] = sys.stderr,
               write: Callable[[str], None] | None = None) -> Callable[[str], Progress]:
    """The progress factory for ``stream``: bars on a TTY, plain lines through ``write`` otherwise."""
    is_tty = getattr(stream, "isatty", lambda: False)()

    def make(description: str) -> Progress:
        if is_tty:
            return BarProgress(description, stream)
        return LineProgress(description, write or report.to_stream(stream))

    return make
