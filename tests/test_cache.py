"""The keyed cache: build once under a lock, never reuse an interrupted build, list/remove/prune."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from projectrun import cache, cachedir, cachegc, gitsource
from projectrun.errors import EnvBuildError, UsageError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv(cache.HOME_ENV_VAR, str(path))
    return path


class Counter:
    """A builder that writes one file and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> None:
        self.calls.append(path)
        path.mkdir()
        (path / "payload").write_text("ok")


def test_root_from_env_with_cachedir_tag(home: Path) -> None:
    assert cache.ensure_root() == home
    assert (home / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_root_defaults_to_platform_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cache.HOME_ENV_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert cache.root() == tmp_path / "xdg" / "projectrun"
    assert cache.root().name == "projectrun"


def test_make_key_is_stable_short_and_content_sensitive() -> None:
    key = cache.make_key({"a": 1, "b": [1, 2]})
    assert key == cache.make_key({"b": [1, 2], "a": 1})
    assert len(key) == cache.KEY_LENGTH and int(key, 16) >= 0
    assert key != cache.make_key({"a": 1, "b": [2, 1]})


def test_builds_once_then_hits(home: Path) -> None:
    build = Counter()
    first = cache.get_or_build("demo", "k1", build, inputs={"x": 1}, project="/p")
    second = cache.get_or_build("demo", "k1", build)
    assert (first.built, second.built) == (True, False)
    assert build.calls == [home / "envs" / "demo-k1"]
    assert second.meta["build_id"] == first.meta["build_id"]
    assert second.meta["inputs"] == {"x": 1} and second.meta["project"] == "/p"
    assert (first.path / cache.MARKER).is_file()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_or_interrupted_build_leaves_nothing(error: BaseException) -> None:
    def build(path: Path) -> None:
        path.mkdir()
        (path / "half").write_text("x")
        raise error

    with pytest.raises(type(error)):
        cache.get_or_build("demo", "k2", build)
    assert not cache.entry_path("demo", "k2").exists()
    assert cache.get_or_build("demo", "k2", Counter()).built


def test_leftover_without_marker_is_rebuilt() -> None:
    """What a SIGKILLed builder leaves: a directory but no marker."""
    leftover = cache.entry_path("demo", "k3")
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("partial")
    result = cache.get_or_build("demo", "k3", Counter())
    assert result.built and not (leftover / "junk").exists()
    assert (leftover / "payload").read_text() == "ok"


def test_unhealthy_entry_is_rebuilt_with_reason() -> None:
    build, messages = Counter(), list[str]()
    cache.get_or_build("demo", "k4", build)
    (cache.entry_path("demo", "k4") / "payload").unlink()

    def health(path: Path) -> str | None:
        return None if (path / "payload").exists() else "payload is gone"

    result = cache.get_or_build("demo", "k4", build, health=health, report=messages.append)
    assert result.built and len(build.calls) == 2
    assert messages == ["rebuilding demo env k4: payload is gone"]


def test_fresh_build_failing_health_check_is_an_error() -> None:
    with pytest.raises(EnvBuildError, match="built but is not usable: nope"):
        cache.get_or_build("demo", "k5", Counter(), health=lambda p: "nope")
    assert not cache.entry_path("demo", "k5").exists()


def test_relocatable_build_goes_through_a_temp_dir() -> None:
    build = Counter()
    result = cache.get_or_build("demo", "k6", build, relocatable=True)
    assert build.calls[0].name.startswith(".tmp-demo-k6-")
    assert not build.calls[0].exists() and (result.path / "payload").exists()

    def failing(path: Path) -> None:
        path.mkdir()
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_build("demo", "k7", failing, relocatable=True)
    assert [p.name for p in cache.envs_dir().iterdir() if p.name.startswith(".tmp")] == []


def test_waiting_for_a_held_lock_is_reported() -> None:
    messages: list[str] = []
    outcome: list[cache.Built] = []
    holder = FileLock(str(cache.lock_path("demo", "k8")))
    holder.acquire()
    thread = threading.Thread(target=lambda: outcome.append(
        cache.get_or_build("demo", "k8", Counter(), report=messages.append)))
    thread.start()
    deadline = time.monotonic() + 10
    while not messages and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not outcome  # still blocked
    holder.release()
    thread.join(10)
    assert messages and messages[0].startswith("waiting for another projectrun building demo env k8")
    assert outcome[0].built


CHILD = """
import json, sys, time
from pathlib import Path
from projectrun import cache

def build(path):
    time.sleep(0.5)
    path.mkdir()
messages = []
result = cache.get_or_build("demo", "race", build, report=messages.append)
print(json.dumps({"built": result.built, "build_id": result.meta["build_id"], "messages": messages}))
"""


def test_parallel_processes_build_exactly_once(home: Path) -> None:
    env = {**os.environ, cache.HOME_ENV_VAR: str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["built"] for r in results) == 1
    assert len({r["build_id"] for r in results}) == 1


def _age(entry_dir: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(entry_dir / cache.LAST_USED, (past, past))


def test_list_find_remove() -> None:
    cache.get_or_build("demo", "aaaa1111", Counter(), project="/proj")
    cache.get_or_build("demo", "aaaa2222", Counter())
    cache.get_or_build("other", "bbbb3333", Counter())
    entries = {e.key: e for e in cache.list_entries()}
    assert set(entries) == {"aaaa1111", "aaaa2222", "bbbb3333"}
    one = entries["aaaa1111"]
    assert (one.kind, one.project, one.complete) == ("demo", "/proj", True)
    assert one.size and one.size >= 2 and one.created and one.last_used
    with pytest.raises(UsageError, match="matches several"):
        cache.find_entry("aaaa")
    with pytest.raises(UsageError, match="no cached environment"):
        cache.find_entry("zzzz")
    assert cache.remove("aaaa1").key == "aaaa1111"
    assert cache.remove("other-bbbb").key == "bbbb3333"
    assert [e.key for e in cache.list_entries()] == ["aaaa2222"]


def test_prune_old_and_abandoned_entries_skipping_busy_ones() -> None:
    for key in ("old", "fresh", "busy"):
        cache.get_or_build("demo", key, Counter())
    _age(cache.entry_path("demo", "old"), 3600)
    _age(cache.entry_path("demo", "busy"), 3600)
    abandoned = cache.entry_path("demo", "dead")
    abandoned.mkdir()  # no marker, lock free: a builder died here

    would = cache.prune(600, dry_run=True)
    assert {e.key for e in would} == {"old", "busy", "dead"}
    assert abandoned.exists()

    busy = FileLock(str(cache.lock_path("demo", "busy")))
    with busy:
        removed = cache.prune(600)
    assert {e.key for e in removed} == {"old", "dead"}
    assert {e.key for e in cache.list_entries()} == {"fresh", "busy"}


def test_use_refreshes_last_used() -> None:
    cache.get_or_build("demo", "touch", Counter())
    path = cache.entry_path("demo", "touch")
    _age(path, 3600)
    cache.get_or_build("demo", "touch", Counter())
    assert cache.prune(600) == []


# --- the primitives and the prune of the whole cache ------------------------------------------

WAITER = """
import sys
from pathlib import Path
from projectrun import cachedir

with cachedir.locked(Path(sys.argv[1])):
    print("got", flush=True)
    sys.stdin.read()
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _printed(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Whether the child printed a line within ``timeout`` seconds."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]
        return bool(sel.select(timeout))


def test_a_lock_file_deleted_by_its_holder_does_not_split_waiters(home: Path) -> None:
    """What makes pruning lock files safe: a process waiting on the old file, once it gets it,
    sees that the path names another file now and queues on that one instead."""
    path = cache.ensure_root() / "locks" / "demo.lock"
    with contextlib.ExitStack() as old:
        old.enter_context(cachedir.locked(path))
        waiter = _spawn(WAITER, str(path))
        assert not _printed(waiter, 1.0)  # blocked on the old file
        path.unlink()  # as prune does: only while holding it
        with cachedir.try_locked(path) as new:
            assert new  # a newcomer locks the new file
            old.close()  # the old file is free now: the waiter wakes up on it...
            assert not _printed(waiter, 1.0)  # ...and waits again, for the new one
        assert _printed(waiter, 10) and waiter.stdout.readline() == "got\n"  # type: ignore[union-attr]
        waiter.communicate("", timeout=10)


HOLDER = """
import sys
from pathlib import Path
from projectrun import cache, cachedir
from projectrun.envs import conda

kind, key, lock, shared = sys.argv[1:5]
cache.hold(kind, key)
with cachedir.locked(Path(lock)):
    if shared == "conda":
        with conda.using_shared():
            print("ready", flush=True)
            sys.stdin.read()
    else:
        print("ready", flush=True)
        sys.stdin.read()
"""


@contextlib.contextmanager
def _holding(kind: str, key: str, lock: Path, conda_too: bool = False) -> Iterator[None]:
    """A real process that uses env ``kind-key`` and holds ``lock`` until the block ends."""
    proc = _spawn(HOLDER, kind, key, str(lock), "conda" if conda_too else "-")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield
    finally:
        proc.communicate("", timeout=30)


def _old(path: Path, seconds: float = 7200) -> Path:
    past = time.time() - seconds
    os.utime(path, (past, past))
    return path


def _conda_env(key: str, packages: list[str]) -> None:
    """A complete conda-kind entry whose records name the pkgs/ dirs it was linked from."""
    pkgs = cache.ensure_root() / "conda" / "pkgs"

    def build(path: Path) -> None:
        (path / "conda-meta").mkdir(parents=True)
        for dist in packages:
            record = {"name": dist, "extracted_package_dir": str(pkgs / dist)}
            (path / "conda-meta" / f"{dist}.json").write_text(json.dumps(record))

    cache.get_or_build("conda", key, build)


def _filled(home: Path) -> dict[str, Path]:
    """One cache with something stale and something in use in every folder."""
    for key in ("old", "held"):
        cache.get_or_build("demo", key, Counter())
        _age(cache.entry_path("demo", key), 7200)
    gone = cachedir.ENVS.lock_path("demo-gone")
    gone.touch()
    gone.with_suffix(".users").touch()
    (home / "envs" / ".trash-demo-x-1234").mkdir()
    _conda_env("c1", ["used-1.0-0"])
    locks = home / "locks"
    locks.mkdir()
    for name in ("sqlite-free.lock", "sqlite-busy.lock"):
        (locks / name).touch()
    validated = home / "validated"
    validated.mkdir()
    (validated / "fresh").touch()
    spool = home / "spool"
    spool.mkdir()
    for name in ("run1.json", "run1.log", "run2.log", ".run3.replaying-1", "run3.log",
                 ".run4.ab12.tmp", "run5.log"):
        (spool / name).write_text("{}")
    for name in ("run1.json", "run1.log", "run2.log", ".run3.replaying-1", "run3.log",
                 ".run4.ab12.tmp"):
        _old(spool / name)
    pkgs = home / "conda" / "pkgs"
    for dist in ("used-1.0-0", "unused-2.0-0"):
        (pkgs / dist / "info").mkdir(parents=True)
        (pkgs / f"{dist}.lock").touch()
    (pkgs / ".cache.lock").touch()
    repodata = home / "conda" / "repodata"
    repodata.mkdir()
    (repodata / "fresh.json").write_text("{}")
    return {"stale marker": _old(_touched(validated / "stale")),
            "old repodata": _old(_touched(repodata / "old.json")),
            "busy lock": locks / "sqlite-busy.lock"}


def _touched(path: Path) -> Path:
    path.touch()
    return path


def test_cache_prune_covers_every_folder_and_keeps_what_is_in_use(home: Path) -> None:
    made = _filled(home)
    expected = {
        home / "envs" / "demo-old", cachedir.ENVS.lock_path("demo-gone"),
        home / "envs" / ".trash-demo-x-1234", home / "locks" / "sqlite-free.lock",
        made["stale marker"], home / "spool" / "run2.log", home / "spool" / ".run4.ab12.tmp",
        home / "conda" / "pkgs" / "unused-2.0-0", home / "conda" / "pkgs" / "unused-2.0-0.lock",
        made["old repodata"]}
    with _holding("demo", "held", made["busy lock"]):
        before = sorted(p.relative_to(home) for p in home.rglob("*"))
        would = cachegc.prune(3600, dry_run=True)
        assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # nothing removed
        assert {r.path for r in would} == expected
        removed = cachegc.prune(3600)
    assert {r.path for r in removed} == expected
    assert not any(p.exists() for p in expected)
    assert {e.key for e in cache.list_entries()} == {"held", "c1"}  # in use by a running process
    assert made["busy lock"].exists()  # was held
    assert (home / "validated" / "fresh").exists()
    spool = sorted(p.name for p in (home / "spool").iterdir())
    # a record, its log, a record a replayer claimed, a log younger than the grace: all kept
    assert spool == [".run3.replaying-1", "run1.json", "run1.log", "run3.log", "run5.log"]
    pkgs = sorted(p.name for p in (home / "conda" / "pkgs").iterdir())
    assert pkgs == [".cache.lock", "used-1.0-0", "used-1.0-0.lock"]  # an env was linked from it
    assert [p.name for p in (home / "conda" / "repodata").iterdir()] == ["fresh.json"]
    # no longer in use: the env goes, its locks with it, and so does the package only it used
    _age(cache.entry_path("demo", "held"), 7200)
    cache.remove("c1")
    assert {r.path.name for r in cachegc.prune(3600)} >= {"demo-held", "used-1.0-0"}
    assert sorted(p.name for p in (home / "envs" / ".locks").iterdir()) == []


def test_conda_packages_are_left_alone_while_a_conda_build_runs(home: Path) -> None:
    _conda_env("c2", [])
    unused = home / "conda" / "pkgs" / "unused-1.0-0"
    unused.mkdir(parents=True)
    with _holding("demo", "none", home / "locks" / "other.lock", conda_too=True):
        assert [r for r in cachegc.prune(0) if r.folder.startswith("conda")] == []
        assert unused.exists()
    assert [r.path for r in cachegc.prune(0) if r.folder.startswith("conda")] == [unused]


FETCHER = """
import sys
from projectrun import gitsource

co = gitsource.fetch(sys.argv[1], None, "", report=lambda m: None)
print(co.worktree, flush=True)
sys.stdin.read()
co.cleanup()
"""


def _origin(tmp_path: Path) -> str:
    repo = tmp_path / "origin"
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "MLproject").write_text("name: demo\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    return repo.as_uri()


def test_prune_removes_work_trees_of_killed_launches_then_their_mirror(
        home: Path, tmp_path: Path) -> None:
    url = _origin(tmp_path)
    killed, running = _spawn(FETCHER, url), _spawn(FETCHER, url)
    dead_tree = Path(killed.stdout.readline().strip())  # type: ignore[union-attr]
    live_tree = Path(running.stdout.readline().strip())  # type: ignore[union-attr]
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    mirror = gitsource.mirror_path(url)
    assert dead_tree.is_dir() and live_tree.is_dir()
    assert [m["in_use"] for m in gitsource.list_mirrors()] == [1]  # the killed one is not counted
    (home / "git" / "0123456789abcdef.lock").touch()  # a mirror removed by hand left its lock

    removed = cachegc.prune(0)
    assert {r.what.split(" (")[0] for r in removed} == {"work tree of a launch that died",
                                                        "stale lock"}
    assert not dead_tree.exists() and live_tree.is_dir() and mirror.is_dir()
    assert not (home / "git" / "0123456789abcdef.lock").exists()
    assert len(list((home / "locks").glob("worktree-*.users"))) == 1  # the running launch's
    subprocess.run(["git", "-C", str(live_tree), "status"], capture_output=True, check=True)

    running.communicate("", timeout=30)  # the launch ends and removes its own tree
    assert not live_tree.exists()
    assert [r.what for r in cachegc.prune(0)] == [f"mirror of {url}"]
    assert sorted(p.name for p in (home / "git").iterdir()) == []
    assert list((home / "locks").glob("worktree-*")) == []


def test_removing_an_env_removes_its_locks() -> None:
    cache.get_or_build("demo", "rm", Counter())
    lock = cache.lock_path("demo", "rm")
    assert lock.exists() and lock.with_suffix(".users").exists()
    cache.remove("demo-rm")
    assert not lock.exists() and not lock.with_suffix(".users").exists()


def test_cache_cli_lists_every_folder_and_prunes(home: Path) -> None:
    _filled(home)
    for entry in cache.list_entries():
        cache.release(entry.kind, entry.key)  # this process built them: it holds them in use
    env = {**os.environ, cache.HOME_ENV_VAR: str(home)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "projectrun", "cache", *args], env=env,
                              capture_output=True, text=True, timeout=120, check=False)

    listed = json.loads(cli("list", "--json").stdout)
    assert [r["folder"] for r in listed] == [f.path for f in cachegc.LAYOUT]
    envs = next(r for r in listed if r["folder"] == "envs/")
    assert envs["entries"] >= 3 and envs["size"] > 0
    dry = cli("prune", "--older-than", "1h", "--dry-run")
    assert dry.returncode == 0 and "would remove conda package no env uses" in dry.stderr
    assert "would remove demo env old" in dry.stderr
    assert "would remove 12 item(s)" in dry.stderr, dry.stderr
    done = cli("prune", "--older-than", "1h", "--json")
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 12
    assert json.loads(cli("prune", "--json").stdout) == []


def test_a_schema_marker_hit_counts_as_use(home: Path, tmp_path: Path) -> None:
    from projectrun import spec

    project = tmp_path / "p"
    project.mkdir()
    (project / "MLproject").write_text("name: p\nentry_points:\n  main:\n    command: 'true'\n")
    spec.load_project(project)
    marker = next((home / "validated").iterdir())
    _old(marker)
    spec.load_project(project)
    assert not cachedir.older(cachedir.mtime(marker), 60, time.time())
