"""Run the entry point: its own process group, live output teed to a log, signals forwarded.

The child gets a new session so a signal can stop its whole tree (a shell, python, any workers)
with one ``killpg``; projectrun forwards SIGINT/SIGTERM/SIGHUP there, escalates to SIGKILL after a
grace period (``PROJECTRUN_KILL_GRACE``), and reports which signal ended the run so the caller can
mark it KILLED. The handlers are in place before the child starts, so a signal that arrives while
it starts still reaches it; a signal ignored when projectrun started stays ignored (see
``interrupts``).
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from projectrun import interrupts, settings
from projectrun.envs import Invocation

GRACE_ENV_VAR = settings.KILL_GRACE
DEFAULT_GRACE = settings.DEFAULT_KILL_GRACE


def grace_seconds() -> float:
    """Seconds between forwarding a signal and SIGKILL of the group (``PROJECTRUN_KILL_GRACE``)."""
    return settings.current().kill_grace


@dataclass(frozen=True)
class Outcome:
    returncode: int
    #: the signal projectrun received and forwarded (or a cancel), if the run was interrupted
    signal: int | None = None
    #: the run was stopped because it exceeded its timeout
    timed_out: bool = False


def _pump(src: IO[bytes], dst: IO[bytes] | None, log: IO[bytes], lock: threading.Lock) -> None:
    for chunk in iter(lambda: src.read1(65536), b""):  # type: ignore[attr-defined]
        if dst is not None:
            try:
                dst.write(chunk)
                dst.flush()
            except (OSError, ValueError):  # our own stdout went away; keep logging
                dst = None
        with lock:
            log.write(chunk)
            log.flush()
    src.close()


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(invocation: Invocation, log_path: Path, echo: bool = True,
        cancel: threading.Event | None = None, timeout: float | None = None) -> Outcome:
    """Run what the environment made of the entry point and wait for it.

    ``cancel`` lets a scheduler in another thread stop the run as a signal would (worker threads
    cannot install signal handlers); ``timeout`` stops it after that many seconds. Signals go to
    the child's process group, or to ``invocation.stop`` when the environment has its own way
    (a container); ``invocation.cleanup`` runs once the child is gone, with its exit status.
    """
    returncode: int | None = None
    try:
        outcome = _run(invocation, log_path, echo, cancel, timeout)
        returncode = outcome.returncode
        return outcome
    finally:
        if invocation.cleanup is not None:
            invocation.cleanup(returncode)


class _Stopper:
    """What stops the child: signals (forwarded, the second one as SIGKILL), a cancel from another
    thread, a timeout; after the grace period the group is killed."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.received: list[int] = []  # signal numbers, in the order they arrived
        self.timed_out = False
        self.deliver: Any = None
        self.deadline: float | None = None

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.deliver is not None:  # a second signal means "now": skip the grace period
            self.deliver(signal.SIGKILL if len(self.received) > 1 else signum)

    def attach(self, deliver: Any) -> None:
        """The child exists now; a signal that came while it was starting is delivered at once."""
        self.deliver = deliver
        if self.received:
            deliver(signal.SIGKILL if len(self.received) > 1 else self.received[0])

    def check(self, cancel: threading.Event | None, timeout: float | None, started: float) -> None:
        """Called while the child runs: start stopping it if asked to, escalate when it is late."""
        if cancel is not None and cancel.is_set() and not self.received:
            self.received.append(int(signal.SIGTERM))
            self.deliver(signal.SIGTERM)
        if timeout is not None and not self.timed_out and time.monotonic() - started > timeout:
            self.timed_out = True
            self.deliver(signal.SIGTERM)
        self._escalate()

    def _escalate(self) -> None:
        now = time.monotonic()
        if self.stopped and self.deadline is None:
            self.deadline = now + self.grace
        if self.deadline is not None and now > self.deadline:
            self.deliver(signal.SIGKILL)

    @property
    def stopped(self) -> bool:
        return bool(self.received) or self.timed_out


def _install(handler: Any) -> dict[int, Any]:
    """Our handler for each stopping signal (main thread only); ignored ones stay ignored."""
    if not interrupts.in_main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in interrupts.stopping()}


def _empty_group(pgid: int, grace: float) -> None:
    """The shell may be gone while its children linger: the group must be empty."""
    _killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + min(grace, 5)
    while group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.05)
    _killpg(pgid, signal.SIGKILL)


def _run(invocation: Invocation, log_path: Path, echo: bool,
         cancel: threading.Event | None, timeout: float | None) -> Outcome:
    stopper = _Stopper(grace_seconds())
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Handlers first: a signal while the child starts must still reach it, not orphan it.
    previous = _install(stopper.on_signal)
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                invocation.argv, cwd=invocation.cwd, env=invocation.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
            pgid = proc.pid
            stopper.attach(invocation.stop or (lambda sig: _killpg(pgid, sig)))
            pumps = _start_pumps(proc, log, echo)
            pidfd = _pidfd(proc.pid)
            try:
                while proc.poll() is None:
                    stopper.check(cancel, timeout, started)
                    _wait_exit(proc, pidfd, 0.2)
            finally:
                if pidfd is not None:
                    os.close(pidfd)
            if stopper.stopped:
                _empty_group(pgid, stopper.grace)
            for t in pumps:
                t.join(timeout=5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    first = stopper.received[0] if stopper.received else None
    return Outcome(proc.returncode, first, stopper.timed_out and first is None)


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when the child exits (Linux 5.3+), or None."""
    try:
        return int(getattr(os, "pidfd_open")(pid))  # noqa: B009 - not on every platform
    except (AttributeError, OSError):
        return None


def _wait_exit(proc: subprocess.Popen[bytes], pidfd: int | None, seconds: float) -> None:
    """Return when the child has exited or after ``seconds``, whichever is first.

    With a pidfd the wake-up is the exit itself. ``Popen.wait(timeout)`` polls with sleeps that
    grow to 50 ms, so every launch ended up to 50 ms after its entry point did."""
    if pidfd is not None:
        select.select([pidfd], [], [], seconds)
        return
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def _start_pumps(proc: subprocess.Popen[bytes], log: IO[bytes], echo: bool) -> list[threading.Thread]:
    """Tee the child's stdout and stderr to ours (when echoing) and, interleaved, to the log."""
    lock = threading.Lock()
    out = sys.stdout.buffer if echo else None
    err = sys.stderr.buffer if echo else None
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, log, lock), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, err, log, lock), daemon=True)]
    for t in pumps:
        t.start()
    return pumps
