"""Git project sources: one bare mirror per URL in the cache, a fresh work tree per launch.

MLflow clones every git project into a new temp dir and never deletes it. Here the first launch
clones a bare mirror (into a temp dir, renamed into place, so a failed clone leaves nothing
behind), later launches only ``git fetch`` into it, and each launch gets its own detached
``git worktree`` so parallel runs of different versions never share files. The mirror's lock
(``cachedir.GIT``) serialises clone/fetch between processes; each work tree's launch holds a
users lock on it (``locks/worktree-<mirror key>-<name>.users``, naming the tree) from before it
exists until it is removed, so ``prune`` tells a running launch's tree from one a killed launch
left behind, and never removes a mirror a launch is checking out of.

URL checks and running git (no terminal prompts, the C locale, a protocol allow-list) are in
``projectrun.gitcommand``; ``is_git_url`` and the protocol lists are re-exported here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun import cachedir
from projectrun.errors import NetworkError, SourceError, UsageError
from projectrun.gitcommand import (  # noqa: F401 - PROTOCOLS, is_git_url: re-exported as gitsource.*
    PROTOCOLS,
    SUBMODULE_PROTOCOLS,
    check_reachable,
    check_url,
    git,
    git_error,
    is_git_url,
    refs,
    rev,
)
from projectrun.gitinfo import strip_credentials
from projectrun.report import Reporter

REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
META_FILE = "projectrun.json"
#: prefix of every per-launch work tree (in the temp dir); prune deletes nothing else it finds there
TREE_PREFIX = "projectrun-git-"
_FULL_SHA = re.compile(r"[0-9a-f]{40}")


def mirrors_dir() -> Path:
    """``<cache root>/git``: the mirrors, their lock files and temp dirs of clones under way."""
    return cachedir.GIT.dir


def mirror_key(url: str) -> str:
    """Cache key of a URL; credentials are stripped first so a rotated token reuses the mirror."""
    return hashlib.sha256(strip_credentials(url.strip()).encode()).hexdigest()[:16]


def mirror_path(url: str) -> Path:
    return cachedir.GIT.path(mirror_key(url))


# --------------------------------------------------------------------------- mirror


def _read_meta(mirror: Path) -> dict[str, Any]:
    return cachedir.read_json(mirror / META_FILE)


def _write_meta(mirror: Path, url: str, fetched: bool) -> None:
    now = time.time()
    meta = {"url": url, "created": now, "fetched": now, **_read_meta(mirror)}
    meta.update(url=url, used=now, **({"fetched": now} if fetched else {}))
    cachedir.write_json(mirror / META_FILE, meta)


def _locked(mirror: Path, report: Reporter, what: str) -> contextlib.AbstractContextManager[None]:
    return cachedir.GIT.lock(mirror.stem, report, f"waiting for another projectrun {what}")


def _clone(url: str, mirror: Path, report: Reporter) -> None:
    """Clone into a temp dir next to the mirror and rename it into place only when complete."""
    report(f"cloning {strip_credentials(url)} into the cache")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{mirror.stem}-", dir=mirror.parent))
    try:
        # --template= keeps the user's hook templates out of the mirror (as pre-commit does)
        git(["clone", "--bare", "--quiet", "--template=", "--", url, str(tmp)], url=url)
        git(["remote", "set-url", "origin", strip_credentials(url)], tmp)  # no token on disk
        _write_meta(tmp, strip_credentials(url), fetched=True)
        os.rename(tmp, mirror)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fix_head(url: str, mirror: Path) -> None:
    """Point the mirror's HEAD at the remote default branch again if fetch --prune removed it
    (the remote renamed master to main); fetch never updates a bare repo's HEAD itself."""
    head = git(["symbolic-ref", "--quiet", "HEAD"], mirror, check=False).stdout.strip()
    if head and rev(mirror, head):
        return
    out = git(["ls-remote", "--symref", "--", url, "HEAD"], url=url, check=False).stdout
    match = re.search(r"^ref: (refs/heads/\S+)\tHEAD$", out, re.MULTILINE)
    if match:
        git(["symbolic-ref", "HEAD", match.group(1)], mirror, check=False)


