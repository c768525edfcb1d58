"""Shared output helpers of the commands: tables, ages, sizes, durations, build progress."""
from __future__ import annotations

import sys
from typing import Any

import click

from projectrun import report


def age(seconds: float | None) -> str:
    import time

    if not seconds:
        return "-"
    delta = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return "just now"


def size(n: int | None) -> str:
    from projectrun.cache import size_text

    return size_text(n)


def older_than(text: str) -> float:
    from projectrun.durations import parse_duration

    try:
        return parse_duration(text, allow_zero=True)
    except ValueError:
        raise click.UsageError(f"--older-than {text}: give a duration such as 30d, 12h or 90m") from None


def table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from projectrun import redact

    table = Table(*headers, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(redact.text(cell) for cell in row))  # a secret -P value shows as ***
    Console(soft_wrap=True).print(table)


def progress() -> Any:
    """Build progress on stderr: a bar on a terminal, plain lines through report.stderr otherwise."""
    from projectrun.progress import for_stream

    return for_stream(sys.stderr, report.stderr)
