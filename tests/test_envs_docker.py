"""docker_env projects against a real Docker engine (tests/dockerengine.py), end to end.

Base images come from `docker import` (no registry is reachable); every launch goes through the
real CLI and a real sqlite store or `mlflow server`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CliRunner, child_env, client_for, only_run

pytestmark = pytest.mark.slow

SHOW = '''import json, os, sys, urllib.request
out = {"argv": sys.argv[1:], "cwd": os.getcwd(), "files": sorted(os.listdir(".")),
       "env": {k: os.environ.get(k) for k in ("GREETING", "TOKEN", "MLFLOW_RUN_ID",
                                             "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")}}
uri = out["env"]["MLFLOW_TRACKING_URI"] or ""
if uri.startswith("http"):
    out["server"] = urllib.request.urlopen(uri + "/health", timeout=10).read().decode()
print(json.dumps(out))
'''


def docker_project(root: Path, image: str, *, extra: str = "", command: str | None = None,
                   dockerfile: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "show.py").write_text(SHOW)
    env_section = f"  dockerfile: {dockerfile}\n" if dockerfile else f"  image: {image}\n"
    (root / "MLproject").write_text(
        "name: Docker Demo\ndocker_env:\n" + env_section + extra +
        "entry_points:\n  main:\n    parameters:\n      alpha: {type: string, default: x}\n"
        f"    command: \"{command or 'python3 show.py --alpha {alpha}'}\"\n")
    return root


def shown(stdout: str) -> dict[str, Any]:
    return json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("{")))


@pytest.fixture
def denv(docker_engine: Any) -> dict[str, str]:
    return dict(docker_engine.env())


def containers(engine: Any) -> list[str]:
    with contextlib.closing(engine.client()) as client:
        return [c.name for c in client.containers.list(all=True, filters={"label": "projectrun=1"})]


def test_project_runs_in_its_image_with_safe_args_and_mlflow_tags(
        cli: CliRunner, workdir: Path, tmp_path: Path, docker_image: str, docker_engine: Any,
        denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "proj", docker_image, extra=(
        "  environment: [[\"GREETING\", \"hi; echo injected $(id)\"], \"TOKEN\"]\n"))
    (proj / ".git").mkdir()
    (proj / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (proj / "data").mkdir()
    (proj / "data" / "big.csv").write_text("1,2\n")
    (proj / ".dockerignore").write_text("data/\n*.tmp\n")
    (proj / "scratch.tmp").write_text("x")
    secret = "s3cr3t-value-never-logged"
    env = {**denv, "TOKEN": secret}
    res = cli(str(proj), "-P", "alpha=a;b (c) 'q' $HOME", "--verbose", env=env)
    assert res.returncode == 0, res.stderr
    out = shown(res.stdout)
    assert out["argv"] == ["--alpha", "a;b (c) 'q' $HOME"]  # one argument, never shell
    assert out["cwd"] == "/mlflow/projects/code"
    assert out["files"] == [".dockerignore", "MLproject", "show.py"]  # no .git, data, *.tmp
    assert out["env"]["GREETING"] == "hi; echo injected $(id)" and out["env"]["TOKEN"] == secret
    run = only_run(f"sqlite:///{workdir / 'mlflow.db'}")
    assert out["env"]["MLFLOW_RUN_ID"] == run.info.run_id
    assert out["env"]["MLFLOW_TRACKING_URI"] == f"sqlite:///{workdir / 'mlflow.db'}"
    tags = run.data.tags
    assert tags["mlflow.project.env"] == "docker" and run.info.status == "FINISHED"
    assert tags["mlflow.docker.image.uri"].startswith("projectrun/docker-demo:")
    assert tags["mlflow.docker.image.id"].startswith("sha256:")
    with contextlib.closing(docker_engine.client()) as client:
        assert client.images.get(tags["mlflow.docker.image.uri"]).id == tags["mlflow.docker.image.id"]
    everything = res.stderr + json.dumps(tags) + json.dumps(run.data.params)
    log = Path(client_for(f"sqlite:///{workdir / 'mlflow.db'}").download_artifacts(
        run.info.run_id, "projectrun/output.log", str(tmp_path))).read_text()
    assert secret not in everything and secret in log  # only where the entry point printed it
    assert "--env=TOKEN" in res.stderr  # the verbose command names the variable, not its value
    assert containers(docker_engine) == []


def test_cached_launch_builds_nothing_and_a_code_change_rebuilds_one_layer(
        cli: CliRunner, tmp_path: Path, docker_image: str, docker_engine: Any,
        denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "proj", docker_image)
    first = cli(str(proj), env=denv)
    assert first.returncode == 0 and "building docker image" in first.stderr, first.stderr
    second = cli(str(proj), env=denv)
    assert second.returncode == 0 and "docker" not in second.stderr.replace("WARNING", ""), second.stderr
    (proj / "show.py").write_text(SHOW + "print('changed')\n")
    third = cli(str(proj), env=denv)
    assert third.returncode == 0 and "changed" in third.stdout and "building" in third.stderr
    with contextlib.closing(docker_engine.client()) as client:
        base = client.images.get(docker_image).attrs["RootFS"]["Layers"]
        tags = [t for img in client.images.list(name="projectrun/docker-demo") for t in img.tags]
        layers = [client.images.get(t).attrs["RootFS"]["Layers"] for t in tags]
    assert len(layers) >= 2 and all(ls[:-1] == base and len(ls) == len(base) + 1 for ls in layers)
    forced = cli(str(proj), "--build-image", env=denv)
    assert forced.returncode == 0 and "building docker image" in forced.stderr


def test_launches_from_the_project_folder_reuse_the_image(
        cli: CliRunner, tmp_path: Path, docker_image: str, denv: dict[str, str]) -> None:
    """The quick start's way: `projectrun .` in the project, so the default store (mlflow.db,
    mlruns/) lands in the build context. Before, every launch changed it and built a new image;
    a store named by MLFLOW_TRACKING_URI inside the project is left out the same way."""
    # a command of its own: another test's image of the same files is in the session's cache
    proj = docker_project(tmp_path / "proj", docker_image, command="python3 show.py from-folder")
    (proj / "pkg" / "__pycache__").mkdir(parents=True)
    (proj / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"stale")
    launches = [cli(".", cwd=proj, env=denv) for _ in range(3)]
    assert all(r.returncode == 0 for r in launches), launches[-1].stderr
    assert [("building docker image" in r.stderr) for r in launches] == [True, False, False]
    assert (proj / "mlflow.db").is_file()
    assert shown(launches[-1].stdout)["files"] == ["MLproject", "show.py"]  # no pkg/__pycache__ either
    store = {**denv, "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'records' / 'runs.db'}"}
    (proj / "records").mkdir()
    own = [cli(".", cwd=proj, env=store) for _ in range(2)]
    assert all(r.returncode == 0 for r in own), own[-1].stderr
    assert ["building docker image" in r.stderr for r in own] == [False, False]


def test_dockerfile_extension_builds_the_base_once(
        cli: CliRunner, tmp_path: Path, docker_image: str, denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "proj", docker_image, dockerfile="docker/Dockerfile",
                          command="cat /marker")
    (proj / "docker").mkdir()
    (proj / "docker" / "Dockerfile").write_text(f"FROM {docker_image}\nRUN echo built-here > /marker\n")
    first = cli(str(proj), env=denv)
    assert first.returncode == 0, first.stderr
    assert "building base image" in first.stderr and first.stdout.strip() == "built-here"
    second = cli(str(proj), env=denv)
    assert second.returncode == 0 and "building" not in second.stderr


@pytest.mark.parametrize("case", ["no-engine", "missing-var", "no-image", "build-fails", "no-sdk"])
def test_docker_problems_are_one_line(cli: CliRunner, workdir: Path, tmp_path: Path,
                                      docker_image: str, denv: dict[str, str], case: str) -> None:
    env = dict(denv)
    proj = docker_project(tmp_path / "proj", docker_image)
    expected, code = "", 1
    if case == "no-engine":
        env["DOCKER_HOST"] = f"unix://{tmp_path}/nothing.sock"
        expected = "no Docker engine is reachable"
    elif case == "missing-var":
        proj = docker_project(tmp_path / "p2", docker_image, extra="  environment: [NOT_SET_VAR_XYZ]\n")
        expected, code = "NOT_SET_VAR_XYZ is not set", 2
    elif case == "no-image":
        proj = docker_project(tmp_path / "p3", "projectrun-test/absent:9")
        expected = "projectrun-test/absent:9 is not available locally and cannot be pulled"
    elif case == "no-sdk":  # `pip install projectrun` does not bring the docker SDK
        proj = docker_project(tmp_path / "p5", docker_image)
        (proj / "unique.txt").write_text(str(tmp_path))  # a new image: this launch must build
        shadow = tmp_path / "shadow" / "docker"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'docker'\")\n")
        env["PYTHONPATH"] = str(shadow.parent)
        expected = "needs the docker Python package, which is not installed: `pip install docker`"
    else:
        proj = docker_project(tmp_path / "p4", docker_image, dockerfile="Dockerfile")
        (proj / "Dockerfile").write_text(f"FROM {docker_image}\nRUN echo about-to-fail && exit 7\n")
        expected = "docker build failed"
    res = cli(str(proj), env=env)
    assert res.returncode == code, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    if case == "build-fails":
        assert "about-to-fail" in errors[0] or "exit 7" in errors[0] or "code: 7" in errors[0]
    if code == 1:
        assert only_run(f"sqlite:///{workdir / 'mlflow.db'}").info.status == "FAILED"


def test_tracking_server_on_host_loopback_is_reached(
        cli: CliRunner, tmp_path: Path, docker_image: str, mlflow_server: str,
        denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "proj", docker_image)
    res = cli(str(proj), "--experiment-name", "docker-server",
              env={**denv, "MLFLOW_TRACKING_URI": mlflow_server})
    assert res.returncode == 0, res.stderr
    out = shown(res.stdout)
    assert out["server"] == "OK" and out["env"]["MLFLOW_TRACKING_URI"] == mlflow_server
    run = only_run(mlflow_server, "docker-server")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.env"] == "docker"


def test_sigterm_stops_the_container_and_marks_killed(
        tmp_path: Path, workdir: Path, docker_image: str, docker_engine: Any,
        denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "proj", docker_image,
                          command="echo started && python3 -c 'import time; time.sleep(300)'")
    home = os.environ["PROJECTRUN_HOME"]
    proc = subprocess.Popen([sys.executable, "-m", "projectrun", str(proj)], cwd=workdir,
                            env=child_env({**denv, "PROJECTRUN_HOME": home}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while "started" not in proc.stdout.readline() and time.monotonic() < deadline:
        pass
    assert containers(docker_engine)  # it is running in a container
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 143
    assert only_run(f"sqlite:///{workdir / 'mlflow.db'}").info.status == "KILLED"
    assert containers(docker_engine) == []  # none left, running or stopped


def test_sweep_builds_the_image_once_and_envs_lists_it(
        cli: CliRunner, tmp_path: Path, docker_image: str, docker_engine: Any,
        denv: dict[str, str]) -> None:
    proj = docker_project(tmp_path / "sweep-proj", docker_image)
    (proj / "unique.txt").write_text(str(tmp_path))  # content no other test's image has
    res = cli(str(proj), "--grid", "alpha=1,2,3", "-j", "3", env=denv)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("building docker image") == 1
    listed = json.loads(cli("envs", "list", "--json", env=denv).stdout)
    entry = next(e for e in listed if e["kind"] == "docker" and e["project"] == str(proj))
    removed = cli("envs", "remove", entry["key"], env=denv)
    assert removed.returncode == 0, removed.stderr
    with contextlib.closing(docker_engine.client()) as client:
        assert not client.images.list(name=f"projectrun/docker-demo:{entry['key']}")


@pytest.fixture
def denvmod(monkeypatch: pytest.MonkeyPatch, denv: dict[str, str]) -> Any:
    """projectrun.envs.docker, in a process whose DOCKER_HOST is the test engine's unix socket."""
    from projectrun.envs import docker

    if not denv["DOCKER_HOST"].startswith("unix://"):
        pytest.skip("the engine is not on a unix socket")
    monkeypatch.setenv("DOCKER_HOST", denv["DOCKER_HOST"])
    return docker


