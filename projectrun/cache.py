"""The cache root and its keyed entries, each built once under a per-key lock and marked complete last.

An entry is ``<root>/envs/<kind>-<key>``. It counts as built only when its completion marker exists;
the marker is written after everything else and removed before anything else, so a build that was
interrupted (Ctrl-C, SIGKILL, power loss) is never reused: the next builder, holding the lock,
removes the leftover and builds again (compare pre-commit's ``repository._hook_install``).

Every process that uses an entry holds a shared lock on its ``users`` file for its lifetime, so
``remove`` and ``prune`` (which need it exclusively, without waiting) never delete an env under a
running launch. ``envs verify`` checks entries file by file and flags a broken one; the next
launch that needs it rebuilds it.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun import cachedir, interrupts
from projectrun.cachedir import (  # noqa: F401 - the cache's public names, used across projectrun
    CACHEDIR_TAG,
    HOME_ENV_VAR,
    ensure_root,
    root,
    size_text,
    tree_size,
)
from projectrun.errors import EnvBuildError, UsageError
from projectrun.report import Reporter

#: Mixed into every key: bump it when the layout or the meaning of an entry changes.
FORMAT_VERSION = 1
KEY_LENGTH = 16
MARKER = ".projectrun-complete"
META = ".projectrun-meta.json"
LAST_USED = ".projectrun-last-used"
#: written by ``envs verify`` into a broken entry: the next launch rebuilds it
BROKEN = ".projectrun-broken"

Builder = Callable[[Path], None]
#: Returns None when a built entry is usable, else the reason it must be rebuilt.
HealthCheck = Callable[[Path], "str | None"]
_NOT_BUILT = "not built"


@dataclass(frozen=True)
class Built:
    """The outcome of :func:`get_or_build`."""

    path: Path
    kind: str
    key: str
    #: True when this call built the entry, False when it was already there
    built: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One directory under ``<root>/envs``, as listed by :func:`list_entries`."""

    kind: str
    key: str
    path: Path
    complete: bool
    project: str | None
    created: float | None
    last_used: float | None
    size: int | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.key}"


def envs_dir() -> Path:
    return cachedir.ENVS.ensure()


