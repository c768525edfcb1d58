"""The launcher: source -> spec -> params -> env -> tracking -> launch -> status.

This is the one module (with the CLI) that knows every other one. Once a run exists it is always
ended FINISHED, FAILED or KILLED, whatever goes wrong after it was created.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from projectrun import envs, errors, params, sources, spec, tracking
from projectrun import launch as launch_mod
from projectrun.errors import EnvBuildError, ProjectRunError, RunFailed, RunInterrupted

Reporter = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"projectrun: {message}", file=sys.stderr, flush=True)


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
    log_path: Path


def plan(request: LaunchRequest, report: Reporter = _stderr) -> Plan:
    """Resolve everything that records nothing: a bad input fails here, before any run exists.

    A git source is fetched (that fills the clone cache); call ``plan.source.close()`` after.
    """
    source = sources.resolve(request.uri, request.version, offline=request.offline, report=report)
    try:
        project = spec.load_project(source.directory)
        if project.file is None and source.kind == "git" and not request.entry_point.endswith(
                spec.SCRIPT_EXTENSIONS):
            _, sub = sources.split_fragment(request.uri)
            at = f" at version {request.version}" if request.version else ""
            where = f"in subdirectory '{sub}'" if sub else "at the repository root"
            raise errors.SourceError(f"{request.uri}{at}: no MLproject file {where}; "
                                     f"check the URL's #subdirectory")
        entry_point = project.entry_point(request.entry_point)
        resolved = params.resolve(entry_point, request.parameters, Path.cwd(), project.directory)
        command = params.render_command(entry_point, resolved)
        manager = envs.select_manager(project, request.env_manager)
    except BaseException:
        source.close()
        raise
    return Plan(request, source, project, entry_point, resolved, command, manager,
                tracking.absolute_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))


class _Terminated(BaseException):
    """Raised from the SIGTERM/SIGHUP handler so cleanup runs as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signum = signum


@contextmanager
def _signals_raise() -> Iterator[None]:
    """Outside the child's lifetime, SIGTERM/SIGHUP unwind the stack like Ctrl-C does."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise _Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _child_env(run_id: str, experiment_id: str, tracking_uri: str,
               extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
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


def launch(request: LaunchRequest, report: Reporter = _stderr) -> RunResult:
    """Plan, record and run one launch; raise RunFailed / RunInterrupted after recording the end."""
    the_plan = plan(request, report)
    try:
        return _launch(the_plan, report)
    finally:
        the_plan.source.close()


def _launch(the_plan: Plan, report: Reporter) -> RunResult:
    request = the_plan.request
    tracker = tracking.Tracker(the_plan.tracking_uri)
    if request.run_id:
        experiment_id = tracker.existing_run_experiment(request.run_id)
    else:
        experiment_id = tracker.experiment_id(request.experiment_name, request.experiment_id)
    tags = tracking.base_tags(the_plan.source.name, request.entry_point)
    tags.update(the_plan.source.git_tags)
    tags.update(request.tags)
    tags[tracking.TAG_BACKEND] = "local"
    run_id = ""
    status = tracking.FAILED
    log_dir = Path(tempfile.mkdtemp(prefix="projectrun-"))
    log_path = log_dir / tracking.LOG_FILE_NAME
    outcome = None
    with _signals_raise():
        try:
            if request.run_id:
                run_id = request.run_id  # MLflow logs neither params nor tags on a reused run
            else:
                run_id = tracker.create_run(experiment_id, tags, the_plan.params.logged, request.run_name)
            report(f"run {run_id} started in experiment {experiment_id} ({the_plan.tracking_uri})")
            kind = envs.get_kind(the_plan.env_manager)
            prepared = kind.prepare(the_plan.project, verbose=request.verbose, report=report)
            extra_tags = {tracking.TAG_COMMAND: the_plan.command[:5000]}
            if prepared.tag:
                extra_tags[tracking.TAG_ENV] = prepared.tag
            if prepared.key:
                extra_tags[tracking.TAG_ENV_KEY] = prepared.key
            tracker.set_tags(run_id, extra_tags)
            storage = Path(tempfile.mkdtemp(dir=request.storage_dir)) if request.storage_dir else log_dir
            values = _download_remote_paths(the_plan, storage / "params")
            command = the_plan.command
            if values != the_plan.params.values:
                command = params.render_command(
                    the_plan.entry_point, params.ResolvedParams(values, the_plan.params.extras, {}))
            env = _child_env(run_id, experiment_id, the_plan.tracking_uri, prepared.env)
            if request.verbose:
                report(f"running: {prepared.wrap(command)}")
            outcome = launch_mod.run_shell(prepared.wrap(command), the_plan.source.directory, env,
                                                log_path, echo=request.echo)
            if outcome.signal is not None:
                status = tracking.KILLED
            else:
                status = tracking.FINISHED if outcome.returncode == 0 else tracking.FAILED
        except (KeyboardInterrupt, _Terminated) as exc:
            status = tracking.KILLED
            signum = exc.signum if isinstance(exc, _Terminated) else signal.SIGINT
            outcome = launch_mod.Outcome(128 + signum, signum)
        except ProjectRunError as exc:
            if run_id:
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"projectrun: error: {exc}\n")
            raise
        finally:
            if run_id and _finish(tracker, run_id, status, log_path, report):
                shutil.rmtree(log_dir, ignore_errors=True)
            elif not run_id:
                shutil.rmtree(log_dir, ignore_errors=True)
    assert outcome is not None
    if status == tracking.KILLED:
        sig = outcome.signal or signal.SIGINT
        raise RunInterrupted(f"run {run_id} was stopped by {signal.Signals(sig).name} and marked KILLED", sig)
    if status == tracking.FAILED:
        raise RunFailed(f"run {run_id} failed: entry point '{request.entry_point}' exited with code "
                        f"{outcome.returncode}; its output is in the run's artifacts at "
                        f"{tracking.LOG_ARTIFACT_DIR}/{tracking.LOG_FILE_NAME}")
    return RunResult(run_id, experiment_id, status, outcome.returncode, log_path)


def _finish(tracker: tracking.Tracker, run_id: str, status: str, log_path: Path, report: Reporter) -> bool:
    """Upload the log and end the run; survive a second Ctrl-C so the run never stays RUNNING.

    Returns whether the log reached the store (if not, the local copy must be kept)."""
    old = signal.getsignal(signal.SIGINT)
    import threading

    main = threading.current_thread() is threading.main_thread()
    if main:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        uploaded = True
        if log_path.exists():
            try:
                tracker.log_artifact(run_id, log_path, tracking.LOG_ARTIFACT_DIR)
            except ProjectRunError as exc:
                uploaded = False
                report(f"warning: could not upload the run log: {exc}; it is kept at {log_path}")
        tracker.terminate(run_id, status)
        report(f"run {run_id} {status}")
        return uploaded
    finally:
        if main:
            signal.signal(signal.SIGINT, old)
