"""Crash recovery: a launcher killed with SIGKILL leaves a RUNNING run; reconcile ends it FAILED,
never touching a run whose launcher lives or that another host launched. Real processes, a real
sqlite store and a real `mlflow server`."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner, child_env, client_for

pytestmark = pytest.mark.slow


def sleeper(tmp_path: Path) -> Path:
    proj = tmp_path / "sleeper"
    proj.mkdir(parents=True)
    (proj / "MLproject").write_text(
        "name: sleeper\nentry_points:\n  main:\n    command: \"echo sleeper-output && echo $$ > child.pid && "
        "sleep 300\"\n")
    return proj


def start_launch(proj: Path, workdir: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = child_env({"PROJECTRUN_HOME": os.environ["PROJECTRUN_HOME"], **(extra or {})})
    proc = subprocess.Popen([sys.executable, "-m", "projectrun", str(proj), "--env-manager", "local"],
                            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (proj / "child.pid").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    return proc


def kill_child(proj: Path) -> None:
    pid = int((proj / "child.pid").read_text())
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except ProcessLookupError:
        pass
    (proj / "child.pid").unlink()


def killed_launch(proj: Path, workdir: Path, extra: dict[str, str] | None = None,
                  tmpdir: Path | None = None) -> None:
    """A launch whose launcher dies by SIGKILL (its entry point is cleaned up by the test); with
    ``tmpdir`` (its TMPDIR), only once its log there holds the entry point's first line."""
    proc = start_launch(proj, workdir, {**(extra or {}), **({"TMPDIR": str(tmpdir)} if tmpdir else {})})
    deadline = time.monotonic() + 60
    while tmpdir and not any("sleeper-output" in p.read_text() for p in tmpdir.glob("projectrun-*/output.log")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    kill_child(proj)


def runs_of(uri: str, experiment: str = "0"):  # type: ignore[no-untyped-def]
    return client_for(uri).search_runs([experiment])


def test_reconcile_ends_only_runs_whose_launcher_is_gone(cli: CliRunner, workdir: Path,
                                                         tmp_path: Path) -> None:
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    live = start_launch(sleeper(tmp_path / "live"), workdir)  # its launcher stays alive
    proj, tmpdir = sleeper(tmp_path), tmp_path / "tmp"
    tmpdir.mkdir()
    killed_launch(proj, workdir, tmpdir=tmpdir)  # (its own reconcile leaves the live run alone)
    client = client_for(uri)
    [orphan] = [r for r in runs_of(uri) if r.data.tags["projectrun.launcher.pid"] != str(live.pid)]
    assert orphan.info.status == "RUNNING"
    other_host = client.create_run("0", tags={"projectrun.launcher.host": "elsewhere.invalid",
                                              "projectrun.launcher.pid": "1"}).info.run_id
    foreign = client.create_run("0").info.run_id  # not launched by projectrun
    reused = client.create_run("0", tags={  # a live pid, but not the process that launched it
        "projectrun.launcher.host": socket.gethostname(),
        "projectrun.launcher.pid": str(os.getpid()),
        "projectrun.launcher.identity": "00000000-boot:1"}).info.run_id
    try:
        dry = cli("runs", "reconcile", "--dry-run", "--json", env={"MLFLOW_TRACKING_URI": uri})
        assert dry.returncode == 0, dry.stderr
        states = {f["run_id"]: f["state"] for f in json.loads(dry.stdout)}
        assert states[orphan.info.run_id] == "dead" and states[reused] == "dead"
        assert states[other_host] == "unknown" and states[foreign] == "unknown"
        assert list(states.values()).count("alive") == 1  # the live launch
        assert client.get_run(orphan.info.run_id).info.status == "RUNNING"  # dry run: untouched

        res = cli("runs", "reconcile", env={"MLFLOW_TRACKING_URI": uri})
        assert res.returncode == 0, res.stderr
        assert "ended 2" in res.stderr
        ended = client.get_run(orphan.info.run_id)
        assert ended.info.status == "FAILED" and "is gone" in ended.data.tags["projectrun.reconciled"]
        # what the killed launcher had logged is not lost: uploaded, and its temp dir removed
        assert "output was recovered" in ended.data.tags["projectrun.reconciled"]
        log = client.download_artifacts(orphan.info.run_id, "projectrun/output.log", str(tmp_path))
        assert Path(log).read_text().startswith("sleeper-output")
        assert list(tmpdir.iterdir()) == []
        for run_id in (other_host, foreign):
            assert client.get_run(run_id).info.status == "RUNNING"
        alive = [r for r in runs_of(uri) if r.info.run_id not in (orphan.info.run_id, other_host,
                                                                  foreign, reused)]
        assert [r.info.status for r in alive] == ["RUNNING"]
    finally:
        os.killpg(live.pid, signal.SIGTERM)
        live.wait(timeout=60)


def test_a_later_launch_ends_the_orphan(cli: CliRunner, workdir: Path, tmp_path: Path,
                                        mlflow_server: str) -> None:
    proj = sleeper(tmp_path)
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "reconcile-later"}
    killed_launch(proj, workdir, env)
    client = client_for(mlflow_server)
    exp = client.get_experiment_by_name("reconcile-later").experiment_id
    [orphan] = client.search_runs([exp])
    assert orphan.info.status == "RUNNING"
    res = cli(str(FIXTURES / "logger"), "-P", "value=1", env=env)
    assert res.returncode == 0, res.stderr
    assert f"ended abandoned run {orphan.info.run_id} FAILED" in res.stderr
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"
    statuses = sorted(r.info.status for r in client.search_runs([exp]))
    assert statuses == ["FAILED", "FINISHED"]
