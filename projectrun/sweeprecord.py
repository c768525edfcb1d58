"""What a sweep records in the tracking store, and how ``--resume`` reads it back.

The parent run carries the plan (``sweep/plan.json``) and, at the end, the leaderboard; each
child run carries its trial's key. The store is the only state a sweep keeps, so a resume from
another shell, or after a crash, finds everything here.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun import redact, sources, tracking
from projectrun.errors import UsageError
from projectrun.report import Reporter
from projectrun.sweepplan import SweepPlan

if TYPE_CHECKING:
    from projectrun.sweep import SweepOptions, TrialResult

PLAN_ARTIFACT = "sweep/plan.json"
TAG_SWEEP = "projectrun.sweep"
TAG_SWEEP_FILE = "projectrun.sweep.file"
TAG_FINGERPRINT = "projectrun.sweep.fingerprint"
TAG_TRIAL_KEY = "projectrun.trial.key"
TAG_TRIAL_INDEX = "projectrun.trial.index"
TAG_ATTEMPT = "projectrun.trial.attempt"
TAG_BEST_RUN = "projectrun.sweep.best_run_id"
#: on a child run the driver had to end itself (its worker was lost): why
TAG_TRIAL_ERROR = "projectrun.trial.error"


def create_parent(tracker: tracking.Tracker, experiment_id: str, plan: SweepPlan,
                  source: sources.Source, options: SweepOptions, backend: str) -> str:
    tags = tracking.base_tags(source.name, plan.entry_point)
    tags.update(source.git_tags)
    tags.update({TAG_SWEEP: "parent", TAG_FINGERPRINT: plan.fingerprint,
                 tracking.TAG_BACKEND: backend})
    if options.sweep_file:
        tags[TAG_SWEEP_FILE] = options.sweep_file
    settings = {"sweep.method": plan.method, "sweep.trials": str(len(plan.trials))}
    if plan.seed is not None:
        settings["sweep.seed"] = str(plan.seed)
    parent_id = tracker.create_run(experiment_id, tags, settings, plan.name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_text(redact.text(plan.to_json()))  # a resume takes values from the sweep file
        tracker.log_artifact(parent_id, path, "sweep")
    return parent_id


def resume(tracker: tracking.Tracker, experiment_id: str, plan: SweepPlan,
           options: SweepOptions, report: Reporter) -> tuple[str, SweepPlan, set[str]]:
    """Find the parent, read its stored plan, and the keys of trials already FINISHED."""
    client = tracker.client
    if isinstance(options.resume, str):
        parent_id = options.resume
    else:
        parent_id = _latest_parent(client, experiment_id, options.sweep_file)
    stored = _stored_plan(client, parent_id)
    old = _plan_to_continue(SweepPlan.from_json(stored), plan, stored, parent_id,
                            options.allow_changed)
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=50000)
    done = {r.data.tags.get(TAG_TRIAL_KEY) for r in children
            if r.info.status == tracking.FINISHED}
    report(f"resuming sweep {parent_id}: {len(done & {t.key for t in old.trials})} of "
           f"{len(old.trials)} trial(s) already finished")
    # execution settings (parallel, timeout, retries...) may change on resume; the trials may not
    old = dataclasses.replace(old, execution=plan.execution)
    return parent_id, old, {k for k in done if k}


def _latest_parent(client: Any, experiment_id: str, sweep_file: str | None) -> str:
    where = f"tags.`{TAG_SWEEP}` = 'parent'"
    if sweep_file:
        where += f" and tags.`{TAG_SWEEP_FILE}` = '{sweep_file}'"
    found = client.search_runs([experiment_id], where, max_results=1,
                               order_by=["start_time DESC"])
    if not found:
        raise UsageError(f"--resume: no earlier sweep of {sweep_file or 'this file'} in "
                         f"experiment {experiment_id}; run it without --resume first")
    return found[0].info.run_id


def _stored_plan(client: Any, parent_id: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(parent_id, PLAN_ARTIFACT, tmp)).read_text()
        except Exception as exc:  # noqa: BLE001 - artifact store errors of any kind
            raise UsageError(f"--resume: run {parent_id} has no stored sweep plan "
                             f"({exc})") from None


def _plan_to_continue(old: SweepPlan, plan: SweepPlan, stored: str, parent_id: str,
                      allow_changed: bool) -> SweepPlan:
    """The same trials come from the file (the stored copy masks secrets); changed ones only
    with --allow-changed, and only when nothing in the stored copy is masked."""
    if old.fingerprint == plan.fingerprint:
        return plan
    if not allow_changed:
        raise UsageError(f"--resume: the sweep file changed since sweep {parent_id} started; "
                         f"pass --allow-changed to continue the stored plan anyway, or start a "
                         f"new sweep")
    if redact.MASK in stored:
        raise UsageError(f"--resume --allow-changed: the stored plan of sweep {parent_id} has "
                         f"masked secret values; restore the sweep file it started from, or "
                         f"start a new sweep")
    return old


def finish_parent(tracker: tracking.Tracker, parent_id: str, plan: SweepPlan,
                  results: list[TrialResult], status: str) -> TrialResult | None:
    """Leaderboard, counts and the best run on the parent, then its final status."""
    best = _best(plan, results)
    rows = leaderboard(plan, results)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "leaderboard.json").write_text(redact.text(json.dumps(rows, indent=1)))
        (Path(tmp) / "leaderboard.csv").write_text(redact.text(to_csv(rows)))
        tracker.log_artifact(parent_id, Path(tmp) / "leaderboard.json", "sweep")
        tracker.log_artifact(parent_id, Path(tmp) / "leaderboard.csv", "sweep")
    finished = sum(r.status in (tracking.FINISHED, "SKIPPED") for r in results)
    tags = {"projectrun.sweep.finished": str(finished),
            "projectrun.sweep.failed": str(sum(r.status == tracking.FAILED for r in results))}
    if best is not None and best.run_id and plan.objective and best.objective is not None:
        tags[TAG_BEST_RUN] = best.run_id
        tracker.client.log_metric(parent_id, f"best_{plan.objective.metric}", best.objective)
    tracker.set_tags(parent_id, tags)
    tracker.terminate(parent_id, status)
    return best


def _best(plan: SweepPlan, results: list[TrialResult]) -> TrialResult | None:
    if plan.objective is None:
        return None
    scored = [r for r in results if r.objective is not None]
    if not scored:
        return None
    pick = min if plan.objective.goal == "minimize" else max
    return pick(scored, key=lambda r: r.objective)  # type: ignore[arg-type, return-value]


def leaderboard(plan: SweepPlan, results: list[TrialResult]) -> list[dict[str, Any]]:
    """One row per trial, best first when there is an objective."""
    rows = [{"index": r.trial.index, "key": r.trial.key, "status": r.status, "run_id": r.run_id,
             **{f"param.{k}": v for k, v in r.trial.params.items()},
             "objective": r.objective, "seconds": round(r.seconds, 3), "attempts": r.attempts}
            for r in results]
    if plan.objective is not None:
        sign = 1 if plan.objective.goal == "minimize" else -1
        rows.sort(key=lambda row: (row["objective"] is None, sign * (row["objective"] or 0.0),
                                   row["index"]))
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
