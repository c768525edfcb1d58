"""The python_env kind: one venv per content key, built once by uv (or virtualenv + pip) and shared.

Serves both MLflow managers, ``virtualenv`` and ``uv``. The cache key covers everything that
changes the venv: the normalised spec, the contents of every -r/-c file, the interpreter actually
used (X.Y.Z and implementation), the platform, the manager and the cache format. It leaves out:
  * the installer (uv or pip): both install the same requirements into the same kind of venv;
  * the project's path: every checkout of the same project shares one venv;
  * local packages (``-e .``, ``./pkg``): their contents are not hashed, as in MLflow.
The manager is in the key because MLflow's two managers give different venvs: ``virtualenv``
venvs have pip (``python -m venv``), ``uv`` venvs do not (``uv venv``); projectrun keeps that.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun import cache, settings
from projectrun.envs import Context, Invocation, interpreters, prepend_path, shell
from projectrun.envs.pythonspec import PythonEnvSpec, spec_for
from projectrun.errors import EnvBuildError
from projectrun.spec import Project

INSTALLER_ENV_VAR = settings.INSTALLER
INSTALLERS = settings.INSTALLERS


@dataclass(frozen=True)
class VenvEnvironment:
    """A built venv: commands run with it activated (VIRTUAL_ENV set, its bin first on PATH)."""

    manager: str
    tag: str | None
    key: str | None
    path: Path
    tags: Mapping[str, str] = field(default_factory=dict)

    def invocation(self, command: str, env: Mapping[str, str], cwd: Path) -> Invocation:
        child = {k: v for k, v in env.items() if k != "PYTHONHOME"}
        child["VIRTUAL_ENV"] = str(self.path)
        child["PATH"] = prepend_path(env, self.path / "bin")
        return shell(command, child, cwd)


@dataclass
class PythonKind:
    """One of MLflow's venv managers; both build the same way apart from pip being seeded."""

    NAME: str

    def validate(self, project: Project) -> None:
        spec_for(project)  # python_env.yaml (or conda.yaml converted) and its -r files

    def prepare(self, project: Project, ctx: Context) -> VenvEnvironment:
        """Find or build the venv for ``project``."""
        spec = spec_for(project)
        uv, installer = choose_installer()
        interp = interpreters.find(spec.python, uv, report=ctx.report,
                                   asked_in=str(spec.source) if spec.source else "")
        inputs = key_inputs(spec, interp, self.NAME)
        key = cache.make_key(inputs)

        def build(path: Path) -> None:
            for warning in spec.warnings:
                ctx.report(f"warning: {warning}")
            build_venv(path, spec, interp, self.NAME, project.directory, uv, ctx, key)

        built = cache.get_or_build(
            self.NAME, key, build, inputs={**inputs, "interpreter": interp.path, "installer": installer},
            project=str(project.directory), health=health_check, report=ctx.report)
        if ctx.verbose and not built.built:
            ctx.report(f"using cached python env {key} at {built.path}")
        return VenvEnvironment(self.NAME, self.NAME, key, built.path)


VIRTUALENV = PythonKind("virtualenv")
UV = PythonKind("uv")


