"""The launcher: source -> spec -> params -> env -> tracking -> launch -> status.

This is the one module (with the CLI) that knows every other one. Once a run exists it is always
ended FINISHED, FAILED or KILLED, whatever goes wrong after it was created.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun import envs, interrupts, liveness, params, redact, sources, spec, tracking
from projectrun import launch as launch_mod
from projectrun.errors import (
    EnvBuildError,
    ProjectRunError,
    RunFailed,
    RunInterrupted,
    SourceError,
    TrackingError,
    UsageError,
)

if TYPE_CHECKING:
    from projectrun.progress import Progress

Reporter = Callable[[str], None]
ProgressFactory = Callable[[str], "Progress"]


def _stderr(message: str) -> None:
    print(f"projectrun: {redact.text(message)}", file=sys.stderr, flush=True)


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


def plan(request: LaunchRequest, report: Reporter = _stderr,
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
        command = params.render_command(entry_point, resolved)
        manager = envs.select_manager(project, request.env_manager)
        envs.get_kind(manager).validate(project)  # env file problems: before any run exists
    except BaseException:
        if owned:
            source.close()
        raise
    return Plan(request, source, project, entry_point, resolved, command, manager,
                tracking.absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))


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


def _log_writer(log_path: Path) -> Reporter:
    """Build output goes into the run's log (the output.log artifact) as well."""
    def write(line: str) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="replace") as fh:
            fh.write(line + "\n")

    return redact.writer(write)  # installers print index URLs: no credentials in the artifact


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


