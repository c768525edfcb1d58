"""Keeping a run's record complete: params and env tags logged off the critical path, the log
uploaded, the run ended, and what a store that went away did not take kept in the spool.

Split from the launcher so the order of the steps (runner) and the ways each record can fail
(here) are each readable at once.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from projectrun import interrupts, redact, tracking
from projectrun.errors import ProjectRunError
from projectrun.report import Reporter


@dataclass
class Unsent:
    """Params and tags the store did not take; they go to the spool with the final status."""

    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def log_writer(log_path: Path) -> Reporter:
    """Build output goes into the run's log (the output.log artifact) as well."""
    def write(line: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(line + "\n")

    return redact.writer(write)  # installers print index URLs: no credentials in the artifact


def log_and_reconcile(tracker: tracking.Tracker, run_id: str, experiment_id: str,
                      params: dict[str, str], tags: dict[str, str], report: Reporter,
                      unsent: Unsent) -> None:
    """The run's params and env tags; then what earlier launches kept in the spool while this
    store was down; then end abandoned runs of the experiment."""
    from projectrun import reconcile, spool

    try:
        tracker.log_batch(run_id, params, tags)
    except ProjectRunError as exc:  # the store went away: keep them for the spool
        unsent.params.update(params)
        unsent.tags.update(tags)
        report(f"warning: {exc}; retrying when the run ends")
        return
    spool.replay(tracker, report)
    reconcile.quietly(tracker, experiment_id, {run_id}, report)


def in_background(fn: Callable[..., object], *args: object) -> Callable[[], None]:
    """Start ``fn(*args)`` in a thread; the returned function waits and re-raises its error."""
    failure: list[BaseException] = []

    def work() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            failure.append(exc)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            raise failure[0]

    return wait


def finish(tracker: tracking.Tracker, run_id: str, status: str, log_path: Path, silent: bool,
           report: Reporter, announce: bool = True, unsent: Unsent | None = None) -> bool:
    """Upload the log and end the run; survive a second Ctrl-C or SIGTERM so the run never stays
    RUNNING.

    Returns whether the log reached the store (if not, the local copy must be kept)."""
    unsent = unsent or Unsent()
    with interrupts.deferred():
        uploaded = silent or _upload_log(tracker, run_id, log_path, report)
        try:
            if unsent.params or unsent.tags:
                tracker.log_batch(run_id, unsent.params, unsent.tags)
            tracker.terminate(run_id, status)
        except ProjectRunError as exc:  # the store stayed down: the spool records it later
            from projectrun import spool

            kept = spool.save(tracker.uri, run_id, status, unsent.params, unsent.tags,
                              None if uploaded or silent else log_path)
            report(f"warning: {exc}; run {run_id} ended {status}; its status, log and unlogged "
                   f"params/tags are kept in {kept}: the next projectrun command that reaches the "
                   f"store records them")
            return True
        if announce:
            report(f"run {run_id} {status}")
        return uploaded


def _upload_log(tracker: tracking.Tracker, run_id: str, log_path: Path, report: Reporter) -> bool:
    try:
        tracker.log_artifact(run_id, log_path, tracking.LOG_ARTIFACT_DIR)
    except ProjectRunError as exc:
        report(f"warning: could not upload the run log: {exc}; it is kept at {log_path}")
        return False
    return True
