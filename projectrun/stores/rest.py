"""The store through an MLflow tracking server's REST API, with only the standard library.

Importing mlflow costs seconds and a launch needs seven endpoints, so this speaks them directly:
the same JSON MLflow's ``RestStore`` sends, the same ``user_id``, the same authentication
environment variables (``restconfig``). Whatever it cannot do exactly as MLflow's client would
(custom auth plugins, proxies, artifact stores other than the server's own...) raises
``Unsupported`` and the tracker does that call through MLflow's client instead. Nothing here may
import mlflow.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import os
import posixpath
import re
import select
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path
from typing import Any, BinaryIO

from projectrun import settings
from projectrun.stores import AlreadyExists, Experiment, Store, Unsupported, restconfig

API = "/api/2.0/mlflow/"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
BATCH = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH: the server refuses bigger batches
RETRY_STATUS = frozenset({429, 502, 503, 504})
BACKOFF = (0.5, 1.5)  # sleeps between the three attempts; Retry-After is capped so all stay < 5 s
RETRY_AFTER_CAP = 2.0
MULTIPART_MIN = 500 * 1024**2  # MLflow's MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE default


def _timeout() -> float:
    return settings.current().http_timeout


class RestError(Exception):
    """The server refused a call; str() is one line, ``ERROR_CODE: message`` as MLflow reports it."""

    def __init__(self, error_code: str, message: str, status: int) -> None:
        line = " ".join(message.split())
        if len(line) > 500:
            line = line[:500] + "..."
        super().__init__(f"{error_code}: {line}" if line else error_code)
        self.error_code = error_code
        self.status = status


class RestConnectionError(OSError):
    """The server could not be reached, or stopped answering, even after retries."""


def _stale(conn: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that is readable has been closed by the server."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _retry_delay(resp: http.client.HTTPResponse, delay: float) -> float:
    """The backoff ``delay``, or longer if the server's Retry-After asks (up to the cap)."""
    try:
        return max(delay, min(float(resp.getheader("Retry-After") or 0), RETRY_AFTER_CAP))
    except ValueError:
        return delay