def _refresh(url: str, mirror: Path, version: str | None, offline: bool, report: Reporter) -> bool:
    """Bring the mirror up to date; returns whether a network fetch happened."""
    safe = strip_credentials(url)
    if not mirror.exists():
        if offline:
            raise SourceError(f"{safe} is not in the cache yet; drop --offline to clone it")
        _clone(url, mirror, report)
        return True
    if offline:
        return False
    if version and _FULL_SHA.fullmatch(version) and rev(mirror, version):
        return False  # a full commit sha already in the mirror cannot change: skip the round-trip
    report(f"fetching {safe}")
    try:
        check_reachable(url)
        git(["fetch", "--prune", "--quiet", "--", url, *REFSPECS], mirror, url=url)
    except NetworkError as exc:
        if _resolve(mirror, version) is None:
            missing = f"version '{version}'" if version else "default branch"
            raise NetworkError(f"{exc}; the cached copy has no {missing}") from None
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(_read_meta(mirror).get("fetched", 0)))
        report(f"warning: {exc.args[0].split(';')[0]}; using the cached copy fetched {when}")
        return False
    _fix_head(url, mirror)
    return True


def _resolve(mirror: Path, version: str | None) -> tuple[str, str | None] | None:
    """(commit, branch) for a branch, tag or (short) sha; no version means the default branch.
    A branch wins over a tag of the same name, as with ``git checkout``."""
    if version is None:
        head = git(["symbolic-ref", "--quiet", "HEAD"], mirror, check=False).stdout.strip()
        sha = rev(mirror, head) if head else None
        return (sha, head.removeprefix("refs/heads/")) if sha else None
    for name, branch in ((f"refs/heads/{version}", version), (f"refs/tags/{version}", None),
                         (version, None)):
        sha = rev(mirror, name)
        if sha:
            return sha, branch
    return None


def _unknown_version(mirror: Path, url: str, version: str | None, offline: bool) -> SourceError:
    branches = refs(mirror, "refs/heads", "-committerdate")
    tags = refs(mirror, "refs/tags", "-creatordate")

    def few(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "") or "none"

    what = f"no branch, tag or commit '{version}'" if version else "no default branch (empty repository?)"
    msg = f"{url}: {what}; branches: {few(branches)}; tags: {few(tags)}"
    if offline:
        msg += "; the cached copy may be out of date - drop --offline to fetch"
    return SourceError(msg)


# --------------------------------------------------------------------------- checkout


@dataclass
class GitCheckout:
    """One launch's private work tree of a cached mirror; call cleanup() after the run."""

    directory: Path  # the project dir (worktree + subdir)
    worktree: Path  # the checkout root, removed by cleanup()
    commit: str  # full sha
    #: the version when it names a branch; with no version, the remote's default branch
    branch: str | None
    repo_url: str  # credentials stripped
    fetched: bool  # a network fetch (or clone) happened
    version: str | None = None  # as given
    mirror: Path | None = field(default=None, repr=False)

    @property
    def branch_tag(self) -> str | None:
        """The mlflow.source.git.branch MLflow writes: only when --version names a branch."""
        return self.branch if self.version is not None else None

    def cleanup(self) -> None:
        """Delete the work tree, its registration in the mirror and its users lock; safe to call
        twice."""
        _drop_tree(self.mirror, self.worktree)

    def __enter__(self) -> GitCheckout:  # noqa: PYI034 - typing.Self needs 3.11; the class is final
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _tree_lock(mirror: Path, tree: Path) -> Path:
    """The users lock of one launch's work tree; it holds the tree's path, for prune."""
    return cachedir.LOCKS.users_path(f"worktree-{mirror.stem}-{tree.name}")


