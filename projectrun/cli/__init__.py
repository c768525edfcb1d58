"""Command line: the only place that prints for humans and maps errors to exit codes.

  app          the command group, ``main`` and the error -> exit code mapping
  runcmd       run (``projectrun URI``) and validate
  sweepcmd     sweep (and run --grid)
  maintenance  envs, lock, runs, sources, cache
  output       tables, sizes, ages, durations, build progress
Human lines go to stderr through ``projectrun.report.stderr``; machine output (``--json``) to stdout.
"""
from projectrun.cli.app import cli, main

__all__ = ["cli", "main"]
