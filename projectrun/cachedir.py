"""The cache root and the primitives every folder under it is built from.

Env entries, git mirrors and their work trees, the tracking spool, schema markers, conda's
package cache and the sqlite creation lock all need the same few things: where the root is, a
keyed folder and where its lock files live, locks, metadata written atomically, sizes, and the
age test a prune applies. They are here once; each folder's module decides what an entry is and
when it is in use, and ``cachegc`` prunes them all.

Locks are ``flock`` on a lock file (the same kernel lock filelock takes, so an older projectrun
running beside this one still excludes it). A lock file may be deleted, but only by a process
holding it exclusively (prune deletes stale ones): every acquirer checks after ``flock`` that the
path still names the file it locked and starts over if not, so two processes never hold "the"
lock on two different files.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projectrun import settings
from projectrun.report import Reporter

HOME_ENV_VAR = settings.HOME
CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by projectrun.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
#: seconds a file whose writer cannot be identified (a temp file, a log copied before its
#: record) is left alone: its writer may still be finishing it
GRACE = 3600.0
TRASH_PREFIX = ".trash-"



def root() -> Path:
    """``$PROJECTRUN_HOME`` if set, else the platform's user cache dir (``~/.cache/projectrun``)."""
    home = settings.current().home
    if home is not None:
        return home
    import platformdirs

    return Path(platformdirs.user_cache_dir("projectrun"))


def ensure_root() -> Path:
    """Create the root with a CACHEDIR.TAG so backup tools skip it."""
    path = root()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "CACHEDIR.TAG").exists():
        write_atomic(path / "CACHEDIR.TAG", CACHEDIR_TAG)
    return path


# --- files ------------------------------------------------------------------------------------


def write_atomic(target: Path, text: str) -> None:
    """Readers see the old content or the new, never half of it."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(target: Path, data: Mapping[str, Any]) -> None:
    write_atomic(target, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """The object in ``path``; {} when it is missing or unreadable (a cache must not crash on it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def tree_size(path: Path) -> int:
    """Bytes under ``path`` (hard links counted at every name: what deleting it frees at most)."""
    if not path.is_dir():
        return os.lstat(path).st_size if os.path.lexists(path) else 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def size_text(n: int | None) -> str:
    """``512 B``, ``48.1 MB``: sizes as every projectrun message writes them."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def older(stamp: float | None, older_than: float, now: float) -> bool:
    """The age test of every prune: last used (or made) more than ``older_than`` seconds ago."""
    return (now - (stamp or 0.0)) > older_than


def remove_tree(path: Path, first: str | None = None) -> None:
    """Delete ``path``: ``first`` (a completion marker) before anything else, then rename the rest
    aside in one step, so nobody ever sees a half-deleted entry under its name."""
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        path.unlink()
        return
    if first:
        (path / first).unlink(missing_ok=True)
    trash = path.parent / f"{TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def sweep_trash(base: Path) -> None:
    """What an interrupted :func:`remove_tree` left: renamed aside, nobody's entry any more."""
    if base.is_dir():
        for path in base.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Removed:
    """One thing a prune removed (or, in a dry run, would remove)."""

    folder: str
    path: Path
    size: int
    what: str


def prune_old(base: Path, folder: str, older_than: float, now: float, what: str,
              dry_run: bool = False) -> list[Removed]:
    """Everything directly under ``base`` not modified for ``older_than`` seconds: for folders
    whose files are only a speed-up (schema markers, channel metadata), age is all that counts."""
    if not base.is_dir():
        return []
    removed = []
    for path in sorted(base.iterdir()):
        if not older(mtime(path), older_than, now):
            continue
        removed.append(Removed(folder, path, tree_size(path), what))
        if not dry_run:
            remove_tree(path)
    return removed


# --- locks ------------------------------------------------------------------------------------


def _acquire(path: Path, operation: int, create: bool = True) -> int | None:
    """A descriptor holding ``flock(operation)`` on the file now at ``path``; None when LOCK_NB
    and someone else holds it (or, with ``create=False``, when there is no such file)."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                continue  # deleted between mkdir and open: create it again
            return None
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # deleted (pruned) while we waited for it: lock the file now at that path


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def locked(path: Path, *, report: Reporter | None = None, waiting: str = "") -> Iterator[None]:
    """Hold the exclusive lock, waiting for it; says ``waiting`` once if someone else has it."""
    fd = _acquire(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if fd is None:
        if report and waiting:
            report(waiting)
        fd = _acquire(path, fcntl.LOCK_EX)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_locked(path: Path, *, create: bool = True) -> Iterator[bool]:
    """The exclusive lock without waiting: yields True while we hold it, False when it is held
    elsewhere (or, with ``create=False``, when the lock file does not exist)."""
    fd = _acquire(path, fcntl.LOCK_EX | fcntl.LOCK_NB, create)
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def shared(path: Path) -> Iterator[None]:
    """A shared lock for the block: any number of users at once; an exclusive holder (a prune)
    waits for none of them and is waited for by all."""
    fd = _acquire(path, fcntl.LOCK_SH)
    assert fd is not None
    try:
        yield
    finally:
        os.close(fd)


def is_held(path: Path) -> bool:
    """Someone holds the lock at ``path`` (False when there is no such file)."""
    with try_locked(path, create=False) as got:
        return not got and path.exists()


def discard(paths: Sequence[Path]) -> bool:
    """Delete lock files nobody holds, each taken first (so no waiter is split off); False, and
    nothing deleted, when one of them is held."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            got = stack.enter_context(try_locked(path, create=False))
            if not got and path.exists():  # held (not merely gone since we looked)
                return False
        for path in paths:
            path.unlink(missing_ok=True)
    return True


_HELD: dict[str, int] = {}  # lock path -> fd holding it shared for this process's lifetime
_HELD_LOCK = threading.Lock()


def hold(path: Path, note: str | None = None) -> None:
    """Hold a shared lock on ``path`` until :func:`release` or exit: "this process uses it".

    ``note`` is written into the file (the lock of a single user says what it guards)."""
    with _HELD_LOCK:
        if str(path) in _HELD:
            return
        fd = _acquire(path, fcntl.LOCK_SH)
        assert fd is not None
        if note is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note.encode(), 0)
        _HELD[str(path)] = fd


