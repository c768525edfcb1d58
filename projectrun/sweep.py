"""Run a sweep: one MLflow parent run, one child run per trial, a local pool of workers.

The planner (sweepplan) decides *what* runs; this module decides *how*: the project is resolved
and its environment built once, trials run in threads (each trial's command is its own process
group), failures are reported as they happen, Ctrl-C stops everything and leaves the sweep
resumable, and the plan is stored on the parent so ``--resume`` runs exactly the missing trials
(what is written to the parent and read back lives in sweeprecord).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from projectrun import (
    envs,
    gitinfo,
    interrupts,
    launch,
    runner,
    schedulers,
    sources,
    spec,
    sweepplan,
    sweeprecord,
    tracking,
)
from projectrun.errors import ProjectRunError, RunInterrupted, UsageError
from projectrun.report import Reporter, quiet
from projectrun.sweeprecord import leaderboard, to_csv

if TYPE_CHECKING:
    from projectrun.progress import Progress

#: leaderboard and to_csv live in sweeprecord; they stay importable from here (the CLI's
#: --dry-run --csv uses sweep.to_csv)
__all__ = ["SweepInterrupted", "SweepOptions", "SweepResult", "TrialResult", "leaderboard",
           "run_sweep", "to_csv"]


@dataclass
class TrialResult:
    trial: sweepplan.Trial
    status: str  # FINISHED, FAILED, KILLED, SKIPPED (done in an earlier attempt), NOT_RUN
    run_id: str | None = None
    seconds: float = 0.0
    objective: float | None = None
    attempts: int = 0
    message: str = ""
    #: where the last attempt ran (a Ray node id; empty for the local backend)
    node: str = ""


@dataclass
class SweepResult:
    parent_run_id: str
    experiment_id: str
    status: str
    results: list[TrialResult] = field(default_factory=list)
    best: TrialResult | None = None


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
    #: where trials run (overrides the file's ``backend:``): local or ray
    backend: str | None = None
    #: the Ray cluster to connect to (overrides ``ray: {address: ...}``)
    address: str | None = None
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


def run_sweep(sweep_spec: sweepplan.SweepSpec, options: SweepOptions,
              report: Reporter = quiet) -> SweepResult:
    """Plan (or read back) the sweep, check it against the entry point, and run it to the end."""
    plan = sweepplan.expand(sweep_spec)
    launch.grace_seconds()  # a bad PROJECTRUN_KILL_GRACE: one usage line before any trial
    source = sources.resolve(plan.project, plan.version, offline=options.offline, report=report)
    try:
        return _run(plan, source, options, report)
    finally:
        source.close()


def _check(plan: sweepplan.SweepPlan, project: spec.Project) -> spec.EntryPoint:
    entry_point = project.entry_point(plan.entry_point)
    sweepplan.check_against_entry_point(plan, entry_point)
    return entry_point


def _run(plan: sweepplan.SweepPlan, source: sources.Source, options: SweepOptions,
         report: Reporter) -> SweepResult:
    project = spec.load_project(source.directory)
    uri = tracking.absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    tracker = tracking.Tracker(uri)
    experiment_id = tracker.experiment_id(options.experiment_name or plan.experiment,
                                          options.experiment_id)
    from projectrun import reconcile

    reconcile.quietly(tracker, experiment_id, (), report)  # trials of a killed sweep, ended FAILED
    parent_id = ""
    done: set[str] = set()
    if options.resume:
        parent_id, plan, done = sweeprecord.resume(tracker, experiment_id, plan, options, report)
    _check(plan, project)
    manager = envs.select_manager(project, options.env_manager or plan.env_manager)
    jobs = max(1, options.jobs or plan.execution.parallel)
    backend = _backend(plan, options)
    # Opened before anything is recorded: a backend that cannot run this sweep (Ray missing, a
    # local store a remote cluster cannot reach) refuses here.
    scheduler = schedulers.get_scheduler(backend, schedulers.Setup(jobs, tracker.uri, source,
                                                                   tracker, report))
    try:
        if scheduler.same_host:
            _prepare_environment(manager, project, options, report)
        if not options.resume:
            parent_id = sweeprecord.create_parent(tracker, experiment_id, plan, source, options,
                                                  backend.name)
        else:
            tracker.set_running(parent_id)
        attempts = _Attempts(plan, source, tracker, experiment_id, parent_id, manager,
                             backend.name, options.offline)
        results, stop = _run_trials(scheduler, attempts, done, jobs, report)
    finally:
        scheduler.close()
    return _conclude(tracker, experiment_id, parent_id, plan, results, stop, report)


def _prepare_environment(manager: str, project: spec.Project, options: SweepOptions,
                         report: Reporter) -> None:
    """Build the environment once, before any trial: N workers then only find it in the cache."""
    envs.get_kind(manager).prepare(project, envs.Context(
        report=report, verbose=options.verbose, offline=options.offline,
        progress=options.progress))


def _run_trials(scheduler: schedulers.Scheduler, attempts: _Attempts, done: set[str], jobs: int,
                report: Reporter) -> tuple[dict[str, TrialResult], _Stop]:
    """Every trial not ``done``, until the last ends or a stop; the results by trial key."""
    plan = attempts.plan
    todo = [t for t in plan.trials if t.key not in done]
    where = f" on {scheduler.name}" if scheduler.name != "local" else ""
    already = f" ({len(done)} already finished)" if done else ""
    report(f"sweep {attempts.parent_id}: {len(todo)} trial(s) to run{already}, "
           f"{jobs} at a time{where}")
    results = {t.key: TrialResult(t, "SKIPPED") for t in plan.trials if t.key in done}
    stop = _Stop()
    with _interrupts(stop):
        _schedule(scheduler, attempts, todo, jobs, stop, results, report)
    return results, stop


def _conclude(tracker: tracking.Tracker, experiment_id: str, parent_id: str,
              plan: sweepplan.SweepPlan, results: dict[str, TrialResult], stop: _Stop,
              report: Reporter) -> SweepResult:
    """End the parent run; a signal still ends it (KILLED) before SweepInterrupted is raised."""
    ordered = [results.get(t.key, TrialResult(t, "NOT_RUN")) for t in plan.trials]
    status = _parent_status(ordered, stop)
    best = sweeprecord.finish_parent(tracker, parent_id, plan, ordered, status)
    result = SweepResult(parent_id, experiment_id, status, ordered, best)
    if stop.reason:
        report(f"sweep stopped: {stop.reason}")
    if stop.signal is not None:
        raise SweepInterrupted(result, stop.signal)
    return result


class SweepInterrupted(RunInterrupted):
    def __init__(self, result: SweepResult, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"sweep {result.parent_run_id} was stopped by {name}; running trials "
                         f"were marked KILLED; continue it with --resume", signum)
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
    if res.node:
        line += f" on node {res.node[:12]}"
    report(line)
    if res.status == tracking.FAILED and res.message:
        report(f"  {res.message}")


def _backend(plan: sweepplan.SweepPlan, options: SweepOptions) -> sweepplan.Backend:
    """The sweep file's backend, with --backend and --address (then RAY_ADDRESS) on top."""
    backend = plan.execution.backend
    if options.backend:
        backend = dataclasses.replace(backend, name=options.backend)
    if options.address:
        backend = dataclasses.replace(backend, address=options.address)
    if options.address and backend.name == "local":
        raise UsageError("--address goes with --backend ray (or backend: ray in the sweep file)")
    return backend


