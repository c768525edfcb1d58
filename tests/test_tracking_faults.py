"""Tracking store faults: a server that goes away mid-run, a sqlite database locked by another
writer. Nothing is lost, nothing is recorded twice, no "database is locked" reaches the user."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CliRunner, child_env, client_for, free_port

pytestmark = pytest.mark.slow


class Server:
    """A real `mlflow server` that the test can stop and start again on the same port and db."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            cwd=self.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
            start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP the server's processes: connections are accepted, nothing is answered."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def project(tmp_path: Path, command: str) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "MLproject").write_text(
        "name: faults\nentry_points:\n  main:\n    parameters:\n      n: {type: int, default: 1}\n"
        f"    command: \"{command}\"\n")
    return proj


@pytest.mark.parametrize("fault", ["gone", "stalled"])
def test_server_gone_or_stalled_mid_run_is_spooled_then_replayed(
        cli: CliRunner, workdir: Path, tmp_path: Path, server: Server, fault: str) -> None:
    """"stalled": the server accepts connections and never answers; before, each request
    waited 30 s whatever MLFLOW_HTTP_REQUEST_TIMEOUT said."""
    proj = project(tmp_path, "echo started; touch started; sleep 4; echo done-{n}")
    env = child_env({"PROJECTRUN_HOME": os.environ["PROJECTRUN_HOME"], "MLFLOW_TRACKING_URI": server.url,
                     "MLFLOW_EXPERIMENT_NAME": "faults", "PROJECTRUN_TRACKING_RETRY": "2",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"})
    proc = subprocess.Popen([sys.executable, "-m", "projectrun", str(proj), "-P", "n=7",
                             "--env-manager", "local"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (proj / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # params are logged in the background as the entry point starts
    server.freeze() if fault == "stalled" else server.stop()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err  # the entry point succeeded; its record is kept, not lost
    assert "done-7" in out and "Traceback" not in err
    assert "kept in" in err and "the next projectrun command that reaches the store" in err
    spooled = list((Path(os.environ["PROJECTRUN_HOME"]) / "spool").glob("*.json"))
    assert len(spooled) == 1
    run_id = json.loads(spooled[0].read_text())["run_id"]

    server.freeze(False) if fault == "stalled" else server.start()
    res = cli("runs", "reconcile", "--experiment-name", "faults",
              env={"MLFLOW_TRACKING_URI": server.url})
    assert res.returncode == 0, res.stderr
    assert f"recorded run {run_id} FINISHED" in res.stderr
    client = client_for(server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"n": "7"}
    assert "projectrun.reconciled" not in run.data.tags  # not taken for an abandoned run
    log = Path(client.download_artifacts(run_id, "projectrun/output.log", str(tmp_path))).read_text()
    assert "done-7" in log
    exp = client.get_experiment_by_name("faults").experiment_id
    assert len(client.search_runs([exp])) == 1  # once, no duplicate
    assert not list((Path(os.environ["PROJECTRUN_HOME"]) / "spool").glob("*.json"))


def test_server_down_at_start_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    proj = project(tmp_path, "echo never")
    res = cli(str(proj), env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}, timeout=60)
    assert res.returncode == 1 and "never" not in res.stdout
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert len(errors) == 1 and "is not reachable" in errors[0]


@pytest.mark.parametrize("path", ["fast", "client"])
def test_locked_sqlite_database_is_waited_for(cli: CliRunner, workdir: Path, tmp_path: Path,
                                               path: str) -> None:
    db = workdir / "mlflow.db"
    first = cli(str(project(tmp_path, "echo warm")), "--env-manager", "local")  # creates the db
    assert first.returncode == 0, first.stderr
    proj = tmp_path / "second"
    proj.mkdir()
    (proj / "MLproject").write_text("name: locked\nentry_points:\n  main:\n"
                                    "    command: \"touch locked-now; sleep 1; echo finished-ok\"\n")
    holder_ready = threading.Event()

    def hold_lock() -> None:
        while not (proj / "locked-now").exists():
            time.sleep(0.02)
        conn = sqlite3.connect(db, timeout=60, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")  # another writer, as a UI or MLflow's own client can be
        holder_ready.set()
        time.sleep(8)  # longer than MLflow's client waits for sqlite on its own (5 s)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    env = {"PROJECTRUN_TRACKING": "client"} if path == "client" else {}
    res = cli(str(proj), "--env-manager", "local", env=env, timeout=180)
    holder.join()
    assert holder_ready.is_set()
    assert res.returncode == 0, res.stderr
    assert "database is locked" not in res.stderr and "error" not in res.stderr
    runs = client_for(f"sqlite:///{db}").search_runs(["0"])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
