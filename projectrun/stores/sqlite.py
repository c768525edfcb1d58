"""MLflow's sqlite store, written with the stdlib sqlite3: the same rows MLflow's client writes.

Opening a store through MLflow costs about two seconds (importing mlflow, SQLAlchemy, alembic's
migration check); these statements take milliseconds. The fast path is used only on an existing
database whose tables have exactly the columns written here and no other required column, so a
schema change in a future MLflow makes projectrun fall back to MLflow's client instead of writing
rows MLflow would not expect. Creating a database or an experiment (once per store or name) is
always left to MLflow.
"""
from __future__ import annotations

import os
import random
import shutil
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from projectrun.stores import Experiment, Store, Unsupported

#: columns each table must have; any other column must be nullable or have a default
_WRITTEN = {
    "runs": {"run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id",
             "status", "start_time", "end_time", "source_version", "lifecycle_stage",
             "artifact_uri", "experiment_id", "deleted_time"},
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "experiments": {"experiment_id", "name", "artifact_location", "lifecycle_stage"},
}
# MLflow's limits (mlflow/utils/validation.py); beyond them MLflow's client gives its own error.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
RUN_NAME_TAG = "mlflow.runName"

_ADJECTIVES = ("amber", "brisk", "calm", "daring", "eager", "fleet", "gentle", "hardy", "keen",
               "lucid", "merry", "nimble", "placid", "quiet", "rapid", "sunny", "tidy", "vivid",
               "witty", "zesty")
_NOUNS = ("badger", "crane", "dolphin", "falcon", "gecko", "heron", "ibex", "jaguar", "koala",
          "lynx", "marten", "newt", "otter", "panda", "quail", "raven", "seal", "tern", "wren",
          "yak")


