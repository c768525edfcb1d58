"""Human output: the one ``Reporter`` type and its two implementations.

Library code takes a ``Reporter`` (a callable given one message) and defaults to ``quiet``, so
nothing prints outside the CLI. The CLI, and the Python API's ``run()`` (which prints as the CLI
does), pass ``stderr``: ``projectrun: <message>`` on stderr with credentials masked.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import IO

from projectrun import redact

#: Where progress lines go ("building python env ...", "waiting for ..."); one message a call.
Reporter = Callable[[str], None]


def quiet(_message: str) -> None:
    """The library default: say nothing."""


def stderr(message: str) -> None:
    """``projectrun: <message>`` on stderr, every credential masked as ``***``."""
    import click  # already loaded by the CLI; the Python API pays for it only once it prints

    click.echo(f"projectrun: {redact.text(message)}", err=True)


def to_stream(stream: IO[str]) -> Reporter:
    """A reporter like ``stderr`` that writes to ``stream``."""

    def write(message: str) -> None:
        import click

        click.echo(f"projectrun: {redact.text(message)}", file=stream)

    return write
