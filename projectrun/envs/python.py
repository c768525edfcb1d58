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

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projectrun import cache
from projectrun.envs import Prepared, Reporter, interpreters
from projectrun.envs.pythonspec import PythonEnvSpec, spec_for
from projectrun.errors import EnvBuildError, UsageError
from projectrun.spec import Project

INSTALLER_ENV_VAR = "PROJECTRUN_INSTALLER"
INSTALLERS = ("uv", "pip")


def _stderr(message: str) -> None:
    print(f"projectrun: {message}", file=sys.stderr, flush=True)


@dataclass
class PythonKind:
    """One of MLflow's venv managers; both build the same way apart from pip being seeded."""

    NAME: str

    def prepare(self, project: Project, *, verbose: bool, report: Reporter | None = None) -> Prepared:
        """Find or build the venv for ``project`` and return how to run a command inside it."""
        report = report or _stderr
        spec = spec_for(project)
        uv, installer = choose_installer()
        interp = interpreters.find(spec.python, uv, report=report,
                                   asked_in=str(spec.source) if spec.source else "")
        inputs = key_inputs(spec, interp, self.NAME)
        key = cache.make_key(inputs)

        def build(path: Path) -> None:
            for warning in spec.warnings:
                report(f"warning: {warning}")
            build_venv(path, spec, interp, self.NAME, project.directory, uv, report, key,
                       verbose=verbose)

        built = cache.get_or_build(
            self.NAME, key, build, inputs={**inputs, "interpreter": interp.path, "installer": installer},
            project=str(project.directory), health=health_check, report=report)
        if verbose and not built.built:
            report(f"using cached python env {key} at {built.path}")
        activate = shlex.quote(str(built.path / "bin" / "activate"))
        return Prepared(manager=self.NAME, tag=self.NAME, key=key, prefix=f"source {activate} && ")


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
    wanted = os.environ.get(INSTALLER_ENV_VAR, "").strip().lower() or None
    if wanted not in (None, *INSTALLERS):
        raise UsageError(f"{INSTALLER_ENV_VAR}={wanted}: must be one of {', '.join(INSTALLERS)}")
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


def build_venv(path: Path, spec: PythonEnvSpec, interp: interpreters.Interpreter, manager: str,
               project_dir: Path, uv: str | None, report: Reporter, key: str, *,
               verbose: bool = False) -> None:
    """Create the venv at ``path``, then install build dependencies, then dependencies."""
    count = len(spec.build_dependencies) + len(spec.dependencies)
    report(f"building python env {key} (python {interp.version}, {count} requirement"
           f"{'' if count == 1 else 's'}) with {'uv' if uv else 'pip'} in {path}")
    python = str(path / "bin" / "python")
    if uv:
        seed = ["--seed"] if manager == "virtualenv" else []
        _run([uv, "venv", "--quiet", *seed, "--python", interp.path, str(path)], path.parent,
             "creating the venv", report if verbose else None)
        install = [uv, "pip", "install", "--python", python]
    else:
        _run(_venv_command(interp.path, path), path.parent, "creating the venv",
             report if verbose else None)
        install = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    for label, lines in (("build dependencies", spec.build_dependencies),
                         ("dependencies", spec.dependencies)):
        if lines:
            _run([*install, *install_args(lines)], project_dir, f"installing {label}",
                 report if verbose else None)


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


def _run(command: list[str], cwd: Path, what: str, show: Reporter | None = None) -> None:
    """Run an installer step, streaming its output to stderr; kill it if we are interrupted."""
    if show:
        show(f"running: {shlex.join(command)} (in {cwd})")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "PIP_NO_INPUT": "1"}
    env.pop("VIRTUAL_ENV", None)  # the installer targets the new venv, never the caller's
    tail: deque[str] = deque(maxlen=20)
    try:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace")
    except OSError as exc:
        raise EnvBuildError(f"{what} failed: cannot run {command[0]}: {exc.strerror}") from None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            print(line, end="", file=sys.stderr, flush=True)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: stop the installer before the venv is deleted
            proc.kill()
            proc.wait()
    if code != 0:
        last = next((t.strip() for t in reversed(tail) if t.strip()), "no output")
        raise EnvBuildError(f"{what} failed ({shlex.join(command[:4])} ... exited with code {code}): "
                            f"{last}")
