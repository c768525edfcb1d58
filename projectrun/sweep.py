"""Run a sweep: one MLflow parent run, one child run per trial, a local pool of workers.

The planner (sweepplan) decides *what* runs; this module decides *how*: the project is resolved
and its environment built once, trials run in threads (each trial's command is its own process
group), failures are reported as they happen, Ctrl-C stops everything and leaves the sweep
resumable, and the plan is stored on the parent so ``--resume`` runs exactly the missing trials.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun import envs, runner, sources, spec, sweepplan, tracking
from projectrun.errors import ProjectRunError, RunInterrupted, UsageError

if TYPE_CHECKING:
    from projectrun.progress import Progress

Reporter = Callable[[str], None]
PLAN_ARTIFACT = "sweep/plan.json"
TAG_SWEEP = "projectrun.sweep"
TAG_SWEEP_FILE = "projectrun.sweep.file"
TAG_FINGERPRINT = "projectrun.sweep.fingerprint"
TAG_TRIAL_KEY = "projectrun.trial.key"
TAG_TRIAL_INDEX = "projectrun.trial.index"
TAG_ATTEMPT = "projectrun.trial.attempt"
TAG_BEST_RUN = "projectrun.sweep.best_run_id"


def _stderr(message: str) -> None:
    print(f"projectrun: {message}", file=sys.stderr, flush=True)


@dataclass
class TrialResult:
    trial: sweepplan.Trial
    status: str  # FINISHED, FAILED, KILLED, SKIPPED (done in an earlier attempt), NOT_RUN
    run_id: str | None = None
    seconds: float = 0.0
    objective: float | None = None
    attempts: int = 0
    message: str = ""


@dataclass
class SweepResult:
    parent_run_id: str
    experiment_id: str
    status: str
    results: list[TrialResult] = field(default_factory=list)
    best: TrialResult | None = None

    @property
    def failed(self) -> list[TrialResult]:
        return [r for r in self.results if r.status in ("FAILED",)]


@dataclass
class SweepOptions:
    """What the command line adds to (or overrides in) the sweep file."""

    jobs: int | None = None
    resume: bool | str = False  # True: the latest sweep of this file; str: that parent run id
    allow_changed: bool = False
    experiment_name: str | None = None
    experiment_id: str | None = None
    env_manager: str | None = None
    offline: bool = False
    sweep_file: str | None = None  # recorded on the parent so --resume can find it
    verbose: bool = False
    #: how the one env build before the trials shows its progress (the CLI passes a bar)
    progress: Callable[[str], Progress] | None = None


class _Stop:
    """Why launching stopped: a signal, fail_fast, or max_failures."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None
        self.reason = ""

    def set(self, reason: str, signum: int | None = None) -> None:
        if not self.event.is_set():
            self.reason, self.signal = reason, signum
            self.event.set()


def run_sweep(sweep_spec: sweepplan.SweepSpec, options: SweepOptions, report: Reporter = _stderr) -> SweepResult:
    """Plan (or read back) the sweep, check it against the entry point, and run it to the end."""
    plan = sweepplan.expand(sweep_spec)
    source = sources.resolve(plan.project, plan.version, offline=options.offline, report=report)
    try:
        return _run(plan, source, options, report)
    finally:
        source.close()


def _check(plan: sweepplan.Plan, project: spec.Project) -> spec.EntryPoint:
    entry_point = project.entry_point(plan.entry_point)
    sweepplan.check_against_entry_point(plan, entry_point)
    return entry_point


