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
    """Drop ``user:token@`` from a URL before it is stored as a tag."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url, flags=re.I)


def info(path: Path) -> dict[str, str]:
    """mlflow.source.git.commit and .repoURL as MLflow writes them, plus .dirty (MLflow never does)."""
    if toplevel(path) is None:
        return {}
    tags: dict[str, str] = {}
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], path)
    ignored = _git(["check-ignore", "-q", str(path)], path) is not None
    if head and not ignored:
        tags[TAG_GIT_COMMIT] = head
        status = _git(["status", "--porcelain", "--untracked-files=no"], path)
        tags[TAG_GIT_DIRTY] = "true" if status else "false"
    remotes = _git(["config", "--get-regexp", r"^remote\..*\.url$"], path)
    if remotes:  # MLflow takes the first remote in config order, not necessarily origin
        tags[TAG_GIT_REPO_URL] = strip_credentials(remotes.splitlines()[0].split(" ", 1)[1])
    return tags


def source_name(directory: Path) -> str:
    """``file://<work tree>#<subdir>`` inside a git repo, else the absolute path, as MLflow writes it."""
    top = toplevel(directory)
    if top is None:
        return str(directory)
    rel = directory.resolve().relative_to(top.resolve()).as_posix() if directory.resolve() != top.resolve() else ""
    return f"file://{top}" + (f"#{rel}" if rel else "")
