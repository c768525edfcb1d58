"""Find a Python interpreter for a requested version, without downloading unless allowed.

Order, cheapest first: the interpreter running projectrun (no subprocess), pyenv's versions
directory (a directory listing), uv's discovery (``uv python find``, ~0.1 s, and it stops at the
first broken pyenv shim on PATH), then ``pythonX.Y`` on PATH. With PROJECTRUN_PYTHON_DOWNLOADS=1
uv may download the version as a last resort.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from projectrun import settings
from projectrun.errors import EnvBuildError

DOWNLOADS_ENV_VAR = settings.PYTHON_DOWNLOADS
_NUMERIC = re.compile(r"^\d+(\.\d+){0,2}$")
_PROBE = "import platform, sys; print(platform.python_version(), sys.implementation.name)"


@dataclass(frozen=True)
class Interpreter:
    path: str
    #: full X.Y.Z
    version: str
    #: sys.implementation.name, e.g. "cpython"
    implementation: str


def current() -> Interpreter:
    return Interpreter(sys.executable, platform.python_version(), sys.implementation.name)


def find(request: str | None, uv: str | None, *, asked_in: str = "",
         report: Callable[[str], None] | None = None) -> Interpreter:
    """The interpreter for ``request`` ("3.11", "3.11.7"; None = the current one), or one clear error."""
    if request is None or _matches(platform.python_version(), request):
        return current()
    for candidate in _candidates(request, uv):
        found = probe(candidate)
        if found and (not _NUMERIC.match(request) or _matches(found.version, request)):
            return found
    if uv and settings.current().python_downloads:
        if report:
            report(f"downloading python {request} with uv ({DOWNLOADS_ENV_VAR}=1)")
        found = _uv_install(uv, request)
        if found:
            return found
    where = f" (asked for in {asked_in})" if asked_in else ""
    raise EnvBuildError(
        f"python {request}{where} was not found on this machine; install it "
        f"(e.g. `pyenv install {request}` or `uv python install {request}`), or set "
        f"{DOWNLOADS_ENV_VAR}=1 to let uv download it")


def probe(path: str) -> Interpreter | None:
    """Ask the interpreter itself: file names lie (shims, symlinks to other versions)."""
    try:
        out = subprocess.run([path, "-I", "-S", "-c", _PROBE], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    parts = out.stdout.split()
    if out.returncode != 0 or len(parts) != 2:
        return None
    return Interpreter(path, parts[0], parts[1])


def _matches(version: str, request: str) -> bool:
    """A numeric request matches by prefix of components: "3.11" matches "3.11.7", not "3.1.2"."""
    if not _NUMERIC.match(request):
        return False
    wanted = request.split(".")
    return version.split(".")[:len(wanted)] == wanted


def _candidates(request: str, uv: str | None) -> Iterator[str]:
    if _NUMERIC.match(request):
        yield from _pyenv(request)
    if uv:
        found = _uv_find(uv, request)
        if found:
            yield found
    if _NUMERIC.match(request):
        minor = ".".join(request.split(".")[:2])
        for name in (f"python{minor}", f"python{request.split('.')[0]}"):
            if path := shutil.which(name):
                yield path


def _pyenv(request: str) -> Iterator[str]:
    """pyenv's installed versions, newest matching first (pyenv shims need a global version set)."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    try:
        names = [n for n in os.listdir(root) if re.fullmatch(r"\d+\.\d+\.\d+", n) and _matches(n, request)]
    except OSError:
        return
    for name in sorted(names, key=lambda n: tuple(int(p) for p in n.split(".")), reverse=True):
        python = root / name / "bin" / "python"
        if python.exists():
            yield str(python)


def _uv_env(downloads: bool) -> dict[str, str]:
    return {**os.environ, "UV_PYTHON_DOWNLOADS": "automatic" if downloads else "never"}


def _uv_find(uv: str, request: str) -> str | None:
    try:
        out = subprocess.run([uv, "python", "find", "--no-project", request], capture_output=True,
                             text=True, env=_uv_env(False), timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _uv_install(uv: str, request: str) -> Interpreter | None:
    try:
        subprocess.run([uv, "python", "install", request], env=_uv_env(True), check=True,
                       capture_output=True, timeout=1800)
    except (OSError, subprocess.SubprocessError):
        return None
    found = _uv_find(uv, request)
    return probe(found) if found else None