class RestStore(Store):
    """An ``http(s)://`` tracking server through its REST API, one keep-alive connection per thread."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        parsed = urllib.parse.urlsplit(self.uri)
        self.scheme = parsed.scheme
        self.netloc = parsed.netloc
        self.prefix = parsed.path  # a server behind a path (http://host/mlflow) keeps it
        self._local = threading.local()
        self._artifact_uris: dict[str, str] = {}
        self._headers: dict[str, str] = {}
        self._ssl: ssl.SSLContext | None = None
        # The Tracker only catches Unsupported around calls, so a setting we cannot honour is
        # remembered here and raised by each call rather than by the constructor.
        self._unsupported: str | None = None
        try:
            self._headers, self._ssl = restconfig.settings(self.uri)
        except Unsupported as exc:
            self._unsupported = str(exc)

    def _check(self) -> None:
        if self._unsupported is not None:
            raise Unsupported(self._unsupported)

    # -- HTTP ---------------------------------------------------------------------------------

    def _connection(self, netloc: str) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to ``netloc`` and whether it has been used before."""
        conns: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("conns", {})
        conn = conns.get(netloc)
        if conn is None:
            if restconfig.proxied(self.scheme, urllib.parse.urlsplit(f"//{netloc}").hostname or ""):
                if netloc == self.netloc:
                    self._unsupported = f"a proxy from the environment applies to {netloc}"
                raise Unsupported(f"a proxy from the environment applies to {netloc}")
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(netloc, timeout=_timeout(), context=self._ssl)
            else:
                conn = http.client.HTTPConnection(netloc, timeout=_timeout())
            conns[netloc] = conn
        elif _stale(conn):
            conn.close()
        return conn, conn.sock is not None

    def _send(self, method: str, netloc: str, path: str, headers: dict[str, str],
              body: bytes | Callable[[], BinaryIO] | None = None) -> tuple[int, str, bytes]:
        """One request with MLflow-like retries; ``body`` may open a file anew per attempt."""
        headers = {**self._headers, **headers}
        delays = list(BACKOFF)
        reset_retried = False
        where = f"{self.scheme}://{netloc}"
        while True:
            conn, reused = self._connection(netloc)
            data = body() if callable(body) else body
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except ssl.SSLCertVerificationError as exc:
                conn.close()
                # Deterministic: later calls go straight to MLflow's client, which reports it.
                self._unsupported = f"TLS verification of {where} failed: {exc.verify_message}"
                raise Unsupported(self._unsupported) from None
            except TimeoutError:
                conn.close()
                raise RestConnectionError(f"{where} did not answer within {_timeout():g} s "
                                          f"({settings.HTTP_TIMEOUT})") from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and not reset_retried and isinstance(
                        exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                              http.client.RemoteDisconnected)):
                    reset_retried = True  # the server dropped an idle keep-alive connection
                    continue
                if isinstance(exc, OSError) and not isinstance(
                        exc, (ConnectionError, http.client.HTTPException)):
                    # DNS failures, unreachable networks: retrying in seconds will not help.
                    raise RestConnectionError(f"cannot reach {where} ({exc})") from None
                if not delays:
                    reason = str(exc) or type(exc).__name__
                    raise RestConnectionError(f"cannot reach {where} ({reason})") from None
                time.sleep(delays.pop(0))
                continue
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if resp.status in RETRY_STATUS and delays:
                time.sleep(_retry_delay(resp, delays.pop(0)))
                continue
            return resp.status, resp.reason, payload

    def _call(self, method: str, endpoint: str, data: dict[str, Any]) -> dict[str, Any]:
        """One JSON API call; an error answer raises RestError with MLflow's error_code."""
        self._check()
        path = f"{self.prefix}{API}{endpoint}"
        if method == "GET":
            query = urllib.parse.urlencode(data)
            status, reason, payload = self._send(method, self.netloc, f"{path}?{query}", {})
        else:
            status, reason, payload = self._send(method, self.netloc, path,
                                                 {"Content-Type": "application/json"},
                                                 json.dumps(data).encode())
        return self._parse(status, reason, payload, path)

    def _parse(self, status: int, reason: str, payload: bytes, path: str) -> dict[str, Any]:
        if 300 <= status < 400:
            raise Unsupported(f"{path} redirected (HTTP {status})")
        try:
            answer = json.loads(payload) if payload.strip() else {}
        except ValueError:
            answer = None
        if 200 <= status < 300:
            if not isinstance(answer, dict):
                raise RestError(f"HTTP {status}", f"{path} answered with something other than JSON; "
                                f"is {self.uri} an MLflow tracking server?", status)
            return answer
        if isinstance(answer, dict) and answer.get("error_code"):
            raise RestError(str(answer["error_code"]), str(answer.get("message", "")), status)
        text = payload.decode("utf-8", "replace").strip()
        raise RestError(f"HTTP {status}", f"{reason} from {path}" + (f": {text[:300]}" if text else ""),
                        status)

    # -- Store protocol -------------------------------------------------------------------------

    @staticmethod
    def _experiment(answer: dict[str, Any]) -> Experiment:
        exp = answer["experiment"]
        return Experiment(str(exp["experiment_id"]), exp["name"], exp.get("lifecycle_stage", "active"))

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        try:
            return self._experiment(self._call("GET", "experiments/get", {"experiment_id": experiment_id}))
        except RestError as exc:
            # A malformed id is "no such experiment" too, as ClientStore treats it.
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        try:
            return self._experiment(self._call("GET", "experiments/get-by-name", {"experiment_name": name}))
        except RestError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def create_experiment(self, name: str) -> str:
        try:
            return str(self._call("POST", "experiments/create", {"name": name})["experiment_id"])
        except RestError as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                raise AlreadyExists(name) from None
            raise

    def create_run(self, experiment_id: str, tags: dict[str, str], run_name: str | None,
                   start_time: int) -> str:
        """The server names a run given no run_name, as it does for MLflow's client."""
        body: dict[str, Any] = {
            "experiment_id": str(experiment_id),
            # MlflowClient.create_run takes the deprecated user_id from the mlflow.user tag.
            "user_id": tags.get("mlflow.user", "unknown"),
            "start_time": start_time,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_name is not None:
            body["run_name"] = run_name
        info = self._call("POST", "runs/create", body)["run"]["info"]
        run_id = str(info["run_id"])
        if info.get("artifact_uri"):
            self._artifact_uris[run_id] = info["artifact_uri"]
        return run_id

    def log_batch(self, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
        """In batches of 100 params and 100 tags, paired as MlflowClient.log_batch pairs them."""
        def chunks(items: dict[str, str]) -> list[list[dict[str, str]]]:
            pairs = [{"key": k, "value": v} for k, v in items.items()]
            return [pairs[i:i + BATCH] for i in range(0, len(pairs), BATCH)]

        empty: list[dict[str, str]] = []
        for param_chunk, tag_chunk in zip_longest(chunks(params), chunks(tags), fillvalue=empty):
            self._call("POST", "runs/log-batch",
                       {"run_id": run_id, "metrics": [], "params": param_chunk, "tags": tag_chunk})

    def update_run(self, run_id: str, status: str, end_time: int | None) -> None:
        """Without end_time the server keeps the run's current one, as MlflowClient.update_run does."""
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self._call("POST", "runs/update", body)

    def _artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            info = self._call("GET", "runs/get", {"run_id": run_id})["run"]["info"]
            self._artifact_uris[run_id] = str(info.get("artifact_uri", ""))
        return self._artifact_uris[run_id]

    def log_artifact(self, run_id: str, path: Path, artifact_dir: str) -> None:
        """Server-proxied artifacts (``mlflow-artifacts:``) only: one PUT, as MLflow's repo does it."""
        self._check()
        path = Path(path)
        if artifact_dir and (posixpath.normpath(artifact_dir) != artifact_dir or artifact_dir == "."
                             or artifact_dir.startswith(("..", "/"))):
            raise Unsupported(f"artifact path {artifact_dir!r}")  # MLflow's client explains it
        if not path.is_file() or path.stat().st_size >= int(
                os.environ.get("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE") or MULTIPART_MIN):
            raise Unsupported(f"{path} is a directory or a multipart-sized file")
        artifact_uri = self._artifact_uri(run_id)
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise Unsupported(f"artifact store {artifact_uri}")
        netloc, url_path = self._resolve_artifacts(artifact_uri)
        url_path = posixpath.join(url_path, *([artifact_dir] if artifact_dir else []), path.name)
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        status, reason, payload = self._send(
            "PUT", netloc, urllib.parse.quote(url_path, safe="/"),
            {"Content-Type": mime, "Content-Length": str(path.stat().st_size)},
            lambda: open(path, "rb"))  # noqa: SIM115 - _send closes it after each attempt
        self._parse(status, reason, payload, url_path)

    def _resolve_artifacts(self, artifact_uri: str) -> tuple[str, str]:
        """Host and URL path of an mlflow-artifacts URI, as MlflowArtifactsRepository.resolve_uri.

        ``mlflow-artifacts:/0/<run>/artifacts`` lives on the tracking server;
        ``mlflow-artifacts://host:port/...`` on that host, reached with the tracking URI's scheme.
        """
        parsed = urllib.parse.urlsplit(artifact_uri)
        if parsed.hostname and parsed.hostname.replace(".", "", 1).isdigit() and not parsed.port:
            raise Unsupported(f"artifact URI {artifact_uri}")  # MLflow's client reports it
        if parsed.path == "/":
            resolved = f"{ARTIFACTS_API}/"
        elif parsed.path == ARTIFACTS_API:
            resolved = ARTIFACTS_API
        else:
            resolved = f"{self.prefix}/{ARTIFACTS_API}/{parsed.path}"
        resolved = re.sub(r"//+", "/", resolved).rstrip("/")
        return parsed.netloc or self.netloc, resolved

    def run_experiment(self, run_id: str) -> str | None:
        try:
            info = self._call("GET", "runs/get", {"run_id": run_id})["run"]["info"]
        except RestError as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        if info.get("artifact_uri"):
            self._artifact_uris[run_id] = info["artifact_uri"]
        return str(info["experiment_id"])

    def running_runs(self, experiment_id: str) -> list[tuple[str, dict[str, str]]]:
        found: list[tuple[str, dict[str, str]]] = []
        token = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [str(experiment_id)], "max_results": 1000,
                                    "filter": "attributes.status = 'RUNNING'"}
            if token:
                body["page_token"] = token
            answer = self._call("POST", "runs/search", body)
            for run in answer.get("runs", []):
                tags = {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}
                found.append((str(run["info"]["run_id"]), tags))
            token = answer.get("next_page_token")
            if not token:
                return found

    def run_artifact_uri(self, run_id: str) -> str | None:
        if run_id not in self._artifact_uris and self.run_experiment(run_id) is None:
            return None
        return self._artifact_uris.get(run_id)
