"""End runs that no launcher will ever end: their launcher was killed (SIGKILL, OOM, reboot).

A RUNNING run whose recorded launcher (``liveness``) is gone is ended FAILED with a tag saying
why. A run whose launcher is alive, or that was launched on another host this one cannot check,
or that projectrun did not launch, is only listed. Later launches and sweeps into an experiment
do this for it; ``projectrun runs reconcile`` does it on demand.
"""
from __future__ import annotations

import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from projectrun import liveness, tracking
from projectrun.report import Reporter


@dataclass(frozen=True)
class Finding:
    run_id: str
    experiment_id: str
    state: str  # liveness.ALIVE / DEAD / UNKNOWN
    reason: str
    #: the run was ended FAILED by this reconcile
    ended: bool


def reconcile(tracker: tracking.Tracker, experiment_id: str, *, dry_run: bool = False,
              skip: Collection[str] = ()) -> list[Finding]:
    """Judge every RUNNING run of the experiment; end the orphans (unless ``dry_run``)."""
    from projectrun import spool

    findings = []
    kept = spool.spooled_run_ids(tracker.uri)  # ended, only not recorded yet: not abandoned
    for run_id, tags in tracker.running_runs(experiment_id):
        if run_id in skip or run_id in kept:
            continue
        verdict = liveness.judge(tags)
        ended = verdict.state == liveness.DEAD and not dry_run
        if ended:
            note = _recover_log(tracker, run_id, tags.get(liveness.TAG_LOG, ""))
            tracker.set_tags(run_id, {liveness.TAG_RECONCILED: f"ended FAILED: {verdict.reason}{note}"})
            tracker.terminate(run_id, tracking.FAILED)
        findings.append(Finding(run_id, experiment_id, verdict.state, verdict.reason, ended))
    return findings


def _recover_log(tracker: tracking.Tracker, run_id: str, recorded: str) -> str:
    """Upload the output a killed launcher left in its temp dir (on this host, which judged it
    dead), then remove that dir; returns what to add to the reconciled tag."""
    log = Path(recorded) if recorded else None
    if log is None or not log.is_file() or not log.parent.name.startswith("projectrun-"):
        return ""
    if log.stat().st_size:
        tracker.log_artifact(run_id, log, tracking.LOG_ARTIFACT_DIR)
    shutil.rmtree(log.parent, ignore_errors=True)
    return f"; its output was recovered into {tracking.LOG_ARTIFACT_DIR}/{tracking.LOG_FILE_NAME}"


def quietly(tracker: tracking.Tracker, experiment_id: str, skip: Collection[str],
            report: Reporter) -> None:
    """For launches and sweeps: end orphans, say so in one line each, never fail the launch."""
    from projectrun.errors import ProjectRunError

    try:
        found = reconcile(tracker, experiment_id, skip=skip)
    except ProjectRunError as exc:
        report(f"warning: could not check for abandoned runs: {exc}")
        return
    for f in found:
        if f.ended:
            report(f"ended abandoned run {f.run_id} FAILED: {f.reason}")
