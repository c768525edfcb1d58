"""Git project sources: one bare mirror per URL in the cache, a fresh work tree per launch.

MLflow clones every git project into a new temp dir and never deletes it. Here the first launch
clones a bare mirror (into a temp dir, renamed into place, so a failed clone leaves nothing
behind), later launches only ``git fetch`` into it, and each launch gets its own detached
``git worktree`` so parallel runs of different versions never share files. A file lock per
mirror serialises clone/fetch between processes.

Git always runs with an argument list, without terminal prompts (a bad token fails at once
instead of hanging a sweep), in the C locale (so its stderr can be classified) and with an
explicit protocol allow-list, so command-running transports such as ``ext::`` stay disabled.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from projectrun import cache
from projectrun.errors import NetworkError, SourceError, UsageError
from projectrun.gitinfo import strip_credentials

Report = Callable[[str], None]

#: transports git may use for the project itself; ``ext`` (runs commands) is never on it
PROTOCOLS = ("https", "http", "ssh", "git", "file")
#: submodules of a fetched project are untrusted input: no local-file clones (CVE-2022-39253)
SUBMODULE_PROTOCOLS = ("https", "http", "ssh", "git")
REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
META_FILE = "projectrun.json"
_URL_SCHEMES = {"https", "http", "ssh", "git", "git+ssh", "ssh+git", "file"}
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
# Git variables a user may rely on; the rest (GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE ... exported
# when projectrun runs inside a git hook) would point git at the wrong repository.
_KEEP_GIT_VARS = {
    "GIT_EXEC_PATH", "GIT_SSH", "GIT_SSH_COMMAND", "GIT_SSH_VARIANT", "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY", "GIT_ASKPASS", "GIT_HTTP_PROXY_AUTHMETHOD",
    "GIT_PROXY_COMMAND", "GIT_CONFIG_COUNT", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM", "GIT_CURL_VERBOSE",
}
# stderr fragments (lower case, C locale) -> error class; checked in this order, because ssh
# appends "make sure ... the repository exists" to every failure, including DNS ones.
_NETWORK = ("could not resolve host", "temporary failure in name resolution",
            "connection refused", "couldn't connect to server", "failed to connect",
            "network is unreachable", "no route to host", "connection timed out",
            "operation timed out", "connection reset", "unable to connect")
_AUTH = ("authentication failed", "could not read username", "could not read password",
         "terminal prompts disabled", "permission denied", "returned error: 401",
         "returned error: 403", "host key verification failed")
_NOT_FOUND = ("repository not found", "does not appear to be a git repository",
              "not exported", "returned error: 404", "no such repository")


def mirrors_dir() -> Path:
    """``<cache root>/git``: the mirrors, their lock files and temp dirs of clones under way."""
    return cache.root() / "git"


def mirror_key(url: str) -> str:
    """Cache key of a URL; credentials are stripped first so a rotated token reuses the mirror."""
    return hashlib.sha256(strip_credentials(url.strip()).encode()).hexdigest()[:16]


def mirror_path(url: str) -> Path:
    return mirrors_dir() / f"{mirror_key(url)}.git"


# --------------------------------------------------------------------------- URLs


def is_git_url(uri: str) -> bool:
    """True for URIs the git layer handles (https, http, ssh, git, scp-like ``user@host:path``,
    ``file://`` of a git repository, and ``x::`` transports, which fetch() refuses with a clear
    message); False for local paths, which run in place."""
    base = uri.strip("'\"").partition("#")[0]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*::", base):
        return True
    scheme = urllib.parse.urlparse(base).scheme.lower()
    if scheme == "file":
        parsed = urllib.parse.urlparse(base)
        path = Path(urllib.parse.unquote(parsed.netloc + parsed.path))
        return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())
    if scheme in ("http", "https") and base.lower().endswith(".zip"):
        return False  # MLflow downloads and unzips these
    if scheme in _URL_SCHEMES:
        return True
    scp = re.match(r"^(?:([^@/:\s]+)@)?([^@/:\s]+):(?!//)", base)
    return bool(scp and (scp.group(1) or "." in scp.group(2)) and not os.path.exists(base))


def _check_url(url: str) -> None:
    transport = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)::", url)
    if transport:
        name = transport.group(1)
        why = "runs arbitrary commands" if name.lower() == "ext" else "is not supported"
        raise SourceError(f"{url}: the git transport '{name}::' {why}; use https://, ssh://, "
                          "git@host:path, git:// or file://")
    if url.startswith("-"):
        raise SourceError(f"{url}: not a git URL")
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if len(scheme) > 1 and "://" in url and scheme not in _URL_SCHEMES:
        raise SourceError(f"{url}: unsupported URL scheme '{scheme}://'; use https://, ssh://, "
                          "git@host:path, git:// or file://")


# --------------------------------------------------------------------------- running git


def _env(protocols: tuple[str, ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in _KEEP_GIT_VARS
           or k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_", "GIT_TRACE"))}
    allowed = [p for p in protocols  # a user's own allow-list can only narrow ours
               if p in os.environ.get("GIT_ALLOW_PROTOCOL", ":".join(protocols)).split(":")]
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL=":".join(allowed),
               LC_ALL="C", LANGUAGE="C")
    return env


def _git(args: list[str], cwd: Path | None = None, *, url: str | None = None,
         protocols: tuple[str, ...] = PROTOCOLS, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run git; on failure raise a one-line SourceError/NetworkError naming the (stripped) URL."""
    try:
        proc = subprocess.run(["git", *args], check=False, cwd=cwd, env=_env(protocols), text=True,
                              stdin=subprocess.DEVNULL, capture_output=True)
    except FileNotFoundError:
        raise SourceError("git is not installed; install git to run projects from git URLs") from None
    if check and proc.returncode != 0:
        raise _git_error(proc.stderr, url, args[0])
    return proc


