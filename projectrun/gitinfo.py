"""What a local project's git work tree says about it: the tags MLflow writes, and the dirty flag.

Plain ``git`` calls (a few milliseconds each) instead of GitPython, whose import alone costs
more than all of them on the launch path.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_REPO_URL = "mlflow.source.git.repoURL"
TAG_GIT_BRANCH = "mlflow.source.git.branch"
TAG_GIT_DIRTY = "mlflow.source.git.dirty"


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except OSError:  # git not installed: no git metadata, as in MLflow
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def toplevel(path: Path) -> Path | None:
    """The work tree containing ``path``; None outside git (and for bare repositories)."""
    top = _git(["rev-parse", "--show-toplevel"], path)
    return Path(top) if top else None


def strip_credentials(url: str) -> str:
    """Drop ``user:token@`` from a URL before it is stored as a tag (up to the last ``@`` of the
    authority: a password may hold an unencoded ``@``, as git and curl accept)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/?#]*@", r"\1", url, flags=re.IGNORECASE)


def describe(directory: Path) -> tuple[str, dict[str, str]]:
    """What the run records about a local project, as MLflow writes it: mlflow.source.name
    (``file://<work tree>#<subdir>`` inside git, else the absolute path) and the git tags
    (commit and repoURL, plus the dirty flag MLflow never writes)."""
    top = toplevel(directory)
    if top is None:
        return str(directory), {}
    rel = "" if directory.resolve() == top.resolve() else directory.resolve().relative_to(top.resolve()).as_posix()
    name = f"file://{top}" + (f"#{rel}" if rel else "")
    tags: dict[str, str] = {}
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], directory)
    ignored = _git(["check-ignore", "-q", str(directory)], directory) is not None
    if head and not ignored:
        tags[TAG_GIT_COMMIT] = head
        status = _git(["status", "--porcelain", "--untracked-files=no"], directory)
        tags[TAG_GIT_DIRTY] = "true" if status else "false"
    remotes = _git(["config", "--get-regexp", r"^remote\..*\.url$"], directory)
    if remotes:  # MLflow takes the first remote in config order, not necessarily origin
        tags[TAG_GIT_REPO_URL] = strip_credentials(remotes.splitlines()[0].split(" ", 1)[1])
    return name, tags
