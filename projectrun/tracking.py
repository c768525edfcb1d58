"""Everything that talks to MLflow: store URI, experiment, run creation, tags, status, artifacts.

MLflow is imported only inside the functions that need it: `validate`, `--dry-run` and `--help`
never pay for it.
"""
from __future__ import annotations

import getpass
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar

from projectrun import redact, settings
from projectrun.errors import TrackingError, UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    from mlflow.tracking import MlflowClient

    from projectrun.stores import Experiment, Store
    from projectrun.stores.client import ClientStore

T = TypeVar("T")
P = ParamSpec("P")

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"

TAG_USER = "mlflow.user"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_ENTRY_POINT = "mlflow.project.entryPoint"
TAG_ENV = "mlflow.project.env"
TAG_BACKEND = "mlflow.project.backend"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
TAG_COMMAND = "projectrun.command"
TAG_ENV_KEY = "projectrun.env.key"
#: seconds to keep retrying writes to an existing run while the store is unreachable or locked
RETRY_ENV_VAR = settings.TRACKING_RETRY
DEFAULT_RETRY_SECONDS = settings.DEFAULT_TRACKING_RETRY
#: what a retry can cure: a server that went away or answers 5xx, a sqlite database locked by
#: another writer (MLflow's client in another process, a UI, a sweep)
_TRANSIENT = ("not reachable", "database is locked", "database table is locked", "timed out",
              "temporarily_unavailable", "http 502", "http 503", "http 504", "http 500",
              "connection reset", "remote end closed")
_LOCKED = ("database is locked", "database table is locked")
#: store URIs MLflow takes as names, without a scheme (``databricks`` is the workspace of the
#: default Databricks CLI profile); they are not paths
NAMED_STORES = ("databricks", "databricks-uc", "uc")
#: what MLflow's default stores leave in a project directory run from its own folder: run
#: records, not code; never copied into an image or shipped to a cluster (each launch changes
#: them, so they would make every launch a new build)
RUN_RECORDS = ("mlruns", "mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm")
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
    if uri in NAMED_STORES:
        return uri
    if "://" not in uri and not re.match(r"^[a-z][a-z0-9+.-]*:", uri, re.IGNORECASE):
        return (cwd / uri).resolve().as_uri()  # a plain path is a file store
    try:
        urllib.parse.urlsplit(uri)
    except ValueError as exc:  # ``http://[``: fails here, before any run, not deep in a store
        raise UsageError(f"MLFLOW_TRACKING_URI={uri}: not a valid URI ({exc}); fix or unset it"
                         ) from None
    return uri


def retry_seconds() -> float:
    """PROJECTRUN_TRACKING_RETRY: a bad value is one usage line, not a crash."""
    return settings.current().tracking_retry


def sqlite_file(uri: str) -> str | None:
    """The database file a ``sqlite:///`` URI names (query dropped, %-escapes decoded), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return urllib.parse.unquote(uri[len("sqlite:///"):].partition("?")[0])


def _refuse_other_revision(uri: str) -> None:
    """MLflow's client too must not open (and auto-upgrade) another MLflow version's database."""
    import sqlite3

    path = sqlite_file(uri)
    if path is None or not os.path.isfile(path):
        return
    from projectrun.stores.sqlite import check_revision

    conn = sqlite3.connect(path, timeout=30)
    try:
        check_revision(conn, uri)
    finally:
        conn.close()


def _sqlite_lock(uri: str) -> Any:
    """The cache's lock ``locks/sqlite-<hash of uri>.lock``, held while a new database is made."""
    import hashlib

    from projectrun import cachedir

    return cachedir.LOCKS.lock(f"sqlite-{hashlib.sha256(uri.encode()).hexdigest()[:16]}")


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


def _experiment_choice(name: str | None, experiment_id: str | None) -> tuple[str | None, str | None]:
    """At most one of the flags, else of MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID."""
    if name and experiment_id:
        raise UsageError("give only one of --experiment-name and --experiment-id")
    if not name and not experiment_id:
        name = settings.current().experiment_name
        experiment_id = settings.current().experiment_id
        if name and experiment_id:
            raise UsageError("both MLFLOW_EXPERIMENT_NAME and MLFLOW_EXPERIMENT_ID are set; unset one")
    return name, experiment_id