class _Attempts:
    """Turns a trial into the task of one attempt, creating the attempt's child run first.

    The driver creates every child run (with the tags and params a local launch writes), so it
    can end the run itself when a worker cannot: a lost node, a task cancelled before it started.
    """

    def __init__(self, plan: sweepplan.SweepPlan, source: sources.Source, tracker: tracking.Tracker,
                 experiment_id: str, parent_id: str, manager: str, backend: str,
                 offline: bool) -> None:
        self.plan, self.source, self.tracker = plan, source, tracker
        self.experiment_id, self.parent_id = experiment_id, parent_id
        self.manager, self.backend, self.offline = manager, backend, offline
        git = source.kind == "git"
        self.commit = source.git_tags.get(gitinfo.TAG_GIT_COMMIT) if git else None

    def task(self, trial: sweepplan.Trial, attempt: int) -> schedulers.TrialTask:
        """Raises ProjectRunError when the trial cannot be launched (nothing is recorded then)."""
        plan = self.plan
        tags = {tracking.TAG_PARENT_RUN_ID: self.parent_id, sweeprecord.TAG_TRIAL_KEY: trial.key,
                sweeprecord.TAG_TRIAL_INDEX: str(trial.index),
                sweeprecord.TAG_ATTEMPT: str(attempt)}
        retry = f"-try{attempt}" if attempt > 1 else ""
        run_name = f"{plan.name or 'trial'}-{trial.index}{retry}"
        request = runner.LaunchRequest(
            uri=plan.project, entry_point=plan.entry_point, version=plan.version,
            parameters=dict(trial.params), env_manager=self.manager, echo=False, run_name=run_name,
            tags=tags, offline=self.offline)
        the_plan = runner.plan(request, quiet, source=self.source)
        run_id = self.tracker.create_run(self.experiment_id,
                                         runner.run_tags(the_plan, self.backend),
                                         the_plan.params.logged, run_name)
        return schedulers.TrialTask(
            uri=plan.project, entry_point=plan.entry_point, params=dict(trial.params),
            tracking_uri=self.tracker.uri, experiment_id=self.experiment_id,
            parent_run_id=self.parent_id, index=trial.index, key=trial.key, attempt=attempt,
            run_id=run_id, run_name=run_name, version=plan.version, commit=self.commit,
            env_manager=self.manager, timeout=plan.execution.timeout, offline=self.offline,
            tags=tags)

    def settle(self, task: schedulers.TrialTask,
               outcome: schedulers.TrialOutcome) -> schedulers.TrialOutcome:
        """A lost attempt's run is ended here, unless the worker ended it before it was lost."""
        if not outcome.lost or not task.run_id:
            return outcome
        try:
            recorded = self.tracker.client.get_run(task.run_id).info.status
        except Exception:  # noqa: BLE001 - the store's own errors surface in terminate below
            recorded = "RUNNING"
        if recorded in (tracking.FINISHED, tracking.FAILED, tracking.KILLED):
            return dataclasses.replace(outcome, status=recorded, lost=False)
        self.tracker.set_tags(task.run_id, {sweeprecord.TAG_TRIAL_ERROR: outcome.message[:5000]})
        self.tracker.terminate(task.run_id, outcome.status)
        return outcome