def launch(request: LaunchRequest, report: Reporter = _stderr,
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


def execute(the_plan: Plan, report: Reporter = _stderr, *, tracker: tracking.Tracker | None = None,
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
    tags = run_tags(the_plan)
    run_id = ""
    status = tracking.FAILED
    keep_log = log_path is not None
    log_dir = log_path.parent if log_path is not None else Path(tempfile.mkdtemp(prefix="projectrun-"))
    log_path = log_path or log_dir / tracking.LOG_FILE_NAME
    outcome = launch_mod.Outcome(1)
    error: ProjectRunError | None = None
    pending_params: dict[str, str] = {}
    #: params and tags the store did not take (kept in the spool with the final status)
    unsent: dict[str, dict[str, str]] = {"params": {}, "tags": {}}
    logging_done: Callable[[], None] | None = None
    with interrupts.raising():  # SIGTERM/SIGHUP unwind like Ctrl-C; the run still ends
        try:
            if request.run_id:
                run_id = request.run_id  # MLflow logs neither params nor tags on a reused run
            else:
                run_id = tracker.create_run(experiment_id, tags, {}, request.run_name)
                # logged with the env tags: one call less
                pending_params = dict(the_plan.params.logged)
            if request.echo:
                report(f"run {run_id} started in experiment {experiment_id} ({the_plan.tracking_uri})")
            kind = envs.get_kind(the_plan.env_manager)
            ctx = env_context(the_plan, report, progress, _log_writer(log_path))
            if the_plan.env_manager == "docker":
                ctx = dataclasses.replace(ctx, artifact_uri=tracker.run_artifact_uri(run_id))
            prepared = kind.prepare(the_plan.project, ctx)
            extra_tags = {tracking.TAG_COMMAND: the_plan.command[:5000], **prepared.tags}
            if prepared.tag:
                extra_tags[tracking.TAG_ENV] = prepared.tag
            if prepared.key:
                extra_tags[tracking.TAG_ENV_KEY] = prepared.key
            # Logged while the entry point starts: the run already exists, so the child can use it,
            # and the round trip to a tracking server is off the critical path.
            if request.run_id:
                extra_tags.update(request.tags)  # a scheduler's additions (the node running it)
                extra_tags.update(liveness.launcher_tags())  # a continued run is ours now
                if request.run_name:  # MLflow renames a continued run too (it sets the tag)
                    extra_tags[tracking.TAG_RUN_NAME] = request.run_name
            logging_done = _in_background(_log_and_reconcile, tracker, run_id, experiment_id,
                                          pending_params, extra_tags, report, unsent)
            pending_params = {}
            storage = Path(tempfile.mkdtemp(dir=request.storage_dir)) if request.storage_dir else log_dir
            values = _download_remote_paths(the_plan, storage / "params")
            command = the_plan.command
            if values != the_plan.params.values:
                command = params.render_command(
                    the_plan.entry_point, params.ResolvedParams(values, the_plan.params.extras, {}))
            env = _child_env(run_id, experiment_id, the_plan.tracking_uri)
            invocation = prepared.invocation(command, env, the_plan.source.directory)
            if request.verbose:
                report(f"running: {invocation.display()}")
            outcome = launch_mod.run(invocation, log_path, echo=request.echo, cancel=cancel,
                                     timeout=timeout)
            logging_done()
            if outcome.signal is not None:
                status = tracking.KILLED
            else:
                status = tracking.FINISHED if outcome.returncode == 0 else tracking.FAILED
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            status = tracking.KILLED
            signum = exc.signum if isinstance(exc, interrupts.Terminated) else signal.SIGINT
            outcome = launch_mod.Outcome(128 + signum, signum)
        except ProjectRunError as exc:
            if not run_id:
                raise
            error = exc
            status = tracking.FAILED  # an incomplete record is not a finished run
            if pending_params:  # the env failed before the params were logged
                try:
                    tracker.log_params(run_id, pending_params)
                except ProjectRunError:
                    unsent["params"].update(pending_params)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(f"projectrun: error: {redact.text(str(exc))}\n")
        finally:
            if logging_done is not None:  # interrupted before it was awaited: still wait for it
                try:
                    logging_done()
                except BaseException:  # noqa: BLE001 - already reported, or superseded by the interrupt
                    pass
            # decided before the temp log dir is removed below
            silent = not log_path.exists() or log_path.stat().st_size == 0
            uploaded = bool(run_id) and _finish(tracker, run_id, status, log_path, silent, report,
                                                request.echo, unsent)
            if not keep_log and (uploaded or not run_id):
                shutil.rmtree(log_dir, ignore_errors=True)
    return RunResult(run_id, experiment_id, status, outcome.returncode,
                     log_path if log_path.exists() else None, outcome.signal, outcome.timed_out, error,
                     silent)


def _log_and_reconcile(tracker: tracking.Tracker, run_id: str, experiment_id: str,
                       params: dict[str, str], tags: dict[str, str], report: Reporter,
                       unsent: dict[str, dict[str, str]]) -> None:
    """Off the critical path: the run's params and env tags; then what earlier launches kept in
    the spool while this store was down; then end abandoned runs of the experiment."""
    from projectrun import reconcile, spool

    try:
        tracker.log_batch(run_id, params, tags)
    except ProjectRunError as exc:  # the store went away: keep them for the spool
        unsent["params"].update(params)
        unsent["tags"].update(tags)
        report(f"warning: {exc}; retrying when the run ends")
        return
    spool.replay(tracker, report)
    reconcile.quietly(tracker, experiment_id, {run_id}, report)


def _in_background(fn: Callable[..., object], *args: object) -> Callable[[], None]:
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


def _finish(tracker: tracking.Tracker, run_id: str, status: str, log_path: Path, silent: bool,
            report: Reporter, announce: bool = True,
            unsent: dict[str, dict[str, str]] | None = None) -> bool:
    """Upload the log and end the run; survive a second Ctrl-C or SIGTERM so the run never stays
    RUNNING.

    Returns whether the log reached the store (if not, the local copy must be kept)."""
    with interrupts.deferred():
        uploaded = True
        if not silent:  # no output, nothing worth keeping
            try:
                tracker.log_artifact(run_id, log_path, tracking.LOG_ARTIFACT_DIR)
            except ProjectRunError as exc:
                uploaded = False
                report(f"warning: could not upload the run log: {exc}; it is kept at {log_path}")
        params, tags = (unsent or {}).get("params") or {}, (unsent or {}).get("tags") or {}
        try:
            if params or tags:
                tracker.log_batch(run_id, params, tags)
            tracker.terminate(run_id, status)
        except ProjectRunError as exc:  # the store stayed down: the spool records it later
            from projectrun import spool

            kept = spool.save(tracker.uri, run_id, status, params, tags,
                              None if uploaded or silent else log_path)
            report(f"warning: {exc}; run {run_id} ended {status}; its status, log and unlogged "
                   f"params/tags are kept in {kept}: the next projectrun command that reaches the "
                   f"store records them")
            return True
        if announce:
            report(f"run {run_id} {status}")
        return uploaded