def make_key(inputs: Any) -> str:
    """sha256 over canonical JSON of ``inputs`` (plus FORMAT_VERSION), truncated for readable paths."""
    text = json.dumps({"format": FORMAT_VERSION, "inputs": inputs}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def entry_path(kind: str, key: str) -> Path:
    return envs_dir() / f"{kind}-{key}"


def lock_path(kind: str, key: str) -> Path:
    """The per-key build lock (``envs/.locks/<kind>-<key>.lock``)."""
    return cachedir.ENVS.lock_path(f"{kind}-{key}")


def get_or_build(kind: str, key: str, build: Builder, *, inputs: Any = None,
                 project: str | None = None, health: HealthCheck | None = None,
                 report: Reporter | None = None, relocatable: bool = False,
                 force: bool = False) -> Built:
    """Return the entry for ``key``, building it first if needed; at most one process builds it.

    ``build(path)`` must create ``path``. Builds happen in place at the final path (venvs embed
    their path, so they cannot be moved); with ``relocatable=True`` the build goes to a temporary
    sibling that is renamed into place, so even the directory appears atomically. ``force``
    rebuilds a usable entry too (``--build-image``).
    """
    path = entry_path(kind, key)
    hold(kind, key)  # before the check: nothing may delete it between the check and the use
    if not force and _unusable(path, health) is None:  # fast path: no build lock for a cache hit
        return _use(path, kind, key, built=False)
    with interrupts.raising(), _locked(kind, key, report):  # SIGTERM too removes a half build
        reason = "a rebuild was asked for" if force else _unusable(path, health)
        if reason is None:  # another process built it while we waited
            return _use(path, kind, key, built=False)
        if reason != _NOT_BUILT and report:
            report(f"rebuilding {kind} env {key}: {reason}")
        meta = {"kind": kind, "key": key, "project": project, "inputs": inputs,
                "format": FORMAT_VERSION, "build_id": secrets.token_hex(8)}
        if relocatable:
            _build_then_rename(path, build, meta, health)
        else:
            _build_in_place(path, build, meta, health)
        return _use(path, kind, key, built=True)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def read_meta(path: Path) -> dict[str, Any]:
    return cachedir.read_json(path / META)


def _unusable(path: Path, health: HealthCheck | None) -> str | None:
    if not is_complete(path):
        return _NOT_BUILT
    flagged = broken_reason(path)
    if flagged is not None:
        return f"envs verify found it broken ({flagged})"
    return health(path) if health else None


def broken_reason(path: Path) -> str | None:
    """What ``envs verify`` found wrong with this entry, if it flagged it."""
    try:
        return (path / BROKEN).read_text(encoding="utf-8").strip() or "broken"
    except OSError:
        return None


def _use(path: Path, kind: str, key: str, *, built: bool) -> Built:
    """Stamp last-used (what ``prune`` looks at) and describe the entry."""
    stamp = path / LAST_USED
    try:
        os.utime(stamp)
    except FileNotFoundError:
        stamp.touch()
    return Built(path, kind, key, built, read_meta(path))


def _build_in_place(path: Path, build: Builder, meta: dict[str, Any], health: HealthCheck | None) -> None:
    _remove_tree(path)  # a leftover without marker is an interrupted build
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        build(path)
        _publish(path, meta, health)
    except BaseException:  # Ctrl-C too: never leave a half-built entry behind
        _remove_tree(path)
        raise


def _build_then_rename(path: Path, build: Builder, meta: dict[str, Any], health: HealthCheck | None) -> None:
    tmp = path.parent / f".tmp-{path.name}-{secrets.token_hex(4)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        build(tmp)
        _publish(tmp, meta, health)
        _remove_tree(path)
        os.replace(tmp, path)
    except BaseException:
        _remove_tree(tmp)
        raise


def _publish(path: Path, meta: dict[str, Any], health: HealthCheck | None) -> None:
    """Check the fresh build, then write metadata and, last, the completion marker."""
    if not path.is_dir():
        raise EnvBuildError(f"building {meta['kind']} env {meta['key']} produced no directory at {path}")
    reason = health(path) if health else None
    if reason is not None:
        raise EnvBuildError(f"the {meta['kind']} env {meta['key']} was built but is not usable: {reason}")
    meta["created"] = time.time()
    cachedir.write_json(path / META, meta)
    (path / LAST_USED).touch()
    cachedir.write_atomic(path / MARKER, f"{meta['created']}\n")


def _remove_tree(path: Path) -> None:
    """Marker first, so a reader never sees a half-deleted entry as complete."""
    cachedir.remove_tree(path, first=MARKER)


@contextmanager
def _locked(kind: str, key: str, report: Reporter | None) -> Iterator[None]:
    """Hold the per-key lock; say so when we have to wait for another builder."""
    path = lock_path(kind, key)
    with cachedir.locked(path, report=report, waiting=f"waiting for another projectrun building "
                         f"{kind} env {key} (lock {path})"):
        yield


def hold(kind: str, key: str) -> None:
    """Mark the entry in use by this process until it exits: ``remove`` and ``prune`` skip it.

    A shared flock, so any number of launches hold it at once; it waits only while a remove or
    prune is deleting this very entry (after which the caller finds it gone and builds it)."""
    cachedir.ENVS.hold(f"{kind}-{key}")


def release(kind: str, key: str) -> None:
    """Give up this process's hold on an entry (it is about to remove it itself)."""
    cachedir.ENVS.release(f"{kind}-{key}")


@contextmanager
def _removable(kind: str, key: str) -> Iterator[str | None]:
    """Hold both locks without waiting; yields None, or why the entry must be left alone."""
    with cachedir.ENVS.try_lock(f"{kind}-{key}") as free:
        if not free:
            yield "it is being built by another projectrun"
            return
        with cachedir.ENVS.idle(f"{kind}-{key}") as idle:
            yield None if idle else "a running launch is using it"


# --- listing, removing, pruning -------------------------------------------------------------


def list_entries(*, sizes: bool = True) -> list[Entry]:
    """Every entry (complete or not) under ``<root>/envs``, most recently used first."""
    base = cachedir.ENVS.dir
    if not base.is_dir():
        return []
    found = [_entry(p, sizes) for p in base.iterdir()
             if p.is_dir() and not p.name.startswith(".") and "-" in p.name]
    return sorted(found, key=lambda e: e.last_used or e.created or 0.0, reverse=True)


def _entry(path: Path, sizes: bool) -> Entry:
    kind, key = path.name.rsplit("-", 1)
    meta = read_meta(path)
    return Entry(kind=kind, key=key, path=path, complete=is_complete(path),
                 project=meta.get("project"), created=meta.get("created"),
                 last_used=cachedir.mtime(path / LAST_USED),
                 size=tree_size(path) if sizes else None, meta=meta)


def find_entry(ref: str) -> Entry:
    """The entry named by a key, ``kind-key``, or an unambiguous prefix of either."""
    entries = list_entries(sizes=False)
    matches = [e for e in entries if e.key.startswith(ref) or e.name.startswith(ref)]
    exact = [e for e in matches if ref in (e.key, e.name)]
    if exact:
        matches = exact
    if not matches:
        raise UsageError(f"no cached environment matches '{ref}'; `projectrun envs list` shows them")
    if len(matches) > 1:
        names = ", ".join(e.name for e in matches)
        raise UsageError(f"'{ref}' matches several cached environments ({names}); give more of the key")
    return matches[0]


def remove(ref: str) -> Entry:
    """Delete one entry by key or prefix; refuse while another process is building it."""
    entry = find_entry(ref)
    with _removable(entry.kind, entry.key) as busy:
        if busy:
            raise UsageError(f"{entry.name} is not removed: {busy}; try again when it is done")
        _remove_tree(entry.path)
        cachedir.ENVS.forget(entry.name)
    return entry


@dataclass(frozen=True)
class Verdict:
    """What ``envs verify`` found for one entry."""

    entry: Entry
    #: "ok", "broken" (flagged: the next launch rebuilds it), "incomplete" or "building"
    state: str
    reason: str = ""


def verify(ref: str | None, check_for: Callable[[str], HealthCheck | None]) -> list[Verdict]:
    """Check one entry (``ref``) or all with the full check of their kind, and flag broken ones
    so the next launch that needs them rebuilds them (its cheap check sees the flag)."""
    entries = [find_entry(ref)] if ref else list_entries(sizes=False)
    return [_verdict(e, check_for(e.kind)) for e in entries]


def _verdict(entry: Entry, check: HealthCheck | None) -> Verdict:
    if not entry.complete:
        return Verdict(entry, "incomplete", "an interrupted build (never used; prune removes it)")
    with cachedir.ENVS.try_lock(entry.name) as free:
        if not free:
            return Verdict(entry, "building", "another projectrun is rebuilding it")
        reason = broken_reason(entry.path) or (check(entry.path) if check else None)
        if reason is None:
            return Verdict(entry, "ok")
        cachedir.write_atomic(entry.path / BROKEN, reason + "\n")
        return Verdict(entry, "broken", reason)


def prune(older_than: float, *, dry_run: bool = False, now: float | None = None,
          sweep: bool = True) -> list[Entry]:
    """Remove entries unused for more than ``older_than`` seconds, and abandoned builds.

    An entry without its marker whose lock is free is a build that died; it is removed whatever
    its age. Entries being built (lock held) or used by a running launch (users lock held) are
    skipped. Returns what was (or would be) removed; with ``sweep``, :func:`prune_leftovers`
    then removes the rest (without reporting it).
    """
    now = time.time() if now is None else now
    removed = []
    for entry in list_entries():
        if not _stale(entry, older_than, now):
            continue
        with _removable(entry.kind, entry.key) as busy:
            if busy or not _stale(_entry(entry.path, sizes=False), older_than, now):
                continue  # busy, or used since it was listed
            if not dry_run:
                _remove_tree(entry.path)
                cachedir.ENVS.forget(entry.name)
            removed.append(entry)
    if sweep and not dry_run:
        prune_leftovers()
    return removed


def _stale(entry: Entry, older_than: float, now: float) -> bool:
    return not entry.complete or cachedir.older(entry.last_used or entry.created, older_than, now)


def prune_leftovers(dry_run: bool = False) -> list[cachedir.Removed]:
    """``.trash-*`` dirs whose deletion was interrupted, ``.tmp-*`` dirs of dead builders, and
    lock files of entries that are gone (nobody holding them)."""
    base = cachedir.ENVS.dir
    if not base.is_dir():
        return []
    removed = []
    for path in base.iterdir():
        name = _tmp_entry_name(path)
        if path.name.startswith(cachedir.TRASH_PREFIX) or (name and _lock_free(name)):
            removed.append(cachedir.Removed(cachedir.ENVS.name, path, tree_size(path),
                                            "leftover of an interrupted build or removal"))
            if not dry_run:
                shutil.rmtree(path, ignore_errors=True)
    return removed + cachedir.ENVS.prune_locks(_needs_lock, dry_run)


def _tmp_entry_name(path: Path) -> str | None:
    """``kind-key`` of a relocatable build's temp dir ``.tmp-<kind>-<key>-<hex>``."""
    if path.name.startswith(".tmp-") and path.name.count("-") >= 3:
        return path.name[len(".tmp-"):].rsplit("-", 1)[0]
    return None


def _needs_lock(name: str) -> bool:
    base = cachedir.ENVS.dir
    return (base / name).exists() or any(base.glob(f".tmp-{name}-*"))


def _lock_free(name: str) -> bool:
    with cachedir.ENVS.try_lock(name) as got:
        return got
