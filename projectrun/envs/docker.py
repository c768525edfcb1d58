"""The docker_env kind: the project's files copied onto the base image, cached by content.

Unlike ``mlflow run`` without ``--build-image``, the project's code is always in the container:
one image per (base image id, project content) holds it in a single COPY layer, so an unchanged
project launches with no build and a code change rebuilds only that layer. The launch itself is a
``docker run`` argument list (never a shell string): values of ``environment`` entries and of
MLflow's variables travel in the docker client's environment and are named with ``-e NAME``
only, so no secret reaches argv, logs or tags. A local tracking store and artifact root are
mounted at the same paths (so artifact URIs stay true), and a server on the host's loopback is
reached with host networking. Signals become ``docker kill --signal``; no container outlives
its launch. The docker SDK is imported only to pull or build (``dockerbuild``); a cached
launch asks the engine for two image ids (base, project image), over its unix socket when the
CLI would use that socket too, else with ``docker image inspect``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from projectrun import cache
from projectrun.envs import Context, Invocation
from projectrun.envs.dockerignore import context_files
from projectrun.errors import EnvBuildError, UsageError
from projectrun.spec import DockerEnv, Project
from projectrun.tracking import sqlite_file

NAME = "docker"
CODE_DIR = "/mlflow/projects/code"
#: MLflow variables passed into the container when set on the host (auth, TLS switches)
_MLFLOW_PASSTHROUGH = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                       "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_INSECURE_TLS")
_LOOPBACK = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\]|::1)$")


@dataclass(frozen=True)
class DockerEnvironment:
    image: str
    image_id: str
    key: str
    spec: DockerEnv
    docker_args: Mapping[str, str | bool]
    artifact_uri: str | None
    manager: str = NAME
    tag: str | None = NAME
    tags: Mapping[str, str] = field(default_factory=dict)

    def invocation(self, command: str, env: Mapping[str, str], cwd: Path) -> Invocation:
        name = f"projectrun-{secrets.token_hex(6)}"
        client_env = dict(env)
        argv = [docker_cli(), "run", "--rm", "--init", "--name", name, "--label", "projectrun=1"]
        argv += self._variables(env, client_env)
        argv += self._mounts(env)
        argv += [f"--volume={v}" for v in self.spec.volumes]
        argv += docker_arg_list(self.docker_args)
        if _needs_host_network(env.get("MLFLOW_TRACKING_URI", ""), self.docker_args):
            argv.append("--network=host")
        argv += [self.image_id, "sh", "-c", command]
        return Invocation(argv, client_env, cwd, stop=_stopper(name), cleanup=_remover(name))

    def _variables(self, env: Mapping[str, str], client_env: dict[str, str]) -> list[str]:
        """``-e NAME`` for each variable; its value sits in the docker client's environment."""
        names = ["MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"]
        names += [n for n in _MLFLOW_PASSTHROUGH if n in env]
        for entry in self.spec.environment:
            if isinstance(entry, str):
                names.append(entry)
            else:
                client_env[entry[0]] = entry[1]
                names.append(entry[0])
        return [f"--env={n}" for n in dict.fromkeys(names)]

    def _mounts(self, env: Mapping[str, str]) -> list[str]:
        """The local tracking store's directory and the run's local artifact dir, same paths."""
        paths = [_local_store_dir(env.get("MLFLOW_TRACKING_URI", "")),
                 _local_path(self.artifact_uri or "")]
        out = []
        for path in dict.fromkeys(p for p in paths if p):
            Path(path).mkdir(parents=True, exist_ok=True)
            out.append(f"--volume={path}:{path}")
        return out


class DockerKind:
    NAME = NAME

    def validate(self, project: Project) -> None:
        assert project.docker_env is not None
        check_environment(project.docker_env, project)

    def prepare(self, project: Project, ctx: Context) -> DockerEnvironment:
        assert project.docker_env is not None
        spec = project.docker_env
        check_environment(spec, project)
        base, base_id = base_image(project, spec, ctx)
        files = context_files(project.directory, _store_records(ctx.tracking_uri, project.directory))
        inputs = {"kind": NAME, "base_id": base_id, "files": fingerprint(files), "workdir": CODE_DIR}
        key = cache.make_key(inputs)
        tag = f"projectrun/{_repo_name(project)}:{key}"

        def build(path: Path) -> None:
            from projectrun.envs import dockerbuild

            ctx.report(f"building docker image {tag} on {base} ({len(files)} project files)")
            image_id = dockerbuild.build_project(tag, base_id, files, CODE_DIR, ctx)
            path.mkdir(parents=True, exist_ok=True)
            (path / "image.json").write_text(json.dumps({"tag": tag, "id": image_id, "base": base}))

        built = cache.get_or_build(NAME, key, build, inputs={**inputs, "image": tag},
                                   project=str(project.directory), health=health_check,
                                   report=ctx.report, relocatable=True, force=ctx.build_image)
        image_id = json.loads((built.path / "image.json").read_text())["id"]
        if ctx.verbose and not built.built:
            ctx.report(f"using cached docker image {tag}")
        return DockerEnvironment(tag, image_id, key, spec, ctx.docker_args, ctx.artifact_uri,
                                 tags={"mlflow.docker.image.uri": tag,
                                       "mlflow.docker.image.id": image_id})


