"""The conda_env kind: one conda prefix per content key, solved and installed by py-rattler.

No conda executable is involved: rattler solves the conda.yaml's channels and dependencies (or
takes the exact records of its ``conda-lock.yml``) and links packages from one shared package
cache by hard links, so a second env with the same packages costs almost nothing; the ``pip:``
section goes through uv into the env's own interpreter. The cache key covers the normalised
conda.yaml, every pip requirement file's contents, the channels as resolved (so .condarc and
PROJECTRUN_CONDA_CHANNELS count), the platform and libc, the env format version, and the lock's
hash when a lock is used. rattler is imported only when an env is built (``condasolve``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun import cache, cachedir
from projectrun.envs import Context, Invocation, prepend_path, shell
from projectrun.envs.condachannels import (
    ChannelConfig,
    load_config,
    resolve_channel,
    resolve_channels,
    split_channel_spec,
)
from projectrun.envs.condaspec import CondaEnvSpec, load_conda_env
from projectrun.errors import EnvBuildError, SpecError
from projectrun.spec import Project

NAME = "conda"
LOCK_FILE = "conda-lock.yml"
_SHARED = cachedir.CONDA.name  # <root>/conda/pkgs and <root>/conda/repodata, shared by every env
#: rattler's files for one package in pkgs/: ``<dist>/`` (extracted), ``<dist>.lock``, archives
_DIST_SUFFIXES = (".lock", ".conda", ".tar.bz2")


@dataclass(frozen=True)
class CondaEnvironment:
    """A built prefix: commands run activated, as ``conda activate`` leaves a shell."""

    path: Path
    key: str
    manager: str = NAME
    tag: str | None = NAME  # mlflow.project.env, as MLflow writes it for conda projects
    tags: Mapping[str, str] = field(default_factory=dict)

    def invocation(self, command: str, env: Mapping[str, str], cwd: Path) -> Invocation:
        child = activated(self.path, env)
        scripts = sorted((self.path / "etc" / "conda" / "activate.d").glob("*.sh"))
        prelude = "".join(f". {shlex.quote(str(s))}; " for s in scripts)
        return shell(command, child, cwd, prelude)


def activated(prefix: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The variables ``conda activate PREFIX`` sets (activate.d scripts run in the shell)."""
    child = {k: v for k, v in env.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    level = env.get("CONDA_SHLVL", "0")
    child.update({
        "PATH": prepend_path(env, prefix / "bin"),
        "CONDA_PREFIX": str(prefix),
        "CONDA_DEFAULT_ENV": str(prefix),
        "CONDA_SHLVL": str(int(level) + 1 if level.isdigit() else 1),
        "CONDA_PROMPT_MODIFIER": f"({prefix}) ",
    })
    for vars_file in sorted((prefix / "etc" / "conda" / "env_vars.d").glob("*.json")):
        child.update(_env_vars(vars_file))
    return child


def _env_vars(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class CondaKind:
    NAME = NAME

    def validate(self, project: Project) -> None:
        if project.env_file is not None:
            load_conda_env(project.env_file)

    def prepare(self, project: Project, ctx: Context) -> CondaEnvironment:
        """Find or build the conda prefix for ``project``."""
        if project.env_file is None:
            raise SpecError([f"{project.file}: --env-manager conda needs a conda_env file"])
        plan = plan_env(project.env_file)

        def build(path: Path) -> None:
            build_prefix(path, plan, ctx)

        built = cache.get_or_build(NAME, plan.key, build, inputs=plan.inputs,
                                   project=str(project.directory), health=health_check,
                                   report=ctx.report)
        if ctx.verbose and not built.built:
            ctx.report(f"using cached conda env {plan.key} at {built.path}")
        return CondaEnvironment(built.path, plan.key)


KIND = CondaKind()


@dataclass(frozen=True)
class EnvPlan:
    """What one conda env is made of, before anything is solved."""

    spec: CondaEnvSpec
    channels: tuple[str, ...]
    #: the match specs with ``channel::`` parts resolved to URLs (rattler gets these)
    specs: tuple[str, ...]
    platform: str
    inputs: dict[str, Any]
    key: str


def plan_env(conda_yaml: Path, config: ChannelConfig | None = None) -> EnvPlan:
    spec = load_conda_env(conda_yaml)
    config = config or load_config()
    channels = resolve_channels(list(spec.channels), config)
    specs: list[str] = []
    named = {_package_name(t) for t in spec.specs}
    # conda env create adds pip when there is a pip section (entry points may call pip)
    for text in (*spec.specs, *(["pip"] if spec.pip and "pip" not in named else [])):
        channel, rest = split_channel_spec(text)
        if channel is None:
            specs.append(text)
            continue
        url = resolve_channel(channel, config)[0]
        specs.append(f"{url}::{rest}")
        if url not in channels:
            channels.append(url)  # rattler only finds a package in a channel it was given
    target = current_platform()
    inputs = {"kind": "conda", "platform": target, "libc": _libc(), "channels": channels,
              "specs": specs, "spec": spec.key_inputs(),
              "lock": _sha256(spec.lock) if spec.lock else None}
    return EnvPlan(spec, tuple(channels), tuple(specs), target, inputs, cache.make_key(inputs))


def content_hash(plan: EnvPlan) -> str:
    """What a lock records of the conda.yaml it was made from (compared to find stale locks)."""
    text = json.dumps({"channels": list(plan.channels), "spec": plan.spec.key_inputs()},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def shared_dir(name: str) -> Path:
    path = cachedir.CONDA.ensure() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shared_lock() -> Path:
    return cachedir.LOCKS.users_path(_SHARED)


def using_shared() -> contextlib.AbstractContextManager[None]:
    """Held (shared) by every solve and install while it reads or fills ``conda/``: a prune
    empties it only when nobody does."""
    cachedir.ensure_root()
    return cachedir.shared(_shared_lock())


def prune_shared(older_than: float, now: float, *, gone: frozenset[Path] = frozenset(),
                 dry_run: bool = False) -> list[cachedir.Removed]:
    """Packages in ``conda/pkgs`` that no env under ``envs/`` (but those in ``gone``, being
    pruned) was installed from, and channel metadata in ``conda/repodata`` not refreshed for
    ``older_than``; nothing at all while a conda solve or install runs."""
    base = cachedir.CONDA.dir
    if not base.is_dir():
        return []
    with contextlib.ExitStack() as stack:  # a dry run only looks (and creates no lock file)
        free = (not cachedir.is_held(_shared_lock()) if dry_run
                else stack.enter_context(cachedir.try_locked(_shared_lock())))
        if not free:
            return []
        used = _used_packages(gone)
        removed = []
        pkgs = base / "pkgs"
        for path in sorted(pkgs.iterdir()) if pkgs.is_dir() else []:
            if path.name.startswith(".") or _dist_name(path.name) in used:
                continue  # rattler's own state (.cache.lock), or a package an env came from
            removed.append(cachedir.Removed("conda/pkgs", path, cachedir.tree_size(path),
                                            "conda package no env uses"))
            if not dry_run:
                cachedir.remove_tree(path)
        removed += cachedir.prune_old(base / "repodata", "conda/repodata", older_than, now,
                                      "channel metadata", dry_run)
        if not dry_run:
            _shared_lock().unlink(missing_ok=True)  # held by us: safe, and leaves no stale lock
        return removed


def _dist_name(name: str) -> str:
    for suffix in _DIST_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _used_packages(gone: frozenset[Path]) -> set[str]:
    """The pkgs/ names every env's conda-meta records were linked from (any kind, any state:
    an incomplete env may be rebuilt from the same packages)."""
    used = set()
    for record in cachedir.ENVS.dir.glob("*/conda-meta/*.json"):
        if record.parent.parent in gone:
            continue
        source = cachedir.read_json(record).get("extracted_package_dir")
        used.add(Path(source).name if isinstance(source, str) and source else record.stem)
    return used


def build_prefix(path: Path, plan: EnvPlan, ctx: Context) -> None:
    """Solve (or read the lock), link the packages into ``path``, then the pip section."""
    from projectrun.envs import condasolve

    started = time.monotonic()
    source = f"{plan.spec.lock.name} (locked)" if plan.spec.lock else plan.spec.path.name
    ctx.report(f"building conda env {plan.key} from {source} in {path}")
    with using_shared():
        if plan.spec.lock:
            check_lock_fresh(plan)
            records = condasolve.locked_records(plan.spec.lock, plan.platform)
        else:
            records = condasolve.solve(plan.channels, plan.specs, plan.platform,
                                       shared_dir("repodata"), offline=ctx.offline)
        progress = ctx.step(f"conda env {plan.key}")
        try:
            condasolve.install(records, path, shared_dir("pkgs"), progress)
        finally:
            progress.close()
    if plan.spec.pip:
        _install_pip_section(path, plan.spec, ctx)
    ctx.report(f"built conda env {plan.key}: {_summary(path, len(records), started)}")


def check_lock_fresh(plan: EnvPlan) -> None:
    """A lock made from another conda.yaml is refused: re-solving silently would defeat it."""
    assert plan.spec.lock is not None
    import yaml

    try:
        with open(plan.spec.lock, encoding="utf-8") as fh:
            doc = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        recorded = doc["metadata"]["content_hash"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        raise SpecError([(f"{plan.spec.lock}:1: not a conda-lock file (no metadata.content_hash); "
                         f"rewrite it with `projectrun lock`")]) from None
    if isinstance(recorded, dict) and recorded.get(plan.platform) not in (None, content_hash(plan)):
        raise SpecError([(f"{plan.spec.lock}: out of date: {plan.spec.path.name} changed since it "
                         f"was locked; run `projectrun lock {plan.spec.path.parent}` to update it "
                         f"(or delete it to solve {plan.spec.path.name} at every new build)")])


def _install_pip_section(prefix: Path, spec: CondaEnvSpec, ctx: Context) -> None:
    """``pip:`` lines through uv into the env's interpreter, from the conda.yaml's directory."""
    from projectrun.envs import python as pyenv

    interpreter = prefix / "bin" / "python"
    if not interpreter.exists():
        raise EnvBuildError(f"{spec.path}: the pip section needs python in the conda "
                            f"dependencies (e.g. - python=3.11)")
    uv, _installer = pyenv.choose_installer()
    command = ([uv, "pip", "install", "--python", str(interpreter)] if uv else
               [str(interpreter), "-m", "pip", "install", "--disable-pip-version-check"])
    pyenv.run_step([*command, *pyenv.install_args(spec.pip)], spec.path.parent,
                   "installing the pip section", ctx)


def health_check(path: Path) -> str | None:
    """None if the prefix looks whole and its python (if any) runs; else why it must be rebuilt."""
    if not (path / "conda-meta").is_dir():
        return f"{path / 'conda-meta'} is missing"
    python = path / "bin" / "python"
    if python.is_symlink() or python.exists():
        from projectrun.envs.python import health_check as python_runs

        return python_runs(path)
    return None


def verify(path: Path) -> str | None:
    """The full check behind ``envs verify``: every file the prefix's own records
    (``conda-meta/*.json``) list is there, and so are those of the pip section's distributions."""
    from projectrun.envs.python import missing_records

    return health_check(path) or _missing_conda_files(path) or missing_records(path, "conda")


def _missing_conda_files(prefix: Path) -> str | None:
    for record in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            files = json.loads(record.read_text(encoding="utf-8")).get("files") or []
        except (OSError, ValueError, AttributeError):
            return f"{record} cannot be read"
        missing = [f for f in files if not os.path.lexists(prefix / f)]
        if missing:
            return (f"{len(missing)} file(s) listed in conda-meta/{record.name} are missing, e.g. "
                    f"{prefix / missing[0]}")
    return None


def current_platform() -> str:
    """conda's subdir name for this machine (linux-64, osx-arm64, ...), without importing rattler."""
    system = {"linux": "linux", "darwin": "osx", "win32": "win"}.get(sys.platform, sys.platform)
    machine = platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64",
            "ppc64le": "ppc64le", "s390x": "s390x"}.get(machine, machine)
    if system == "linux" and arch == "arm64":
        arch = "aarch64"
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{system}-{arch}"


def _package_name(spec: str) -> str:
    """``conda-forge::NumPy>=1.2`` -> ``numpy``."""
    match = re.match(r"[A-Za-z0-9_.-]+", split_channel_spec(spec)[1])
    return match.group(0).lower() if match else ""


def _libc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return ""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _summary(path: Path, records: int, started: float) -> str:
    return (f"{records} package{'' if records == 1 else 's'}, "
            f"{cache.size_text(cache.tree_size(path))}, {time.monotonic() - started:.1f} s")
