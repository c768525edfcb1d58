"""The environment protocol shared by every kind, and the one table of kinds.

A kind (compare pre-commit's ``lang_base.Language`` and tox's ``executor()``) turns a project's
environment section into a cache key, builds itself once, and returns an ``Environment`` that owns
how a command runs inside it: it turns the entry point's shell command, the child's variables and
the working directory into an ``Invocation`` (argv, env, cwd, and how to stop it). A venv or a
conda prefix runs a local process group; a docker container runs through a client process and is
stopped with ``docker stop``; a Ray worker builds the same invocation on its own node.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from projectrun.errors import UsageError
from projectrun.report import Reporter, quiet

if TYPE_CHECKING:
    from projectrun.progress import Progress
    from projectrun.spec import Project

#: manager name -> "module:attribute" of its kind; the CLI's --env-manager choices come from here.
#: Modules are imported only when their kind is used (rattler and docker are slow to import).
KINDS: dict[str, str] = {
    "local": "projectrun.envs.local:KIND",
    "virtualenv": "projectrun.envs.python:VIRTUALENV",
    "uv": "projectrun.envs.python:UV",
    "conda": "projectrun.envs.conda:KIND",
    "docker": "projectrun.envs.docker:KIND",
}
MANAGERS = tuple(KINDS)


@dataclass(frozen=True)
class Context:
    """What a launch tells a kind besides the project: where to talk, and what the user asked."""

    report: Reporter = quiet
    verbose: bool = False
    #: no network: use caches only (git mirrors, package caches, channels' cached repodata)
    offline: bool = False
    docker_args: Mapping[str, str | bool] = field(default_factory=dict)
    build_image: bool = False
    tracking_uri: str | None = None
    #: the run's artifact location (a container mounts a local one at the same path)
    artifact_uri: str | None = None
    #: build output (installer lines) for the run's log; shown on stderr only with --verbose
    log: Reporter = quiet
    #: makes a progress display for a build step (a bar on a TTY, a few lines otherwise)
    progress: Callable[[str], Progress] | None = None

    def build_output(self, line: str) -> None:
        """An installer's output line: always to the run's log, to the terminal with --verbose."""
        self.log(line)
        if self.verbose:
            self.report(line)

    def step(self, description: str) -> Progress:
        from projectrun.progress import NullProgress

        return self.progress(description) if self.progress else NullProgress()


@dataclass(frozen=True)
class Invocation:
    """A command ready to execute: what runs, with which variables, where, and how to stop it."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    #: called with the signal to deliver instead of signalling the local process group (docker)
    stop: Callable[[int], None] | None = None
    #: called once the process has ended, whatever happened, with its exit status (negative: the
    #: signal that killed it; None: it never ran to an exit), e.g. to remove a container
    cleanup: Callable[[int | None], None] | None = None

    def display(self) -> str:
        import shlex

        return shlex.join(self.argv)


class Environment(Protocol):
    """A prepared environment; ``tag`` is mlflow.project.env as MLflow writes it (None: local)."""

    manager: str
    tag: str | None
    key: str | None
    #: more tags for the run (docker: mlflow.docker.image.uri and .id, as MLflow writes them)
    tags: Mapping[str, str]

    def invocation(self, command: str, env: Mapping[str, str], cwd: Path) -> Invocation: ...


class EnvKind(Protocol):
    NAME: str

    def validate(self, project: Project) -> None:
        """Raise SpecError/UsageError for a bad env file or setting, before any run exists."""

    def prepare(self, project: Project, ctx: Context) -> Environment: ...


def shell(command: str, env: Mapping[str, str], cwd: Path, prelude: str = "") -> Invocation:
    """``bash -c`` of the entry point's command: MLflow defines entry points as shell commands."""
    return Invocation(["bash", "-c", f"{prelude}{command}"], dict(env), cwd)


def prepend_path(env: Mapping[str, str], directory: Path) -> str:
    current = env.get("PATH", "")
    return f"{directory}:{current}" if current else str(directory)


def select_manager(project: Project, requested: str | None) -> str:
    """MLflow's choice when --env-manager is absent, and its refusals when it is present."""
    from projectrun.spec import CONDA_ENV, DOCKER_ENV, PYTHON_ENV

    if requested is not None and requested not in MANAGERS:
        raise UsageError(f"--env-manager {requested}: must be one of {', '.join(MANAGERS)}")
    if project.env_type == DOCKER_ENV:
        return "docker"  # MLflow: docker_env always wins over --env-manager
    if requested is None:
        return {PYTHON_ENV: "virtualenv", CONDA_ENV: "conda"}.get(project.env_type or "", "local")
    if requested == "docker":
        raise UsageError(f"--env-manager docker: {project.file or project.directory} has no docker_env")
    if requested == "conda" and project.env_type in (PYTHON_ENV, None):
        raise UsageError("--env-manager conda: this project has a python_env (or no env file); "
                         "use --env-manager virtualenv, uv or local")
    return requested


def release(manager: str, meta: Mapping[str, object]) -> None:
    """After a cache entry of this kind is deleted: free what lives outside the cache (images)."""
    target = KINDS.get(manager)
    if target is None:
        return
    module = importlib.import_module(target.split(":")[0])
    hook = getattr(module, "release", None)
    if hook is not None:
        hook(meta)


def verifier(manager: str) -> Callable[[Path], str | None] | None:
    """The full check (``envs verify``) of a cache entry of this kind, if the kind has one."""
    target = KINDS.get(manager)
    if target is None:
        return None
    check: Callable[[Path], str | None] | None = getattr(
        importlib.import_module(target.split(":")[0]), "verify", None)
    return check


def get_kind(manager: str) -> EnvKind:
    """The kind for a manager, importing its module now (and only now)."""
    target = KINDS.get(manager)
    if target is None:
        raise UsageError(f"--env-manager {manager}: must be one of {', '.join(MANAGERS)}")
    module_name, attribute = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UsageError(f"--env-manager {manager}: not supported yet by projectrun; "
                         f"use --env-manager local to run in the current Python environment") from None
    kind: EnvKind = getattr(module, attribute)
    return kind
