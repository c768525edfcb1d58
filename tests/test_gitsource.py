"""gitsource against real repositories: file://, a real `git daemon` on 127.0.0.1, and a tiny
HTTP server that demands credentials. No mocks."""
from __future__ import annotations

import http.server
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import free_port
from gitrepos import Daemon, Origin, commit, git, start_daemon

from projectrun import gitsource
from projectrun.errors import NetworkError, SourceError, UsageError


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROJECTRUN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Log(list):
    def __call__(self, message: str) -> None:
        self.append(message)

    def count(self, word: str) -> int:  # type: ignore[override]
        return sum(word in line for line in self)


def cache_entries(home: Path) -> list[str]:
    """What is in the git cache apart from lock files."""
    return sorted(p.name for p in (home / "git").glob("*") if p.suffix != ".lock")


def no_worktrees(mirror: Path) -> bool:
    return not any((mirror / "worktrees").glob("*"))


def test_default_branch_clone_and_cleanup(origin: Origin) -> None:
    log = Log()
    co = gitsource.fetch(origin.file_url, None, "", report=log)
    assert co.commit == origin.shas["main"]
    assert (co.branch, co.branch_tag, co.version) == ("main", None, None)
    assert co.fetched and co.repo_url == origin.file_url
    assert co.directory == co.worktree and (co.worktree / "VERSION").read_text() == "main"
    assert co.mirror == gitsource.mirror_path(origin.file_url) and co.mirror.is_dir()
    assert log.count("cloning") == 1
    co.cleanup()
    co.cleanup()  # twice is fine
    assert not co.worktree.exists() and no_worktrees(co.mirror)


@pytest.mark.parametrize(("version", "sha", "text", "branch"), [
    ("dev", "dev", "dev", "dev"),
    ("v1.0", "c1", "1.0", None),  # annotated tag: peeled to its commit
    ("v1.1", "c2", "1.1", None),
    ("FULL:c2", "c2", "1.1", None),
    ("SHORT:c1", "c1", "1.0", None),
])
def test_versions_over_git_daemon(origin: Origin, daemon: Daemon, version: str, sha: str,
                                  text: str, branch: str | None) -> None:
    kind, _, name = version.partition(":")
    version = {"FULL": origin.shas.get(name, ""), "SHORT": origin.shas.get(name, "")[:7]}.get(kind, version)
    with gitsource.fetch(f"{daemon.url}/origin.git", version, "", report=Log()) as co:
        assert co.commit == origin.shas[sha]
        assert (co.worktree / "VERSION").read_text() == text
        assert co.branch == co.branch_tag == branch
        assert co.repo_url == f"{daemon.url}/origin.git"
    assert not co.worktree.exists()


def test_subdir(origin: Origin) -> None:
    with gitsource.fetch(origin.file_url, "v1.0", "sub/proj/", report=Log()) as co:
        assert co.directory == (co.worktree / "sub" / "proj").resolve()
        assert (co.directory / "MLproject").is_file()


@pytest.mark.parametrize("subdir", ["no/such", "../outside"])
def test_bad_subdir_names_url_version_subdir_and_cleans_up(origin: Origin, subdir: str) -> None:
    with pytest.raises(SourceError) as err:
        gitsource.fetch(origin.file_url, "v1.0", subdir, report=Log())
    assert origin.file_url in str(err.value) and "v1.0" in str(err.value)
    assert subdir in str(err.value) and err.value.exit_code == 2
    assert no_worktrees(gitsource.mirror_path(origin.file_url))


def test_unknown_version_lists_branches_and_tags(origin: Origin) -> None:
    with pytest.raises(SourceError) as err:
        gitsource.fetch(origin.file_url, "v9.9", "", report=Log())
    message = str(err.value)
    assert not isinstance(err.value, NetworkError) and err.value.exit_code == 2
    assert origin.file_url in message and "'v9.9'" in message
    assert "dev" in message and "main" in message and "v1.1" in message
    with pytest.raises(SourceError, match="invalid version"):
        gitsource.fetch(origin.file_url, "--upload-pack=touch", "", report=Log())


def test_not_a_repository_is_a_source_error(origin: Origin, daemon: Daemon, cache_home: Path,
                                             tmp_path: Path) -> None:
    for url in [(tmp_path / "missing").as_uri(), f"{daemon.url}/missing.git"]:
        with pytest.raises(SourceError, match="repository not found") as err:
            gitsource.fetch(url, None, "", report=Log())
        assert url in str(err.value) and err.value.exit_code == 2
        assert not isinstance(err.value, NetworkError)
    assert cache_entries(cache_home) == []  # no mirror, no temp dir


