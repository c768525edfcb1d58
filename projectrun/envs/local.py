"""The current environment, unchanged: nothing to build, nothing to wrap."""
from __future__ import annotations

from projectrun.envs import Prepared
from projectrun.spec import Project

NAME = "local"


def prepare(project: Project, *, verbose: bool) -> Prepared:
    return Prepared(manager=NAME)
