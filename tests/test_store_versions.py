"""A sqlite store made by another MLflow version: refused in one line and left exactly as it was
(MLflow's own client would auto-upgrade an older one, making it unreadable for its MLflow)."""
from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner

pytestmark = pytest.mark.slow
OLD_MLFLOW = "mlflow-skinny==2.22.1"


@pytest.fixture(scope="module")
def old_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with a real MLflow 2.x (uv from PyPI), to make and read an old database."""
    import uv

    venv = tmp_path_factory.mktemp("mlflow2") / "venv"
    uv_bin = uv.find_uv_bin()
    subprocess.run([uv_bin, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([uv_bin, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    OLD_MLFLOW, "sqlalchemy<2.1", "alembic", "setuptools<81"], check=True)
    return venv / "bin" / "python"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("tracking", ["fast", "client"])
def test_older_mlflow_database_is_refused_and_left_readable(
        cli: CliRunner, workdir: Path, old_mlflow: Path, tracking: str) -> None:
    db = workdir / "old.db"
    code = (f"from mlflow.tracking import MlflowClient; c = MlflowClient('sqlite:///{db}'); "
            f"e = c.create_experiment('old'); c.set_terminated(c.create_run(e).info.run_id)")
    subprocess.run([str(old_mlflow), "-c", code], check=True, capture_output=True)
    before = digest(db)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}", "MLFLOW_EXPERIMENT_NAME": "old"}
    if tracking == "client":
        env["PROJECTRUN_TRACKING"] = "client"
    res = cli(str(FIXTURES / "logger"), "-P", "value=1", env=env)
    assert res.returncode == 1
    line = one_error(res.stderr)
    assert "schema revision" in line and "mlflow db upgrade" in line
    assert digest(db) == before  # not a byte changed
    read = subprocess.run([str(old_mlflow), "-c", (
        f"from mlflow.tracking import MlflowClient; c = MlflowClient('sqlite:///{db}'); "
        f"print(len(c.search_runs([c.get_experiment_by_name('old').experiment_id])))")],
        check=True, capture_output=True, text=True)
    assert read.stdout.strip() == "1"  # its own MLflow still reads it


def test_unknown_revision_is_refused(cli: CliRunner, workdir: Path) -> None:
    first = cli(str(FIXTURES / "logger"), "-P", "value=1")  # the installed MLflow makes the db
    assert first.returncode == 0, first.stderr
    db = workdir / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    before = digest(db)
    res = cli(str(FIXTURES / "logger"), "-P", "value=2")
    assert res.returncode == 1
    line = one_error(res.stderr)
    assert "ffffffffffff" in line and "newer than the installed MLflow" in line
    assert digest(db) == before
