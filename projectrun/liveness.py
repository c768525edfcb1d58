"""Who launched a run, recorded so a later projectrun can tell whether that launcher still lives.

A launch killed with SIGKILL (or a reboot) leaves its run RUNNING with nobody to end it. Each run
carries the launcher's host, pid and identity (the kernel's boot id and the process start time,
so a reused pid or a reboot is not mistaken for the same process). Only runs launched on this
host can be judged; others are reported, never changed.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TAG_HOST = "projectrun.launcher.host"
TAG_PID = "projectrun.launcher.pid"
TAG_IDENTITY = "projectrun.launcher.identity"
TAG_RECONCILED = "projectrun.reconciled"
#: where the launcher keeps the run's output until the run ends: a reconcile uploads what a
#: killed launcher left there, so its output is not lost with it
TAG_LOG = "projectrun.launcher.log"

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time since boot): None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def identity(pid: int | None = None) -> str:
    """``boot-id:start-ticks`` of a process ("" where /proc is missing: pid checks only)."""
    pid = os.getpid() if pid is None else pid
    ticks = _start_ticks(pid)
    return f"{_boot_id()}:{ticks}" if ticks and _boot_id() else ""


def launcher_tags() -> dict[str, str]:
    """The tags that let ``runs reconcile`` judge this process later."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid()), TAG_IDENTITY: identity()}


@dataclass(frozen=True)
class Verdict:
    state: str  # ALIVE, DEAD or UNKNOWN
    reason: str


def judge(tags: Mapping[str, str]) -> Verdict:
    """Whether the launcher named by a run's tags is still running."""
    host, pid_text, recorded = tags.get(TAG_HOST), tags.get(TAG_PID, ""), tags.get(TAG_IDENTITY, "")
    if not host or not pid_text.isdigit():
        return Verdict(UNKNOWN, "not launched by projectrun (no launcher tags)")
    if host != socket.gethostname():
        return Verdict(UNKNOWN, f"launched on {host}, which this host cannot check")
    pid = int(pid_text)
    boot, _, ticks = recorded.partition(":")
    if boot and boot != _boot_id():
        return Verdict(DEAD, f"its launcher (pid {pid} on {host}) ran before this host rebooted")
    now = _start_ticks(pid)
    if now is None and not _pid_exists(pid):
        return Verdict(DEAD, f"its launcher (pid {pid} on {host}) is gone")
    if ticks and now is not None and now != ticks:
        return Verdict(DEAD, f"its launcher (pid {pid} on {host}) is gone; the pid is reused")
    return Verdict(ALIVE, f"its launcher (pid {pid} on {host}) is running")


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
