"""Pull and build images with the docker SDK; imported only when an image is missing.

Build contexts are tar streams made here from exactly the files ``.dockerignore`` keeps, so the
engine never receives ``.git``, data or anything else left out; build and pull output goes to the
run's log, and a failure is one line with the end of that output.
"""
from __future__ import annotations

import io
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from projectrun.envs import Context
from projectrun.envs.docker import engine_problem
from projectrun.errors import EnvBuildError

DOCKERFILE = "Dockerfile.projectrun"


def client() -> Any:
    try:
        import docker
    except ImportError:  # not a dependency of projectrun (nor of mlflow, which needs it too)
        raise EnvBuildError("building or pulling a docker image needs the docker Python package, "
                            "which is not installed: `pip install docker`") from None
    try:
        engine = docker.from_env(timeout=600)
        engine.ping()
    except Exception as exc:  # noqa: BLE001 - DockerException, requests' ConnectionError
        raise EnvBuildError(engine_problem(str(exc))) from None
    return engine


def pull(image: str, ctx: Context) -> str:
    """Pull ``image`` with progress (layers done / total); its id. One line if it cannot be had."""
    engine = client()
    repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    ctx.report(f"pulling docker image {image}")
    progress = ctx.step(f"pulling {image}")
    layers: set[str] = set()
    done: set[str] = set()
    try:
        for event in engine.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise EnvBuildError(f"docker image {image} cannot be pulled: {event['error']}")
            layer, status = event.get("id"), event.get("status", "")
            ctx.log(f"{layer or image}: {status} {event.get('progress', '')}".rstrip())
            if not layer:
                continue
            layers.add(layer)
            progress.update(total=len(layers))
            if status in ("Pull complete", "Already exists") and layer not in done:
                done.add(layer)
                progress.advance()
    except EnvBuildError:
        raise
    except Exception as exc:  # noqa: BLE001 - NotFound, APIError (denied, no registry)
        raise EnvBuildError(f"docker image {image} is not available locally and cannot be pulled: "
                            f"{_first_line(exc)}") from None
    finally:
        progress.close()
    return str(engine.images.get(image).id)


def build_project(tag: str, base_id: str, files: list[tuple[str, Path]], code_dir: str,
                  ctx: Context) -> str:
    """The project image: ``FROM base``, the project's files in one COPY layer, WORKDIR there."""
    dockerfile = f"FROM {base_id}\nCOPY project/ {code_dir}/\nWORKDIR {code_dir}\n"
    entries = [(f"project/{rel}", path) for rel, path in files]
    return _build(tag, dockerfile, entries, ctx)


def build_dockerfile(tag: str, dockerfile: Path, files: list[tuple[str, Path]], ctx: Context) -> str:
    """A base image from the project's own Dockerfile, its directory as the context."""
    text = dockerfile.read_text(encoding="utf-8", errors="replace")
    return _build(tag, text, list(files), ctx)


def _build(tag: str, dockerfile: str, entries: Iterable[tuple[str, Path]], ctx: Context) -> str:
    engine = client()
    tail: deque[str] = deque(maxlen=15)
    with tempfile.TemporaryFile() as context:
        _write_context(context, dockerfile, entries)
        context.seek(0)
        try:
            stream = engine.api.build(fileobj=context, custom_context=True, dockerfile=DOCKERFILE,
                                      tag=tag, rm=True, forcerm=True, decode=True)
            for event in stream:
                _follow(event, tail, ctx)
        except EnvBuildError:
            raise
        except Exception as exc:  # noqa: BLE001 - APIError, BuildError
            raise EnvBuildError(f"building docker image {tag} failed: {_first_line(exc)}") from None
    try:
        return str(engine.images.get(tag).id)
    except Exception as exc:  # noqa: BLE001
        raise EnvBuildError(f"building docker image {tag} left no image: {_first_line(exc)}; "
                            f"last output: {' | '.join(tail)}") from None


def _follow(event: dict[str, Any], tail: deque[str], ctx: Context) -> None:
    text = str(event.get("stream") or event.get("status") or "").rstrip()
    if text:
        for line in text.splitlines():
            tail.append(line.strip())
            ctx.build_output(line)
    if "error" in event:
        detail = str(event["error"]).strip()
        before = " | ".join(list(tail)[-3:])
        raise EnvBuildError(f"docker build failed: {detail}" + (f" (after: {before})" if before else ""))


def _write_context(fileobj: Any, dockerfile: str, entries: Iterable[tuple[str, Path]]) -> None:
    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo(DOCKERFILE)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for arcname, path in entries:
            tar.add(str(path), arcname=arcname, recursive=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
