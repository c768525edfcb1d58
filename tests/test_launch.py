"""launch: the entry point runs in its own process group, its output is teed live to the
terminal and interleaved into the run's log, and stopping it (a signal, a cancel, a timeout)
empties the whole group, SIGKILL following after the grace period.

In-process (launch.run is called directly with a real ``bash -c`` child); the same behaviour
through the CLI, with runs marked KILLED, is in test_signals.py and test_run.py.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from projectrun import launch
from projectrun.envs import Invocation
from projectrun.errors import UsageError


def shell(script: str, cwd: Path, **env: str) -> Invocation:
    return Invocation(["bash", "-c", script], {"PATH": os.environ["PATH"], **env}, cwd)


def wait_for(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().endswith("\n")):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)
    return path.read_text()


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(pid: int, within: float = 5) -> bool:
    """The process ended: a SIGKILL takes effect when the kernel next schedules it, which on a
    busy machine can be a moment after the signal was sent."""
    deadline = time.monotonic() + within
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def running_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (a killed one may linger as a zombie until init
    reaps it; it runs nothing)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


#: starts a grandchild that ignores SIGTERM too, writes "<shell pid> <pgid> <grandchild pid>"
FAMILY = ("trap '' TERM; sleep 300 & echo $$ $(ps -o pgid= $$) $! > {marker}.tmp; "
          "mv {marker}.tmp {marker}; wait")


def test_exit_code_output_and_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "logs" / "output.log"
    outcome = launch.run(shell("echo to-out; echo to-err >&2; exit 3", tmp_path), log)
    assert outcome == launch.Outcome(3)
    shown = capfd.readouterr()
    assert shown.out == "to-out\n" and shown.err == "to-err\n"  # streamed to the user, apart
    assert sorted(log.read_text().splitlines()) == ["to-err", "to-out"]  # both in the log


def test_the_log_keeps_what_was_written_before(tmp_path: Path) -> None:
    """The env build writes its output into the same log first; the entry point's follows."""
    log = tmp_path / "output.log"
    log.write_text("built env 3f2a\n")
    launch.run(shell("echo ran", tmp_path), log, echo=False)
    assert log.read_text() == "built env 3f2a\nran\n"