def _reserve_tree(mirror: Path) -> Path:
    """An empty dir for a work tree, held in use from before git registers it: a prune never
    sees a registered tree without its lock held."""
    tree = Path(tempfile.mkdtemp(prefix=TREE_PREFIX))
    try:
        cachedir.hold(_tree_lock(mirror, tree), note=str(tree))
    except BaseException:
        tree.rmdir()
        raise
    return tree


def _drop_tree(mirror: Path | None, tree: Path) -> None:
    shutil.rmtree(tree, ignore_errors=True)
    if mirror is None:
        return
    if mirror.is_dir():
        git(["worktree", "prune"], mirror, check=False)
    lock = _tree_lock(mirror, tree)
    cachedir.release(lock)
    cachedir.discard([lock])


def _worktree(mirror: Path, sha: str) -> Path:
    """Check ``sha`` out into a new work tree; under the mirror's lock, because a ``git fetch``
    in the mirror fails on a work tree that is being added ("bad object worktrees/.../HEAD")."""
    tree = _reserve_tree(mirror)
    try:
        git(["worktree", "add", "--detach", "--quiet", str(tree), sha], mirror)
    except BaseException:
        _drop_tree(mirror, tree)
        raise
    return tree


def _submodules(mirror: Path, tree: Path, offline: bool, report: Reporter) -> None:
    if not (tree / ".gitmodules").exists():
        return
    if offline:
        report("warning: --offline: submodules are not fetched")
        return
    try:
        proc = git(["submodule", "update", "--init", "--recursive", "--quiet"], tree,
                    protocols=SUBMODULE_PROTOCOLS, check=False)
    except BaseException:
        _drop_tree(mirror, tree)
        raise
    if proc.returncode != 0:
        report(f"warning: submodules not fetched: {git_error(proc.stderr, None, 'submodule')}")


def fetch(url: str, version: str | None, subdir: str = "", *, offline: bool = False,
          report: Reporter) -> GitCheckout:
    """Update (or create) the mirror of ``url`` and check ``version`` out into a fresh work tree.

    A remote that cannot be reached is only a warning when the mirror already has the version;
    ``offline`` never touches the network. Raises SourceError (bad URL, unknown version, missing
    subdir, auth) or NetworkError (remote unreachable and nothing usable cached).
    """
    url = url.strip()
    version = version or None
    check_url(url)
    if version is not None and version.startswith("-"):
        raise SourceError(f"{url}: invalid version '{version}'")
    safe = strip_credentials(url)
    mirror = mirror_path(url)
    cachedir.GIT.ensure()
    with _locked(mirror, report, f"fetching {safe}"):
        fetched = _refresh(url, mirror, version, offline, report)
        found = _resolve(mirror, version)
        if found is None:
            raise _unknown_version(mirror, safe, version, offline)
        _write_meta(mirror, safe, fetched)
        commit, branch = found
        tree = _worktree(mirror, commit)
    _submodules(mirror, tree, offline, report)
    checkout = GitCheckout(directory=tree, worktree=tree, commit=commit, branch=branch,
                           repo_url=safe, fetched=fetched, version=version, mirror=mirror)
    sub = subdir.strip("/")
    if sub:
        target = (tree / sub).resolve()
        at = f"{safe} at {version or branch} ({commit[:12]})"
        if tree.resolve() not in target.parents:
            checkout.cleanup()
            raise SourceError(f"{at}: subdirectory '{subdir}' points outside the repository")
        if not target.is_dir():
            checkout.cleanup()
            raise SourceError(f"{at}: no subdirectory '{subdir}'")
        checkout.directory = target
    return checkout


# --------------------------------------------------------------------------- sources list / prune


