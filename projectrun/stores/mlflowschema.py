"""The schema revision the installed MLflow writes, read from its migration files (no import).

Alembic revisions form a chain through ``down_revision``; the head is the one nobody points to.
Scanning the files costs ~0.1 s, so the answer is kept in the cache keyed by the migrations
directory and its mtime (a new MLflow install changes both).
"""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

_REVISION = re.compile(r"^revision\s*=\s*['\"]([0-9a-zA-Z_]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*=\s*(.+)$", re.MULTILINE)


def _versions_dir() -> Path | None:
    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "store" / "db_migrations" / "versions"
    return path if path.is_dir() else None


def _scan(directory: Path) -> tuple[str, list[str]] | None:
    revisions, pointed = [], set()
    for file in directory.glob("*.py"):
        text = file.read_text(encoding="utf-8", errors="replace")
        if (rev := _REVISION.search(text)) is None:
            continue
        revisions.append(rev.group(1))
        if down := _DOWN.search(text):
            pointed.update(re.findall(r"['\"]([0-9a-zA-Z_]+)['\"]", down.group(1)))
    heads = [r for r in revisions if r not in pointed]
    if len(heads) != 1:
        return None  # a branched history we cannot judge: leave it to MLflow
    return heads[0], sorted(set(revisions) - set(heads))


def revisions() -> tuple[str, set[str]] | None:
    """(head, every older revision) of the installed MLflow, or None if unknown."""
    from projectrun import cache

    directory = _versions_dir()
    if directory is None:
        return None
    stamp = f"{directory}:{directory.stat().st_mtime_ns}"
    memo = cache.ensure_root() / "mlflow-schema.json"
    try:
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved.get("stamp") == stamp:
            return saved["head"], set(saved["older"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    scanned = _scan(directory)
    if scanned is None:
        return None
    tmp = memo.with_name(f".{memo.name}.tmp{id(scanned)}")
    tmp.write_text(json.dumps({"stamp": stamp, "head": scanned[0], "older": scanned[1]}))
    tmp.replace(memo)
    return scanned[0], set(scanned[1])