def test_without_echo_nothing_reaches_the_terminal(tmp_path: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "output.log"
    assert launch.run(shell("echo quiet; echo also >&2", tmp_path), log, echo=False).returncode == 0
    assert capfd.readouterr() == ("", "")
    assert sorted(log.read_text().split()) == ["also", "quiet"]


def test_binary_output_is_kept_byte_for_byte(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    launch.run(shell(r"printf 'caf\xe9\x00\r\n'", tmp_path), log, echo=False)
    assert log.read_bytes() == b"caf\xe9\x00\r\n"


def test_cwd_env_and_no_stdin(tmp_path: Path) -> None:
    """The child runs where and with what the environment gave it; stdin is empty, so an entry
    point that reads it does not hang the launch."""
    log = tmp_path / "output.log"
    outcome = launch.run(shell('pwd; echo "$ONLY_HERE"; cat; echo done', tmp_path, ONLY_HERE="x y"),
                         log, echo=False)
    assert outcome.returncode == 0
    assert log.read_text() == f"{tmp_path}\nx y\ndone\n"


def test_the_entry_point_leads_its_own_process_group(tmp_path: Path) -> None:
    """So a stop reaches every process it started, and a Ctrl-C at the terminal reaches only
    projectrun, which forwards it."""
    log = tmp_path / "output.log"
    launch.run(shell("echo $$ $(ps -o pgid= $$) $(ps -o sid= $$)", tmp_path), log, echo=False)
    pid, pgid, sid = log.read_text().split()
    assert pid == pgid == sid and int(pgid) != os.getpgid(0)


def test_cancel_stops_the_whole_group_after_the_grace_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both processes ignore SIGTERM: SIGKILL follows PROJECTRUN_KILL_GRACE seconds later, and
    the group is empty when run() returns."""
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "1")
    marker = tmp_path / "pids"
    cancel = threading.Event()
    _cancel_when_written(marker, cancel)
    started = time.monotonic()
    outcome = launch.run(shell(FAMILY.format(marker=marker), tmp_path), tmp_path / "log",
                         echo=False, cancel=cancel)
    took = time.monotonic() - started
    shell_pid, pgid, grandchild = (int(x) for x in marker.read_text().split())
    assert outcome == launch.Outcome(-signal.SIGKILL, signal.SIGTERM)
    assert gone(shell_pid) and gone(grandchild)
    assert running_in_group(pgid) == []
    assert 1 <= took < 20


def test_a_child_that_honours_sigterm_ends_at_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "60")
    marker = tmp_path / "ready"
    cancel = threading.Event()
    _cancel_when_written(marker, cancel)
    started = time.monotonic()
    outcome = launch.run(shell(f"echo > {marker}; exec sleep 300", tmp_path), tmp_path / "log",
                         echo=False, cancel=cancel)
    assert outcome == launch.Outcome(-signal.SIGTERM, signal.SIGTERM)
    assert time.monotonic() - started < 30  # not the 60 s grace


def test_a_background_job_is_stopped_with_the_entry_point(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell exits on SIGTERM while its `sleep &` ignores it and lingers: the group must
    still be emptied (SIGKILL once the grace period is over)."""
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "1")
    marker = tmp_path / "pids"
    cancel = threading.Event()
    _cancel_when_written(marker, cancel)
    script = (f"(trap '' TERM; exec sleep 300) & echo $$ $(ps -o pgid= $$) $! > {marker}.tmp; "
              f"mv {marker}.tmp {marker}; wait")
    outcome = launch.run(shell(script, tmp_path), tmp_path / "log", echo=False, cancel=cancel)
    _, _, grandchild = (int(x) for x in marker.read_text().split())
    assert outcome.signal == signal.SIGTERM
    assert gone(grandchild)


def test_timeout_stops_the_run_and_says_so(tmp_path: Path) -> None:
    started = time.monotonic()
    outcome = launch.run(shell("exec sleep 300", tmp_path), tmp_path / "log", echo=False,
                         timeout=0.5)
    assert outcome == launch.Outcome(-signal.SIGTERM, None, timed_out=True)
    assert time.monotonic() - started < 30


def test_a_signal_to_projectrun_is_forwarded_and_a_second_one_kills(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to this process reaches the group; the child ignores it, and a second SIGTERM
    means "now": SIGKILL without waiting out the 60 s grace. Handlers are restored after."""
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", "60")
    marker = tmp_path / "pids"
    before = signal.getsignal(signal.SIGTERM)

    def twice() -> None:
        shell_pid = int(wait_for(marker).split()[0])
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        if alive(shell_pid):  # run() is still waiting for it (else this would stop pytest)
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=twice, daemon=True).start()
    started = time.monotonic()
    outcome = launch.run(shell(FAMILY.format(marker=marker), tmp_path), tmp_path / "log",
                         echo=False)
    assert outcome == launch.Outcome(-signal.SIGKILL, signal.SIGTERM)
    assert time.monotonic() - started < 30
    _, _, grandchild = (int(x) for x in marker.read_text().split())
    assert gone(grandchild)
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_environment_with_its_own_stop_gets_the_signal_and_cleans_up(tmp_path: Path) -> None:
    """A container is stopped through the docker client, not by signalling a local group; its
    cleanup runs once the child is gone."""
    marker = tmp_path / "ready"
    delivered: list[int] = []
    cleaned: list[bool] = []
    holder: dict[str, int] = {}

    def stop(sig: int) -> None:
        delivered.append(sig)
        os.killpg(holder["pgid"], signal.SIGKILL)  # what `docker kill` would do

    def cleanup(_returncode: int | None) -> None:
        cleaned.append(True)

    cancel = threading.Event()

    def watch() -> None:
        holder["pgid"] = int(wait_for(marker))
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
    inv = Invocation(["bash", "-c", f"echo $$ > {marker}; exec sleep 300"],
                     {"PATH": os.environ["PATH"]}, tmp_path, stop=stop, cleanup=cleanup)
    outcome = launch.run(inv, tmp_path / "log", echo=False, cancel=cancel)
    assert delivered[0] == signal.SIGTERM and outcome.signal == signal.SIGTERM
    assert cleaned == [True]


def test_cleanup_runs_even_when_the_command_cannot_start(tmp_path: Path) -> None:
    cleaned: list[bool] = []
    inv = Invocation([str(tmp_path / "no-such-program")], {}, tmp_path,
                     cleanup=lambda _code: cleaned.append(True))
    with pytest.raises(FileNotFoundError):
        launch.run(inv, tmp_path / "log", echo=False)
    assert cleaned == [True]


@pytest.mark.parametrize(("text", "seconds"), [("", 10.0), ("  ", 10.0), ("0", 0.0),
                                               ("2.5", 2.5), (" 30 ", 30.0)])
def test_grace_seconds(monkeypatch: pytest.MonkeyPatch, text: str, seconds: float) -> None:
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", text)
    assert launch.grace_seconds() == seconds


@pytest.mark.parametrize("text", ["-1", "abc", "inf", "nan", "10s"])
def test_bad_grace_seconds_are_a_usage_error(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("PROJECTRUN_KILL_GRACE", text)
    with pytest.raises(UsageError) as err:
        launch.grace_seconds()
    assert str(err.value) == (f"PROJECTRUN_KILL_GRACE={text}: give the grace period in seconds, "
                              f"e.g. PROJECTRUN_KILL_GRACE=10 (0 kills at once)")


def _cancel_when_written(marker: Path, cancel: threading.Event) -> None:
    """Cancel the run once its command wrote ``marker`` (it is running then)."""
    def watch() -> None:
        wait_for(marker)
        cancel.set()

    threading.Thread(target=watch, daemon=True).start()
