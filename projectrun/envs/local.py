"""The current environment, unchanged: nothing to build; the command runs in a plain shell."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from projectrun.envs import Context, Invocation, shell
from projectrun.spec import Project


@dataclass(frozen=True)
class LocalEnvironment:
    manager: str = "local"
    tag: str | None = None  # MLflow writes no mlflow.project.env tag for local
    key: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def invocation(self, command: str, env: Mapping[str, str], cwd: Path) -> Invocation:
        return shell(command, env, cwd)


class LocalKind:
    NAME = "local"

    def validate(self, project: Project) -> None:
        pass

    def prepare(self, project: Project, ctx: Context) -> LocalEnvironment:
        return LocalEnvironment()


KIND = LocalKind()