def _tree_locks(mirror: Path | None = None) -> list[Path]:
    """Users locks of work trees: of ``mirror``, or of every mirror (gone ones too)."""
    pattern = f"worktree-{mirror.stem}-*.users" if mirror else "worktree-*.users"
    return sorted(cachedir.LOCKS.dir.glob(pattern))


def _lock_mirror(lock: Path) -> Path:
    """The mirror a work tree lock ``worktree-<mirror key>-<tree name>.users`` belongs to."""
    return cachedir.GIT.path(lock.name.split("-")[1])


def _unlocked_trees(mirror: Path) -> list[Path]:
    """Registered work trees on disk without a users lock: made by a projectrun from before
    those locks, so only their age can tell whether their launch still runs."""
    trees = []
    for gitdir in (mirror / "worktrees").glob("*/gitdir"):
        with contextlib.suppress(OSError):
            tree = Path(gitdir.read_text().strip()).parent
            if tree.is_dir() and not _tree_lock(mirror, tree).exists():
                trees.append(tree)
    return trees


def _live_worktrees(mirror: Path, older_than: float | None = None, now: float = 0.0) -> int:
    """Work trees of running launches: their users lock is held. One without a lock counts while
    on disk, or, for prune (``older_than``), while younger than that."""
    held = sum(cachedir.is_held(lock) for lock in _tree_locks(mirror))
    unlocked = [t for t in _unlocked_trees(mirror)
                if older_than is None or not cachedir.older(cachedir.mtime(t), older_than, now)]
    return held + len(unlocked)


def _tree_entry(mirror: Path, tree: Path) -> dict[str, Any]:
    return {"what": "worktree", "key": mirror.stem, "url": _read_meta(mirror).get("url"),
            "path": str(tree), "size": cachedir.tree_size(tree), "created": cachedir.mtime(tree),
            "fetched": None, "used": None, "in_use": 0}


def _dead_tree(lock: Path) -> Path | None:
    """The work tree a free users lock names, if it is one of ours (never delete anything else)."""
    text = lock.read_text(encoding="utf-8", errors="replace").strip()
    tree = Path(text) if text else None
    return tree if tree and tree.is_absolute() and tree.name.startswith(TREE_PREFIX) else None


def prune_worktrees(older_than: float, now: float, dry_run: bool = False) -> list[dict[str, Any]]:
    """Work trees left by launches that died (SIGKILL, a reboot): their users lock is free (or,
    without a lock, they are older than ``older_than``); the lock files go with them."""
    dead = []
    for lock in _tree_locks():
        with cachedir.try_locked(lock, create=False) as free:
            tree = _dead_tree(lock) if free else None
            if free and not dry_run:
                lock.unlink(missing_ok=True)  # ours: held right now
        if tree is not None and tree.exists():
            dead.append(_tree_entry(_lock_mirror(lock), tree))
    dead += [_tree_entry(mirror, tree) for mirror in mirrors_dir().glob("*.git")
             for tree in _unlocked_trees(mirror)
             if cachedir.older(cachedir.mtime(tree), older_than, now)]
    if not dry_run:
        for entry in dead:
            shutil.rmtree(entry["path"], ignore_errors=True)
        for mirror in {cachedir.GIT.path(e["key"]) for e in dead}:
            if mirror.is_dir():
                git(["worktree", "prune"], mirror, check=False)
    return dead


def list_mirrors() -> list[dict[str, Any]]:
    """One dict per cached mirror: key, url, path, size (bytes), created/fetched/used (epoch
    seconds) and in_use (work trees of launches still running)."""
    entries = []
    for mirror in mirrors_dir().glob("*.git"):
        meta = _read_meta(mirror)
        entries.append({"key": mirror.stem, "url": meta.get("url", "?"), "path": str(mirror),
                        "size": cachedir.tree_size(mirror), "created": meta.get("created"),
                        "fetched": meta.get("fetched"), "used": meta.get("used"),
                        "in_use": _live_worktrees(mirror)})
    return sorted(entries, key=lambda e: e["used"] or 0, reverse=True)