def test_unreachable_remote_not_cached_is_a_network_error(cache_home: Path) -> None:
    url = f"git://127.0.0.1:{free_port()}/origin.git"  # nothing listens there
    with pytest.raises(NetworkError, match="connection refused") as err:
        gitsource.fetch(url, "v1.0", "", report=Log())
    assert url in str(err.value) and err.value.exit_code == 1
    assert cache_entries(cache_home) == []


def test_unreachable_remote_with_cached_version_warns_and_runs(origin: Origin) -> None:
    served = start_daemon(origin.bare.parent)
    url = f"{served.url}/origin.git"
    try:
        gitsource.fetch(url, "v1.0", "", report=Log()).cleanup()
    finally:
        served.stop()
    log = Log()
    with gitsource.fetch(url, "dev", "", report=log) as co:
        assert co.commit == origin.shas["dev"] and not co.fetched
    assert log.count("warning: cannot reach") == 1 and log.count("cached copy") == 1
    with gitsource.fetch(url, None, "", report=Log()) as co:
        assert co.commit == origin.shas["main"]
    with pytest.raises(NetworkError):  # not in the mirror: the network error stands
        gitsource.fetch(url, "nope", "", report=Log())


def test_offline(origin: Origin) -> None:
    with pytest.raises(SourceError, match="drop --offline"):
        gitsource.fetch(origin.file_url, None, "", offline=True, report=Log())
    gitsource.fetch(origin.file_url, None, "", report=Log()).cleanup()
    log = Log()
    with gitsource.fetch(origin.file_url, "v1.1", "", offline=True, report=log) as co:
        assert co.commit == origin.shas["c2"] and not co.fetched
    assert log == []  # no clone, no fetch
    with pytest.raises(SourceError, match="drop --offline") as err:
        gitsource.fetch(origin.file_url, "v2.0", "", offline=True, report=Log())
    assert "'v2.0'" in str(err.value)


def test_second_launch_fetches_instead_of_cloning(origin: Origin) -> None:
    log = Log()
    gitsource.fetch(origin.file_url, "v1.0", "", report=log).cleanup()
    mirror = gitsource.mirror_path(origin.file_url)
    inode = mirror.stat().st_ino
    with gitsource.fetch(origin.file_url, "dev", "", report=log) as co:
        assert co.fetched and co.commit == origin.shas["dev"]
    assert log.count("cloning") == 1 and log.count("fetching") == 1
    assert mirror.stat().st_ino == inode
    # a full sha already in the mirror cannot change: no network round-trip at all
    with gitsource.fetch(origin.file_url, origin.shas["c1"], "", report=log) as co:
        assert not co.fetched
    assert log.count("fetching") == 1


def test_new_commits_and_deleted_branches_are_picked_up(origin: Origin, tmp_path: Path) -> None:
    bare = tmp_path / "mutable.git"
    shutil.copytree(origin.bare, bare)
    url = bare.as_uri()
    with gitsource.fetch(url, None, "", report=Log()) as co:
        assert co.commit == origin.shas["main"]
    work = tmp_path / "clone"
    git("clone", "-q", str(bare), str(work))
    new = commit(work, {"VERSION": "main 2"}, "four")
    git("push", "-q", "origin", "main", cwd=work)
    git("push", "-q", "origin", "--delete", "dev", cwd=work)
    with gitsource.fetch(url, "main", "", report=Log()) as co:
        assert co.fetched and co.commit == new
        assert (co.worktree / "VERSION").read_text() == "main 2"
    with pytest.raises(SourceError, match="'dev'"):  # fetch --prune dropped it
        gitsource.fetch(url, "dev", "", report=Log())


def test_parallel_launches_get_separate_worktrees(origin: Origin, daemon: Daemon) -> None:
    url = f"{daemon.url}/origin.git"
    log = Log()
    with ThreadPoolExecutor(4) as pool:
        checkouts = list(pool.map(lambda v: gitsource.fetch(url, v, "", report=log),
                                  ["v1.0", "dev", "v1.1", "dev"]))
    try:
        assert len({co.worktree for co in checkouts}) == 4
        assert [(co.worktree / "VERSION").read_text() for co in checkouts] == ["1.0", "dev", "1.1", "dev"]
        assert log.count("cloning") == 1  # the others waited on the lock, then fetched
    finally:
        for co in checkouts:
            co.cleanup()
    assert no_worktrees(gitsource.mirror_path(url))


def test_ext_transport_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    url = f"ext::sh -c touch% {marker}"
    assert gitsource.is_git_url(url)
    with pytest.raises(SourceError, match="runs arbitrary commands"):
        gitsource.fetch(url, None, "", report=Log())
    with pytest.raises(SourceError, match="not supported"):
        gitsource.fetch("fd::17", None, "", report=Log())
    assert not marker.exists()