KIND = DockerKind()


def check_environment(spec: DockerEnv, project: Project) -> None:
    """MLflow's rule: every variable named to be copied from the host must be set there."""
    missing = [e for e in spec.environment if isinstance(e, str) and e not in os.environ]
    if missing:
        wanted = [e if isinstance(e, str) else e[0] for e in spec.environment]
        raise UsageError(f"{project.file}: docker_env copies {', '.join(wanted)} from the host, but "
                         f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; "
                         f"export {'it' if len(missing) == 1 else 'them'} and run again")


def base_image(project: Project, spec: DockerEnv, ctx: Context) -> tuple[str, str]:
    """(name, id) of the base: the named image (pulled if absent) or one built from the Dockerfile."""
    if spec.dockerfile is None:
        found = inspect_image(spec.image)
        if found is None:
            from projectrun.envs import dockerbuild

            found = dockerbuild.pull(spec.image, ctx)
        return spec.image, found
    context = spec.dockerfile.parent
    files = context_files(context)
    digest = cache.make_key({"dockerfile": _sha256(spec.dockerfile), "files": fingerprint(files)})
    tag = f"projectrun-base/{_repo_name(project)}:{digest}"
    found = inspect_image(tag)
    if found is None or ctx.build_image:
        from projectrun.envs import dockerbuild

        ctx.report(f"building base image {tag} from {spec.dockerfile}")
        found = dockerbuild.build_dockerfile(tag, spec.dockerfile, files, ctx)
    return tag, found


def health_check(path: Path) -> str | None:
    """The image this entry names must still be in the engine (it may have been pruned)."""
    try:
        data = json.loads((path / "image.json").read_text())
    except (OSError, ValueError):
        return "its image record is missing"
    return None if inspect_image(data["tag"]) == data["id"] else f"image {data['tag']} is gone"


#: ``envs verify``: the image is the whole env, and the health check already asks the engine
verify = health_check


def inspect_image(ref: str) -> str | None:
    """The local image id of ``ref``, or None: one request on the engine's unix socket when the
    CLI would use that socket too (~1 ms), else one CLI call (~20 ms; the SDK costs 0.2 s)."""
    sock = engine_socket()
    if sock:
        try:
            return _api_image_id(sock, ref)
        except _NoAnswer:
            pass  # the CLI then says what is wrong, as it always did
    return _cli_image_id(ref)


class _NoAnswer(Exception):
    """The socket gave no usable answer (not there, refused, an error status): ask the CLI."""


def engine_socket() -> str | None:
    """The unix socket the docker CLI would talk to, or None when it would use something else:
    ``DOCKER_HOST=unix://PATH``, or no DOCKER_HOST and no context chosen (the default socket).
    DOCKER_HOST wins over a context, as it does for the CLI."""
    host = os.environ.get("DOCKER_HOST", "")
    if host:
        path = host[len("unix://"):] if host.startswith("unix://") else ""
        return path or None
    if os.environ.get("DOCKER_CONTEXT") or _context_configured():
        return None
    return "/var/run/docker.sock"


def _context_configured() -> bool:
    """Whether the CLI's config names a context other than the default (or cannot be read)."""
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True  # let the CLI read it (and complain)
    return not isinstance(data, dict) or data.get("currentContext") not in (None, "", "default")