def _run(plan: sweepplan.Plan, source: sources.Source, options: SweepOptions,
         report: Reporter) -> SweepResult:
    project = spec.load_project(source.directory)
    tracker = tracking.Tracker(tracking.absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))
    experiment_id = tracker.experiment_id(options.experiment_name or plan.experiment, options.experiment_id)
    done: set[str] = set()
    if options.resume:
        parent_id, plan, done = _resume(tracker, experiment_id, plan, options, report)
    _check(plan, project)
    manager = envs.select_manager(project, options.env_manager or plan.env_manager)
    # Build the environment once, before any trial: N workers then only find it in the cache.
    envs.get_kind(manager).prepare(project, envs.Context(
        report=report, verbose=options.verbose, offline=options.offline, progress=options.progress))
    if not options.resume:
        parent_id = _create_parent(tracker, experiment_id, plan, source, options)
    else:
        tracker.set_running(parent_id)
    todo = [t for t in plan.trials if t.key not in done]
    jobs = max(1, options.jobs or plan.execution.parallel)
    report(f"sweep {parent_id}: {len(todo)} trial(s) to run"
           + (f" ({len(done)} already finished)" if done else "") + f", {jobs} at a time")
    results = {t.key: TrialResult(t, "SKIPPED") for t in plan.trials if t.key in done}
    stop = _Stop()
    logs = Path(tempfile.mkdtemp(prefix="projectrun-sweep-"))
    run_one = _trial_runner(plan, project, source, tracker, experiment_id, parent_id, manager,
                            stop, logs, report, options)
    failures = 0
    with _interrupts(stop):
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            pending: dict[Future[TrialResult], sweepplan.Trial] = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < jobs and not stop.event.is_set():
                    trial = queue.pop(0)
                    pending[pool.submit(run_one, trial)] = trial
                if not pending:
                    break
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for fut in finished:
                    trial = pending.pop(fut)
                    res = fut.result()
                    results[trial.key] = res
                    _announce(res, len(results), len(plan.trials), report)
                    if res.status == tracking.FAILED:
                        failures += 1
                        if plan.execution.on_failure == "fail_fast":
                            stop.set(f"trial {trial.index} failed and on_failure is fail_fast")
                        elif plan.execution.max_failures is not None and failures >= plan.execution.max_failures:
                            stop.set(f"{failures} trial(s) failed (max_failures: {plan.execution.max_failures})")
                if stop.event.is_set() and queue:
                    for t in queue:
                        results[t.key] = TrialResult(t, "NOT_RUN")
                    queue.clear()
    ordered = [results.get(t.key, TrialResult(t, "NOT_RUN")) for t in plan.trials]
    status = _parent_status(ordered, stop)
    best = _finish_parent(tracker, parent_id, plan, ordered, status)
    shutil.rmtree(logs, ignore_errors=True)
    result = SweepResult(parent_id, experiment_id, status, ordered, best)
    if stop.reason:
        report(f"sweep stopped: {stop.reason}")
    if stop.signal is not None:
        raise SweepInterrupted(result, stop.signal)
    return result


class SweepInterrupted(RunInterrupted):
    def __init__(self, result: SweepResult, signum: int) -> None:
        super().__init__(f"sweep {result.parent_run_id} was stopped by {signal.Signals(signum).name}; "
                         f"running trials were marked KILLED; continue it with --resume", signum)
        self.result = result


def _parent_status(results: list[TrialResult], stop: _Stop) -> str:
    if stop.signal is not None:
        return tracking.KILLED
    if any(r.status in (tracking.FAILED, tracking.KILLED, "NOT_RUN") for r in results):
        return tracking.FAILED
    return tracking.FINISHED


def _announce(res: TrialResult, done: int, total: int, report: Reporter) -> None:
    params = " ".join(f"{k}={v}" for k, v in res.trial.params.items())
    line = f"[{done}/{total}] trial {res.trial.index} {res.status} ({res.seconds:.1f}s) {params}"
    if res.run_id:
        line += f" run {res.run_id}"
    if res.objective is not None:
        line += f" objective={res.objective:g}"
    report(line)
    if res.status == tracking.FAILED and res.message:
        report(f"  {res.message}")


