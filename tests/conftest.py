"""Shared test fixtures: real CLI runs in a clean working directory, a real MLflow store and server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
BIN = str(Path(sys.executable).parent)

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The developer's MLflow settings must not leak into tests; the test venv's python comes first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PROJECTRUN_"))}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra or {})
    return env


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PROJECTRUN_HOME", str(tmp_path_factory.getbasetemp() / "projectrun-home"))
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory: the default store sqlite:///mlflow.db lands here."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def cli(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRunner:
    """Run ``python -m projectrun ARGS`` as a user would, in ``workdir``."""
    home = str(tmp_path_factory.getbasetemp() / "projectrun-home")

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "projectrun", *args], cwd=cwd or workdir, text=True,
            capture_output=True, timeout=timeout, check=False,
            env=child_env({"PROJECTRUN_HOME": home, **(env or {})}),
        )

    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend; yields its URL."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed once the server has stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
        time.sleep(0.5)
    try:
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def client_for(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite database as MLflow's own client creates it (tables, Default experiment),
    made once per session: creating one costs MLflow's migrations, seconds each time."""
    root = tmp_path_factory.mktemp("mlflow-db")
    here = os.getcwd()
    os.chdir(root)  # the Default experiment's artifacts go to ./mlruns of the creating process
    try:
        client_for(f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(here)
    return root / "mlflow.db"


@pytest.fixture
def sqlite_store_uri(tmp_path: Path, mlflow_db_template: Path) -> str:
    """A fresh copy of that database in this test's tmp_path; its ``sqlite:///`` URI. The
    database exists, so projectrun's sqlite fast path applies to it."""
    import shutil

    shutil.copyfile(mlflow_db_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def only_run(uri: str, experiment_name: str | None = None):  # type: ignore[no-untyped-def]
    """The single run in an experiment (Default when no name is given)."""
    client = client_for(uri)
    exp_id = "0" if experiment_name is None else client.get_experiment_by_name(experiment_name).experiment_id
    runs = client.search_runs([exp_id])
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return runs[0]


@pytest.fixture(scope="session")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A bare git repository with branches and tags (gitrepos.make_origin), once per session."""
    from gitrepos import make_origin

    return make_origin(tmp_path_factory.mktemp("origin"))


@pytest.fixture(scope="session")
def daemon(origin: Any) -> Iterator[Any]:
    """A real `git daemon` on 127.0.0.1 serving ``origin``; its URL is ``daemon.url``."""
    from gitrepos import start_daemon

    served = start_daemon(origin.bare.parent)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def conda_channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real conda channel tree (conda-forge/ and extra/) built once per session."""
    from condachannel import build_channel

    return build_channel(tmp_path_factory.getbasetemp() / "conda-channels")


@pytest.fixture(scope="session")
def conda_http(conda_channel: Path) -> Iterator[str]:
    """The same channels served over http on 127.0.0.1; yields the base URL."""
    from condachannel import serve

    with serve(conda_channel) as url:
        yield url


@pytest.fixture
def conda_env(conda_channel: Path) -> dict[str, str]:
    """Child env vars that point conda-forge (and extra) at the test channel, as a mirror would."""
    return {"PROJECTRUN_CONDA_CHANNELS": f"conda-forge={conda_channel.as_uri()}/conda-forge,"
                                         f"extra={conda_channel.as_uri()}/extra"}


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Docker engine for the session (a private dockerd unless one answers); not skipped
    when Docker is missing: ensure_packages and start_engine raise with why."""
    import shutil

    import dockerengine

    dockerengine.ensure_packages()
    root = tmp_path_factory.mktemp("docker")
    with dockerengine.running_engine(root) as running:
        yield running
    shutil.rmtree(root, ignore_errors=True)  # image layers: pytest would keep three sessions' worth


@pytest.fixture(scope="session")
def docker_image(docker_engine: Any) -> str:
    """A python3 base image made with `docker import` (cached on disk between sessions)."""
    import dockerengine

    return dockerengine.base_image(docker_engine, dockerengine.default_cache_dir())
