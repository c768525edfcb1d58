"""Everything that talks to MLflow: store URI, experiment, run creation, tags, status, artifacts.

MLflow is imported only inside the functions that need it: `validate`, `--dry-run` and `--help`
never pay for it.
"""
from __future__ import annotations

import getpass
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun.errors import TrackingError, UsageError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"

TAG_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_ENTRY_POINT = "mlflow.project.entryPoint"
TAG_ENV = "mlflow.project.env"
TAG_BACKEND = "mlflow.project.backend"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_REPO_URL = "mlflow.source.git.repoURL"
TAG_GIT_BRANCH = "mlflow.source.git.branch"
TAG_GIT_DIRTY = "mlflow.source.git.dirty"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_COMMAND = "projectrun.command"
TAG_ENV_KEY = "projectrun.env.key"
LOG_ARTIFACT_DIR = "projectrun"
LOG_FILE_NAME = "output.log"


def absolute_tracking_uri(uri: str | None, cwd: Path | None = None) -> str:
    """The store URI with any relative path made absolute, so the child (whose cwd is the project)
    opens the same store. MLflow passes a relative URI through unchanged, and the child then
    opens an empty database ("Run ... not found")."""
    cwd = cwd or Path.cwd()
    if not uri:
        mlruns = cwd / "mlruns"
        if mlruns.is_dir() and any((d / "meta.yaml").exists() for d in mlruns.iterdir() if d.name.isdigit()):
            return mlruns.as_uri()  # MLflow keeps using an existing ./mlruns file store
        return f"sqlite:///{cwd / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        path, sep, query = rest.partition("?")
        if path and not path.startswith("/"):
            return f"sqlite:///{cwd / path}{sep}{query}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file://"):
        path = uri[len("file:"):]
        return (cwd / path).resolve().as_uri() if not path.startswith("/") else Path(path).as_uri()
    if "://" not in uri and not re.match(r"^[a-z][a-z0-9+.-]*:", uri, re.I):
        return (cwd / uri).resolve().as_uri()  # a plain path is a file store
    return uri


def _sqlite_lock(uri: str) -> Any:
    import hashlib

    from filelock import FileLock

    from projectrun import cache

    locks = cache.ensure_root() / "locks"
    locks.mkdir(exist_ok=True)
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return FileLock(str(locks / f"sqlite-{digest}.lock"))


def git_info(path: Path) -> dict[str, str]:
    """Git tags MLflow writes for a project inside a work tree, plus the dirty flag it never writes."""
    try:
        import git
    except ImportError:
        return {}
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandNotFound):
        return {}
    tags: dict[str, str] = {}
    try:
        if not repo.ignored(str(path)):
            tags[TAG_GIT_COMMIT] = repo.head.commit.hexsha
            tags[TAG_GIT_DIRTY] = str(repo.is_dirty(untracked_files=False)).lower()
    except (ValueError, git.GitCommandError):  # no commits yet
        pass
    url = next((r.url for r in repo.remotes), None)
    if url:
        tags[TAG_GIT_REPO_URL] = strip_credentials(url)
    return tags


def strip_credentials(url: str) -> str:
    """Drop ``user:token@`` from a URL before it is stored as a tag."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.I)


def local_source_name(directory: Path) -> str:
    """``file://<work tree>#<subdir>`` inside a git repo, else the absolute path, as MLflow writes it."""
    try:
        import git

        repo = git.Repo(directory, search_parent_directories=True)
        top = str(repo.working_tree_dir)
    except Exception:  # noqa: BLE001 - GitPython raises several unrelated types; any means "not git"
        return str(directory)
    rel = str(directory)[len(top):].lstrip("/") if str(directory).startswith(top) else ""
    return f"file://{top}" + (f"#{rel}" if rel else "")


def base_tags(source_name: str, entry_point: str) -> dict[str, str]:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - getuser raises OSError/KeyError without a passwd entry
        user = "unknown"
    return {
        TAG_USER: user,
        TAG_SOURCE_NAME: source_name,
        TAG_SOURCE_TYPE: "PROJECT",
        TAG_ENTRY_POINT: entry_point,
    }


