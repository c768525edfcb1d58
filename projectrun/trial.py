"""Run one trial attempt from plain data: plan + execute, a plain outcome back.

Every scheduler runs trials through this function, on the driver's machine or on a cluster
node, so a trial launches the same way wherever it runs: the source resolved (or reused), the
environment from this machine's cache (built once under its lock), the entry point in its own
process group, the log artifact uploaded, the run ended FINISHED, FAILED or KILLED.
"""
from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path

from projectrun import runner, sources, tracking
from projectrun.errors import ProjectRunError
from projectrun.report import quiet
from projectrun.schedulers import TrialOutcome, TrialTask


def request_for(task: TrialTask) -> runner.LaunchRequest:
    """The launch of one attempt; a version given as a commit pins every trial to it."""
    return runner.LaunchRequest(
        uri=task.uri, entry_point=task.entry_point, version=task.commit or task.version,
        parameters=dict(task.params), env_manager=task.env_manager, echo=False,
        run_id=task.run_id, run_name=task.run_name, tags=dict(task.tags), offline=task.offline)


def run_trial(task: TrialTask, cancel: threading.Event | None = None, *,
              source: sources.Source | None = None,
              tracker: tracking.Tracker | None = None) -> TrialOutcome:
    """Run the attempt to its end; ``cancel`` stops it as KILLED.

    ``source`` and ``tracker`` let a scheduler on the driver reuse what it resolved once.
    Errors before the attempt's run could be ended come back as a ``lost`` outcome, so the
    driver ends the run it created.
    """
    start = time.monotonic()
    tracker = tracker or tracking.Tracker(task.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="projectrun-trial-") as tmp:
        log_path = Path(tmp) / tracking.LOG_FILE_NAME
        try:
            the_plan = runner.plan(request_for(task), quiet, source=source)
        except ProjectRunError as exc:
            return TrialOutcome(tracking.FAILED, task.run_id, str(exc), time.monotonic() - start,
                                lost=task.run_id is not None)
        # The child writes to the store the driver chose, whatever this node's environment says.
        the_plan = dataclasses.replace(the_plan, tracking_uri=task.tracking_uri)
        try:
            run = runner.execute(the_plan, quiet, tracker=tracker, experiment_id=task.experiment_id,
                                 cancel=cancel, timeout=task.timeout, log_path=log_path)
        except ProjectRunError as exc:  # raised only before the run was taken over
            return TrialOutcome(tracking.FAILED, task.run_id, str(exc), time.monotonic() - start,
                                lost=task.run_id is not None)
        finally:
            if source is None:
                the_plan.source.close()
        message = "" if run.status == tracking.FINISHED else failure_message(run, task.entry_point,
                                                                             log_path)
    return TrialOutcome(run.status, run.run_id, message, time.monotonic() - start, run.returncode)


def failure_message(run: runner.RunResult, entry_point: str, log_path: Path) -> str:
    """The run's own error, or its exit status with the last lines it printed."""
    if run.error is not None:
        return str(run.error)
    message = runner.failure_message(run, entry_point)
    tail = _tail(log_path)
    return message + ("; last output: " + tail if tail else "")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])