def _git_error(stderr: str, url: str | None, command: str) -> SourceError:
    safe = strip_credentials(url) if url else "git"
    if url:
        stderr = stderr.replace(url, safe)
    text = stderr.lower()
    for pattern in _NETWORK:
        if pattern in text:
            return NetworkError(f"cannot reach {safe} ({pattern}); check the network and try again")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = next((ln for ln in lines if ln.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    detail = re.sub(r"^(fatal|error): ", "", fatal)
    if any(p in text for p in _AUTH):
        return SourceError(f"{safe}: authentication failed ({detail}); the repository may be private "
                           "or may not exist - check the URL and your git credentials")
    if any(p in text for p in _NOT_FOUND):
        return SourceError(f"{safe}: repository not found ({detail})")
    return SourceError(f"{safe}: git {command} failed: {detail or 'no message from git'}")


def _rev(repo: Path, name: str) -> str | None:
    proc = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}"],
                repo, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _refs(repo: Path, prefix: str, sort: str) -> list[str]:
    out = _git(["for-each-ref", f"--sort={sort}", "--format=%(refname:lstrip=2)", prefix], repo).stdout
    return out.split()


# --------------------------------------------------------------------------- mirror


def _read_meta(mirror: Path) -> dict[str, Any]:
    try:
        return json.loads((mirror / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(mirror: Path, url: str, fetched: bool) -> None:
    now = time.time()
    meta = {"url": url, "created": now, "fetched": now, **_read_meta(mirror)}
    meta.update(url=url, used=now, **({"fetched": now} if fetched else {}))
    tmp = mirror / f"{META_FILE}.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, mirror / META_FILE)


@contextlib.contextmanager
def _locked(mirror: Path, report: Report, what: str) -> Iterator[None]:
    lock = FileLock(str(mirror.with_suffix(".lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        report(f"waiting for another projectrun {what}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _clone(url: str, mirror: Path, report: Report) -> None:
    """Clone into a temp dir next to the mirror and rename it into place only when complete."""
    report(f"cloning {strip_credentials(url)} into the cache")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{mirror.stem}-", dir=mirror.parent))
    try:
        # --template= keeps the user's hook templates out of the mirror (as pre-commit does)
        _git(["clone", "--bare", "--quiet", "--template=", "--", url, str(tmp)], url=url)
        _git(["remote", "set-url", "origin", strip_credentials(url)], tmp)  # no token on disk
        _write_meta(tmp, strip_credentials(url), fetched=True)
        os.rename(tmp, mirror)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fix_head(url: str, mirror: Path) -> None:
    """Point the mirror's HEAD at the remote default branch again if fetch --prune removed it
    (the remote renamed master to main); fetch never updates a bare repo's HEAD itself."""
    head = _git(["symbolic-ref", "--quiet", "HEAD"], mirror, check=False).stdout.strip()
    if head and _rev(mirror, head):
        return
    out = _git(["ls-remote", "--symref", "--", url, "HEAD"], url=url, check=False).stdout
    match = re.search(r"^ref: (refs/heads/\S+)\tHEAD$", out, re.MULTILINE)
    if match:
        _git(["symbolic-ref", "HEAD", match.group(1)], mirror, check=False)


def _refresh(url: str, mirror: Path, version: str | None, offline: bool, report: Report) -> bool:
    """Bring the mirror up to date; returns whether a network fetch happened."""
    safe = strip_credentials(url)
    if not mirror.exists():
        if offline:
            raise SourceError(f"{safe} is not in the cache yet; drop --offline to clone it")
        _clone(url, mirror, report)
        return True
    if offline:
        return False
    if version and _FULL_SHA.fullmatch(version) and _rev(mirror, version):
        return False  # a full commit sha already in the mirror cannot change: skip the round-trip
    report(f"fetching {safe}")
    try:
        _git(["fetch", "--prune", "--quiet", "--", url, *REFSPECS], mirror, url=url)
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
        head = _git(["symbolic-ref", "--quiet", "HEAD"], mirror, check=False).stdout.strip()
        sha = _rev(mirror, head) if head else None
        return (sha, head.removeprefix("refs/heads/")) if sha else None
    for name, branch in ((f"refs/heads/{version}", version), (f"refs/tags/{version}", None),
                         (version, None)):
        sha = _rev(mirror, name)
        if sha:
            return sha, branch
    return None


def _unknown_version(mirror: Path, url: str, version: str | None, offline: bool) -> SourceError:
    branches = _refs(mirror, "refs/heads", "-committerdate")
    tags = _refs(mirror, "refs/tags", "-creatordate")

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
        """Delete the work tree and drop its registration in the mirror; safe to call twice."""
        shutil.rmtree(self.worktree, ignore_errors=True)
        if self.mirror is not None and self.mirror.is_dir():
            _git(["worktree", "prune"], self.mirror, check=False)

    def __enter__(self) -> GitCheckout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _worktree(mirror: Path, sha: str, offline: bool, report: Report) -> Path:
    tree = Path(tempfile.mkdtemp(prefix="projectrun-git-"))
    try:
        _git(["worktree", "add", "--detach", "--quiet", str(tree), sha], mirror)
        if (tree / ".gitmodules").exists():
            if offline:
                report("warning: --offline: submodules are not fetched")
            else:
                proc = _git(["submodule", "update", "--init", "--recursive", "--quiet"], tree,
                            protocols=SUBMODULE_PROTOCOLS, check=False)
                if proc.returncode != 0:
                    report(f"warning: submodules not fetched: {_git_error(proc.stderr, None, 'submodule')}")
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        _git(["worktree", "prune"], mirror, check=False)
        raise
    return tree


def fetch(url: str, version: str | None, subdir: str = "", *, offline: bool = False,
          report: Report) -> GitCheckout:
    """Update (or create) the mirror of ``url`` and check ``version`` out into a fresh work tree.

    A remote that cannot be reached is only a warning when the mirror already has the version;
    ``offline`` never touches the network. Raises SourceError (bad URL, unknown version, missing
    subdir, auth) or NetworkError (remote unreachable and nothing usable cached).
    """
    url = url.strip()
    version = version or None
    _check_url(url)
    if version is not None and version.startswith("-"):
        raise SourceError(f"{url}: invalid version '{version}'")
    safe = strip_credentials(url)
    mirror = mirror_path(url)
    cache.ensure_root()
    mirror.parent.mkdir(exist_ok=True)
    with _locked(mirror, report, f"fetching {safe}"):
        fetched = _refresh(url, mirror, version, offline, report)
        found = _resolve(mirror, version)
        if found is None:
            raise _unknown_version(mirror, safe, version, offline)
        _write_meta(mirror, safe, fetched)
    commit, branch = found
    tree = _worktree(mirror, commit, offline, report)
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


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _live_worktrees(mirror: Path) -> int:
    """Work trees of running launches: registered in the mirror and still on disk."""
    count = 0
    for gitdir in (mirror / "worktrees").glob("*/gitdir"):
        with contextlib.suppress(OSError):
            count += Path(gitdir.read_text().strip()).exists()
    return count


def list_mirrors() -> list[dict[str, Any]]:
    """One dict per cached mirror: key, url, path, size (bytes), created/fetched/used (epoch
    seconds) and in_use (work trees of launches still running)."""
    entries = []
    for mirror in mirrors_dir().glob("*.git"):
        meta = _read_meta(mirror)
        entries.append({"key": mirror.stem, "url": meta.get("url", "?"), "path": str(mirror),
                        "size": _size(mirror), "created": meta.get("created"),
                        "fetched": meta.get("fetched"), "used": meta.get("used"),
                        "in_use": _live_worktrees(mirror)})
    return sorted(entries, key=lambda e: e["used"] or 0, reverse=True)


def prune(older_than_seconds: float, dry_run: bool = False) -> list[dict[str, Any]]:
    """Remove mirrors unused for ``older_than_seconds`` (skipping ones a launch is using or
    fetching right now) and temp dirs left by killed clones; returns what was (or would be)
    removed."""
    cutoff = time.time() - older_than_seconds
    removed = []
    for entry in list_mirrors():
        if entry["in_use"] or (entry["used"] or 0) > cutoff:
            continue
        if dry_run or _remove_if_idle(Path(entry["path"])):
            removed.append(entry)
    for tmp in mirrors_dir().glob(".tmp-*"):
        key = tmp.name.split("-")[1]
        mtime = tmp.stat().st_mtime
        if mtime > cutoff:
            continue
        entry = {"key": key, "url": None, "path": str(tmp), "size": _size(tmp),
                 "created": mtime, "fetched": None, "used": None, "in_use": 0}
        if dry_run or _remove_if_idle(tmp, mirrors_dir() / f"{key}.git"):
            removed.append(entry)
    return removed


def _remove_if_idle(path: Path, mirror: Path | None = None) -> bool:
    lock = FileLock(str((mirror or path).with_suffix(".lock")))
    try:
        lock.acquire(timeout=0)  # a clone or fetch is running: leave it alone
    except Timeout:
        return False
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        lock.release()
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
        shutil.rmtree(entry["path"], ignore_errors=True)
    return entry
