"""Resolve a project URI to a directory on disk."""
from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from projectrun import gitinfo
from projectrun.errors import SourceError
from projectrun.report import Reporter, quiet


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
    #: removes the per-launch work tree of a git source; call it when the launch is over
    cleanup: Callable[[], None] | None = None
    #: a git source's checkout: what the project's own relative paths may not leave
    root: Path | None = None

    def close(self) -> None:
        if self.cleanup is not None:
            self.cleanup()


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
    try:
        parsed = urllib.parse.urlparse(uri)
    except ValueError as exc:  # ``http://[``: the URI can name nothing, local or remote
        raise SourceError(f"{uri}: not a valid path or URL ({exc}); check the brackets and quoting"
                          ) from None
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.netloc + parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:
        return None
    else:
        path = Path(uri)
    return path if path.exists() else None


def resolve_local(uri: str) -> Source:
    base, sub = split_fragment(uri)
    path = local_path(base)
    if path is None:
        raise SourceError(f"{uri}: no such directory (and not a git URL); check the path")
    if not path.is_dir():
        raise SourceError(f"{uri}: not a directory; give the folder that holds the MLproject file")
    directory = _subdirectory(path.resolve(), sub, uri)
    name, tags = gitinfo.describe(directory)
    return Source(directory=directory, name=name, git_tags=tags)


def resolve_git(uri: str, version: str | None, *, offline: bool, report: Reporter) -> Source:
    from projectrun import gitsource

    base, sub = split_fragment(uri)
    co = gitsource.fetch(base, version, sub, offline=offline, report=report)
    tags = {gitinfo.TAG_GIT_COMMIT: co.commit, gitinfo.TAG_GIT_DIRTY: "false"}
    if co.repo_url:
        tags[gitinfo.TAG_GIT_REPO_URL] = co.repo_url
    if co.branch_tag:
        tags[gitinfo.TAG_GIT_BRANCH] = co.branch_tag
    return Source(directory=co.directory, name=gitinfo.strip_credentials(uri), git_tags=tags,
                  kind="git", cleanup=co.cleanup, root=co.worktree)


def _mirrored_file_url(base: str) -> bool:
    """A ``file://`` repository that is gone but was cloned before: its mirror serves it, as it
    serves any unreachable remote (the git layer warns and runs the cached version)."""
    if not base.startswith("file:"):
        return False
    from projectrun import gitsource

    return gitsource.mirror_path(base).is_dir()


def _local_directory(uri: str, path: Path, version: str | None, is_git: bool, offline: bool,
                     report: Reporter) -> Source | None:
    """An existing directory: in place, or (with ``-v``) its repository's version in a work tree;
    None when it is a bare repository to clone like any git URL."""
    base, sub = split_fragment(uri)
    top = gitinfo.toplevel(path.resolve())  # None for plain directories and bare repositories
    if version is None and (top is not None or not is_git):
        return resolve_local(uri)  # run in place, as MLflow does
    if version is not None and top is not None:
        rel = path.resolve().relative_to(top).as_posix()
        inner = "/".join(p for p in (rel if rel != "." else "", sub.strip("/")) if p)
        return resolve_git(f"{top.as_uri()}#{inner}" if inner else top.as_uri(), version,
                           offline=offline, report=report)
    if version is not None and not is_git:
        raise SourceError(f"-v {version}: {base} is not a git repository; a version needs git")
    return None


def resolve(uri: str, version: str | None = None, *, offline: bool = False,
            report: Reporter = quiet) -> Source:
    """Local directories run in place; git URLs run from a cached mirror in a fresh work tree.

    A local git repository with ``-v`` is checked out into its own work tree too: MLflow checks
    the version out in the user's working copy instead, changing their files.
    """
    base, _ = split_fragment(uri)
    path = local_path(base)
    if path is not None and version is None and not base.startswith("file:") and path.is_dir():
        return resolve_local(uri)  # the everyday case, decided without loading the git layer
    from projectrun import gitsource

    is_git = gitsource.is_git_url(base)
    if path is not None and path.is_dir():
        found = _local_directory(uri, path, version, is_git, offline, report)
        if found is not None:
            return found
    if is_git or (path is None and _mirrored_file_url(base)):
        return resolve_git(uri, version, offline=offline, report=report)
    if path is not None:
        return resolve_local(uri)
    raise SourceError(f"{uri}: no such directory, and not a git URL (https://, ssh://, git@host:, file://)")
