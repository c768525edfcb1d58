"""Real git repositories for tests: the git CLI with a fixed identity, commits, a bare origin
with branches and tags, and a `git daemon` serving it on 127.0.0.1.

Shared by the git tests (test_gitsource, test_git_cli, test_injection, test_secrets,
test_sources); the session fixtures ``origin`` and ``daemon`` built from these live in
conftest.py, so every module gets the same ones.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

#: commits need an identity; file:// submodules need protocol.file.allow (git >= 2.38.1)
GIT_ID = ["-c", "user.name=projectrun tests", "-c", "user.email=tests@example.invalid",
          "-c", "init.defaultBranch=main", "-c", "protocol.file.allow=always"]


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run git (raising on failure) and return its stripped stdout."""
    return subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}).stdout.strip()


def commit(work: Path, files: dict[str, str], message: str, date: str | None = None) -> str:
    """Write ``files`` (path -> text) into the work tree, commit everything, return the sha.
    ``date`` (e.g. "2024-01-02T10:00:00Z") fixes the commit's dates: git lists branches newest
    first, and commits made in the same second would tie."""
    for name, text in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(text)
    git("add", "-A", cwd=work)
    dates = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else {}
    git("commit", "-q", "-m", message, cwd=work, env=dates)
    return git("rev-parse", "HEAD", cwd=work)


@dataclass
class Origin:
    bare: Path  # <srv>/origin.git
    shas: dict[str, str]

    @property
    def file_url(self) -> str:
        return self.bare.as_uri()


#: what ``make_origin`` commits in sub/proj: the entry point prints the VERSION of its commit
ORIGIN_MLPROJECT = "name: demo\nentry_points:\n  main:\n    command: cat ../../VERSION\n"


def make_origin(root: Path) -> Origin:
    """main: c1 (tag v1.0, annotated) -> c2 (tag v1.1) -> c3; dev: c2 -> d1; cloned bare into
    ``root/srv/origin.git``. Each commit's VERSION file says which it is; they are a day
    apart in that order (c3 on main is the newest)."""
    work = root / "work"
    git("init", "-q", str(work))
    shas = {"c1": commit(work, {"VERSION": "1.0", "sub/proj/MLproject": ORIGIN_MLPROJECT}, "one",
                         "2024-01-01T10:00:00Z")}
    git("tag", "-a", "v1.0", "-m", "release 1.0", cwd=work,
        env={"GIT_COMMITTER_DATE": "2024-01-01T11:00:00Z"})  # the tagger's date
    shas["c2"] = commit(work, {"VERSION": "1.1"}, "two", "2024-01-02T10:00:00Z")
    git("tag", "v1.1", cwd=work)
    git("checkout", "-q", "-b", "dev", cwd=work)
    shas["dev"] = commit(work, {"VERSION": "dev"}, "dev work", "2024-01-03T10:00:00Z")
    git("checkout", "-q", "main", cwd=work)
    shas["main"] = commit(work, {"VERSION": "main"}, "three", "2024-01-04T10:00:00Z")
    bare = root / "srv" / "origin.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    return Origin(bare, shas)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str  # git://127.0.0.1:PORT

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_daemon(base: Path) -> Daemon:
    """``git daemon`` exporting every repository under ``base``; returns once it accepts."""
    from conftest import free_port

    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all",
         f"--port={port}", "--listen=127.0.0.1", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return Daemon(proc, f"git://127.0.0.1:{port}")
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("git daemon did not start") from None
            time.sleep(0.05)
