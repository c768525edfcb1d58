"""Solve and install conda packages with py-rattler (pixi's engine), so no conda is needed.

Imported only when a conda env is built or locked: rattler is slow to import, and a process that
used its gateway can crash at interpreter exit (the CLI guards its exit, see ``cli.main``).
Every rattler error becomes one line naming what failed: the package, the channel, the file.
"""
from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from projectrun.errors import EnvBuildError, SpecError

if TYPE_CHECKING:
    from projectrun.progress import Progress

#: Virtual packages assumed when locking for a platform that is not this machine's.
_FOREIGN_VIRTUALS = {
    "linux": [("__unix", "0"), ("__linux", "5.10"), ("__glibc", "2.17")],
    "osx": [("__unix", "0"), ("__osx", "11.0")],
    "win": [("__win", "0")],
}


def solve(channels: Sequence[str], specs: Sequence[str], platform: str, repodata_cache: Path,
          *, offline: bool = False, native: bool = True) -> list[Any]:
    """The records a conda solve of ``specs`` over ``channels`` picks for ``platform``."""
    import rattler

    gateway = rattler.Gateway(cache_dir=repodata_cache, default_config=rattler.SourceConfig(
        cache_action="force-cache-only" if offline else "cache-or-fetch"))
    sources = [rattler.Channel(url) for url in channels]
    try:
        # conda's lenient reading: `name 1.2` means ==1.2 (rattler's strict parser refuses it)
        matches = [rattler.MatchSpec(text, strict=False) for text in specs]
        return asyncio.run(rattler.solve(
            sources=sources, specs=matches, gateway=gateway,
            platforms=[rattler.Platform(platform), rattler.Platform("noarch")],
            virtual_packages=_virtual_packages(platform, native)))
    except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
        raise _solve_error(exc, channels) from None


def install(records: list[Any], prefix: Path, package_cache: Path, progress: Progress) -> None:
    """Link ``records`` into ``prefix``; packages come from (and go to) the shared cache."""
    import rattler

    _verify_local_archives(records)
    try:
        asyncio.run(rattler.install(records, target_prefix=prefix, cache_dir=package_cache,
                                    show_progress=False, reporter=_Reporter(progress)))
    except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
        raise EnvBuildError(f"installing the conda packages failed: {one_line(exc)}") from None


def _verify_local_archives(records: list[Any]) -> None:
    """rattler checks the sha256 of what it downloads, not of file:// archives: check those."""
    import hashlib
    from urllib.parse import unquote, urlparse

    for record in records:
        url = urlparse(str(record.url))
        expected = record.sha256.hex() if isinstance(record.sha256, bytes) else record.sha256
        if url.scheme != "file" or not expected:
            continue
        digest = hashlib.sha256()
        try:
            with open(unquote(url.path), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise EnvBuildError(f"cannot read {record.url}: {exc.strerror}") from None
        actual = digest.hexdigest()
        if actual != expected:
            raise EnvBuildError(f"hash mismatch for {record.file_name}: expected sha256 {expected}, "
                                f"got {actual} ({record.url}); the lock or the channel was changed")


def locked_records(lock: Path, platform: str) -> list[Any]:
    """The exact records of a conda-lock file for ``platform`` (urls and hashes; no solve)."""
    import rattler

    try:
        env = rattler.LockFile.from_path(lock).default_environment()
    except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
        raise SpecError([f"{lock}:1: not a conda-lock file rattler can read: {one_line(exc)}"]) \
            from None
    if env is None:
        raise SpecError([f"{lock}:1: the lock file has no environment"])
    by_platform = {str(p): records for p, records in env.conda_repodata_records().items()}
    if platform not in by_platform:
        raise SpecError([(f"{lock}:1: no packages locked for {platform} (it has "
                         f"{', '.join(sorted(by_platform)) or 'none'}); run `projectrun lock "
                         f"--platform {platform}` to add it")])
    return list(by_platform[platform])


def _virtual_packages(platform: str, native: bool) -> list[Any]:
    import rattler

    if native:
        return list(rattler.VirtualPackage.detect())
    family = platform.split("-")[0]
    return [rattler.GenericVirtualPackage(rattler.PackageName(name), rattler.Version(version),
                                          rattler.BuildString("0"))
            for name, version in _FOREIGN_VIRTUALS.get(family, [])]


def one_line(exc: BaseException) -> str:
    """rattler's multi-line messages as one line: the first line and the last 'Caused by'."""
    lines = [ln.strip(" \t-:|├└─│") for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return type(exc).__name__
    causes = [ln[len("Caused by"):].strip(" :") for ln in lines if ln.startswith("Caused by")]
    body = [ln for ln in lines if not ln.startswith("Caused by")]
    text = "; ".join(dict.fromkeys(body + causes[-1:]))
    return text if len(text) <= 600 else text[:597] + "..."


def _solve_error(exc: BaseException, channels: Sequence[str]) -> EnvBuildError:
    kind = type(exc).__name__
    searched = ", ".join(channels)
    if kind == "SolverError":
        message = re.sub(r"^Cannot solve the request because of:\s*", "", one_line(exc))
        return EnvBuildError(f"the conda environment cannot be solved: {message} "
                             f"(channels searched: {searched})")
    if kind in ("GatewayError", "FetchRepoDataError"):
        return EnvBuildError(f"a conda channel cannot be read ({searched}): {one_line(exc)}; "
                             f"check the URL or set PROJECTRUN_CONDA_CHANNELS to a mirror")
    return EnvBuildError(f"solving the conda environment failed: {kind}: {one_line(exc)}")


class _Reporter:
    """rattler's install callbacks -> one progress display (download, extract, link phases)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._total = 0

    def on_transaction_start(self, total_operations: int) -> None:
        self._total = total_operations
        self._progress.update(total=total_operations,
                              description=f"installing {total_operations} conda packages")

    def on_download_start(self, cache_entry: int) -> int:
        self._progress.update(description=f"downloading and linking {self._total} conda packages")
        return cache_entry

    def on_transaction_operation_complete(self, operation: int) -> None:
        self._progress.advance()

    def __getattr__(self, name: str) -> Any:  # every other callback: no-op, echo the token
        if name.startswith("on_"):
            return lambda *args: args[0] if args else None
        raise AttributeError(name)
