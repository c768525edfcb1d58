"""The sqlite fast path writes what MLflow's client writes, and steps aside when unsure."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner, client_for

from projectrun import tracking
from projectrun.errors import TrackingError


def _runs(workdir: Path, exp: str = "0") -> list:  # type: ignore[type-arg]
    return client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs([exp], order_by=["start_time ASC"])


def test_fast_and_client_paths_record_the_same_run(cli: CliRunner, workdir: Path) -> None:
    assert cli(str(FIXTURES / "logger"), "-P", "label=a b").returncode == 0  # creates the db (client)
    fast = cli(str(FIXTURES / "logger"), "-P", "label=a b")
    slow = cli(str(FIXTURES / "logger"), "-P", "label=a b", env={"PROJECTRUN_TRACKING": "client"})
    assert fast.returncode == 0 and slow.returncode == 0, fast.stderr + slow.stderr
    _, a, b = _runs(workdir)

    def comparable(run):  # type: ignore[no-untyped-def]
        tags = {k: v for k, v in run.data.tags.items()
                if k != "mlflow.runName" and not k.startswith("projectrun.launcher.")}  # per process
        info = run.info
        return (tags, run.data.params, run.data.metrics, info.status, info.user_id,
                info.lifecycle_stage, info.artifact_uri.replace(info.run_id, "RUN"),
                bool(info.end_time and info.end_time >= info.start_time))

    assert comparable(a) == comparable(b)
    assert a.info.run_name == a.data.tags["mlflow.runName"] and a.info.run_name
    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    for run in (a, b):
        names = [f.path for f in client.list_artifacts(run.info.run_id, "projectrun")]
        assert names == ["projectrun/output.log"]


def test_run_name_on_the_fast_path_and_on_a_continued_run(cli: CliRunner, workdir: Path) -> None:
    """--run-name once the database exists (the fast path writes the run), and with --run-id,
    which MLflow honours by renaming the continued run."""
    assert cli(str(FIXTURES / "logger")).returncode == 0  # creates the db (client)
    res = cli(str(FIXTURES / "logger"), "--run-name", "mine")
    assert res.returncode == 0, res.stderr
    first, mine = _runs(workdir)
    assert mine.info.run_name == "mine" and mine.data.tags["mlflow.runName"] == "mine"
    res = cli(str(FIXTURES / "logger"), "--run-id", first.info.run_id, "--run-name", "renamed")
    assert res.returncode == 0, res.stderr
    renamed = client_for(f"sqlite:///{workdir / 'mlflow.db'}").get_run(first.info.run_id)
    assert renamed.info.run_name == "renamed" and renamed.data.tags["mlflow.runName"] == "renamed"
    assert len(_runs(workdir)) == 2


@pytest.mark.parametrize("path", ["fast", "client"])
def test_conflicting_run_names_and_param_values_are_refused_as_mlflow_refuses_them(
        path: str, sqlite_store_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's stores refuse a run whose run_name and mlflow.runName tag differ, and a param
    logged again with another value (mlflow#3536: "Changing param values is not allowed"). The
    fast path must refuse both too, never write what MLflow's client would not."""
    from projectrun.stores.sqlite import SqliteStore

    if path == "client":
        monkeypatch.setenv("PROJECTRUN_TRACKING", "client")
    else:
        assert SqliteStore.open(sqlite_store_uri) is not None  # the fast path applies here
    tracker = tracking.Tracker(sqlite_store_uri)
    client = client_for(sqlite_store_uri)
    with pytest.raises(TrackingError, match="Both 'run_name' argument and 'mlflow.runName' tag "
                                            "are specified, but with different values"):
        tracker.create_run("0", {"mlflow.runName": "from-tag"}, {}, "from-flag")
    assert client.search_runs(["0"]) == []  # nothing half-written
    same = tracker.create_run("0", {"mlflow.runName": "same"}, {}, "same")
    assert client.get_run(same).info.run_name == "same"

    run_id = tracker.create_run("0", {}, {"alpha": "0.5"}, "mine")
    tracker.log_params(run_id, {"alpha": "0.5"})  # the same value again is no change
    with pytest.raises(TrackingError, match="(?i)changing param values is not allowed"):
        tracker.log_params(run_id, {"alpha": "0.50"})
    run = client.get_run(run_id)
    assert run.data.params == {"alpha": "0.5"} and run.info.run_name == "mine"


def test_unknown_schema_falls_back_to_mlflow(cli: CliRunner, workdir: Path) -> None:
    assert cli(str(FIXTURES / "logger")).returncode == 0
    with sqlite3.connect(workdir / "mlflow.db") as conn:  # a future MLflow adds a required column
        conn.execute("ALTER TABLE tags ADD COLUMN future TEXT NOT NULL DEFAULT 'x'")
        conn.execute("ALTER TABLE params ADD COLUMN required_thing TEXT")
    from projectrun.stores.sqlite import SqliteStore

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert SqliteStore.open(uri) is not None  # nullable or defaulted new columns are fine
    # a NOT NULL column without default on runs: the fast path must step aside
    with sqlite3.connect(workdir / "mlflow.db") as conn:
        conn.execute("ALTER TABLE runs ADD COLUMN must_have INTEGER")
    with sqlite3.connect(workdir / "mlflow.db") as conn:
        conn.execute("PRAGMA writable_schema = 1")
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
        conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'runs'",
                     (sql.replace("must_have INTEGER", "must_have INTEGER NOT NULL"),))
    assert SqliteStore.open(uri) is None