def release(path: Path) -> None:
    with _HELD_LOCK:
        fd = _HELD.pop(str(path), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def idle(path: Path) -> Iterator[bool]:
    """The users lock at ``path`` exclusively, without waiting: False while anyone uses it.
    This process's own hold does not count: it is the one about to remove the thing."""
    release(path)
    with try_locked(path) as free:
        yield free


# --- keyed folders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Area:
    """One folder under the root: its entries ``<key><suffix>`` and their lock files.

    Lock files live apart from the entries (under ``locks``, or beside them when it is ""), so
    deleting an entry never deletes a lock somebody waits on.
    """

    name: str
    suffix: str = ""
    locks: str = ".locks"

    @property
    def dir(self) -> Path:
        return root() / self.name

    def ensure(self) -> Path:
        """The folder, created (with the root's CACHEDIR.TAG)."""
        ensure_root()
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir

    def path(self, key: str) -> Path:
        return self.dir / f"{key}{self.suffix}"

    @property
    def lock_dir(self) -> Path:
        return self.dir / self.locks if self.locks else self.dir

    def lock_path(self, key: str) -> Path:
        """The per-key lock: held by whoever builds, fetches or removes the entry."""
        return self.lock_dir / f"{key}.lock"

    def users_path(self, key: str) -> Path:
        """The shared "in use" lock: held by every process using the entry."""
        return self.lock_dir / f"{key}.users"

    def lock(self, key: str, report: Reporter | None = None,
             waiting: str = "") -> contextlib.AbstractContextManager[None]:
        ensure_root()
        return locked(self.lock_path(key), report=report, waiting=waiting)

    def try_lock(self, key: str) -> contextlib.AbstractContextManager[bool]:
        return try_locked(self.lock_path(key))

    def hold(self, key: str, note: str | None = None) -> None:
        ensure_root()
        hold(self.users_path(key), note)

    def release(self, key: str) -> None:
        release(self.users_path(key))

    def idle(self, key: str) -> contextlib.AbstractContextManager[bool]:
        return idle(self.users_path(key))

    def forget(self, key: str) -> None:
        """Delete the key's lock files; only while holding both (its entry was just removed)."""
        self.lock_path(key).unlink(missing_ok=True)
        self.users_path(key).unlink(missing_ok=True)

    def prune_locks(self, needed: Callable[[str], bool], dry_run: bool = False) -> list[Removed]:
        """Lock files of keys that ``needed`` says are gone and that nobody holds."""
        if not self.lock_dir.is_dir():
            return []
        keys = sorted({p.stem for p in self.lock_dir.iterdir() if p.suffix in (".lock", ".users")})
        removed = []
        for key in keys:
            paths = [self.lock_path(key), self.users_path(key)]
            if needed(key) or any(is_held(p) for p in paths):
                continue
            found = next((p for p in paths if p.exists()), paths[0])
            if dry_run or discard(paths):
                removed.append(Removed(self.name, found, 0, f"stale lock {key}"))
        return removed


ENVS = Area("envs")
GIT = Area("git", suffix=".git", locks="")
LOCKS = Area("locks", locks="")
VALIDATED = Area("validated")
SPOOL = Area("spool")
CONDA = Area("conda")
