"""Everything under the cache root: what each folder holds, and one prune that covers them all.

``projectrun cache list`` and ``cache prune`` work from :data:`LAYOUT` (the README's "Cache
layout" table says the same; a test keeps them together). Each folder's own module decides what
is in use: an env a launch holds, a mirror with a running checkout, a spool record not replayed
yet, a conda package an env was installed from. Compare pre-commit's ``gc``, which removes the
clones no config references.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projectrun import cachedir
from projectrun.cachedir import Removed


@dataclass(frozen=True)
class Folder:
    """One row of the cache layout."""

    path: str  # relative to the root; a trailing / for folders
    holds: str
    prune: str


LAYOUT = (
    Folder("envs/", "one directory per environment, `<kind>-<key>` (python venvs, conda "
           "prefixes, docker image records); `.locks/` holds each one's build and in-use locks",
           "envs unused for `--older-than`, interrupted builds, locks of envs that are gone; "
           "never an env a running launch uses"),
    Folder("git/", "one bare mirror per git URL, `<key>.git`, and its `<key>.lock`",
           "mirrors unused for `--older-than` with no running checkout, interrupted clones, "
           "locks of mirrors that are gone"),
    Folder("locks/", "locks that guard no one entry: `sqlite-*.lock` (making a new sqlite "
           "store), `worktree-*.users` (one per running git checkout, naming its work tree in "
           "the temp dir), `conda.users` (conda solves and installs)",
           "lock files nobody holds; a free worktree lock means its launch died, and its work "
           "tree goes first"),
    Folder("validated/", "one empty marker per MLproject/python_env document that passed its "
           "schema (skips jsonschema on the next launch)", "markers not used for `--older-than`"),
    Folder("spool/", "`<run id>.json` (+ `.log`): what a run could not record while its store "
           "was down; the next command that reaches the store replays it",
           "never a record; the log of a replayed record and temp files, after an hour"),
    Folder("conda/pkgs/", "rattler's package cache, which every conda env hard-links from",
           "packages no env in `envs/` was installed from, while no conda build or lock runs"),
    Folder("conda/repodata/", "rattler's cache of channel metadata (`projectrun lock --offline` "
           "solves from it)", "files not refreshed for `--older-than`, while no conda build or "
           "lock runs"),
    Folder("mlflow-schema.json", "the installed MLflow's database revisions (a memo)",
           "kept (rewritten when MLflow changes)"),
    Folder("CACHEDIR.TAG", "tells backup tools to skip the cache", "kept"),
)


def list_folders() -> list[dict[str, Any]]:
    """Each folder of :data:`LAYOUT` with its path, entry count and size on disk."""
    base = cachedir.root()
    rows = []
    for folder in LAYOUT:
        path = base / folder.path.rstrip("/")
        entries = sum(1 for _ in path.iterdir()) if path.is_dir() else int(path.exists())
        rows.append({"folder": folder.path, "path": str(path), "entries": entries,
                     "size": cachedir.tree_size(path), "holds": folder.holds,
                     "prune": folder.prune})
    return rows


def prune(older_than: float, *, dry_run: bool = False) -> list[Removed]:
    """Remove, from every folder, what its rules say is stale; returns what was (or would be)
    removed. Order matters: envs before conda packages (a pruned env frees its packages), git
    work trees of dead launches before their mirrors and locks."""
    from projectrun import cache, envs, gitsource, spool
    from projectrun.envs import conda

    now = time.time()
    gone = cache.prune(older_than, dry_run=dry_run, now=now, sweep=False)
    if not dry_run:
        for entry in gone:
            envs.release(entry.kind, entry.meta)  # docker: the image goes too
    removed = [Removed(cachedir.ENVS.name, e.path, e.size or 0, f"{e.kind} env {e.key}")
               for e in gone]
    removed += cache.prune_leftovers(dry_run)
    removed += [_from_git(m) for m in gitsource.prune(older_than, dry_run=dry_run)]
    removed += cachedir.LOCKS.prune_locks(lambda _key: False, dry_run)
    removed += cachedir.prune_old(cachedir.VALIDATED.dir, cachedir.VALIDATED.name, older_than,
                                  now, "schema marker", dry_run)
    removed += spool.prune(dry_run, now)
    removed += conda.prune_shared(older_than, now, gone=frozenset(e.path for e in gone),
                                  dry_run=dry_run)
    return removed


_GIT_WHAT = {"mirror": "mirror of {url}", "worktree": "work tree of a launch that died ({url})",
             "clone": "interrupted clone", "lock": "stale lock"}


def _from_git(entry: dict[str, Any]) -> Removed:
    what = _GIT_WHAT.get(entry.get("what", ""), "{url}").format(url=entry.get("url"))
    return Removed(cachedir.GIT.name, Path(entry["path"]), entry.get("size") or 0, what)