def find_uv() -> str | None:
    """The uv binary from the ``uv`` Python package if installed, else ``uv`` on PATH."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def choose_installer() -> tuple[str | None, str]:
    """``(uv path or None, "uv" | "pip")``: uv when available unless PROJECTRUN_INSTALLER=pip."""
    wanted = settings.current().installer
    if wanted == "pip":
        return None, "pip"
    uv = find_uv()
    if uv is None and wanted == "uv":
        raise EnvBuildError(f"{INSTALLER_ENV_VAR}=uv but uv was not found; `pip install uv` or unset it")
    return uv, "uv" if uv else "pip"


def key_inputs(spec: PythonEnvSpec, interp: interpreters.Interpreter, manager: str) -> dict[str, Any]:
    return {
        "kind": "python",
        "manager": manager,
        "python": interp.version,
        "implementation": interp.implementation,
        "platform": f"{sys.platform}-{platform.machine()}",
        "build_dependencies": list(spec.build_dependencies),
        "dependencies": list(spec.dependencies),
        "files": [[ref.written, ref.sha256] for ref in spec.files],
    }


def health_check(path: Path) -> str | None:
    """None if the venv's python runs; else why not (e.g. its base interpreter was removed)."""
    python = path / "bin" / "python"
    if not python.exists():  # follows the symlink to the base interpreter
        return f"{python} is missing or points to an interpreter that no longer exists"
    try:
        result = subprocess.run([str(python), "-I", "-S", "-c", ""], capture_output=True, timeout=60,
                                check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{python} does not run ({exc})"
    return None if result.returncode == 0 else f"{python} exits with code {result.returncode}"


def verify(path: Path) -> str | None:
    """The full check behind ``envs verify``: the interpreter runs and every file the installed
    distributions' RECORD files list is there (too slow for every launch: it stats every file)."""
    return health_check(path) or missing_records(path)


def missing_records(prefix: Path, skip_installer: str | None = None) -> str | None:
    """Why the distributions under ``prefix`` are incomplete, or None.

    Bytecode entries are not checked (Python rewrites a missing .pyc); ``skip_installer`` leaves
    out distributions another tool owns (conda's own packages in a conda prefix)."""
    for site in sorted(prefix.glob("lib/python*/site-packages")):
        for dist in sorted(site.glob("*.dist-info")):
            if skip_installer and _installer(dist) == skip_installer:
                continue
            problem = _dist_problem(site, dist)
            if problem:
                return problem
    return None


def _installer(dist: Path) -> str:
    try:
        return (dist / "INSTALLER").read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _dist_problem(site: Path, dist: Path) -> str | None:
    import csv

    try:
        with open(dist / "RECORD", encoding="utf-8", newline="") as fh:
            listed = [row[0] for row in csv.reader(fh) if row and row[0]]
    except OSError:
        return f"{dist.name} has no RECORD file (its installation is incomplete)"
    missing = [rel for rel in listed if not rel.endswith(".pyc")
               and not os.path.lexists(os.path.normpath(site / rel))]
    if not missing:
        return None
    return (f"{len(missing)} file(s) listed in {dist.name}/RECORD are missing, e.g. "
            f"{os.path.normpath(site / missing[0])}")


def build_venv(path: Path, spec: PythonEnvSpec, interp: interpreters.Interpreter, manager: str,
               project_dir: Path, uv: str | None, ctx: Context, key: str) -> None:
    """Create the venv at ``path``, then install build dependencies, then dependencies."""
    count = len(spec.build_dependencies) + len(spec.dependencies)
    ctx.report(f"building python env {key} (python {interp.version}, {count} requirement"
               f"{'' if count == 1 else 's'}) with {'uv' if uv else 'pip'} in {path}")
    started = time.monotonic()
    python = str(path / "bin" / "python")
    if uv:
        seed = ["--seed"] if manager == "virtualenv" else []
        create = [uv, "venv", "--quiet", *seed, "--python", interp.path, str(path)]
        install = [uv, "pip", "install", "--python", python]
    else:
        create = _venv_command(interp.path, path)
        install = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    steps = [("creating the venv", create, path.parent)]
    for label, lines in (("build dependencies", spec.build_dependencies),
                         ("dependencies", spec.dependencies)):
        if lines:
            steps.append((f"installing {label}", [*install, *install_args(lines)], project_dir))
    progress = ctx.step(f"python env {key}")
    try:
        progress.update(total=len(steps))
        for what, command, cwd in steps:
            progress.update(description=what)
            run_step(command, cwd, what, ctx)
            progress.advance()
    finally:
        progress.close()
    ctx.report(f"built python env {key}: {summary(path, time.monotonic() - started)}")


def summary(path: Path, seconds: float) -> str:
    """``12 packages, 48.1 MB, 3.2 s``: what the one-line build summary says of a venv."""
    packages = sum(1 for _ in path.glob("lib/python*/site-packages/*.dist-info"))
    return f"{packages} package{'' if packages == 1 else 's'}, {cache.size_text(cache.tree_size(path))}, " \
           f"{seconds:.1f} s"


def _venv_command(interpreter: str, path: Path) -> list[str]:
    """virtualenv from projectrun's own environment if present (fast, any target), else venv."""
    import importlib.util

    if importlib.util.find_spec("virtualenv") is not None:
        return [sys.executable, "-m", "virtualenv", "--quiet", "-p", interpreter, str(path)]
    return [interpreter, "-m", "venv", str(path)]


def install_args(lines: Sequence[str]) -> list[str]:
    """Requirement lines as installer arguments: option lines are split, requirements kept whole."""
    args: list[str] = []
    for line in lines:
        text = re.sub(r"(^|\s)#.*$", "", line).strip()
        if not text:
            continue
        args.extend(shlex.split(text) if text.startswith("-") else [text])
    return args


def run_step(command: list[str], cwd: Path, what: str, ctx: Context) -> None:
    """Run an installer step, its output to the run's log (and stderr with --verbose); kill it
    and everything it started (a PEP 517 build backend, a compiler) if we are interrupted.

    The installer runs in its own session so one killpg reaches its whole tree: killing uv alone
    left its build backend running, still writing into the venv being deleted."""
    if ctx.verbose:
        ctx.report(f"running: {shlex.join(command)} (in {cwd})")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "PIP_NO_INPUT": "1"}
    env.pop("VIRTUAL_ENV", None)  # the installer targets the new venv, never the caller's
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
    except OSError as exc:
        raise EnvBuildError(f"{what} failed: cannot run {command[0]}: {exc.strerror}") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            ctx.build_output(line.rstrip("\n"))
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the installer before the venv is deleted
            kill_tree(proc)
    if code != 0:
        last = next((t.strip() for t in reversed(tail) if t.strip()), "no output")
        raise EnvBuildError(f"{what} failed ({shlex.join(command[:4])} ... exited with code {code}): "
                            f"{last}")


def kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the process group ``proc`` leads and wait (bounded) until none of it is left."""
    from projectrun.launch import group_alive

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