def _trial_runner(plan: sweepplan.Plan, project: spec.Project, source: sources.Source,
                  tracker: tracking.Tracker, experiment_id: str, parent_id: str, manager: str,
                  stop: _Stop, logs: Path, report: Reporter,
                  options: SweepOptions) -> Callable[[sweepplan.Trial], TrialResult]:
    metric = plan.objective.metric if plan.objective else None

    def quiet(_message: str) -> None:
        pass

    def run_one(trial: sweepplan.Trial) -> TrialResult:
        start = time.monotonic()
        result = TrialResult(trial, tracking.FAILED)
        for attempt in range(1, plan.execution.retries + 2):
            if stop.event.is_set():
                result.status = "NOT_RUN" if attempt == 1 else result.status
                break
            request = runner.LaunchRequest(
                uri=plan.project, entry_point=plan.entry_point, version=plan.version,
                parameters=dict(trial.params), env_manager=manager, echo=False,
                run_name=f"{plan.name or 'trial'}-{trial.index}" + (f"-try{attempt}" if attempt > 1 else ""),
                tags={tracking.TAG_PARENT_RUN_ID: parent_id, TAG_TRIAL_KEY: trial.key,
                      TAG_TRIAL_INDEX: str(trial.index), TAG_ATTEMPT: str(attempt)})
            log_path = logs / f"{trial.index}-{attempt}" / tracking.LOG_FILE_NAME
            log_path.parent.mkdir(parents=True)
            try:
                the_plan = runner.plan(request, quiet, source=source)
                run = runner.execute(the_plan, quiet, tracker=tracker, experiment_id=experiment_id,
                                     cancel=stop.event, timeout=plan.execution.timeout, log_path=log_path)
            except ProjectRunError as exc:
                result.message = str(exc)
                break
            result.run_id, result.status, result.attempts = run.run_id, run.status, attempt
            if run.status == tracking.FINISHED:
                result.message = ""
                break
            if run.error is not None:
                result.message = str(run.error)
            else:
                result.message = runner.failure_message(run, plan.entry_point)
                tail = _tail(log_path)
                if tail:
                    result.message += "; last output: " + tail
            if run.status == tracking.KILLED:
                break
        result.seconds = time.monotonic() - start
        if metric and result.status == tracking.FINISHED and result.run_id:
            result.objective = _metric(tracker, result.run_id, metric)
        return result

    return run_one


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(t.strip() for t in text[-lines:])


def _metric(tracker: tracking.Tracker, run_id: str, metric: str) -> float | None:
    try:
        return tracker.client.get_run(run_id).data.metrics.get(metric)
    except Exception:  # noqa: BLE001 - a missing metric must not fail the sweep
        return None


