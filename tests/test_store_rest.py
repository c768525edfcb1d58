"""RestStore against a real `mlflow server`, read back through MLflow's client; HTTP details on a stub."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import child_env, client_for, free_port

from projectrun.stores import AlreadyExists, Experiment, Unsupported
from projectrun.stores.client import ClientStore
from projectrun.stores.rest import RestConnectionError, RestError, RestStore


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def now() -> int:
    return int(time.time() * 1000)


def test_import_does_not_import_mlflow() -> None:
    code = ("import sys, projectrun.stores.rest; "
            "print([m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=child_env())
    assert out.stdout.strip() == "[]"


def test_experiments(mlflow_server: str) -> None:
    store = RestStore(mlflow_server)
    name = unique("rest-exp")
    exp_id = store.create_experiment(name)
    with pytest.raises(AlreadyExists):
        store.create_experiment(name)
    assert store.get_experiment_by_name(name) == Experiment(exp_id, name, "active")
    assert store.get_experiment(exp_id) == Experiment(exp_id, name, "active")
    assert store.get_experiment("0") == Experiment("0", "Default", "active")
    assert store.get_experiment_by_name(unique("missing")) is None
    assert store.get_experiment("987654321") is None
    assert store.get_experiment("not-a-number") is None  # as ClientStore answers
    client_for(mlflow_server).delete_experiment(exp_id)
    assert store.get_experiment(exp_id) == Experiment(exp_id, name, "deleted")


def test_run_lifecycle(mlflow_server: str, tmp_path: Path) -> None:
    store = RestStore(mlflow_server)
    exp_id = store.create_experiment(unique("rest-run"))
    start = now()
    tags = {"mlflow.user": "alice", "mlflow.source.name": "proj", "custom": "x"}
    run_id = store.create_run(exp_id, tags, "my-run", start)
    params = {f"p{i:03d}": str(i) for i in range(250)}
    store.log_batch(run_id, params, {f"t{i:03d}": "v" for i in range(130)})
    store.log_batch(run_id, {}, {"late": "tag"})
    store.log_batch(run_id, {}, {})  # nothing to send
    end = now()
    store.update_run(run_id, "FINISHED", end)

    run = client_for(mlflow_server).get_run(run_id)
    assert run.info.experiment_id == exp_id
    assert run.info.run_name == "my-run" and run.data.tags["mlflow.runName"] == "my-run"
    assert run.info.user_id == "alice"
    assert (run.info.status, run.info.start_time, run.info.end_time) == ("FINISHED", start, end)
    assert run.data.params == params
    assert run.data.tags["custom"] == "x" and run.data.tags["late"] == "tag"
    assert sum(k.startswith("t") for k in run.data.tags) == 130
    assert store.run_experiment(run_id) == exp_id

    # Reopened (a resumed sweep's parent): RUNNING again, end_time kept as MlflowClient keeps it.
    store.update_run(run_id, "RUNNING", None)
    info = client_for(mlflow_server).get_run(run_id).info
    assert (info.status, info.end_time) == ("RUNNING", end)


def test_run_without_name_gets_generated_name(mlflow_server: str) -> None:
    store = RestStore(mlflow_server)
    run_id = store.create_run("0", {}, None, now())
    run = client_for(mlflow_server).get_run(run_id)
    assert run.data.tags["mlflow.runName"] and run.info.run_name == run.data.tags["mlflow.runName"]
    assert run.info.user_id == "unknown"  # MlflowClient's default without an mlflow.user tag


def test_missing_run(mlflow_server: str) -> None:
    store = RestStore(mlflow_server)
    assert store.run_experiment(uuid.uuid4().hex) is None
    with pytest.raises(RestError) as err:
        store.log_batch(uuid.uuid4().hex, {"a": "b"}, {})
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert str(err.value).startswith("RESOURCE_DOES_NOT_EXIST: ") and "\n" not in str(err.value)


def test_log_artifact(mlflow_server: str, tmp_path: Path) -> None:
    store = RestStore(mlflow_server)
    run_id = store.create_run("0", {}, None, now())
    src = tmp_path / "out put.log"  # a space: the URL path must be quoted
    src.write_text("hello\n")
    store.log_artifact(run_id, src, "logs/stage1")
    store.log_artifact(run_id, src, "")

    client = client_for(mlflow_server)
    assert [f.path for f in client.list_artifacts(run_id, "logs/stage1")] == ["logs/stage1/out put.log"]
    assert "out put.log" in [f.path for f in client.list_artifacts(run_id)]
    got = client.download_artifacts(run_id, "logs/stage1/out put.log", str(tmp_path / "dl"))
    assert Path(got).read_text() == "hello\n"

    # A run this store did not create: its artifact URI comes from runs/get.
    other = ClientStore(mlflow_server).create_run("0", {}, None, now())
    fresh = RestStore(mlflow_server)
    fresh.log_artifact(other, src, "x")
    assert [f.path for f in client.list_artifacts(other, "x")] == ["x/out put.log"]

    with pytest.raises(Unsupported):
        store.log_artifact(run_id, src, "../escape")
    with pytest.raises(Unsupported):
        store.log_artifact(run_id, tmp_path, "dir")


def test_same_run_as_client_store(mlflow_server: str) -> None:
    """What MLflow's client reads back must not depend on which store wrote the run."""
    rest, client_store = RestStore(mlflow_server), ClientStore(mlflow_server)
    exp_id = rest.create_experiment(unique("parity"))
    tags = {"mlflow.user": "carol", "mlflow.source.type": "PROJECT", "mlflow.project.entryPoint": "main"}
    params = {f"alpha{i}": f"{i / 7}" for i in range(120)}
    runs = {}
    for label, store in (("rest", rest), ("client", client_store)):
        for run_name in ("named", None):
            run_id = store.create_run(exp_id, dict(tags), run_name, 1_700_000_000_000)
            store.log_batch(run_id, params, {"extra": "1"})
            store.update_run(run_id, "FAILED", 1_700_000_001_000)
            runs[label, run_name] = client_for(mlflow_server).get_run(run_id)

    def view(run: Any) -> dict[str, Any]:
        tags = dict(run.data.tags)
        tags["mlflow.runName"] = "<generated>" if tags["mlflow.runName"] != "named" else "named"
        return {"tags": tags, "params": run.data.params, "status": run.info.status,
                "user_id": run.info.user_id, "start": run.info.start_time, "end": run.info.end_time,
                "experiment": run.info.experiment_id, "stage": run.info.lifecycle_stage,
                "artifact_scheme": run.info.artifact_uri.split(":")[0]}

    for run_name in ("named", None):
        assert view(runs["rest", run_name]) == view(runs["client", run_name])