def prune(older_than_seconds: float, dry_run: bool = False) -> list[dict[str, Any]]:
    """Remove work trees of launches that died, then mirrors unused for ``older_than_seconds``
    (skipping ones a launch is using or fetching right now), temp dirs left by killed clones and
    lock files of mirrors that are gone; returns what was (or would be) removed, each dict's
    ``what`` saying which ("worktree", "mirror", "clone", "lock")."""
    now = time.time()
    removed = prune_worktrees(older_than_seconds, now, dry_run)
    for entry in list_mirrors():
        mirror = Path(entry["path"])
        if not _prunable(mirror, older_than_seconds, now):
            continue
        if dry_run or _remove_if_idle(mirror, mirror.stem, older_than_seconds, now):
            removed.append({"what": "mirror", **entry})
    removed += _prune_clones(older_than_seconds, now, dry_run)
    if not dry_run:
        cachedir.sweep_trash(mirrors_dir())
    removed += [{"what": "lock", "key": r.path.stem, "url": None, "path": str(r.path), "size": 0,
                 "created": None, "fetched": None, "used": None, "in_use": 0}
                for r in cachedir.GIT.prune_locks(_needs_lock, dry_run)]
    return removed


def _prunable(mirror: Path, older_than: float, now: float) -> bool:
    used = _read_meta(mirror).get("used")
    return cachedir.older(used, older_than, now) and not _live_worktrees(mirror, older_than, now)


def _prune_clones(older_than: float, now: float, dry_run: bool) -> list[dict[str, Any]]:
    """Temp dirs of clones that were killed (their mirror's lock is free)."""
    removed = []
    for tmp in mirrors_dir().glob(".tmp-*"):
        key = tmp.name.split("-")[1]
        created = cachedir.mtime(tmp)
        if not cachedir.older(created, older_than, now):
            continue
        entry = {"what": "clone", "key": key, "url": None, "path": str(tmp),
                 "size": cachedir.tree_size(tmp), "created": created, "fetched": None,
                 "used": None, "in_use": 0}
        if dry_run or _remove_if_idle(tmp, key):
            removed.append(entry)
    return removed


def _needs_lock(key: str) -> bool:
    return cachedir.GIT.path(key).exists() or any(mirrors_dir().glob(f".tmp-{key}-*"))


def _remove_if_idle(path: Path, key: str, older_than: float | None = None, now: float = 0.0) -> bool:
    """Remove ``path`` under the mirror's lock, if nobody holds it (a clone or fetch is running)
    and, for a mirror, it is still prunable once we hold it (a launch may have used it since)."""
    with cachedir.GIT.try_lock(key) as free:
        if not free or (older_than is not None and not _prunable(path, older_than, now)):
            return False
        cachedir.remove_tree(path)
        if not _needs_lock(key):
            cachedir.GIT.lock_path(key).unlink(missing_ok=True)  # ours: held right now
    return True


def remove(url_or_key: str) -> dict[str, Any]:
    """Remove one mirror, named by its URL, its key or an unambiguous key prefix; waits for a
    fetch in progress."""
    entries = list_mirrors()
    matches = [e for e in entries if url_or_key in (e["key"], e["url"])
               or e["key"] == mirror_key(url_or_key)]
    matches = matches or [e for e in entries if e["key"].startswith(url_or_key)]
    if len(matches) != 1:
        what = "matches several" if matches else "matches no"
        raise UsageError(f"'{url_or_key}' {what} cached git sources; `projectrun sources list` "
                         "shows their URLs and keys")
    entry = matches[0]
    with _locked(Path(entry["path"]), lambda _msg: None, "removing"):
        cachedir.remove_tree(Path(entry["path"]))
        if not _needs_lock(entry["key"]):
            cachedir.GIT.lock_path(entry["key"]).unlink(missing_ok=True)  # ours: held right now
    return entry
