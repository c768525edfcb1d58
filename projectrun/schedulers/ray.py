"""The Ray backend: each trial attempt is a Ray task on a cluster (``--backend ray``).

Only Ray's public API: ``ray.init`` (with a runtime_env that ships a local project's directory),
one remote function, ``ray.wait``/``ray.get``, ``ray.cancel`` and ``ray.nodes``. The task runs
``trial.run_trial`` on the worker, so a trial launches there exactly as on the driver's machine:
the worker's own projectrun cache builds the environment once per node under its lock.

* Source: a git project runs the commit the driver resolved (each node fetches it into its own
  clone cache); a local directory is shipped with the job (Ray's ``working_dir``), so every
  trial runs the same files whatever changes on the driver meanwhile.
* Store: every node writes to the tracking store, so a file store (sqlite, ./mlruns) is refused
  unless every node runs on this host.
* Cancel: ``ray.cancel(force=False)`` raises KeyboardInterrupt in the task's main thread; the
  trial runs in a second thread, and the interrupt sets its cancel event, so the entry point's
  process group is stopped and the run ends KILLED the way a local cancel ends it.
* A lost node or worker: Ray's own task retries are off (a rerun would reuse the attempt's run);
  the driver ends that attempt's run FAILED and the sweep retries it per ``retries``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
from collections.abc import Iterable
from typing import Any

import ray
import ray.exceptions

from projectrun import tracking, trial
from projectrun.errors import NetworkError, UsageError
from projectrun.schedulers import Setup, TrialOutcome, TrialTask
from projectrun.sweepplan import Backend

TAG_NODE_ID = "projectrun.ray.node_id"
TAG_NODE_IP = "projectrun.ray.node_ip"
#: never shipped with a local project: tracking stores and version control
EXCLUDES = [".git", *tracking.RUN_RECORDS, "__pycache__"]


def local_store_problem(tracking_uri: str, hostnames: Iterable[str], here: str) -> str | None:
    """Why a file store cannot serve this cluster (None when it can, or when it is no file)."""
    is_file = tracking_uri.startswith(("sqlite:", "file:")) or (
        "://" not in tracking_uri and tracking_uri not in tracking.NAMED_STORES)
    others = sorted(set(hostnames) - {here})
    if not is_file or not others:
        return None
    return (f"--backend ray: the tracking store {tracking_uri} is a file on this machine that the "
            f"cluster's nodes on {', '.join(others)} cannot reach; set MLFLOW_TRACKING_URI to a "
            f"tracking server every node can reach (mlflow server, http://HOST:5000)")


class RayScheduler:
    name = "ray"

    def __init__(self, backend: Backend, setup: Setup) -> None:
        self._ship = setup.source.kind != "git"
        self._refs: dict[Any, TrialTask] = {}
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _connect(backend, setup)
        try:
            hostnames = [str(n["NodeManagerHostname"]) for n in ray.nodes() if n.get("Alive")]
            here = socket.gethostname()
            problem = local_store_problem(setup.tracking_uri, hostnames, here)
            if problem:
                raise UsageError(problem)
        except BaseException:
            self.close()
            raise
        self.same_host = all(h == here for h in hostnames)
        self._remote = ray.remote(_run_on_worker).options(
            num_cpus=1 if backend.num_cpus is None else backend.num_cpus,
            num_gpus=backend.num_gpus or 0, resources=dict(backend.resources) or None,
            max_retries=0, retry_exceptions=False, name="projectrun-trial")

    def submit(self, task: TrialTask) -> None:
        self._refs[self._remote.remote(task, self._ship)] = task

    def in_flight(self) -> int:
        return len(self._refs)

    def completed(self, timeout: float) -> list[tuple[TrialTask, TrialOutcome]]:
        refs = list(self._refs)
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            task = self._refs.pop(ref)
            out.append((task, _outcome(ref, task)))
        return out

    def cancel(self) -> None:
        for ref in self._refs:
            ray.cancel(ref, force=False)

    def close(self) -> None:
        """Tasks still in flight (the sweep failed) are cancelled and waited for: a worker only
        stops its entry point while the job is alive."""
        if self._refs:
            self.cancel()
            ray.wait(list(self._refs), num_returns=len(self._refs), timeout=60)
            self._refs.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()


def _connect(backend: Backend, setup: Setup) -> None:
    runtime_env: dict[str, Any] = {}
    if setup.source.kind != "git":
        runtime_env["working_dir"] = str(setup.source.directory)
        runtime_env["excludes"] = EXCLUDES
    where = backend.address or os.environ.get("RAY_ADDRESS") or "a new local Ray instance"
    try:
        ray.init(address=backend.address, runtime_env=runtime_env or None,
                 logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    except (ConnectionError, TimeoutError) as exc:
        raise NetworkError(f"--backend ray: cannot connect to the Ray cluster at {where}: "
                           f"{_first_line(exc)}; check --address (host:port of the head node, "
                           f"or auto)") from None
    except ValueError as exc:  # a bad address, a working_dir Ray refuses (too large)
        raise UsageError(f"--backend ray: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _outcome(ref: Any, task: TrialTask) -> TrialOutcome:
    try:
        outcome: TrialOutcome = ray.get(ref)
        return outcome
    except ray.exceptions.TaskCancelledError:
        return TrialOutcome(tracking.KILLED, task.run_id, "cancelled before it started", lost=True)
    except ray.exceptions.RayError as exc:
        return TrialOutcome(tracking.FAILED, task.run_id,
                            f"the Ray task was lost ({type(exc).__name__}: {_first_line(exc)})",
                            lost=True)


@functools.lru_cache(maxsize=4)
def _tracker(uri: str) -> tracking.Tracker:
    """One per store in each worker process: Ray reuses workers, so trials share the connection."""
    return tracking.Tracker(uri)


def _run_on_worker(task: TrialTask, shipped: bool) -> TrialOutcome:
    """The Ray task: run the attempt in a thread; a cancel (KeyboardInterrupt) stops it KILLED."""
    context = ray.get_runtime_context()
    node = context.get_node_id()
    if shipped:  # Ray unpacked the project here and made it the working directory
        task = dataclasses.replace(task, uri=os.getcwd(), version=None, commit=None)
    tags = {**task.tags, TAG_NODE_ID: node, TAG_NODE_IP: ray.util.get_node_ip_address()}
    task = dataclasses.replace(task, tags=tags)
    cancel = threading.Event()
    box: list[TrialOutcome | BaseException] = []

    def work() -> None:
        try:
            box.append(trial.run_trial(task, cancel, tracker=_tracker(task.tracking_uri)))
        except BaseException as exc:  # noqa: BLE001 - handed to the driver as a lost attempt
            box.append(exc)

    thread = threading.Thread(target=work, name="projectrun-trial", daemon=True)
    thread.start()
    while thread.is_alive():
        try:
            thread.join(0.2)
        except KeyboardInterrupt:
            cancel.set()
    result = box[0] if box else RuntimeError("the trial thread ended without a result")
    if isinstance(result, BaseException):
        return TrialOutcome(tracking.FAILED, task.run_id, f"internal error on node {node}: "
                            f"{type(result).__name__}: {result}", lost=True, node=node)
    return dataclasses.replace(result, node=node)
