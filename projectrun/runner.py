"""The launcher: source -> spec -> params -> env -> tracking -> launch -> status.

This is the one module (with the CLI) that knows every other one. Once a run exists it is always
ended FINISHED, FAILED or KILLED, whatever goes wrong after it was created.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun import (
    envs,
    interrupts,
    liveness,
    params,
    recording,
    redact,
    settings,
    sources,
    spec,
    tracking,
)
from projectrun import launch as launch_mod
from projectrun.errors import (
    EnvBuildError,
    ProjectRunError,
    RunFailed,
    RunInterrupted,
    SourceError,
    UsageError,
)
from projectrun.report import Reporter, quiet

if TYPE_CHECKING:
    from projectrun.progress import Progress

ProgressFactory = Callable[[str], "Progress"]


@dataclass
class LaunchRequest:
    """Everything one launch needs; the CLI and the Python API both build one of these."""

    uri: str
    entry_point: str = "main"
    version: str | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    experiment_name: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    #: continue this existing run instead of creating one (``mlflow run --run-id``)
    run_id: str | None = None
    #: base directory for downloads of remote ``path`` params (``--storage-dir``)
    storage_dir: str | None = None
    env_manager: str | None = None
    docker_args: dict[str, str | bool] = field(default_factory=dict)
    build_image: bool = False
    verbose: bool = False
    #: use the git mirror as it is, without fetching
    offline: bool = False
    #: extra tags for the run (a sweep sets its parent run id here)
    tags: dict[str, str] = field(default_factory=dict)
    echo: bool = True


@dataclass(frozen=True)
class Plan:
    """A resolved launch, before anything is built or recorded (what --dry-run prints)."""

    request: LaunchRequest
    source: sources.Source
    project: spec.Project
    entry_point: spec.EntryPoint
    params: params.ResolvedParams
    command: str
    env_manager: str
    tracking_uri: str

    def as_dict(self) -> dict[str, Any]:
        """The stable ``--dry-run --json`` document (see README, "Dry run")."""
        return {
            "command": self.command,
            "cwd": str(self.source.directory),
            "entry_point": self.entry_point.name,
            "env_manager": self.env_manager,
            "env_type": self.project.env_type,
            "env_file": str(self.project.env_file) if self.project.env_file else None,
            "params": {**self.params.values, **self.params.extras},
            "declared_params": self.params.values,
            "extra_params": self.params.extras,
            "logged_params": self.params.logged,
            "project": str(self.project.directory),
            "project_name": self.project.name,
            "source_name": self.source.name,
            "uri": self.request.uri,
            "version": self.request.version,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.request.experiment_name,
            "experiment_id": self.request.experiment_id,
        }


@dataclass(frozen=True)
class RunResult:
    run_id: str
    experiment_id: str
    status: str
    returncode: int
    #: the kept local copy of the output (None once it reached the store and was removed)
    log_path: Path | None = None
    #: the signal that stopped the run (KILLED), if any
    signal: int | None = None
    timed_out: bool = False
    #: what went wrong after the run was created (env build, download, tracking)
    error: ProjectRunError | None = None
    #: the entry point printed nothing (so no log artifact was stored)
    silent: bool = False


def plan(request: LaunchRequest, report: Reporter = quiet,
         source: sources.Source | None = None) -> Plan:
    """Resolve everything that records nothing: a bad input fails here, before any run exists.

    A git source is fetched (that fills the clone cache); call ``plan.source.close()`` after.
    A scheduler that launches one project many times passes the ``source`` it resolved once
    (and closes it itself).
    """
    owned = source is None
    redact.register_url(request.uri)  # its token is masked wherever it would be printed
    if source is None:
        source = sources.resolve(request.uri, request.version, offline=request.offline, report=report)
    try:
        project = spec.load_project(source.directory)
        if project.file is None and source.kind == "git" and not request.entry_point.endswith(
                spec.SCRIPT_EXTENSIONS):
            _, sub = sources.split_fragment(request.uri)
            at = f" at version {request.version}" if request.version else ""
            where = f"in subdirectory '{sub}'" if sub else "at the repository root"
            raise SourceError(f"{request.uri}{at}: no MLproject file {where}; "
                                     f"check the URL's #subdirectory")
        entry_point = project.entry_point(request.entry_point)
        if not entry_point.declared:
            _check_script(request.entry_point, project.directory)
        resolved = params.resolve(entry_point, request.parameters, Path.cwd(), project.directory,
                                  source.root)
        launch_mod.grace_seconds()  # a bad PROJECTRUN_KILL_GRACE: one usage line, nothing recorded
        _check_storage_dir(request.storage_dir)
        command = params.render_command(entry_point, resolved)
        manager = envs.select_manager(project, request.env_manager)
        envs.get_kind(manager).validate(project)  # env file problems: before any run exists
    except BaseException:
        if owned:
            source.close()
        raise
    return Plan(request, source, project, entry_point, resolved, command, manager,
                tracking.absolute_tracking_uri(settings.current().tracking_uri))


def _check_storage_dir(storage_dir: str | None) -> None:
    """Found before the run exists: a file there would fail the run only after it started."""
    if storage_dir and os.path.exists(storage_dir) and not os.path.isdir(storage_dir):
        raise UsageError(f"--storage-dir {storage_dir}: not a directory; give a folder for the "
                         f"downloads of remote path params (it is created if missing)")


def _check_script(script: str, directory: Path) -> None:
    """``-e path/to/x.py`` runs a script of the project: a relative path may not leave it."""
    if os.path.isabs(script):
        return  # the user asked for exactly this file
    target = (directory / script).resolve()
    top = directory.resolve()
    if top != target and top not in target.parents:
        raise UsageError(f"-e {script}: the script is outside the project directory {directory}; "
                         f"give a path inside it, or an absolute path")


def env_context(the_plan: Plan, report: Reporter, progress: ProgressFactory | None = None,
                log: Reporter | None = None) -> envs.Context:
    """What the environment kinds are told about this launch."""
    request = the_plan.request
    ctx = envs.Context(report=report, verbose=request.verbose, offline=request.offline,
                       docker_args=request.docker_args, build_image=request.build_image,
                       tracking_uri=the_plan.tracking_uri, progress=progress)
    return dataclasses.replace(ctx, log=log) if log else ctx


def _child_env(run_id: str, experiment_id: str, tracking_uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": tracking_uri,
                "MLFLOW_EXPERIMENT_ID": experiment_id})
    env.pop("MLFLOW_EXPERIMENT_NAME", None)  # the run's experiment is the one that counts
    env.setdefault("PYTHONUNBUFFERED", "1")  # so output streams live through the tee
    return env


def _download_remote_paths(the_plan: Plan, storage: Path) -> dict[str, str]:
    """``path`` params given as remote URIs are downloaded first, as MLflow does."""
    out = dict(the_plan.params.values)
    for index, (name, p) in enumerate(the_plan.entry_point.parameters.items()):
        if p.type == "path" and name in out and params.local_path(out[name]) is None:
            from mlflow.artifacts import download_artifacts

            target = storage / f"param_{index}"
            target.mkdir(parents=True, exist_ok=True)
            try:
                out[name] = download_artifacts(artifact_uri=out[name], dst_path=str(target),
                                               tracking_uri=the_plan.tracking_uri)
            except Exception as exc:  # noqa: BLE001 - any artifact repository error
                raise EnvBuildError(f"-P {name}={out[name]}: download failed: {exc}") from None
    return out


def launch(request: LaunchRequest, report: Reporter = quiet,
           progress: ProgressFactory | None = None) -> RunResult:
    """Plan, record and run one launch; raise RunFailed / RunInterrupted after recording the end."""
    the_plan = plan(request, report)
    try:
        result = execute(the_plan, report, progress=progress)
    finally:
        the_plan.source.close()
    if result.error is not None:
        raise result.error
    if result.status == tracking.KILLED:
        sig = result.signal or signal.SIGINT
        raise RunInterrupted(f"run {result.run_id} was stopped by {signal.Signals(sig).name} and "
                             f"marked KILLED", sig)
    if result.status == tracking.FAILED:
        raise RunFailed(failure_message(result, request.entry_point))
    return result


def failure_message(result: RunResult, entry_point: str) -> str:
    if result.timed_out:
        why = "timed out and was stopped"
    else:
        why = f"exited with code {result.returncode}"
    where = "it printed nothing" if result.silent else (
        f"its output is in the run's artifacts at {tracking.LOG_ARTIFACT_DIR}/{tracking.LOG_FILE_NAME}")
    return f"run {result.run_id} failed: entry point '{entry_point}' {why}; {where}"


def run_tags(the_plan: Plan, backend: str = "local") -> dict[str, str]:
    """The tags a new run starts with; a sweep that creates its trials' runs ahead (so it can end
    them whatever happens on a worker) uses the same, so those runs read like any other."""
    request = the_plan.request
    tags = tracking.base_tags(the_plan.source.name, request.entry_point)
    tags.update(the_plan.source.git_tags)
    tags.update(request.tags)
    tags[tracking.TAG_BACKEND] = backend
    tags.update(liveness.launcher_tags())  # so a later reconcile can tell if we died
    return tags


def execute(the_plan: Plan, report: Reporter = quiet, *, tracker: tracking.Tracker | None = None,
            experiment_id: str | None = None, cancel: threading.Event | None = None,
            timeout: float | None = None, log_path: Path | None = None,
            progress: ProgressFactory | None = None) -> RunResult:
    """Record the run, build the env, run the command, and end the run whatever happens.

    Run failures come back as the result's status; errors before the run exists are raised.
    ``log_path`` keeps the output there (sweeps); by default it lives in a temp dir that is
    removed once the log reached the store.
    """
    request = the_plan.request
    tracker = tracker or tracking.Tracker(the_plan.tracking_uri)
    if request.run_id:
        experiment_id = tracker.existing_run_experiment(request.run_id)
    elif experiment_id is None:
        experiment_id = tracker.experiment_id(request.experiment_name, request.experiment_id)
    attempt = _Attempt.start(the_plan, tracker, experiment_id, report, log_path)
    with interrupts.raising():  # SIGTERM/SIGHUP unwind like Ctrl-C; the run still ends
        try:
            attempt.record()
            prepared = attempt.prepare_env(progress)
            attempt.log_in_background(prepared)
            attempt.run(prepared, cancel, timeout)
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            attempt.interrupted(exc)
        except ProjectRunError as exc:
            if not attempt.run_id:
                raise
            attempt.failed(exc)
        finally:
            attempt.end()
    return attempt.result()


@dataclass
class _Attempt:
    """What one execute() carries from creating the run to ending it, step by step."""

    plan: Plan
    tracker: tracking.Tracker
    experiment_id: str
    report: Reporter
    log_dir: Path
    log_path: Path
    keep_log: bool
    run_id: str = ""
    status: str = tracking.FAILED
    outcome: launch_mod.Outcome = field(default_factory=lambda: launch_mod.Outcome(1))
    error: ProjectRunError | None = None
    #: params not logged yet: they go with the env tags, in one call
    pending: dict[str, str] = field(default_factory=dict)
    unsent: recording.Unsent = field(default_factory=recording.Unsent)
    logging_done: Callable[[], None] | None = None
    silent: bool = False
    #: the temp dir made in ``--storage-dir`` for downloads; removed when the run ends
    scratch: Path | None = None

    @classmethod
    def start(cls, the_plan: Plan, tracker: tracking.Tracker, experiment_id: str,
              report: Reporter, log_path: Path | None) -> _Attempt:
        log_dir = log_path.parent if log_path is not None else Path(tempfile.mkdtemp(prefix="projectrun-"))
        return cls(the_plan, tracker, experiment_id, report, log_dir,
                   log_path or log_dir / tracking.LOG_FILE_NAME, keep_log=log_path is not None)

    def record(self) -> None:
        """Create the run (or continue ``--run-id``'s; MLflow logs neither params nor tags then)."""
        request = self.plan.request
        if request.run_id:
            self.run_id = request.run_id
        else:
            tags = run_tags(self.plan)
            if not self.keep_log:  # a temp file: if we are killed, a reconcile takes it
                tags[liveness.TAG_LOG] = str(self.log_path)
            self.run_id = self.tracker.create_run(self.experiment_id, tags, {}, request.run_name)
            self.pending = dict(self.plan.params.logged)
        if request.echo:
            self.report(f"run {self.run_id} started in experiment {self.experiment_id} "
                        f"({self.plan.tracking_uri})")

    def prepare_env(self, progress: ProgressFactory | None) -> envs.Environment:
        ctx = env_context(self.plan, self.report, progress, recording.log_writer(self.log_path))
        if self.plan.env_manager == "docker":
            ctx = dataclasses.replace(ctx, artifact_uri=self.tracker.run_artifact_uri(self.run_id))
        return envs.get_kind(self.plan.env_manager).prepare(self.plan.project, ctx)

    def log_in_background(self, prepared: envs.Environment) -> None:
        """Params and env tags are logged while the entry point starts: the run already exists,
        so the child can use it, and the round trip to a server is off the critical path."""
        tags = {tracking.TAG_COMMAND: self.plan.command[:5000], **prepared.tags}
        if prepared.tag:
            tags[tracking.TAG_ENV] = prepared.tag
        if prepared.key:
            tags[tracking.TAG_ENV_KEY] = prepared.key
        if self.plan.request.run_id:
            tags.update(self.plan.request.tags)  # a scheduler's additions (the node running it)
            tags.update(liveness.launcher_tags())  # a continued run is ours now
            if self.plan.request.run_name:  # MLflow renames a continued run too (it sets the tag)
                tags[tracking.TAG_RUN_NAME] = self.plan.request.run_name
        self.logging_done = recording.in_background(
            recording.log_and_reconcile, self.tracker, self.run_id, self.experiment_id,
            self.pending, tags, self.report, self.unsent)
        self.pending = {}

    def run(self, prepared: envs.Environment, cancel: threading.Event | None,
            timeout: float | None) -> None:
        request = self.plan.request
        storage = self.log_dir
        if request.storage_dir:  # the user's folder: the downloads go in a temp dir inside it
            Path(request.storage_dir).mkdir(parents=True, exist_ok=True)
            storage = self.scratch = Path(tempfile.mkdtemp(prefix="projectrun-", dir=request.storage_dir))
        env = _child_env(self.run_id, self.experiment_id, self.plan.tracking_uri)
        invocation = prepared.invocation(_final_command(self.plan, storage / "params"), env,
                                         self.plan.source.directory)
        if request.verbose:
            self.report(f"running: {invocation.display()}")
        self.outcome = launch_mod.run(invocation, self.log_path, echo=request.echo, cancel=cancel,
                                      timeout=timeout)
        assert self.logging_done is not None
        self.logging_done()
        if self.outcome.signal is not None:
            self.status = tracking.KILLED
        else:
            self.status = tracking.FINISHED if self.outcome.returncode == 0 else tracking.FAILED

    def interrupted(self, exc: KeyboardInterrupt | interrupts.Terminated) -> None:
        self.status = tracking.KILLED
        signum = exc.signum if isinstance(exc, interrupts.Terminated) else signal.SIGINT
        self.outcome = launch_mod.Outcome(128 + signum, signum)

    def failed(self, exc: ProjectRunError) -> None:
        """After the run exists: an incomplete record is not a finished run."""
        self.error = exc
        self.status = tracking.FAILED
        if self.pending:  # the env failed before the params were logged
            try:
                self.tracker.log_params(self.run_id, self.pending)
            except ProjectRunError:
                self.unsent.params.update(self.pending)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"projectrun: error: {redact.text(str(exc))}\n")

    def end(self) -> None:
        if self.logging_done is not None:  # interrupted before it was awaited: still wait for it
            try:
                self.logging_done()
            except BaseException:  # noqa: BLE001, S110 - already reported, or superseded by the interrupt
                pass
        # decided before the temp log dir is removed below
        self.silent = not self.log_path.exists() or self.log_path.stat().st_size == 0
        uploaded = bool(self.run_id) and recording.finish(
            self.tracker, self.run_id, self.status, self.log_path, self.silent, self.report,
            self.plan.request.echo, self.unsent)
        if not self.keep_log and (uploaded or not self.run_id):
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def result(self) -> RunResult:
        return RunResult(self.run_id, self.experiment_id, self.status, self.outcome.returncode,
                         self.log_path if self.log_path.exists() else None, self.outcome.signal,
                         self.outcome.timed_out, self.error, self.silent)


def _final_command(the_plan: Plan, storage: Path) -> str:
    """The planned command, re-rendered when remote ``path`` params were downloaded."""
    values = _download_remote_paths(the_plan, storage)
    if values == the_plan.params.values:
        return the_plan.command
    return params.render_command(the_plan.entry_point,
                                 params.ResolvedParams(values, the_plan.params.extras, {}))
