"""Maintenance commands: ``envs``, ``lock``, ``runs``, ``sources`` and ``cache``."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from projectrun import redact, report, settings
from projectrun.cli import output
from projectrun.envs import MANAGERS as ENV_MANAGERS


@click.group("envs")
def envs_group() -> None:
    """Cached environments: list, remove, prune, prebuild."""


@envs_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def envs_list(as_json: bool) -> None:
    """Show cached environments, most recently used first."""
    from projectrun import cache

    entries = cache.list_entries()
    if as_json:
        click.echo(json.dumps([
            {"kind": e.kind, "key": e.key, "path": str(e.path), "complete": e.complete,
             "project": e.project, "size": e.size, "created": e.created, "last_used": e.last_used}
            for e in entries], indent=2))
        return
    if not entries:
        click.echo(f"no cached environments in {cache.root() / 'envs'}")
        return
    output.table(["kind", "key", "project", "size", "last used"],
                 [[e.kind, e.key + _entry_state(e), e.project or "-",
                   output.size(e.size), output.age(e.last_used or e.created)] for e in entries])


def _entry_state(entry: Any) -> str:
    from projectrun import cache

    if not entry.complete:
        return " (incomplete)"
    return " (broken)" if cache.broken_reason(entry.path) else ""


@envs_group.command("remove")
@click.argument("key")
def envs_remove(key: str) -> None:
    """Delete one cached environment (a key or an unambiguous prefix)."""
    from projectrun import cache

    entry = cache.remove(key)
    from projectrun import envs

    envs.release(entry.kind, entry.meta)
    click.echo(f"removed {entry.kind} env {entry.key} ({entry.path})", err=True)


@envs_group.command("prune")
@click.option("--older-than", default="30d", show_default=True, help="Remove envs unused this long.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def envs_prune(older_than: str, dry_run: bool) -> None:
    """Remove environments not used recently, and builds that were interrupted."""
    from projectrun import cache

    removed = cache.prune(output.older_than(older_than), dry_run=dry_run)
    if not dry_run:
        from projectrun import envs

        for entry in removed:
            envs.release(entry.kind, entry.meta)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        click.echo(f"{verb} {e.kind} env {e.key} ({output.size(e.size)}, last used {output.age(e.last_used)})", err=True)
    total = sum(e.size or 0 for e in removed)
    click.echo(f"{verb} {len(removed)} environment(s), {output.size(total)}", err=True)


@envs_group.command("verify")
@click.argument("key", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def envs_verify(key: str | None, as_json: bool) -> None:
    """Check cached environments file by file (all, or KEY); exit 1 if one is broken.

    A broken environment is flagged: the next launch that needs it rebuilds it."""
    from projectrun import cache, envs

    verdicts = cache.verify(key, envs.verifier)
    if as_json:
        click.echo(json.dumps([{"kind": v.entry.kind, "key": v.entry.key, "path": str(v.entry.path),
                                "state": v.state, "reason": v.reason} for v in verdicts], indent=2))
    else:  # one line each: a reason is a path and a sentence, too long for a table
        for v in verdicts:
            click.echo(f"{v.state.upper():<10} {v.entry.kind} {v.entry.key} "
                       f"({v.entry.project or '-'})" + (f": {v.reason}" if v.reason else ""))
    broken = sum(v.state == "broken" for v in verdicts)
    click.echo(f"projectrun: {len(verdicts)} environment(s) checked, {broken} broken"
               + (" (the next launch that needs one rebuilds it)" if broken else ""), err=True)
    if broken:
        sys.exit(1)


@envs_group.command("build")
@click.argument("uri", default=".")
@click.option("-v", "--version", "version", help="Git branch, tag or commit (git URIs).")
@click.option("--env-manager", type=click.Choice(ENV_MANAGERS), help="Manager to build for.")
@click.option("--verbose", is_flag=True)
def envs_build(uri: str, version: str | None, env_manager: str | None, verbose: bool) -> None:
    """Build (or reuse) the environment a project needs, without running it (e.g. in CI images)."""
    from projectrun import envs, sources, spec

    source = sources.resolve(uri, version, report=report.stderr)
    try:
        project = spec.load_project(source.directory)
        manager = envs.select_manager(project, env_manager)
        ctx = envs.Context(report=report.stderr, verbose=verbose, progress=output.progress())
        prepared = envs.get_kind(manager).prepare(project, ctx)
    finally:
        source.close()
    click.echo(f"{manager} env {prepared.key or '(none needed)'} ready", err=True)


@click.command("lock")
@click.argument("uri", default=".")
@click.option("--platform", "platforms", multiple=True, metavar="PLATFORM",
              help="conda platform to lock for (linux-64, osx-arm64, ...); repeat. Default: this machine's.")
@click.option("--offline", is_flag=True, help="Solve from the cached channel metadata only.")
def lock_cmd(uri: str, platforms: tuple[str, ...], offline: bool) -> None:
    """Write conda-lock.yml next to the project's conda.yaml; later runs install exactly it."""
    from projectrun import envs, sources, spec
    from projectrun.envs import condalock
    from projectrun.errors import UsageError

    source = sources.resolve(uri, None, report=report.stderr)
    try:
        project = spec.load_project(source.directory)
        if project.env_type != spec.CONDA_ENV or project.env_file is None:
            raise UsageError(f"projectrun lock: {project.file or source.directory} has no conda_env "
                             f"(only conda environments are locked)")
        ctx = envs.Context(report=report.stderr, offline=offline)
        path, counts = condalock.write_lock(project.env_file, platforms, ctx)
    finally:
        source.close()
    what = ", ".join(f"{n} packages for {p}" for p, n in counts.items())
    click.echo(f"projectrun: wrote {path} ({what})", err=True)