def _schedule(scheduler: schedulers.Scheduler, attempts: _Attempts, todo: list[sweepplan.Trial],
              jobs: int, stop: _Stop, results: dict[str, TrialResult], report: Reporter) -> None:
    """Keep ``jobs`` attempts in flight; retry failures; on a stop, cancel and drain."""
    loop = _Loop(scheduler, attempts, todo, stop, results, report)
    while loop.queue or scheduler.in_flight():
        while loop.queue and scheduler.in_flight() < jobs and not stop.event.is_set():
            loop.submit_next()
        if stop.event.is_set():
            loop.stop_all()
        for task, outcome in scheduler.completed(0.5):
            loop.take(task, attempts.settle(task, outcome))


class _Loop:
    """The scheduling state of one sweep run: what is queued, retried, and when each started."""

    def __init__(self, scheduler: schedulers.Scheduler, attempts: _Attempts,
                 todo: list[sweepplan.Trial], stop: _Stop, results: dict[str, TrialResult],
                 report: Reporter) -> None:
        self.scheduler, self.attempts, self.stop = scheduler, attempts, stop
        self.results, self.report = results, report
        self.trials = {t.key: t for t in todo}
        self.queue: deque[tuple[sweepplan.Trial, int]] = deque((t, 1) for t in todo)
        self.started: dict[str, float] = {}
        self.retrying: dict[str, TrialResult] = {}  # the failed attempt a queued retry replaces
        self.cancelled = False

    def submit_next(self) -> None:
        trial, attempt = self.queue.popleft()
        self.started.setdefault(trial.key, time.monotonic())
        try:
            self.scheduler.submit(self.attempts.task(trial, attempt))
        except ProjectRunError as exc:
            res = self.retrying.pop(trial.key, TrialResult(trial, tracking.FAILED))
            res.message = str(exc)
            self.record(res)

    def stop_all(self) -> None:
        """Cancel what is in flight (once); what is queued will not run."""
        if self.scheduler.in_flight() and not self.cancelled:
            self.scheduler.cancel()
            self.cancelled = True
        for trial, _attempt in self.queue:
            self.results[trial.key] = self.retrying.pop(trial.key, TrialResult(trial, "NOT_RUN"))
        self.queue.clear()

    def take(self, task: schedulers.TrialTask, outcome: schedulers.TrialOutcome) -> None:
        plan = self.attempts.plan
        trial = self.trials[task.key]
        res = TrialResult(trial, outcome.status, outcome.run_id, attempts=task.attempt,
                          message=outcome.message, node=outcome.node)
        if outcome.status == tracking.FAILED and task.attempt <= plan.execution.retries \
                and not self.stop.event.is_set():
            self.retrying[trial.key] = res
            self.queue.appendleft((trial, task.attempt + 1))  # retried before new trials start
            return
        if plan.objective and res.status == tracking.FINISHED and res.run_id:
            res.objective = _metric(self.attempts.tracker, res.run_id, plan.objective.metric)
        self.record(res)

    def record(self, res: TrialResult) -> None:
        plan = self.attempts.plan
        res.seconds = time.monotonic() - self.started.get(res.trial.key, time.monotonic())
        self.results[res.trial.key] = res
        _announce(res, len(self.results), len(plan.trials), self.report)
        _count_failure(res, plan, self.results, self.stop)


def _count_failure(res: TrialResult, plan: sweepplan.SweepPlan, results: dict[str, TrialResult],
                   stop: _Stop) -> None:
    if res.status != tracking.FAILED:
        return
    failures = sum(r.status == tracking.FAILED for r in results.values())
    if plan.execution.on_failure == "fail_fast":
        stop.set(f"trial {res.trial.index} failed and on_failure is fail_fast")
    elif plan.execution.max_failures is not None and failures >= plan.execution.max_failures:
        stop.set(f"{failures} trial(s) failed (max_failures: {plan.execution.max_failures})")

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

        for sig in interrupts.stopping():  # ignored ones (nohup, a script's `&`) stay ignored
            self.previous[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
