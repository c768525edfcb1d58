"""The Docker test support works for real: engine, base image, host networking, build, stop.

Later docker_env tests stand on these, so a failure here says which part of the ground is gone.
"""
from __future__ import annotations

import contextlib
import http.server
import io
import shutil
import tarfile
import threading
from collections.abc import Iterator

import docker
import dockerengine
import pytest
from dockerengine import Engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(docker_engine: Engine) -> Engine:
    return docker_engine


@pytest.fixture(scope="module")
def image(docker_image: str) -> str:
    return docker_image


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[docker.DockerClient]:
    with contextlib.closing(docker.DockerClient(base_url=engine.host)) as c:
        yield c


def test_python_runs_in_the_base_image(client: docker.DockerClient, image: str) -> None:
    assert client.containers.run(image, ["python3", "-c", "print(42)"], remove=True) == b"42\n"


def test_shells_and_stdlib(client: docker.DockerClient, image: str) -> None:
    script = ("echo $0; bash -c 'echo $BASH_VERSINFO'; "
              "python3 -c 'import json, sqlite3, ssl, urllib.request; print(json.dumps([1]))'")
    out = client.containers.run(image, ["/bin/sh", "-c", script], remove=True).decode()
    assert out.splitlines()[0] == "/bin/sh"
    assert out.splitlines()[1] == "5"
    assert out.splitlines()[2] == "[1]"


def test_base_image_is_imported_once(
    engine: Engine, client: docker.DockerClient, image: str
) -> None:
    before = client.images.get(image).id
    assert dockerengine.base_image(engine, dockerengine.default_cache_dir()) == image
    assert client.images.get(image).id == before


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the host"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_host_network_reaches_the_host_loopback(client: docker.DockerClient, image: str) -> None:
    """An MLflow server on the host's 127.0.0.1 must be reachable from a docker_env run."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout=10).read().decode())"
        out = client.containers.run(image, ["python3", "-c", code], network_mode="host",
                                    remove=True)
    finally:
        server.shutdown()
        server.server_close()
    assert out == b"hello from the host\n"


def test_build_from_the_base_image(client: docker.DockerClient, image: str) -> None:
    """The SDK's (classic) builder, as mlflow uses it: FROM, COPY and RUN."""
    dockerfile = (f"FROM {image}\nCOPY app.py /app/app.py\n"
                  "RUN python3 -c 'print(6 * 7)' > /app/built.txt\n")
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", dockerfile), ("app.py", "print('app ran')\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    context.seek(0)
    built, _ = client.images.build(fileobj=context, custom_context=True, tag="projectrun-test/b:1",
                                   rm=True, forcerm=True)
    try:
        out = client.containers.run(built.id, ["sh", "-c", "python3 /app/app.py; cat /app/built.txt"],
                                    remove=True)
        assert out == b"app ran\n42\n"
    finally:
        client.images.remove(built.id, force=True)


def test_stop_ends_a_private_engine(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second private dockerd beside the session's: stop() leaves nothing of it behind."""
    root = tmp_path_factory.mktemp("docker-stop")
    engine = dockerengine.start_engine(root, reuse=False)
    try:
        assert engine.private and dockerengine._answers(engine.host)
        assert engine.process is not None and engine.run_dir is not None
        engine.stop()
        assert engine.process.poll() is not None
        assert not engine.run_dir.exists()
        assert not dockerengine._answers(engine.host)
        engine.stop()  # idempotent
    finally:
        engine.stop()
        shutil.rmtree(root, ignore_errors=True)
