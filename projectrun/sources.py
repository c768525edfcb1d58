"""Resolve a project URI to a directory on disk."""
from __future__ import annotations

import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from projectrun.errors import SourceError, UsageError


@dataclass(frozen=True)
class Source:
    """A project directory plus what the run records about where it came from."""

    directory: Path
    #: the mlflow.source.name tag, as MLflow writes it
    name: str
    #: git tags (commit, repoURL, branch, dirty) for the run
    git_tags: dict[str, str]
    #: "local" or "git"
    kind: str = "local"


def split_fragment(uri: str) -> tuple[str, str]:
    """``repo#sub/dir`` -> (repo, sub/dir); quotes around the URI are dropped as MLflow does."""
    uri = uri.strip("'\"")
    base, _, sub = uri.partition("#")
    return base, sub


def _subdirectory(root: Path, sub: str, uri: str) -> Path:
    if not sub:
        return root
    target = (root / sub.strip("/")).resolve()
    if root.resolve() not in (target, *target.parents):
        raise SourceError(f"{uri}: subdirectory '{sub}' points outside the project")
    if not target.is_dir():
        raise SourceError(f"{uri}: no subdirectory '{sub}' in {root}")
    return target


def local_path(uri: str) -> Path | None:
    """The directory a local URI names (a path or file:///path), or None when it is not local."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.netloc + parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        return None
    else:
        path = Path(uri)
    return path if path.exists() else None


def resolve_local(uri: str, version: str | None = None) -> Source:
    from projectrun import tracking

    base, sub = split_fragment(uri)
    path = local_path(base)
    if path is None:
        raise SourceError(f"{uri}: no such directory (and not a git URL); check the path")
    if not path.is_dir():
        raise SourceError(f"{uri}: not a directory; give the folder that holds the MLproject file")
    if version is not None:
        raise UsageError(f"-v {version}: a version needs a git URL; for a local repository use "
                         f"file://{os.path.abspath(base)} so your working copy is left untouched")
    directory = _subdirectory(path.resolve(), sub, uri)
    return Source(directory=directory, name=tracking.local_source_name(directory),
                  git_tags=tracking.git_info(directory))


def resolve(uri: str, version: str | None = None) -> Source:
    """Local directories run in place; anything else is a remote the git layer fetches."""
    base, _ = split_fragment(uri)
    if local_path(base) is not None:
        return resolve_local(uri, version)
    raise SourceError(f"{uri}: no such directory; git URLs are not supported yet")
