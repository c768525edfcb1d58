"""Run the entry point: its own process group, live output teed to a log, signals forwarded.

The child gets a new session so a signal can stop its whole tree (a shell, python, any workers)
with one ``killpg``; projectrun forwards SIGINT/SIGTERM/SIGHUP there, escalates to SIGKILL after a
grace period, and reports which signal ended the run so the caller can mark it KILLED.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from projectrun.envs import Invocation

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = float(os.environ.get("PROJECTRUN_KILL_GRACE", "10"))


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
    (a container); ``invocation.cleanup`` runs once the child is gone.
    """
    try:
        return _run(invocation, log_path, echo, cancel, timeout)
    finally:
        if invocation.cleanup is not None:
            invocation.cleanup()


def _run(invocation: Invocation, log_path: Path, echo: bool,
         cancel: threading.Event | None, timeout: float | None) -> Outcome:
    received: list[int] = []  # signal numbers, in the order they arrived
    timed_out = False
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            invocation.argv, cwd=invocation.cwd, env=invocation.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        pgid = proc.pid
        deliver = invocation.stop or (lambda sig: _killpg(pgid, sig))
        lock = threading.Lock()
        out = sys.stdout.buffer if echo else None
        err = sys.stderr.buffer if echo else None
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, log, lock), daemon=True),
                 threading.Thread(target=_pump, args=(proc.stderr, err, log, lock), daemon=True)]
        for t in pumps:
            t.start()

        def forward(signum: int, _frame: FrameType | None) -> None:
            # A second signal means "now": skip the grace period.
            received.append(signum)
            deliver(signal.SIGKILL if len(received) > 1 else signum)

        previous: dict[int, Any] = {}
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            for sig in FORWARDED:
                previous[sig] = signal.signal(sig, forward)
        try:
            deadline: float | None = None
            while proc.poll() is None:
                if cancel is not None and cancel.is_set() and not received:
                    received.append(int(signal.SIGTERM))
                    deliver(signal.SIGTERM)
                if timeout is not None and not timed_out and time.monotonic() - started > timeout:
                    timed_out = True
                    deliver(signal.SIGTERM)
                    deadline = time.monotonic() + GRACE_SECONDS
                if received and deadline is None:
                    deadline = time.monotonic() + GRACE_SECONDS
                if deadline is not None and time.monotonic() > deadline:
                    deliver(signal.SIGKILL)
                try:
                    proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass
            if received or timed_out:
                # The shell may be gone while its children linger: the group must be empty.
                _killpg(pgid, signal.SIGTERM)
                end = time.monotonic() + min(GRACE_SECONDS, 5)
                while group_alive(pgid) and time.monotonic() < end:
                    time.sleep(0.05)
                _killpg(pgid, signal.SIGKILL)
            for t in pumps:
                t.join(timeout=5)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return Outcome(proc.returncode, received[0] if received else None, timed_out and not received)
