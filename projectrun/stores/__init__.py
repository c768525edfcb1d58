"""Tracking stores: the few primitive operations a launch needs, behind one protocol.

``client.ClientStore`` does everything through MLflow's own client library and works with every
store MLflow supports. It costs seconds per process (importing mlflow, opening a SQLAlchemy
store, checking migrations), which is most of `mlflow run`'s launch overhead. So for the two
common stores there are fast paths that write exactly what MLflow's client writes:
``sqlite.SqliteStore`` (a database at a schema revision we verified, via the stdlib sqlite3) and
``rest.RestStore`` (an ``http(s)://`` tracking server, via its documented REST API). A fast path
raises ``Unsupported`` for anything it is not sure about, and the tracker then uses MLflow's
client for that call.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Protocol


class Unsupported(Exception):
    """A fast path cannot do this (new schema, remote artifact store...): use MLflow's client."""


class AlreadyExists(Exception):
    """create_experiment lost a race with another launch; look the experiment up again."""


class Experiment(NamedTuple):
    experiment_id: str
    name: str
    lifecycle_stage: str


class Store(Protocol):
    """What the tracker asks of a store; ``SqliteStore``, ``RestStore`` and ``ClientStore``
    subclass it, so mypy checks each against these signatures.

    Any call on a fast path may raise ``Unsupported``: the tracker then makes the same call on
    ``ClientStore``, which never raises it. Other exceptions are the store's own (sqlite3,
    HTTP, MlflowException); the tracker turns them into one ``TrackingError`` line.
    """

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        """None for no such experiment, a malformed id included."""
        ...

    def get_experiment_by_name(self, name: str) -> Experiment | None: ...

    def create_experiment(self, name: str) -> str:
        """The new experiment's id; ``AlreadyExists`` if another launch created it first."""
        ...

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str | None,
                   start_time: int) -> str:
        """A RUNNING run; ``mlflow.runName`` is set (given, or generated as MLflow does)."""
        ...

    def log_batch(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None: ...

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        """``status`` RUNNING (reopened; end_time None) or a terminal one with its end time."""
        ...

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        """The file ``path`` into the run's artifacts under ``artifact_dir`` ("" for the root)."""
        ...

    def run_experiment(self, run_id: str) -> str | None:
        """The experiment of an existing run, or None if there is no such run."""
        ...

    def run_artifact_uri(self, run_id: str) -> str | None:
        """Where the run's artifacts go (a docker run mounts a local one)."""
        ...

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        """(run id, tags) of the experiment's active RUNNING runs (for reconciling orphans)."""
        ...
