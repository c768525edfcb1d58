"""SIGINT and SIGTERM wherever they land: an env build (uv, conda), the entry point (also one that
ignores SIGTERM, and a projectrun started with SIGINT or SIGHUP ignored), a sweep.

Each test runs the real CLI as a process and signals it the way a shell, a scheduler or
``kill`` would. What must hold every time: the processes projectrun started are gone (forward,
then escalate to SIGKILL after PROJECTRUN_KILL_GRACE), the run is KILLED, an env whose build was
interrupted is never used (the next launch rebuilds it), and a sweep can be resumed. Waits are
bounded by timeouts; nothing asserts on how long something took.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import slowpkg
from conftest import CliRunner, child_env, client_for

CURRENT = ".".join(map(str, sys.version_info[:2]))

#: A PEP 517 backend that records its pid and stalls, so a signal lands mid-install.
SLOWPKG = slowpkg.FILES

#: An entry point that records its pid, its group and a grandchild, and how it found its signal
#: dispositions, then waits. MODE ``ignore-term``: it (and the grandchild) ignore SIGTERM;
#: ``note-term``: it appends to NOTE on each SIGTERM and carries on.
WAITER = '''
import json, os, signal, subprocess, sys, time
marker, mode, note = sys.argv[1:4]
def name(h):
    return {signal.SIG_IGN: "ignored", signal.SIG_DFL: "default"}.get(h, "handled")
seen = {s: name(signal.getsignal(getattr(signal, s))) for s in ("SIGINT", "SIGTERM", "SIGHUP")}
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "note-term":
    signal.signal(signal.SIGTERM, lambda *_: open(note, "a").write("TERM\\n"))
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(marker + ".tmp", "w") as fh:
    json.dump({"pid": os.getpid(), "pgid": os.getpgid(0), "grandchild": grandchild.pid,
               "signals": seen}, fh)
os.replace(marker + ".tmp", marker)
end = time.monotonic() + 600
while time.monotonic() < end:
    time.sleep(0.1)
'''


def write_project(root: Path, mlproject: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "MLproject").write_text(textwrap.dedent(mlproject))
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def waiter_project(root: Path) -> Path:
    return write_project(root, """\
        name: waiter
        entry_points:
          main:
            parameters:
              marker: string
              mode: {type: string, default: wait}
              note: {type: string, default: "-"}
            command: "python waiter.py {marker} {mode} {note}"
        """, {"waiter.py": WAITER})


def slow_python_project(root: Path) -> Path:
    return write_project(root, """\
        name: slow
        python_env: python_env.yaml
        entry_points:
          main:
            command: "python -c 'import slowpkg; print(\\"value\\", slowpkg.VALUE)'"
        """, {"python_env.yaml": f'python: "{CURRENT}"\ndependencies: [./slowpkg]\n', **SLOWPKG})


class Launch:
    """``python -m projectrun ARGS`` as its own process (a session of its own, so the test's
    signals reach only it), with bounded waits."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str],
                 prefix: list[str] | None = None) -> None:
        self.args, self.cwd, self.env = args, cwd, env
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "projectrun", *args],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)

    def wait_for(self, path: Path, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                _, err = self.proc.communicate(timeout=30)
                pytest.fail(f"{path} never appeared (exit {self.proc.returncode}):\n{err[-3000:]}")
            time.sleep(0.05)
        return path.read_text()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


@pytest.fixture
def launches() -> Iterator[list[Launch]]:
    """Launches a test started; whatever a failing test left running is killed."""
    started: list[Launch] = []
    yield started
    for launch in started:
        launch.kill()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def gone(*pids: int, timeout: float = 15) -> bool:
    """Every pid has exited (bounded wait: an orphan is reaped by init, not by us)."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def group_gone(pgid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def runs(workdir: Path, experiment: str = "0") -> list:  # type: ignore[type-arg]
    return client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs([experiment])


def entries(home: Path) -> list[dict]:  # type: ignore[type-arg]
    res = subprocess.run([sys.executable, "-m", "projectrun", "envs", "list", "--json"],
                         env=child_env({"PROJECTRUN_HOME": str(home)}), capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(res.stdout)


STOPS = [pytest.param(signal.SIGINT, 130, id="SIGINT"), pytest.param(signal.SIGTERM, 143, id="SIGTERM")]


# --- the grace period setting ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_kill_grace_is_one_usage_line(cli: CliRunner, workdir: Path, tmp_path: Path,
                                          value: str) -> None:
    """launch.py read it at import time: a bad value was 'internal error: ValueError', exit 3."""
    project = waiter_project(tmp_path / "p")
    res = cli(str(project), "-P", "marker=m", env={"PROJECTRUN_KILL_GRACE": value})
    assert res.returncode == 2, res.stderr
    expected = (f"projectrun: error: PROJECTRUN_KILL_GRACE={value}: give the grace period in "
                f"seconds, e.g. PROJECTRUN_KILL_GRACE=10 (0 kills at once)")
    assert res.stderr.strip().splitlines() == [expected]
    assert not (workdir / "mlflow.db").exists()  # nothing was recorded
    sweep = workdir / "sweep.yaml"
    sweep.write_text(f"project: {project}\nparameters:\n  marker: [a, b]\n")
    res = cli("sweep", str(sweep), env={"PROJECTRUN_KILL_GRACE": value})
    assert res.returncode == 2 and "PROJECTRUN_KILL_GRACE" in res.stderr, res.stderr
    assert not (workdir / "mlflow.db").exists()


# --- the entry point --------------------------------------------------------------------------


@pytest.mark.parametrize("sig,code", STOPS)
def test_entry_point_ignoring_sigterm_is_killed_after_the_grace_period(
        workdir: Path, tmp_path: Path, launches: list[Launch], sig: int, code: int) -> None:
    project = waiter_project(tmp_path / "p")
    marker = tmp_path / "pids.json"
    env = child_env({"PROJECTRUN_HOME": str(tmp_path / "home"), "PROJECTRUN_KILL_GRACE": "1"})
    launch = Launch([str(project), "-P", f"marker={marker}", "-P", "mode=ignore-term"],
                    workdir, env)
    launches.append(launch)
    info = json.loads(launch.wait_for(marker))
    launch.signal(sig)
    returncode, _, err = launch.finish()
    assert returncode == code, err
    assert group_gone(info["pgid"]) and gone(info["pid"], info["grandchild"])
    (run,) = runs(workdir)
    assert run.info.status == "KILLED"
    assert err.strip().splitlines()[-1] == (f"projectrun: error: run {run.info.run_id} was "
                                            f"stopped by {signal.Signals(sig).name} and marked KILLED")


def test_second_sigterm_kills_at_once(workdir: Path, tmp_path: Path, launches: list[Launch]) -> None:
    """The grace period is 10 minutes here: only the second signal can end the run in time."""
    project = waiter_project(tmp_path / "p")
    marker, noted = tmp_path / "pids.json", tmp_path / "noted"
    env = child_env({"PROJECTRUN_HOME": str(tmp_path / "home"), "PROJECTRUN_KILL_GRACE": "600"})
    launch = Launch([str(project), "-P", f"marker={marker}", "-P", "mode=note-term",
                     "-P", f"note={noted}"],
                    workdir, env)
    launches.append(launch)
    info = json.loads(launch.wait_for(marker))
    launch.signal(signal.SIGTERM)
    launch.wait_for(noted)  # forwarded, and the entry point chose to carry on
    launch.signal(signal.SIGTERM)
    returncode, _, err = launch.finish(timeout=120)
    assert returncode == 143, err
    assert group_gone(info["pgid"]) and gone(info["pid"], info["grandchild"])
    assert runs(workdir)[0].info.status == "KILLED"


@pytest.mark.parametrize("ignored", ["INT", "HUP"])
def test_signal_ignored_by_the_parent_stays_ignored(workdir: Path, tmp_path: Path,
                                                    launches: list[Launch], ignored: str) -> None:
    """``sh -c 'trap "" INT; exec projectrun ...'`` (how a shell starts a script's background
    job) and nohup's SIGHUP: a process that starts with a signal ignored keeps it ignored, and
    projectrun honours that for itself and for the entry point, as every Unix program does
    (forwarding it would kill a nohup'ed run when its terminal closes). SIGTERM still stops it.
    """
    project = waiter_project(tmp_path / "p")
    marker = tmp_path / "pids.json"
    env = child_env({"PROJECTRUN_HOME": str(tmp_path / "home"), "PROJECTRUN_KILL_GRACE": "2"})
    shell = ["sh", "-c", f'trap "" {ignored}; exec "$@"', "sh"]
    launch = Launch([str(project), "-P", f"marker={marker}"], workdir, env, prefix=shell)
    launches.append(launch)
    info = json.loads(launch.wait_for(marker))
    assert info["signals"][f"SIG{ignored}"] == "ignored"  # inherited, as from any parent
    assert info["signals"]["SIGTERM"] == "default"
    launch.signal(getattr(signal, f"SIG{ignored}"))  # discarded by the kernel: nobody listens
    launch.signal(signal.SIGTERM)
    returncode, _, err = launch.finish()
    assert returncode == 143, err
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    assert group_gone(info["pgid"]) and gone(info["pid"], info["grandchild"])
    assert runs(workdir)[0].info.status == "KILLED"


# --- environment builds -----------------------------------------------------------------------


def _interrupted_build(launch: Launch, flag: Path, sig: int) -> tuple[int, str]:
    backend = int(launch.wait_for(flag, timeout=300))
    launch.signal(sig)
    returncode, _, err = launch.finish()
    assert gone(backend), "the build backend outlived the interrupted build"
    return returncode, err


def _killed_then_rebuilt(launch: Launch, launches: list[Launch], flag: Path, sig: int, code: int,
                         kind: str) -> None:
    """Stop ``launch`` while slowpkg builds: the run is KILLED and no env is complete; the next
    launch builds the env again (the package really rebuilt, not a half-built env reused)."""
    launches.append(launch)
    returncode, err = _interrupted_build(launch, flag, sig)
    assert returncode == code, err
    (run,) = runs(launch.cwd)
    assert run.info.status == "KILLED"
    assert not any(e["complete"] for e in entries(Path(launch.env["PROJECTRUN_HOME"])))
    flag.unlink()
    again = subprocess.run([sys.executable, "-m", "projectrun", *launch.args], cwd=launch.cwd,
                           env={**launch.env, "SLOWPKG_SLEEP": "0"}, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert f"building {kind} env" in again.stderr and "value 42" in again.stdout
    assert flag.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", STOPS)
def test_signal_during_a_uv_build(workdir: Path, tmp_path: Path, launches: list[Launch],
                                  sig: int, code: int) -> None:
    """Before: uv was killed but its build backend (uv's child) went on writing into the venv
    being deleted. Now the installer runs in its own process group and the group is killed."""
    project = slow_python_project(tmp_path / "p")
    home, flag = tmp_path / "home", tmp_path / "backend.pid"
    env = child_env({"PROJECTRUN_HOME": str(home), "SLOWPKG_FLAG": str(flag), "SLOWPKG_SLEEP": "600"})
    _killed_then_rebuilt(Launch([str(project)], workdir, env), launches, flag, sig, code, "python")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["envs-build", "sweep"])
def test_sigterm_during_a_build_outside_any_run(workdir: Path, tmp_path: Path,
                                                launches: list[Launch], command: str) -> None:
    """`envs build` and a sweep's one build before its trials: no run exists yet, and SIGTERM
    used to end projectrun on the spot, leaving the installer running."""
    project = slow_python_project(tmp_path / "p")
    home, flag = tmp_path / "home", tmp_path / "backend.pid"
    env = child_env({"PROJECTRUN_HOME": str(home), "SLOWPKG_FLAG": str(flag), "SLOWPKG_SLEEP": "600"})
    sweep = workdir / "sweep.yaml"
    sweep.write_text(f"project: {project}\nparameters: {{}}\n")
    args = ["envs", "build", str(project)] if command == "envs-build" else ["sweep", str(sweep)]
    launch = Launch(args, workdir, env)
    launches.append(launch)
    returncode, err = _interrupted_build(launch, flag, signal.SIGTERM)
    assert returncode == 143, err
    assert err.strip().splitlines()[-1] == "projectrun: stopped by SIGTERM"
    assert not any(e["complete"] for e in entries(home))
    again = subprocess.run([sys.executable, "-m", "projectrun", *args], cwd=workdir,
                           env={**env, "SLOWPKG_SLEEP": "0"}, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", STOPS)
def test_signal_during_a_conda_build(workdir: Path, tmp_path: Path, launches: list[Launch],
                                     conda_env: dict[str, str], sig: int, code: int) -> None:
    """The conda packages are linked, then the pip section's build stalls: the signal lands in
    the middle of the conda env's build."""
    project = write_project(tmp_path / "p", """\
        name: slowconda
        conda_env: conda.yaml
        entry_points:
          main:
            command: "python -c 'import slowpkg; print(\\"value\\", slowpkg.VALUE)'"
        """, {"conda.yaml": "channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                            "  - pip:\n    - ./slowpkg\n", **SLOWPKG})
    home, flag = tmp_path / "home", tmp_path / "backend.pid"
    env = child_env({"PROJECTRUN_HOME": str(home), "SLOWPKG_FLAG": str(flag),
                     "SLOWPKG_SLEEP": "600", **conda_env})
    _killed_then_rebuilt(Launch([str(project)], workdir, env), launches, flag, sig, code, "conda")


@pytest.mark.slow
def test_sigterm_as_the_conda_build_starts(workdir: Path, tmp_path: Path, launches: list[Launch],
                                           conda_env: dict[str, str]) -> None:
    """The signal is sent as soon as the build is announced, so it lands in rattler's solve or
    install (in-process) or just after; wherever it lands, no broken env is ever used."""
    project = write_project(tmp_path / "p", """\
        name: condastart
        conda_env: conda.yaml
        entry_points:
          main:
            command: "python -c 'import time; time.sleep(600)'"
        """, {"conda.yaml": "channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - tinypkg\n"})
    home = tmp_path / "home"
    env = child_env({"PROJECTRUN_HOME": str(home), "PROJECTRUN_KILL_GRACE": "1", **conda_env})
    launch = Launch([str(project)], workdir, env)
    launches.append(launch)
    assert launch.proc.stderr is not None
    for line in launch.proc.stderr:
        if "building conda env" in line:
            break
    launch.signal(signal.SIGTERM)
    returncode, _, err = launch.finish()
    assert returncode == 143, err
    assert runs(workdir)[0].info.status == "KILLED"
    verify = subprocess.run([sys.executable, "-m", "projectrun", "envs", "verify"], env=env,
                            capture_output=True, text=True, timeout=120,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # complete ones are whole


# --- sweeps -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_during_a_sweep_kills_every_trial_and_the_sweep_resumes(
        workdir: Path, tmp_path: Path, cli: CliRunner, launches: list[Launch]) -> None:
    """Trials that ignore SIGTERM: the sweep forwards, escalates after the grace period, marks
    them KILLED; --resume then runs each trial that did not finish, once."""
    project = write_project(tmp_path / "p", """\
        name: trials
        entry_points:
          main:
            parameters:
              alpha: float
              out: string
            command: "python trial.py {alpha} {out}"
        """, {"trial.py": textwrap.dedent("""\
            import json, os, signal, sys, time
            alpha, out = sys.argv[1], sys.argv[2]
            if not os.path.exists(os.path.join(out, "fast")):
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                with open(os.path.join(out, f"{alpha}.tmp"), "w") as fh:
                    json.dump({"pid": os.getpid(), "pgid": os.getpgid(0)}, fh)
                os.replace(os.path.join(out, f"{alpha}.tmp"), os.path.join(out, f"{alpha}.json"))
                time.sleep(600)
            """)})
    out = tmp_path / "out"
    out.mkdir()
    sweep = workdir / "sweep.yaml"
    sweep.write_text(f"project: {project}\nparameters:\n  alpha: [0.1, 0.2, 0.3]\n  out: {out}\n")
    env = child_env({"PROJECTRUN_HOME": str(tmp_path / "home"), "PROJECTRUN_KILL_GRACE": "1"})
    launch = Launch(["sweep", str(sweep), "-j", "2"], workdir, env)
    launches.append(launch)
    started = [json.loads(launch.wait_for(out / f"{a}.json")) for a in ("0.1", "0.2")]
    launch.signal(signal.SIGTERM)
    returncode, _, err = launch.finish(timeout=120)
    assert returncode == 143, err
    assert "continue it with --resume" in err
    for trial in started:
        assert group_gone(trial["pgid"]) and gone(trial["pid"])
    children = runs(workdir)
    statuses = sorted(r.info.status for r in children if "mlflow.parentRunId" in r.data.tags)
    assert statuses == ["KILLED", "KILLED"]
    parent = next(r for r in children if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"

    (out / "fast").touch()
    res = cli("sweep", str(sweep), "--resume", env={"PROJECTRUN_HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr
    finished = [r.data.params["alpha"] for r in runs(workdir)
                if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags]
    assert sorted(finished) == ["0.1", "0.2", "0.3"]