def random_run_name() -> str:
    """MLflow's shape for generated names, ``adjective-noun-NNN``, from our own word lists."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randint(0, 999)}"


def _schema_ok(conn: sqlite3.Connection) -> bool:
    for table, written in _WRITTEN.items():
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
        if not rows:
            return False
        names = {r[1] for r in rows}
        if not written <= names:
            return False
        for _cid, name, _type, notnull, default, pk in rows:
            if name not in written and notnull and default is None and not pk:
                return False
    return True


def check_revision(conn: sqlite3.Connection, uri: str) -> None:
    """Refuse a database another MLflow version made: writing it (or letting MLflow's client
    auto-upgrade it, as it does when a table is missing) would leave rows or a schema that
    version cannot read."""
    from projectrun.errors import TrackingError
    from projectrun.stores import mlflowschema

    known = mlflowschema.revisions()
    if known is None:
        return  # no installed MLflow migrations to compare with: MLflow's client decides
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return  # not an MLflow database yet (MLflow creates it)
    found = row[0] if row else None
    head, older = known
    if found is None or found == head:
        return
    if found in older:
        advice = (f"back it up and run `mlflow db upgrade {uri}`, or use the MLflow version that "
                  f"made it")
    else:
        advice = "it is newer than the installed MLflow: upgrade it (pip install -U mlflow-skinny)"
    raise TrackingError(f"tracking store {uri} has MLflow schema revision {found}, but the "
                        f"installed MLflow writes {head}; projectrun leaves it unchanged: {advice}")


class SqliteStore(Store):
    def __init__(self, path: str, conn: sqlite3.Connection, workspace: bool) -> None:
        self.path = path
        self.conn = conn
        #: MLflow 3.x scopes experiments by workspace; projects use the default one
        self.workspace = workspace
        self._artifact_uris: dict[str, str] = {}

    @classmethod
    def open(cls, uri: str) -> SqliteStore | None:
        """The fast store for ``uri``, or None when MLflow's client must handle it."""
        rest = uri[len("sqlite:///"):]
        if "?" in rest or not rest.startswith("/") or os.environ.get("MLFLOW_WORKSPACE"):
            return None
        path = urllib.parse.unquote(rest)
        if not os.path.isfile(path):
            return None  # MLflow creates and migrates new databases
        try:
            # One connection shared by a sweep's worker threads; _Transaction serialises them.
            conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            check_revision(conn, uri)
            if not _schema_ok(conn):
                conn.close()
                return None
            columns = {r[1] for r in conn.execute("PRAGMA table_info(experiments)")}
        except sqlite3.Error:
            return None
        return cls(path, conn, "workspace" in columns)

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        """One row, read under the same lock as the writes (the connection is shared)."""
        with _THREADS:
            return self.conn.execute(sql, args).fetchone()

    def _experiment_where(self) -> str:
        return " AND workspace = 'default'" if self.workspace else ""

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        if not experiment_id.isdigit():
            return None
        row = self._one("SELECT experiment_id, name, lifecycle_stage FROM experiments "
                        "WHERE experiment_id = ?" + self._experiment_where(), (int(experiment_id),))
        return Experiment(str(row[0]), row[1], row[2]) if row else None

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        row = self._one("SELECT experiment_id, name, lifecycle_stage FROM experiments "
                        "WHERE name = ?" + self._experiment_where(), (name,))
        return Experiment(str(row[0]), row[1], row[2]) if row else None

    def create_experiment(self, name: str) -> str:
        raise Unsupported("experiments are created by MLflow (artifact location rules)")

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str | None,
                   start_time: int) -> str:
        import uuid

        _check_tags(tags)
        row = self._one("SELECT artifact_location, lifecycle_stage FROM experiments "
                        "WHERE experiment_id = ?", (int(experiment_id),))
        if row is None or row[1] != "active":
            raise Unsupported("let MLflow report the missing or deleted experiment")
        if run_name and tags.get(RUN_NAME_TAG) not in (None, run_name):
            raise Unsupported("let MLflow refuse a run name that contradicts the mlflow.runName tag")
        run_id = uuid.uuid4().hex
        name = run_name or tags.get(RUN_NAME_TAG) or random_run_name()
        tags = {**tags, RUN_NAME_TAG: name}
        artifact_uri = _append_path(row[0], run_id, "artifacts")
        with self._write():
            self.conn.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
                "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
                "artifact_uri, experiment_id, deleted_time) "
                "VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, NULL)",
                (run_id, name, tags.get("mlflow.user", "unknown"), start_time, artifact_uri,
                 int(experiment_id)))
            self.conn.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                                  [(k, v, run_id) for k, v in tags.items()])
        self._artifact_uris[run_id] = artifact_uri
        return run_id

    def log_batch(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        _check_tags(tags)
        for key, value in params.items():
            if len(key) > MAX_KEY or len(value) > MAX_PARAM_VALUE:
                raise Unsupported("let MLflow report the over-long param")
        with self._write():
            self._active(run_id)
            for key, value in params.items():
                old = self._one("SELECT value FROM params WHERE key = ? AND run_uuid = ?", (key, run_id))
                if old is not None and old[0] != value:
                    raise ValueError(f"INVALID_PARAMETER_VALUE: changing param values is not allowed; "
                                     f"param '{key}' was '{old[0]}', now '{value}'")
                if old is None:
                    self.conn.execute("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                                      (key, value, run_id))
            self.conn.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                                  [(k, v, run_id) for k, v in tags.items()])
            if RUN_NAME_TAG in tags:  # MLflow keeps runs.name in step with the tag
                self.conn.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (tags[RUN_NAME_TAG], run_id))

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        with self._write():
            self._active(run_id)
            self.conn.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                              (status, end_time, run_id))

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        uri = self._artifact_uris.get(run_id)
        if uri is None:
            row = self._one("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
            if row is None:
                raise Unsupported("unknown run")
            uri = row[0]
        local = _local_path(uri)
        if local is None:
            raise Unsupported("remote artifact stores go through MLflow's artifact repositories")
        target = Path(local, artifact_dir)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.name)

    def run_experiment(self, run_id: str) -> str | None:
        row = self._one("SELECT experiment_id FROM runs WHERE run_uuid = ?", (run_id,))
        return str(row[0]) if row else None

    def run_artifact_uri(self, run_id: str) -> str | None:
        if run_id not in self._artifact_uris:
            row = self._one("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,))
            if row is None:
                return None
            self._artifact_uris[run_id] = str(row[0])
        return self._artifact_uris[run_id]

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        with _THREADS:
            ids = [r[0] for r in self.conn.execute(
                "SELECT run_uuid FROM runs WHERE experiment_id = ? AND status = 'RUNNING' "
                "AND lifecycle_stage = 'active'", (int(experiment_id),)).fetchall()]
            return [(run_id, dict(self.conn.execute(
                "SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall()))
                for run_id in ids]

    def _active(self, run_id: str) -> None:
        row = self._one("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,))
        if row is None or row[0] != "active":
            raise Unsupported("let MLflow report the missing or deleted run")

    def _write(self) -> _Transaction:
        return _Transaction(self.conn)


_THREADS = threading.RLock()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: take sqlite's write lock up front (waits up to the timeout).

    The connection is shared between threads, so a process-wide lock keeps one transaction at
    a time on it; other processes are kept out by sqlite's own locking."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        _THREADS.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            _THREADS.release()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            _THREADS.release()


def _check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if len(key) > MAX_KEY or len(value) > MAX_TAG_VALUE:
            raise Unsupported("let MLflow report the over-long tag")


def _append_path(base: str, *parts: str) -> str:
    """MLflow's append_to_uri_path for what experiments hold: a path or a URI."""
    parsed = urllib.parse.urlparse(base)
    if parsed.scheme and len(parsed.scheme) > 1:
        path = "/".join([parsed.path.rstrip("/"), *parts])
        return urllib.parse.urlunparse(parsed._replace(path=path))
    return "/".join([base.rstrip("/"), *parts])


def _local_path(uri: str) -> str | None:
    parsed = urllib.parse.urlparse(uri)
    if not parsed.scheme or len(parsed.scheme) == 1:
        return uri
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return urllib.parse.unquote(parsed.path)
    return None
