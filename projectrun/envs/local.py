"""The current environment, unchanged: nothing to build, nothing to wrap."""
from __future__ import annotations

from projectrun.envs import Prepared, Reporter
from projectrun.spec import Project

NAME = "local"


def prepare(project: Project, *, verbose: bool, report: Reporter | None = None) -> Prepared:
    return Prepared(manager=NAME)
