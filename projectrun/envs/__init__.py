"""The environment protocol shared by every kind, and the registry of kinds.

A kind is a module with the members of ``EnvKind`` (compare pre-commit's ``lang_base.Language``):
it turns a project's environment section into a cache key, builds itself into a directory, says
whether a built directory is still healthy, and wraps a command to run inside itself.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from projectrun.errors import UsageError
from projectrun.spec import DOCKER_ENV, PYTHON_ENV, Project

MANAGERS = ("local", "virtualenv", "uv", "conda", "docker")
#: Where a kind sends progress lines ("building python env ...", "waiting for ..."); the runner's
#: reporter prefixes them with "projectrun: " on stderr.
Reporter = Callable[[str], None]


@dataclass(frozen=True)
class Prepared:
    """An environment ready to run a command."""

    manager: str
    #: value of the mlflow.project.env tag, as MLflow writes it (None for local: MLflow writes none)
    tag: str | None = None
    #: cache key of the built environment, recorded on the run as projectrun.env.key
    key: str | None = None
    #: shell text put before the entry point command (e.g. activating a venv)
    prefix: str = ""
    #: environment variables set for the child
    env: dict[str, str] = field(default_factory=dict)

    def wrap(self, command: str) -> str:
        return f"{self.prefix}{command}"


class EnvKind(Protocol):
    NAME: str

    def prepare(self, project: Project, *, verbose: bool, report: Reporter | None = None) -> Prepared: ...


def select_manager(project: Project, requested: str | None) -> str:
    """MLflow's choice when --env-manager is absent, and its refusals when it is present."""
    if requested is not None and requested not in MANAGERS:
        raise UsageError(f"--env-manager {requested}: must be one of {', '.join(MANAGERS)}")
    if project.env_type == DOCKER_ENV:
        return "docker"  # MLflow: docker_env always wins over --env-manager
    if requested is None:
        return default_manager(project)
    if requested == "docker":
        raise UsageError(f"--env-manager docker: {project.file or project.directory} has no docker_env")
    if requested == "conda" and project.env_type in (PYTHON_ENV, None):
        raise UsageError("--env-manager conda: this project has a python_env (or no env file); "
                         "use --env-manager virtualenv, uv or local")
    return requested


def default_manager(project: Project) -> str:
    """As ``mlflow run`` picks, except where MLflow's choice cannot work here.

    * python_env -> virtualenv, as MLflow.
    * no env file -> local. MLflow builds a bare venv without even mlflow in it, so an entry point
      that logs anything fails; ``--env-manager virtualenv`` still gives MLflow's behaviour.
    * conda_env -> local until conda environments are built (``--env-manager virtualenv`` converts
      conda.yaml the way MLflow does).
    """
    if project.env_type == PYTHON_ENV:
        return "virtualenv"
    return "local"


def get_kind(manager: str) -> EnvKind:
    """The kind for a manager; each module is imported only when its kind is used."""
    if manager == "local":
        from projectrun.envs import local

        return local  # type: ignore[return-value]
    if manager in ("virtualenv", "uv"):
        from projectrun.envs import python

        return python.VIRTUALENV if manager == "virtualenv" else python.UV
    raise UsageError(f"--env-manager {manager}: not supported yet by projectrun; "
                     f"use --env-manager local to run in the current Python environment")