def test_image_queries_use_the_engine_socket_not_the_cli(
        monkeypatch: pytest.MonkeyPatch, docker_image: str, denvmod: Any) -> None:
    via_cli = denvmod._cli_image_id(docker_image)
    assert via_cli and via_cli.startswith("sha256:")

    def no_cli(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the docker CLI was called: {args}")

    monkeypatch.setattr(denvmod.subprocess, "run", no_cli)
    assert denvmod.inspect_image(docker_image) == via_cli
    assert denvmod.inspect_image(via_cli) == via_cli  # an id is a reference too
    assert denvmod.inspect_image("projectrun-test/absent:9") is None
    assert denvmod.inspect_image("projectrun-test/absent@sha256:" + "0" * 64) is None


def test_the_socket_is_used_only_where_the_cli_would_use_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from projectrun.envs.docker import engine_socket

    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/x/docker.sock")
    assert engine_socket() == "/run/x/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine_socket() is None
    monkeypatch.setenv("DOCKER_HOST", "ssh://me@far")
    assert engine_socket() is None
    monkeypatch.delenv("DOCKER_HOST")
    assert engine_socket() == "/var/run/docker.sock"  # no config at all
    config = tmp_path / "config.json"
    config.write_text('{"auths": {}, "currentContext": "default"}')
    assert engine_socket() == "/var/run/docker.sock"
    config.write_text('{"currentContext": "remote"}')
    assert engine_socket() is None  # the CLI would talk to that context's endpoint
    config.write_text("{not json")
    assert engine_socket() is None
    config.unlink()
    monkeypatch.setenv("DOCKER_CONTEXT", "remote")
    assert engine_socket() is None
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/x/docker.sock")
    assert engine_socket() == "/run/x/docker.sock"  # DOCKER_HOST wins, as for the CLI


def test_a_socket_that_does_not_answer_falls_back_to_the_cli(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, docker_image: str, denvmod: Any) -> None:
    expected = denvmod._cli_image_id(docker_image)
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX) as mute:  # answers garbage, then closes
        mute.bind(path)
        mute.listen(1)
        monkeypatch.setattr(denvmod, "engine_socket", lambda: path)

        def garbage() -> None:
            conn, _ = mute.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 500 Internal Server Error\r\n\r\n{}")

        threading.Thread(target=garbage, daemon=True).start()
        assert denvmod.inspect_image(docker_image) == expected
    monkeypatch.setattr(denvmod, "engine_socket", lambda: str(tmp_path / "none.sock"))
    assert denvmod.inspect_image(docker_image) == expected