@dataclass
class Tracker:
    """One tracking store: a fast path where one applies, MLflow's client for everything else."""

    uri: str
    #: None until probed; False when no fast path applies (MLflow's client does everything)
    _fast: Store | Literal[False] | None = None
    _slow: ClientStore | None = None
    _probed: bool = False
    #: retries already ran out once in this process: later writes try once (then get spooled)
    _gave_up: bool = False

    @property
    def client(self) -> MlflowClient:
        """MLflow's client, for what only it does (searches, downloads) and for fallbacks."""
        return self._client_store().client

    def _client_store(self) -> ClientStore:
        if self._slow is None:
            try:
                from projectrun.stores.client import ClientStore
            except ImportError as exc:  # pragma: no cover - mlflow-skinny is a dependency
                raise TrackingError(f"cannot import mlflow ({exc}); pip install mlflow-skinny") from None
            self._probe_server()
            if self.uri.startswith("sqlite:///"):
                _refuse_other_revision(self.uri)
                # Several launches opening a new database at once race in MLflow's table
                # creation ("table _alembic_tmp_metrics already exists"): create it under a lock.
                with _sqlite_lock(self.uri):
                    store = self._call("opening the store", ClientStore, self.uri)
                    self._call("opening the store", store.client.search_experiments, max_results=1)
                if self._fast is False:
                    self._fast = None  # the database exists now: the next call may take the fast path
            else:
                store = self._call("opening the store", ClientStore, self.uri)
            self._slow = store
        return self._slow

    def _fast_store(self) -> Store | None:
        if self._fast is None:
            self._fast = False
            if not settings.current().client_only:
                if self.uri.startswith("sqlite:///"):
                    from projectrun.stores.sqlite import SqliteStore

                    self._fast = SqliteStore.open(self.uri) or False
                elif self.uri.startswith(("http://", "https://")):
                    from projectrun.stores.rest import RestStore

                    self._fast = RestStore(self.uri)  # its first call fails fast if the server is down
        return self._fast or None

    def _do(self, what: str, op: Callable[[Store], T], *, persistent: bool = False) -> T:
        """``_once``, retried with backoff while the failure is one time can cure: a locked sqlite
        database always (bounded), an unreachable store only for writes to an existing run
        (``persistent``; a launch that cannot reach its store at start fails at once)."""
        deadline = time.monotonic() + (0.0 if self._gave_up else retry_seconds())
        delay = 0.25
        while True:
            try:
                result = self._once(what, op)
                self._gave_up = False
                return result
            except TrackingError as exc:
                text = str(exc).lower()
                curable = any(t in text for t in (_TRANSIENT if persistent else _LOCKED))
                if not curable or time.monotonic() + delay > deadline:
                    self._gave_up = self._gave_up or curable
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _once(self, what: str, op: Callable[[Store], T]) -> T:
        """``op`` on the fast store if there is one and it can; else through MLflow's client."""
        from projectrun.stores import Unsupported

        fast = self._fast_store()
        if fast:
            try:
                return self._call(what, op, fast)
            except Unsupported:
                pass
        return self._call(what, op, self._client_store())

    def _probe_server(self) -> None:
        """Fail in seconds, not after MLflow's minutes of retries, when the server is down."""
        if self._probed or not self.uri.startswith(("http://", "https://")):
            return
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(f"{self.uri.rstrip('/')}/health",
                                   timeout=min(10.0, settings.current().http_timeout)).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable (a proxy may not serve /health)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"tracking server {self.uri} is not reachable ({reason}); start it "
                                f"or fix MLFLOW_TRACKING_URI") from None
        self._probed = True

    def _call(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one store call; turn its exceptions into one line naming the store."""
        from projectrun.stores import AlreadyExists, Unsupported

        try:
            return fn(*args, **kwargs)
        except (TrackingError, UsageError, Unsupported, AlreadyExists):
            raise
        except OSError as exc:
            if self.uri.startswith(("http://", "https://")):
                reason = re.sub(r"^cannot reach \S+ \((.*)\)$", r"\1", str(getattr(exc, "reason", None) or exc))
                raise TrackingError(f"tracking server {self.uri} is not reachable ({reason}); start it "
                                    f"or fix MLFLOW_TRACKING_URI") from None
            raise TrackingError(f"tracking store {self.uri}: {what} failed: {exc}") from exc
        except Exception as exc:  # MlflowException, HTTP, sqlite and sqlalchemy errors
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrackingError(f"tracking store {self.uri}: {what} failed: {message}") from exc

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        """Flags win over MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID; a missing name is created."""
        from projectrun.stores import AlreadyExists

        name, experiment_id = _experiment_choice(name, experiment_id)
        if experiment_id:
            exp = self._do("looking up the experiment", lambda s: s.get_experiment(experiment_id))
            if exp is None:
                raise UsageError(f"--experiment-id {experiment_id}: no such experiment in {self.uri}")
            self._check_active(exp, f"--experiment-id {experiment_id}")
            return str(exp.experiment_id)
        if not name:
            return "0"
        exp = self._experiment_by_name(name)
        if exp is None:
            try:
                return str(self._do("creating the experiment", lambda s: s.create_experiment(name)))
            except AlreadyExists:  # a parallel launch created it first
                exp = self._experiment_by_name(name)
                if exp is None:  # ... and it was deleted for good since
                    raise TrackingError(f"tracking store {self.uri}: experiment '{name}' was "
                                        f"created and removed meanwhile; try again") from None
        self._check_active(exp, f"--experiment-name {name}")
        return str(exp.experiment_id)

    def _experiment_by_name(self, name: str) -> Experiment | None:
        return self._do("looking up the experiment", lambda s: s.get_experiment_by_name(name))

    def existing_run_experiment(self, run_id: str) -> str:
        """``--run-id``: the run must exist; it keeps its own experiment."""
        experiment = self._do("looking up the run", lambda s: s.run_experiment(run_id))
        if experiment is None:
            raise UsageError(f"--run-id {run_id}: no such run in {self.uri}")
        return str(experiment)

    @staticmethod
    def _check_active(exp: Experiment, flag: str) -> None:
        if exp.lifecycle_stage == "deleted":
            raise UsageError(f"{flag}: experiment '{exp.name}' is deleted; restore it with "
                             f"`mlflow experiments restore --experiment-id {exp.experiment_id}` or pick another")

    def create_run(self, experiment_id: str, tags: dict[str, str], params: dict[str, str],
                   run_name: str | None) -> str:
        """Create the RUNNING run with its tags, then every param in one batch."""
        masked, start = redact.mapping(tags), int(time.time() * 1000)  # the same on each retry
        run_id = self._do("creating the run",
                          lambda s: s.create_run(experiment_id, masked, run_name, start))
        if params:
            self.log_params(run_id, params)
        return run_id

    def run_artifact_uri(self, run_id: str) -> str | None:
        return self._do("reading the run", lambda s: s.run_artifact_uri(run_id))

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        return self._do("listing running runs", lambda s: s.running_runs(experiment_id))

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self._log("logging params", run_id, params, {})

    def log_batch(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        self._log("logging params and tags", run_id, params, tags)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self._log("setting tags", run_id, {}, tags)

    def _log(self, what: str, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """Every param and tag goes through here and create_run: no credential reaches a store."""
        masked_params, masked_tags = redact.mapping(params), redact.mapping(tags)
        self._do(what, lambda s: s.log_batch(run_id, masked_params, masked_tags), persistent=True)

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        self._do("uploading " + path.name, lambda s: s.log_artifact(run_id, path, artifact_dir),
                 persistent=True)

    def set_running(self, run_id: str) -> None:
        """A resumed sweep's parent is RUNNING again until the sweep ends."""
        self._do("reopening the run", lambda s: s.update_run(run_id, "RUNNING", None),
                 persistent=True)

    def terminate(self, run_id: str, status: str, end_time: int | None = None) -> None:
        end = int(time.time() * 1000) if end_time is None else end_time
        self._do(f"marking the run {status}", lambda s: s.update_run(run_id, status, end),
                 persistent=True)
