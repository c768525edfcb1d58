"""What a run could not record because the tracking store stayed down: kept here, replayed later.

When a store goes away mid-run and stays away past the retries, the run's final status, end
time, unlogged params and tags, and its log are written to ``<cache>/spool/<run id>.json`` (+
``.log``). The next projectrun command that reaches the same store replays them, so nothing is
lost and the run is not mistaken for an abandoned one (``reconcile`` skips spooled runs).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from projectrun import cachedir, redact
from projectrun.report import Reporter


def spool_dir() -> Path:
    return cachedir.SPOOL.ensure()


def save(uri: str, run_id: str, status: str, params: dict[str, str], tags: dict[str, str],
         log_path: Path | None) -> Path:
    """Keep what the store did not take; returns the record's path."""
    base = spool_dir()
    log_copy = None
    if log_path is not None and log_path.exists() and log_path.stat().st_size:
        log_copy = base / f"{run_id}.log"
        shutil.copyfile(log_path, log_copy)
    record = {"uri": uri, "run_id": run_id, "status": status, "end_time": int(time.time() * 1000),
              "params": redact.mapping(params), "tags": redact.mapping(tags), "log": str(log_copy) if log_copy else None}
    target = base / f"{run_id}.json"
    tmp = base / f".{run_id}.{secrets.token_hex(4)}.tmp"
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, target)
    return target


def _records(uri: str) -> list[tuple[Path, dict[str, Any]]]:
    base = cachedir.SPOOL.dir
    if not base.is_dir():
        return []
    out = []
    for path in sorted(base.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("uri") == uri:
            out.append((path, record))
    return out


def spooled_run_ids(uri: str) -> set[str]:
    return {str(r["run_id"]) for _, r in _records(uri)}


def replay(tracker: Any, report: Reporter) -> None:
    """Record every spooled run of this store; a record stays until its store took all of it."""
    from projectrun.errors import ProjectRunError

    for path, record in _records(tracker.uri):
        claimed = path.with_name(f".{path.stem}.replaying-{os.getpid()}")
        try:
            os.replace(path, claimed)  # one replayer per record, even with parallel launches
        except FileNotFoundError:
            continue
        try:
            _apply(tracker, record)
        except ProjectRunError as exc:
            os.replace(claimed, path)
            report(f"warning: run {record['run_id']} is still kept in {path}: {exc}")
            return
        claimed.unlink()
        if record.get("log"):
            Path(record["log"]).unlink(missing_ok=True)
        report(f"recorded run {record['run_id']} {record['status']} (kept in {path} while "
               f"{tracker.uri} was unreachable)")


def _apply(tracker: Any, record: dict[str, Any]) -> None:
    run_id = str(record["run_id"])
    if record.get("params") or record.get("tags"):
        tracker.log_batch(run_id, dict(record.get("params") or {}), dict(record.get("tags") or {}))
    if record.get("log") and Path(record["log"]).exists():
        from projectrun import tracking

        spooled = Path(record["log"])
        named = spooled.with_name(tracking.LOG_FILE_NAME)
        tmpdir = spooled.parent / f".replay-{run_id}"
        tmpdir.mkdir(exist_ok=True)
        try:
            shutil.copyfile(spooled, tmpdir / named.name)
            tracker.log_artifact(run_id, tmpdir / named.name, tracking.LOG_ARTIFACT_DIR)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
    tracker.terminate(run_id, str(record["status"]), end_time=int(record["end_time"]))


def prune(dry_run: bool = False, now: float | None = None) -> list[cachedir.Removed]:
    """What finished replays and crashed writers left, once older than ``cachedir.GRACE``: the log
    of a record that was replayed, ``.replay-*`` dirs and temp files. Never a record
    (``<run>.json``) nor one a replayer has claimed: those are runs not recorded yet."""
    base = cachedir.SPOOL.dir
    if not base.is_dir():
        return []
    now = time.time() if now is None else now
    removed = []
    for path in sorted(base.iterdir()):
        if not _leftover(path) or not cachedir.older(cachedir.mtime(path), cachedir.GRACE, now):
            continue
        removed.append(cachedir.Removed(cachedir.SPOOL.name, path, cachedir.tree_size(path),
                                        "spool leftover of a replayed run"))
        if not dry_run:
            cachedir.remove_tree(path)
    return removed


def _leftover(path: Path) -> bool:
    name = path.name
    if name.endswith(".log") and not name.startswith("."):
        return not _pending(path.parent, name[:-len(".log")])
    if name.startswith(".replay-"):
        return not _pending(path.parent, name[len(".replay-"):])
    return name.startswith(".") and name.endswith(".tmp")


def _pending(base: Path, run_id: str) -> bool:
    """The run still has a record to replay, or a replayer working on it."""
    return (base / f"{run_id}.json").exists() or any(base.glob(f".{run_id}.replaying-*"))
