"""The keyed cache: build once under a lock, never reuse an interrupted build, list/remove/prune."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from projectrun import cache
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
    build, messages = Counter(), []
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
