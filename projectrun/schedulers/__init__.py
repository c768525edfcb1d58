"""Where a sweep's trials run: one small interface, one module per backend.

The sweep decides *what* runs and records the parent and every child run; a scheduler only
moves trial tasks to where they run and brings their outcomes back. A task is plain data (it
crosses process and machine boundaries: Ray pickles it, a Kubernetes Job would read it as
JSON) and so is its outcome. The driver creates each attempt's child run before submitting it,
so whatever happens on a worker (a lost node, a cancel before the task started) the driver
knows which run to end.

Backends, imported only when used (Ray is slow to import and optional):

* ``local``: a thread pool on this machine; each trial is its own process group.
* ``ray``: Ray tasks on a cluster (``pip install 'projectrun[ray]'``).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from projectrun.errors import UsageError
from projectrun.report import Reporter

if TYPE_CHECKING:
    from projectrun import sources, tracking
    from projectrun.sweepplan import Backend


#: backend name -> "module:class"; the CLI's --backend choices come from here.
SCHEDULERS: dict[str, str] = {
    "local": "projectrun.schedulers.local:LocalScheduler",
    "ray": "projectrun.schedulers.ray:RayScheduler",
}
#: how to get what a backend needs when its module cannot be imported
INSTALL_HINTS: dict[str, str] = {
    "ray": "pip install 'projectrun[ray]' (Ray must be installed where projectrun runs and on "
           "every node of the cluster)",
}


@dataclass(frozen=True)
class TrialTask:
    """One attempt of one trial: everything a worker on any node needs, as plain data."""

    #: the project as the driver resolved it: a local path (``path#sub``) or a git URL
    uri: str
    entry_point: str
    params: dict[str, str]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    index: int
    key: str
    attempt: int = 1
    #: the child run the driver created for this attempt (None: the worker creates it)
    run_id: str | None = None
    run_name: str | None = None
    #: the version asked for (git branch, tag or commit)
    version: str | None = None
    #: the commit the driver resolved ``version`` to (git sources): every trial runs this one
    commit: str | None = None
    env_manager: str | None = None
    #: seconds
    timeout: float | None = None
    offline: bool = False
    #: tags of the child run (parent id, trial key/index, attempt, and a backend's additions)
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialOutcome:
    """How one attempt ended, as plain data."""

    #: FINISHED, FAILED or KILLED
    status: str
    run_id: str | None
    #: why it failed (the run's error, or its exit status and last lines of output)
    message: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    #: the worker could not end the run itself (node lost, cancelled before it started, a crash):
    #: the driver ends it with ``status``
    lost: bool = False
    #: where it ran (a Ray node id; empty for the local pool)
    node: str = ""


@dataclass(frozen=True)
class Setup:
    """What the sweep tells a scheduler when it opens one (process-local objects, driver side)."""

    #: most trials in flight (``-j``)
    jobs: int
    tracking_uri: str
    #: the project as resolved on the driver: the local pool runs it in place, Ray ships it
    source: sources.Source
    tracker: tracking.Tracker
    report: Reporter


class Scheduler(Protocol):
    """Submit tasks, collect outcomes as they complete, cancel what is in flight."""

    name: str
    #: trials run on this host and see its files and its environment cache, so the driver's
    #: one environment build before the first trial serves them all
    same_host: bool

    def submit(self, task: TrialTask) -> None: ...

    def in_flight(self) -> int:
        """Tasks submitted whose outcome has not been returned by ``completed`` yet."""

    def completed(self, timeout: float) -> list[tuple[TrialTask, TrialOutcome]]:
        """Outcomes that arrived, waiting up to ``timeout`` seconds for the first one."""

    def cancel(self) -> None:
        """Stop every task in flight; their outcomes (KILLED) still come through ``completed``."""

    def close(self) -> None: ...


def get_scheduler(backend: Backend, setup: Setup) -> Scheduler:
    """Open the named backend, importing its module now (and only now)."""
    target = SCHEDULERS.get(backend.name)
    if target is None:
        raise UsageError(f"--backend {backend.name}: must be one of {', '.join(SCHEDULERS)}")
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or backend.name not in INSTALL_HINTS:
            raise
        raise UsageError(f"--backend {backend.name} needs {exc.name}, which is not installed: "
                         f"{INSTALL_HINTS[backend.name]}") from None
    scheduler: Scheduler = getattr(module, attribute)(backend, setup)
    return scheduler