def test_failed_clone_leaves_no_half_written_mirror(origin: Origin, tmp_path: Path,
                                                    cache_home: Path) -> None:
    broken = tmp_path / "broken.git"
    shutil.copytree(origin.bare, broken)
    git("repack", "-q", "-a", "-d", cwd=broken)
    pack = next((broken / "objects" / "pack").glob("*.pack"))
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)  # zero the second half
    pack.write_bytes(bytes(data))
    with pytest.raises(SourceError):
        gitsource.fetch(broken.as_uri(), None, "", report=Log())
    assert cache_entries(cache_home) == []


def test_auth_failure_fails_fast_without_prompting(cache_home: Path) -> None:
    class NeedsAuth(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NeedsAuth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://user:s3cret@127.0.0.1:{server.server_address[1]}/private.git"
    try:
        started = time.monotonic()
        with pytest.raises(SourceError, match="authentication failed") as err:
            gitsource.fetch(url, None, "", report=Log())
        assert time.monotonic() - started < 10
    finally:
        server.shutdown()
        server.server_close()
    assert "s3cret" not in str(err.value) and not isinstance(err.value, NetworkError)
    assert cache_entries(cache_home) == []


def test_submodules_are_checked_out(origin: Origin, daemon: Daemon, tmp_path: Path) -> None:
    work = tmp_path / "super"
    git("init", "-q", str(work))
    git("submodule", "add", "-q", f"{daemon.url}/origin.git", "lib", cwd=work)
    commit(work, {"MLproject": "name: super\n"}, "with submodule")
    with gitsource.fetch(work.as_uri(), None, "", report=Log()) as co:
        assert (co.worktree / "lib" / "VERSION").read_text() == "main"
    assert no_worktrees(gitsource.mirror_path(work.as_uri()))


@pytest.mark.parametrize(("uri", "expected"), [
    ("https://github.com/mlflow/mlflow-example", True),
    ("https://github.com/org/repo.git#sub/dir", True),
    ("http://host/repo.git", True),
    ("ssh://git@host/org/repo.git", True),
    ("git@github.com:org/repo.git", True),
    ("github.com:org/repo.git", True),
    ("git://host/repo.git", True),
    ("ext::sh -c true", True),
    ("https://host/project.zip", False),
    ("relative/dir", False),
    ("/abs/dir", False),
    ("C:\\projects\\x", False),
    ("s3://bucket/project", False),
])
def test_is_git_url(uri: str, expected: bool) -> None:
    assert gitsource.is_git_url(uri) is expected


def test_is_git_url_file_scheme(origin: Origin, tmp_path: Path) -> None:
    assert gitsource.is_git_url(origin.file_url)  # bare
    work = tmp_path / "w"
    git("init", "-q", str(work))
    assert gitsource.is_git_url(work.as_uri() + "#sub")  # work tree
    assert not gitsource.is_git_url(tmp_path.as_uri())  # plain dir
    assert not gitsource.is_git_url(str(work))  # a path runs in place


def test_list_prune_remove(origin: Origin, daemon: Daemon, cache_home: Path) -> None:
    gitsource.fetch(origin.file_url, None, "", report=Log()).cleanup()
    running = gitsource.fetch(f"{daemon.url}/origin.git", None, "", report=Log())
    try:
        entries = {e["url"]: e for e in gitsource.list_mirrors()}
        assert set(entries) == {origin.file_url, f"{daemon.url}/origin.git"}
        assert all(e["size"] > 0 and e["used"] >= e["created"] for e in entries.values())
        assert entries[f"{daemon.url}/origin.git"]["in_use"] == 1
        assert gitsource.prune(3600) == []  # everything was used just now
        assert len(gitsource.list_mirrors()) == 2
        assert [e["url"] for e in gitsource.prune(0, dry_run=True)] == [origin.file_url]
        assert len(gitsource.list_mirrors()) == 2
        stale = cache_home / "git" / ".tmp-0123456789abcdef-crashed"
        stale.mkdir()
        os.utime(stale, (0, 0))
        removed = gitsource.prune(0)
        assert sorted(e["path"] for e in removed) == sorted([entries[origin.file_url]["path"], str(stale)])
        assert [e["url"] for e in gitsource.list_mirrors()] == [f"{daemon.url}/origin.git"]
    finally:
        running.cleanup()
    key = gitsource.mirror_key(f"{daemon.url}/origin.git")
    assert gitsource.remove(key[:6])["key"] == key
    assert gitsource.list_mirrors() == []
    with pytest.raises(UsageError, match="matches no cached git sources"):
        gitsource.remove(origin.file_url)
    assert (cache_home / "CACHEDIR.TAG").is_file()
