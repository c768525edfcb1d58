"""tracking: which store a launch (and its child) writes to, and what a run looks like in a real
MLflow sqlite store after projectrun created, logged and ended it.

In-process: a Tracker on a copy of an MLflow-created database, read back with MLflow's own
client. The same through the CLI, and a tracking server, are in test_run.py and
test_store_*.py; store faults (server gone, database locked) in test_tracking_faults.py.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from conftest import client_for, free_port

from projectrun import tracking
from projectrun.errors import TrackingError, UsageError

# --- the store URI the child gets -------------------------------------------------------------

@pytest.mark.parametrize(("given", "expected"), [
    ("sqlite:///mlflow.db", "sqlite:///CWD/mlflow.db"),
    ("sqlite:///sub/dir/x.db?timeout=5", "sqlite:///CWD/sub/dir/x.db?timeout=5"),
    ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
    ("file:mlruns", "file://CWD/mlruns"),
    ("file:./runs/../mlruns", "file://CWD/mlruns"),
    ("file:/abs/mlruns", "file:///abs/mlruns"),
    ("file:///abs/mlruns", "file:///abs/mlruns"),
    ("mlruns", "file://CWD/mlruns"),           # a plain path is a file store
    ("./a/../mlruns", "file://CWD/mlruns"),
    ("/abs/mlruns", "file:///abs/mlruns"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://user@host/mlflow", "https://user@host/mlflow"),
    ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
    ("databricks", "databricks"),               # MLflow's names for Databricks-hosted stores
    ("databricks://profile", "databricks://profile"),
    ("databricks-uc", "databricks-uc"),
])
def test_relative_store_uris_are_made_absolute(tmp_path: Path, given: str, expected: str) -> None:
    """The child runs in the project directory: a relative URI passed on unchanged (as MLflow
    does) would open another, empty store there."""
    assert tracking.absolute_tracking_uri(given, tmp_path) == expected.replace("CWD", str(tmp_path))


def test_the_default_store_is_mlflow_3s(tmp_path: Path) -> None:
    """sqlite:///<cwd>/mlflow.db, unless ./mlruns already holds an experiment: MLflow keeps using
    a file store it wrote before."""
    assert tracking.absolute_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.absolute_tracking_uri("", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "mlruns" / ".trash").mkdir(parents=True)  # no experiment in it yet
    assert tracking.absolute_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "mlruns" / "0").mkdir()
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    assert tracking.absolute_tracking_uri(None, tmp_path) == (tmp_path / "mlruns").as_uri()


def test_an_unparseable_store_uri_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        tracking.absolute_tracking_uri("http://[", tmp_path)
    assert str(err.value) == ("MLFLOW_TRACKING_URI=http://[: not a valid URI (Invalid IPv6 URL); "
                              "fix or unset it")


@pytest.mark.parametrize(("text", "seconds"), [("", 60.0), ("0", 0.0), ("2.5", 2.5), (" 30 ", 30.0),
                                               ("inf", math.inf)])
def test_retry_seconds(monkeypatch: pytest.MonkeyPatch, text: str, seconds: float) -> None:
    monkeypatch.setenv("PROJECTRUN_TRACKING_RETRY", text)
    assert tracking.retry_seconds() == seconds


@pytest.mark.parametrize("text", ["-1", "soon", "nan", "60s"])
def test_bad_retry_seconds_are_a_usage_error(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PROJECTRUN_TRACKING_RETRY", text)
    with pytest.raises(UsageError) as err:
        tracking.retry_seconds()
    assert str(err.value) == (f"PROJECTRUN_TRACKING_RETRY={text}: give a number of seconds "
                              f"(e.g. 60, or 0 for no retries)")


# --- a real sqlite store ------------------------------------------------------------------------

def test_a_run_created_logged_and_ended(sqlite_store_uri: str, tmp_path: Path) -> None:
    tracker = tracking.Tracker(sqlite_store_uri)
    tags = {**tracking.base_tags("/src/proj", "main"), tracking.TAG_BACKEND: "local"}
    before = int(time.time() * 1000)
    run_id = tracker.create_run("0", tags, {"alpha": "0.5", "label": "a b"}, "my-run")
    tracker.log_batch(run_id, {"extra": "1"}, {tracking.TAG_COMMAND: "python train.py 0.5"})
    log = tmp_path / "output.log"
    log.write_text("hello from the run\n")
    tracker.log_artifact(run_id, log, tracking.LOG_ARTIFACT_DIR)
    client = client_for(sqlite_store_uri)
    assert client.get_run(run_id).info.status == "RUNNING"
    tracker.terminate(run_id, tracking.FAILED)

    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.info.end_time >= run.info.start_time >= before
    assert run.info.run_name == "my-run" and run.data.tags["mlflow.runName"] == "my-run"
    assert run.data.params == {"alpha": "0.5", "label": "a b", "extra": "1"}  # as given
    assert run.info.user_id == tags["mlflow.user"]
    assert {k: run.data.tags[k] for k in tags} == tags
    assert run.data.tags["projectrun.command"] == "python train.py 0.5"
    [artifact] = client.list_artifacts(run_id, "projectrun")
    assert artifact.path == "projectrun/output.log"
    local = client.download_artifacts(run_id, "projectrun/output.log", str(tmp_path / "dl"))
    assert Path(local).read_text() == "hello from the run\n"
    assert tracker.existing_run_experiment(run_id) == "0"


def test_a_run_without_a_name_gets_one(sqlite_store_uri: str) -> None:
    tracker = tracking.Tracker(sqlite_store_uri)
    run_id = tracker.create_run("0", tracking.base_tags("/p", "main"), {}, None)
    run = client_for(sqlite_store_uri).get_run(run_id)
    assert run.info.run_name and run.info.run_name == run.data.tags["mlflow.runName"]


def test_secrets_never_reach_the_store(sqlite_store_uri: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh12345")
    monkeypatch.setenv("PROJECTRUN_SECRET_VARS", "DB_PASS")
    monkeypatch.setenv("DB_PASS", "hunter22")
    tracker = tracking.Tracker(sqlite_store_uri)
    run_id = tracker.create_run("0", {"mlflow.source.name": "https://bob:pw1234@host/r.git"},
                                {"token": "hf_abcdefgh12345", "dsn": "pg://u:hunter22@db/x"}, None)
    tracker.set_tags(run_id, {"note": "used hunter22"})
    run = client_for(sqlite_store_uri).get_run(run_id)
    assert run.data.params == {"token": "***", "dsn": "pg://db/x"}
    assert run.data.tags["mlflow.source.name"] == "https://host/r.git"
    assert run.data.tags["note"] == "used ***"


def test_experiments_by_name_id_and_environment(sqlite_store_uri: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = tracking.Tracker(sqlite_store_uri)
    assert tracker.experiment_id(None, None) == "0"  # Default, as in MLflow
    created = tracker.experiment_id("lr-search", None)  # created when missing
    assert created != "0"
    assert tracker.experiment_id("lr-search", None) == created
    assert tracker.experiment_id(None, created) == created
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lr-search")
    assert tracker.experiment_id(None, None) == created
    assert tracker.experiment_id(None, "0") == "0"  # a flag wins over the environment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "0")
    with pytest.raises(UsageError, match="both MLFLOW_EXPERIMENT_NAME and MLFLOW_EXPERIMENT_ID "
                                         "are set; unset one"):
        tracker.experiment_id(None, None)
    with pytest.raises(UsageError, match="give only one of --experiment-name and --experiment-id"):
        tracker.experiment_id("a", "0")


def test_unknown_and_deleted_experiments_and_runs(sqlite_store_uri: str) -> None:
    tracker = tracking.Tracker(sqlite_store_uri)
    with pytest.raises(UsageError) as err:
        tracker.experiment_id(None, "999")
    assert str(err.value) == f"--experiment-id 999: no such experiment in {sqlite_store_uri}"
    with pytest.raises(UsageError, match=f"--run-id abc: no such run in {sqlite_store_uri}"):
        tracker.existing_run_experiment("abc")
    client = client_for(sqlite_store_uri)
    gone = client.create_experiment("old")
    client.delete_experiment(gone)
    with pytest.raises(UsageError) as err:
        tracker.experiment_id("old", None)
    assert str(err.value) == (f"--experiment-name old: experiment 'old' is deleted; restore it "
                              f"with `mlflow experiments restore --experiment-id {gone}` or pick "
                              f"another")


def test_an_unreachable_server_fails_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries for minutes; a launch that cannot reach its store stops at once."""
    monkeypatch.setenv("PROJECTRUN_TRACKING_RETRY", "60")
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as err:
        tracking.Tracker(uri).experiment_id("x", None)
    assert str(err.value).startswith(f"tracking server {uri} is not reachable (")
    assert str(err.value).endswith("); start it or fix MLFLOW_TRACKING_URI")
    assert err.value.exit_code == 1
    assert time.monotonic() - started < 30