def test_a_new_base_image_under_the_same_tag_rebuilds(
        cli: CliRunner, tmp_path: Path, docker_image: str, docker_engine: Any,
        denv: dict[str, str]) -> None:
    base = "projectrun-test/rebase:1"
    with contextlib.closing(docker_engine.client()) as client:
        client.images.get(docker_image).tag(base)
    proj = docker_project(tmp_path / "proj", base, command="cat /etc/rebased || echo first")
    first = cli(str(proj), env=denv)
    assert first.returncode == 0 and "building docker image" in first.stderr, first.stderr
    assert cli(str(proj), env=denv).stderr.count("building") == 0
    dockerfile = f"FROM {docker_image}\nLABEL rebased=yes\n".encode()
    with contextlib.closing(docker_engine.client()) as client:
        new, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=base, rm=True)
        old_id = client.images.get(docker_image).id
    assert new.id != old_id
    again = cli(str(proj), "--verbose", env=denv)
    assert again.returncode == 0 and "building docker image" in again.stderr, again.stderr
    with contextlib.closing(docker_engine.client()) as client:
        tags = [t for img in client.images.list(name="projectrun/docker-demo") for t in img.tags]
        labels = [client.images.get(t).labels.get("rebased") for t in tags]
    assert "yes" in labels  # the rebuilt project image is on the new base
    assert cli(str(proj), env=denv).stderr.count("building") == 0