@click.group("runs")
def runs_group() -> None:
    """Runs in the tracking store: find and end the ones whose launcher died."""


@runs_group.command("reconcile")
@click.option("--experiment-name", help="Only this experiment (default: every active one).")
@click.option("--experiment-id", help="Only this experiment id.")
@click.option("--dry-run", is_flag=True, help="Only say what would be ended.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_reconcile(experiment_name: str | None, experiment_id: str | None, dry_run: bool,
                   as_json: bool) -> None:
    """End RUNNING runs whose launcher is gone (killed, rebooted) as FAILED; list the others."""

    from projectrun import reconcile, tracking

    tracker = tracking.Tracker(tracking.absolute_tracking_uri(settings.current().tracking_uri))
    if experiment_name or experiment_id:
        ids = [tracker.experiment_id(experiment_name, experiment_id)]
    else:
        ids = [str(e.experiment_id) for e in tracker.client.search_experiments()]
    if not dry_run:
        from projectrun import spool

        spool.replay(tracker, report.stderr)  # runs that ended while the store was down, first
    found = [f for exp in ids for f in reconcile.reconcile(tracker, exp, dry_run=dry_run)]
    if as_json:
        click.echo(json.dumps([f.__dict__ for f in found], indent=2))
        return
    verb = "would end" if dry_run else "ended"
    output.table(["run", "experiment", "launcher", "action"],
                 [[f.run_id, f.experiment_id, f.state,
                   f"{verb} FAILED: {f.reason}" if f.state == "dead" else f"left RUNNING: {f.reason}"]
                  for f in found])
    dead = sum(f.state == "dead" for f in found)
    click.echo(f"projectrun: {len(found)} running run(s); {verb} {dead}", err=True)


@click.group("sources")
def sources_group() -> None:
    """Cached git mirrors: list, remove, prune."""


@sources_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def sources_list(as_json: bool) -> None:
    """Show cached git mirrors, most recently used first."""
    from projectrun import gitsource

    mirrors = gitsource.list_mirrors()
    if as_json:
        click.echo(redact.text(json.dumps(mirrors, indent=2, default=str)))
        return
    if not mirrors:
        click.echo(f"no cached git mirrors in {gitsource.mirrors_dir()}")
        return
    output.table(["key", "url", "size", "last fetched", "last used"],
                 [[m["key"], redact.text(m["url"]), output.size(m.get("size")),
                   output.age(m.get("fetched")), output.age(m.get("used"))] for m in mirrors])


@sources_group.command("remove")
@click.argument("url_or_key")
def sources_remove(url_or_key: str) -> None:
    """Delete one cached mirror (its URL, key, or an unambiguous key prefix)."""
    from projectrun import gitsource

    removed = gitsource.remove(url_or_key)
    click.echo(f"removed mirror of {removed.get('url')} ({removed.get('path')})", err=True)


@sources_group.command("prune")
@click.option("--older-than", default="30d", show_default=True, help="Remove mirrors unused this long.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def sources_prune(older_than: str, dry_run: bool) -> None:
    """Remove git mirrors not used recently (mirrors with a running checkout are kept)."""
    from projectrun import gitsource

    removed = gitsource.prune(output.older_than(older_than), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for m in removed:
        if m["what"] == "worktree":
            click.echo(f"{verb} work tree {m['path']} of a launch that died ({m.get('url')})",
                       err=True)
        elif m["what"] != "lock":
            click.echo(f"{verb} mirror of {m.get('url')} ({output.size(m.get('size'))})", err=True)
    click.echo(f"{verb} {sum(m['what'] == 'mirror' for m in removed)} mirror(s)", err=True)


@click.group("cache")
def cache_group() -> None:
    """The whole cache (envs, git mirrors, locks, markers, spool, conda packages): list, prune."""


@cache_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def cache_list(as_json: bool) -> None:
    """Show every folder under the cache root: what it holds, its size, what prune removes."""
    from projectrun import cachedir, cachegc

    rows = cachegc.list_folders()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"cache root: {cachedir.root()}", err=True)
    output.table(["folder", "entries", "size", "prune removes"],
                 [[r["folder"], str(r["entries"]), output.size(r["size"]), r["prune"].replace("`", "")]
                  for r in rows])


@cache_group.command("prune")
@click.option("--older-than", default="30d", show_default=True,
              help="Remove envs, mirrors, markers and channel metadata unused this long.")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as a JSON list.")
def cache_prune(older_than: str, dry_run: bool, as_json: bool) -> None:
    """Remove from every cache folder what is stale and unused (see `cache list`); never what a
    running launch, build or fetch uses, nor a spooled run not recorded yet."""
    from projectrun import cachegc

    removed = cachegc.prune(output.older_than(older_than), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "path": str(r.path)} for r in removed], indent=2))
    verb = "would remove" if dry_run else "removed"
    for r in removed if not as_json else []:
        click.echo(f"{verb} {r.what} ({r.path}, {output.size(r.size)})", err=True)
    click.echo(f"{verb} {len(removed)} item(s), {output.size(sum(r.size for r in removed))}", err=True)