def test_unreachable_server_is_an_os_error() -> None:
    store = RestStore(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(OSError) as err:
        store.get_experiment("0")
    assert isinstance(err.value, RestConnectionError)
    assert "cannot reach http://127.0.0.1:" in str(err.value)
    assert time.monotonic() - started < 5


# -- HTTP details against a stub server ---------------------------------------------------------

class Stub:
    """Answers each request with the next queued (status, body, headers); records what came in."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answers: list[tuple[int, Any, dict[str, str]]] = []
        self.connections: set[int] = set()
        self.close_after_each = False


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Stub, str]]:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials or ~/.netrc of the developer
    monkeypatch.delenv("NETRC", raising=False)
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.requests.append({"method": self.command, "path": self.path,
                                   "headers": dict(self.headers), "body": self.rfile.read(length)})
            state.connections.add(self.client_address[1])
            status, body, headers = (state.answers.pop(0) if state.answers
                                     else (200, {"experiment": {"experiment_id": "0", "name": "Default",
                                                                "lifecycle_stage": "active"}}, {}))
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if state.close_after_each:  # drop the keep-alive connection without saying so
                self.close_connection = True

        do_GET = do_POST = do_PUT = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_request_shapes(stub: tuple[Stub, str]) -> None:
    state, url = stub
    store = RestStore(url + "/prefix/")
    state.answers = [(200, {"run": {"info": {"run_id": "r1", "experiment_id": "3",
                                             "artifact_uri": "mlflow-artifacts:/3/r1/artifacts"}}}, {})]
    assert store.create_run("3", {"mlflow.user": "u", "k": "v"}, None, 123) == "r1"
    store.get_experiment_by_name("a b&c")
    req = state.requests
    assert req[0]["method"] == "POST" and req[0]["path"] == "/prefix/api/2.0/mlflow/runs/create"
    assert req[0]["headers"]["Content-Type"] == "application/json"
    assert json.loads(req[0]["body"]) == {"experiment_id": "3", "user_id": "u", "start_time": 123,
                                          "tags": [{"key": "mlflow.user", "value": "u"},
                                                   {"key": "k", "value": "v"}]}
    assert req[1]["path"] == "/prefix/api/2.0/mlflow/experiments/get-by-name?experiment_name=a+b%26c"
    assert "Authorization" not in req[1]["headers"]
    assert len(state.connections) == 1  # one keep-alive connection


def test_artifact_url_for_other_host(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    netloc = url.split("//")[1]
    store = RestStore("http://localhost:1")  # the tracking host itself is never contacted
    store._artifact_uris["r1"] = f"mlflow-artifacts://{netloc}/5/r1/artifacts"
    (tmp_path / "f.json").write_text("{}")
    state.answers = [(200, {}, {})]
    store.log_artifact("r1", tmp_path / "f.json", "a/b")
    assert state.requests[0]["method"] == "PUT"
    assert state.requests[0]["path"] == "/api/2.0/mlflow-artifacts/artifacts/5/r1/artifacts/a/b/f.json"
    assert state.requests[0]["body"] == b"{}"
    store._artifact_uris["r2"] = "s3://bucket/5/r2/artifacts"
    with pytest.raises(Unsupported):
        store.log_artifact("r2", tmp_path / "f.json", "")


def test_token_and_basic_auth(stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch,
                              tmp_path: Path) -> None:
    state, url = stub
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    RestStore(url).get_experiment("0")
    assert state.requests[-1]["headers"]["Authorization"] == "Bearer tok"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    RestStore(url).get_experiment("0")  # MLflow prefers username+password to the token
    assert state.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"user:pw").decode()
    # requests lets ~/.netrc override whatever MLflow put in the header.
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login n password s\n")
    RestStore(url).get_experiment("0")
    assert state.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"n:s").decode()


def test_credentials_file(stub: tuple[Stub, str], tmp_path: Path) -> None:
    state, url = stub
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = fu\nmlflow_tracking_password = fp\n")
    RestStore(url).get_experiment("0")
    assert state.requests[-1]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"fu:fp").decode()


@pytest.mark.parametrize("env", [{"MLFLOW_TRACKING_AUTH": "my_plugin"}, {"MLFLOW_WORKSPACE": "team"},
                                 {"MLFLOW_TRACKING_AWS_SIGV4": "true"},
                                 {"MLFLOW_TRACKING_INSECURE_TLS": "maybe"},
                                 {"HTTP_PROXY": "http://proxy:3128"}])
def test_unhandled_settings_are_unsupported(stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch,
                                             env: dict[str, str]) -> None:
    state, url = stub
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = RestStore(url)  # constructing never raises: the Tracker catches Unsupported per call
    with pytest.raises(Unsupported):
        store.get_experiment("0")
    assert state.requests == []


def test_no_proxy_bypasses_proxy(stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch) -> None:
    state, url = stub
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    RestStore(url).get_experiment("0")
    assert len(state.requests) == 1


def test_retries_transient_failures(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.answers = [(503, b"busy", {}), (429, b"slow down", {"Retry-After": "0"})]
    started = time.monotonic()
    assert RestStore(url).get_experiment("0") == Experiment("0", "Default", "active")
    assert len(state.requests) == 3 and time.monotonic() - started < 5
    state.answers = [(502, b"bad gateway", {})] * 3
    with pytest.raises(RestError, match=r"^HTTP 502: .*bad gateway"):
        RestStore(url).get_experiment("0")


def test_error_answers(stub: tuple[Stub, str]) -> None:
    state, url = stub
    store = RestStore(url)
    state.answers = [(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad\nvalue"}, {})]
    with pytest.raises(RestError, match=r"^INVALID_PARAMETER_VALUE: bad value$"):
        store.log_batch("r", {"a": "b"}, {})
    state.answers = [(401, b"You are not authenticated.", {})]
    with pytest.raises(RestError, match=r"^HTTP 401: Unauthorized .*You are not authenticated"):
        store.get_experiment("0")
    state.answers = [(200, b"<html>login</html>", {})]
    with pytest.raises(RestError, match="other than JSON"):
        store.get_experiment("0")
    state.answers = [(302, b"", {"Location": "https://elsewhere/"})]
    with pytest.raises(Unsupported):
        store.get_experiment("0")
    state.answers = [(409, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "x"}, {})]
    with pytest.raises(AlreadyExists):
        store.create_experiment("x")


def test_reconnects_after_server_closes_keep_alive(stub: tuple[Stub, str]) -> None:
    state, url = stub
    state.close_after_each = True
    store = RestStore(url)
    for _ in range(3):
        assert store.get_experiment("0") is not None
        time.sleep(0.05)
    assert len(state.requests) == 3 and len(state.connections) == 3


def test_retries_once_when_a_kept_alive_connection_was_dropped(
        stub: tuple[Stub, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when the close is not seen before sending (a race), the request goes out once more."""
    from projectrun.stores import rest

    state, url = stub
    state.close_after_each = True
    monkeypatch.setattr(rest, "_stale", lambda conn: False)
    store = RestStore(url)
    for _ in range(3):
        assert store.get_experiment("0") is not None
        time.sleep(0.05)
    assert len(state.requests) == 3


def test_threads_do_not_share_a_connection(stub: tuple[Stub, str]) -> None:
    state, url = stub
    store = RestStore(url)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                store.get_experiment("0")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(state.requests) == 80
