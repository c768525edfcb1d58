"""``projectrun lock``: solve a conda.yaml for each platform and write conda-lock's ``conda-lock.yml``.

The file is written through conda-lock's own models (so conda-lock, micromamba and pixi read it);
the solve is rattler's (conda-lock's CLI needs a conda executable). Each platform's
``content_hash`` is projectrun's hash of the normalised conda.yaml and resolved channels, which is
how a later build knows the lock is stale. The ``pip:`` section is not locked: it is installed by
uv as written, after the locked conda packages.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from projectrun.envs import Context
from projectrun.envs.conda import (
    LOCK_FILE,
    EnvPlan,
    content_hash,
    current_platform,
    plan_env,
    shared_dir,
    using_shared,
)
from projectrun.errors import UsageError

PLATFORMS = ("linux-64", "linux-aarch64", "linux-ppc64le", "osx-64", "osx-arm64", "win-64")


def write_lock(conda_yaml: Path, platforms: Sequence[str], ctx: Context) -> tuple[Path, dict[str, int]]:
    """Solve for every platform, then write the lock next to conda.yaml; returns (path, counts)."""
    from projectrun.envs import condasolve

    for name in platforms:
        if name not in PLATFORMS:
            raise UsageError(f"--platform {name}: must be one of {', '.join(PLATFORMS)}")
    plan = plan_env(conda_yaml)
    native = current_platform()
    solved: dict[str, list[Any]] = {}
    with using_shared():
        for name in platforms or [native]:
            ctx.report(f"solving {conda_yaml.name} for {name}")
            solved[name] = condasolve.solve(plan.channels, plan.specs, name,
                                            shared_dir("repodata"), offline=ctx.offline,
                                            native=name == native)
    target = conda_yaml.parent / LOCK_FILE
    _write(target, plan, solved)
    return target, {name: len(records) for name, records in solved.items()}


def _write(target: Path, plan: EnvPlan, solved: dict[str, list[Any]]) -> None:
    try:
        from conda_lock.lockfile import write_conda_lock_file
    except ImportError:
        raise UsageError("projectrun lock writes conda-lock's format and needs conda-lock: "
                         "pip install 'projectrun[lock]'") from None
    from conda_lock.lockfile.v2prelim.models import LockedDependency, Lockfile, LockMeta
    from conda_lock.models.channel import Channel

    packages = [LockedDependency(
        name=record.name.normalized, version=str(record.version), manager="conda",
        platform=name, dependencies=_dependencies(record.depends), url=str(record.url),
        hash={"md5": _hex(record.md5), "sha256": _hex(record.sha256)},
        build=str(record.build), categories={"main"})
        for name, records in solved.items() for record in records]
    digest = content_hash(plan)
    meta = LockMeta(content_hash={name: digest for name in solved},
                    channels=[Channel.from_string(url) for url in plan.channels],
                    platforms=list(solved), sources=[plan.spec.path.name])
    # written in a temp dir under its own name (the name appears in conda-lock's help text)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".conda-lock-") as tmp:
        written = Path(tmp) / target.name
        write_conda_lock_file(Lockfile(package=packages, metadata=meta), written,
                              metadata_choices=set())
        written.replace(target)


def _hex(digest: bytes | str | None) -> str | None:
    return digest.hex() if isinstance(digest, bytes) else digest


def _dependencies(depends: Sequence[str]) -> dict[str, str]:
    """``["python >=3.8", "libgreet"]`` -> ``{"python": ">=3.8", "libgreet": "*"}`` (conda-lock's shape)."""
    out: dict[str, str] = {}
    for dep in depends:
        name, _, constraint = dep.strip().partition(" ")
        out[name] = constraint.strip() or "*"
    return out