class _interrupts:
    """In the main thread, SIGINT/SIGTERM/SIGHUP stop launching and cancel running trials."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            self.stop.set(f"received {signal.Signals(signum).name}", signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.previous[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _create_parent(tracker: tracking.Tracker, experiment_id: str, plan: sweepplan.Plan,
                   source: sources.Source, options: SweepOptions) -> str:
    tags = tracking.base_tags(source.name, plan.entry_point)
    tags.update(source.git_tags)
    tags.update({TAG_SWEEP: "parent", TAG_FINGERPRINT: plan.fingerprint,
                 tracking.TAG_BACKEND: "local"})
    if options.sweep_file:
        tags[TAG_SWEEP_FILE] = options.sweep_file
    settings = {"sweep.method": plan.method, "sweep.trials": str(len(plan.trials))}
    if plan.seed is not None:
        settings["sweep.seed"] = str(plan.seed)
    parent_id = tracker.create_run(experiment_id, tags, settings, plan.name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_text(plan.to_json())
        tracker.log_artifact(parent_id, path, "sweep")
    return parent_id


def _resume(tracker: tracking.Tracker, experiment_id: str, plan: sweepplan.Plan,
            options: SweepOptions, report: Reporter) -> tuple[str, sweepplan.Plan, set[str]]:
    """Find the parent, read its stored plan, and the keys of trials already FINISHED."""
    client = tracker.client
    if isinstance(options.resume, str):
        parent_id = options.resume
    else:
        where = f"tags.`{TAG_SWEEP}` = 'parent'"
        if options.sweep_file:
            where += f" and tags.`{TAG_SWEEP_FILE}` = '{options.sweep_file}'"
        found = client.search_runs([experiment_id], where, max_results=1, order_by=["start_time DESC"])
        if not found:
            raise UsageError(f"--resume: no earlier sweep of {options.sweep_file or 'this file'} in "
                             f"experiment {experiment_id}; run it without --resume first")
        parent_id = found[0].info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            stored = Path(client.download_artifacts(parent_id, PLAN_ARTIFACT, tmp)).read_text()
        except Exception as exc:  # noqa: BLE001 - artifact store errors of any kind
            raise UsageError(f"--resume: run {parent_id} has no stored sweep plan ({exc})") from None
    old = sweepplan.Plan.from_json(stored)
    if old.fingerprint != plan.fingerprint and not options.allow_changed:
        raise UsageError(f"--resume: the sweep file changed since sweep {parent_id} started; "
                         f"pass --allow-changed to continue the stored plan anyway, or start a new sweep")
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=50000)
    done = {r.data.tags.get(TAG_TRIAL_KEY) for r in children if r.info.status == tracking.FINISHED}
    report(f"resuming sweep {parent_id}: {len(done & {t.key for t in old.trials})} of {len(old.trials)} "
           f"trial(s) already finished")
    # execution settings (parallel, timeout, retries...) may change on resume; the trials may not
    old = dataclasses.replace(old, execution=plan.execution)
    return parent_id, old, {k for k in done if k}


def _finish_parent(tracker: tracking.Tracker, parent_id: str, plan: sweepplan.Plan,
                   results: list[TrialResult], status: str) -> TrialResult | None:
    best = _best(plan, results)
    rows = leaderboard(plan, results)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "leaderboard.json").write_text(json.dumps(rows, indent=1))
        (Path(tmp) / "leaderboard.csv").write_text(to_csv(rows))
        tracker.log_artifact(parent_id, Path(tmp) / "leaderboard.json", "sweep")
        tracker.log_artifact(parent_id, Path(tmp) / "leaderboard.csv", "sweep")
    tags = {"projectrun.sweep.finished": str(sum(r.status in (tracking.FINISHED, "SKIPPED") for r in results)),
            "projectrun.sweep.failed": str(sum(r.status == tracking.FAILED for r in results))}
    if best is not None and best.run_id and plan.objective and best.objective is not None:
        tags[TAG_BEST_RUN] = best.run_id
        tracker.client.log_metric(parent_id, f"best_{plan.objective.metric}", best.objective)
    tracker.set_tags(parent_id, tags)
    tracker.terminate(parent_id, status)
    return best


def _best(plan: sweepplan.Plan, results: list[TrialResult]) -> TrialResult | None:
    if plan.objective is None:
        return None
    scored = [r for r in results if r.objective is not None]
    if not scored:
        return None
    pick = min if plan.objective.goal == "minimize" else max
    return pick(scored, key=lambda r: r.objective)  # type: ignore[arg-type, return-value]


def leaderboard(plan: sweepplan.Plan, results: list[TrialResult]) -> list[dict[str, Any]]:
    """One row per trial, best first when there is an objective."""
    rows = [{"index": r.trial.index, "key": r.trial.key, "status": r.status, "run_id": r.run_id,
             **{f"param.{k}": v for k, v in r.trial.params.items()},
             "objective": r.objective, "seconds": round(r.seconds, 3), "attempts": r.attempts}
            for r in results]
    if plan.objective is not None:
        sign = 1 if plan.objective.goal == "minimize" else -1
        rows.sort(key=lambda row: (row["objective"] is None, sign * (row["objective"] or 0.0), row["index"]))
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