def _api_image_id(sock: str, ref: str) -> str | None:
    """``GET /images/REF/json`` over the socket (what ``docker image inspect`` asks): the id, or
    None for 404; _NoAnswer for anything else."""
    try:
        status, body = _api_get(sock, f"/images/{quote(ref, safe='/:@')}/json")
        if status == 404:
            return None
        if status == 200:
            return str(json.loads(body)["Id"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        pass
    raise _NoAnswer(ref)


def _api_get(sock: str, path: str) -> tuple[int, bytes]:
    """One HTTP/1.0 GET (no chunking, the engine closes): status and body. http.client would
    cost more to import (~10 ms) than the request takes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(_API_TIMEOUT)
        conn.connect(sock)
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(None, 2)[1]), body


_API_TIMEOUT = 30.0


def _cli_image_id(ref: str) -> str | None:
    result = subprocess.run([docker_cli(), "image", "inspect", "--format", "{{.Id}}", ref],
                            capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return result.stdout.strip()
    if "No such image" in result.stderr or "No such object" in result.stderr:
        return None
    raise EnvBuildError(engine_problem(result.stderr))


def engine_problem(stderr: str) -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    last = next((ln.strip() for ln in reversed(stderr.splitlines()) if ln.strip()), "no output")
    return (f"no Docker engine is reachable at {host} ({last}); start it (e.g. `sudo systemctl "
            f"start docker` or `dockerd`) or set DOCKER_HOST")


def docker_cli() -> str:
    found = shutil.which("docker")
    if found is None:
        raise EnvBuildError("docker_env projects need the docker CLI on PATH; install Docker "
                            "(Debian/Ubuntu: apt-get install docker.io)")
    return found


def docker_arg_list(args: Mapping[str, str | bool]) -> list[str]:
    """``-A name=value`` as MLflow maps it: one letter -> ``-n value``, else ``--name value``."""
    out: list[str] = []
    for name, value in args.items():
        flag = f"-{name}" if len(name) == 1 else f"--{name}"
        out += [flag] if value is True else [flag, str(value)]
    return out


def fingerprint(files: list[tuple[str, Path]]) -> str:
    """A hash of what the COPY layer holds: paths, executable bits and contents."""
    digest = hashlib.sha256()
    for rel, path in files:
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest.update(f"{rel}\0{mode}\0{_sha256(path)}\0".encode())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _repo_name(project: Project) -> str:
    raw = str(project.name or project.directory.name).lower()
    return re.sub(r"[^a-z0-9._-]+", "-", raw).strip("-._") or "project"


def _local_path(uri: str) -> str | None:
    if uri.startswith("/"):
        return uri
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" and not parsed.netloc else None


def _local_store_dir(uri: str) -> str | None:
    """The directory a container must see for a local file or sqlite store."""
    db = sqlite_file(uri)
    return str(Path(db).parent) if db is not None else _local_path(uri)


def _store_records(uri: str | None, context: Path) -> list[str]:
    """The launch's local store (paths relative to the context, taken literally) when it lies
    inside the build context: it changes with every run, and the container sees it through a
    mount anyway."""
    if not uri:
        return []
    db = sqlite_file(uri)
    store = db if db is not None else _local_path(uri)
    if not store:
        return []
    try:
        rel = Path(store).resolve().relative_to(context.resolve()).as_posix()
    except ValueError:
        return []
    if rel == ".":
        return []
    suffixes = ("", "-journal", "-wal", "-shm") if db is not None else ("",)
    return [rel + s for s in suffixes]


def _needs_host_network(uri: str, args: Mapping[str, Any]) -> bool:
    if "network" in args or "net" in args:
        return False  # the user chose
    host = urlparse(uri).hostname or ""
    return uri.startswith(("http://", "https://")) and bool(_LOOPBACK.match(host))


def _stopper(name: str) -> Any:
    """Deliver a signal to the container (not the local client), without blocking the caller."""
    def stop(signum: int) -> None:
        sig = signal.Signals(signum).name
        threading.Thread(target=subprocess.run, daemon=True, kwargs={
            "args": [docker_cli(), "kill", "--signal", sig, name],
            "capture_output": True, "check": False}).start()

    return stop


def _remover(name: str) -> Any:
    def remove(returncode: int | None) -> None:
        # A `docker run --rm` client that exited by itself has waited for its container's
        # removal; one killed by a signal, that never ran, or that failed in the engine (125)
        # may leave the container behind. (Saves a docker CLI call on every normal launch.)
        if returncode is None or returncode < 0 or returncode == 125:
            subprocess.run([docker_cli(), "rm", "--force", name], capture_output=True, check=False)

    return remove


def release(meta: Mapping[str, Any]) -> None:
    """After its cache entry is removed: delete the image too (``envs remove`` / ``prune``)."""
    tag = (meta.get("inputs") or {}).get("image")
    if tag:
        subprocess.run([docker_cli(), "image", "rm", "--force", tag], capture_output=True,
                       check=False)


