"""Which signals stop a launch, and how they unwind the launcher.

SIGTERM always stops a launch: it is what schedulers, systemd, docker and Kubernetes send. SIGINT
and SIGHUP stop it too, unless they were ignored when they arrived here: a shell starts the
background jobs of a script with SIGINT ignored (so Ctrl-C stops only the foreground) and nohup
starts its command with SIGHUP ignored (so closing the terminal stops nothing). projectrun keeps
that promise for itself and for the entry point, which inherits the ignored signal, as every Unix
program does (Python itself leaves an ignored SIGINT ignored). ``kill -TERM`` still stops such a run.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

#: The signals that can stop a launch.
STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so cleanup runs as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def ignored(signum: int) -> bool:
    """True when the process was told to ignore ``signum`` (SIGTERM never counts)."""
    return signum != signal.SIGTERM and signal.getsignal(signum) is signal.SIG_IGN


def stopping() -> tuple[int, ...]:
    """The signals that stop a launch in this process right now."""
    return tuple(s for s in STOPPING if not ignored(s))


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def raising() -> Iterator[None]:
    """SIGTERM (and SIGHUP unless ignored) raise :class:`Terminated`, as Ctrl-C raises
    KeyboardInterrupt, so ``finally`` blocks (kill the installer, remove a half-built env, end
    the run) run for them too. Only the main thread can handle signals: elsewhere a no-op."""
    if not in_main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in stopping() if s != signal.SIGINT}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def deferred() -> Iterator[None]:
    """While the run's end is written, a further signal must not leave it RUNNING: ignore them."""
    if not in_main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOPPING}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