@dataclass
class Tracker:
    """One tracking store, opened lazily."""

    uri: str
    _client: Any = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:  # pragma: no cover - mlflow-skinny is a dependency
                raise TrackingError(f"cannot import mlflow ({exc}); pip install mlflow-skinny") from None
            if self.uri.startswith(("http://", "https://")):
                self._probe_server()
            import logging

            # MLflow's INFO lines ("Creating initial MLflow database tables...") are noise here.
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            if self.uri.startswith("sqlite:///"):
                # Several launches opening a new database at once race in MLflow's table
                # creation ("table _alembic_tmp_metrics already exists"): create it under a lock.
                with _sqlite_lock(self.uri):
                    client = self._call("opening the store", MlflowClient, tracking_uri=self.uri)
                    self._call("opening the store", client.search_experiments, max_results=1)
            else:
                client = MlflowClient(tracking_uri=self.uri)
            self._client = client
        return self._client

    def _probe_server(self) -> None:
        """Fail in seconds, not after MLflow's minutes of retries, when the server is down."""
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=10).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable (a proxy may not serve /health)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {self.uri} is not reachable ({reason}); start it "
                                f"or fix MLFLOW_TRACKING_URI") from None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; turn MLflow's exceptions into one line naming the store."""
        try:
            return fn(*args, **kwargs)
        except (TrackingError, UsageError):
            raise
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests and sqlalchemy errors
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"tracking store {self.uri}: {what} failed: {message}") from exc

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        """Flags win over MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID; a missing name is created."""
        if name and experiment_id:
            raise UsageError("give only one of --experiment-name and --experiment-id")
        if not name and not experiment_id:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
            experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or None
            if name and experiment_id:
                raise UsageError("both MLFLOW_EXPERIMENT_NAME and MLFLOW_EXPERIMENT_ID are set; unset one")
        if experiment_id:
            exp = self._call("looking up the experiment", self._get_experiment, experiment_id)
            if exp is None:
                raise UsageError(f"--experiment-id {experiment_id}: no such experiment in {self.uri}")
            self._check_active(exp, f"--experiment-id {experiment_id}")
            return str(exp.experiment_id)
        if not name:
            return "0"
        exp = self._call("looking up the experiment", self.client.get_experiment_by_name, name)
        if exp is None:
            exp_id = self._call("creating the experiment", self._create_experiment, name)
            return str(exp_id)
        self._check_active(exp, f"--experiment-name {name}")
        return str(exp.experiment_id)

    def existing_run_experiment(self, run_id: str) -> str:
        """``--run-id``: the run must exist; it keeps its own experiment."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise UsageError(f"--run-id {run_id}: no such run in {self.uri}") from None
        return str(run.info.experiment_id)

    def _get_experiment(self, experiment_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_experiment(experiment_id)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def _create_experiment(self, name: str) -> str:
        """Create, tolerating a concurrent launch that created it first (parallel sweeps do)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.create_experiment(name))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = self.client.get_experiment_by_name(name)
            return str(exp.experiment_id)

    @staticmethod
    def _check_active(exp: Any, flag: str) -> None:
        if exp.lifecycle_stage == "deleted":
            raise UsageError(f"{flag}: experiment '{exp.name}' is deleted; restore it with "
                             f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or pick another")

    def create_run(self, experiment_id: str, tags: dict[str, str], params: dict[str, str],
                   run_name: str | None) -> str:
        """Create the RUNNING run with its tags and every param in one batch."""
        run = self._call("creating the run", self.client.create_run, experiment_id, tags=tags, run_name=run_name)
        run_id: str = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        batch = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(batch), 100):  # stores cap a batch at 100 params
            self._call("logging params", self.client.log_batch, run_id, params=batch[i:i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call("setting tags", self.client.log_batch, run_id,
                   tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        self._call("uploading " + path.name, self.client.log_artifact, run_id, str(path), artifact_dir)

    def set_running(self, run_id: str) -> None:
        """A resumed sweep's parent is RUNNING again until the sweep ends."""
        self._call("reopening the run", self.client.update_run, run_id, status="RUNNING")

    def terminate(self, run_id: str, status: str) -> None:
        self._call(f"marking the run {status}", self.client.set_terminated, run_id, status)

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        """A link for humans when the store is a server; local stores have none."""
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        return None
