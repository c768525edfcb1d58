"""Command line: the only place that prints for humans and maps errors to exit codes."""
from __future__ import annotations

import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from projectrun import __version__, redact, settings
from projectrun.envs import MANAGERS as ENV_MANAGERS
from projectrun.errors import EXIT_USAGE, ProjectRunError, SpecError
from projectrun.errors import RunFailed as RunFailedError
from projectrun.interrupts import Terminated


class DefaultRunGroup(click.Group):
    """``projectrun URI ...`` means ``projectrun run URI ...``: the first word that is not a
    subcommand or an option is taken as the project URI."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if arg == "--debug":  # the only option of the group itself that can precede
                continue
            if arg in ("--help", "-h", "--version") or arg in self.commands:
                break
            args = [*args[:i], "run", *args[i:]]  # a URI, or run's options before the URI
            break
        return super().parse_args(ctx, args)


@click.group(cls=DefaultRunGroup, context_settings={"help_option_names": ["-h", "--help"]},
             invoke_without_command=False)
@click.version_option(__version__, prog_name="projectrun")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run MLflow Projects: validated, cached, recorded.

    \b
      projectrun . -P alpha=0.5 --experiment-name demo    run the main entry point
      projectrun validate .                               check an MLproject
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _docker_args(items: Sequence[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name:
            raise click.UsageError(f"invalid -A value '{item}': use -A name or -A name=value")
        if name in out:
            raise click.UsageError(f"-A {name} given twice; give it once")
        out[name] = value if sep else True
    return out


@cli.command("run")
@click.argument("uri")
@click.option("-e", "--entry-point", default="main", show_default=True, help="Entry point name or script path.")
@click.option("-v", "--version", "version", help="Git branch, tag or commit (git URIs).")
@click.option("-P", "--param-list", "param_list", multiple=True, metavar="NAME=VALUE",
              help="A parameter; repeat for more. The value may contain '='.")
@click.option("-A", "--docker-args", "docker_args", multiple=True, metavar="NAME[=VALUE]",
              help="Extra `docker run` argument (docker_env projects).")
@click.option("--experiment-name", help="Experiment to record in; created if missing. [env: MLFLOW_EXPERIMENT_NAME]")
@click.option("--experiment-id", help="Experiment id to record in. [env: MLFLOW_EXPERIMENT_ID]")
@click.option("--run-name", help="Name of the MLflow run.")
@click.option("--run-id", help="Continue this existing run instead of creating one.")
@click.option("--env-manager", type=click.Choice(ENV_MANAGERS), help="How to build the environment "
              "(default: from the project, as `mlflow run` chooses).")
@click.option("-b", "--backend", default="local", show_default=True, help="Only 'local' is supported.")
@click.option("-c", "--backend-config", help="Accepted for compatibility; unused by the local backend.")
@click.option("--storage-dir", envvar="MLFLOW_TMP_DIR", help="Where remote `path` params are "
              "downloaded (a new temp dir inside it per run). [env: MLFLOW_TMP_DIR]")
@click.option("--build-image", is_flag=True, help="Docker: build an image with the project code.")
@click.option("--dry-run", is_flag=True, help="Print the resolved command; build and record nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print a JSON document.")
@click.option("--offline", is_flag=True, help="Git URIs: run from the clone cache without fetching.")
@click.option("--grid", multiple=True, metavar="NAME=V1,V2,...",
              help="Sweep a parameter over values (a quick grid sweep; write a literal comma as \\,).")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="With --grid: trials run at a time.")
@click.option("--verbose", is_flag=True, help="Say more about environments and the command run.")
def run_cmd(uri: str, entry_point: str, version: str | None, param_list: tuple[str, ...],
            docker_args: tuple[str, ...], experiment_name: str | None, experiment_id: str | None,
            run_name: str | None, run_id: str | None, env_manager: str | None, backend: str, backend_config: str | None,
            storage_dir: str | None, build_image: bool, dry_run: bool, as_json: bool,
            offline: bool, grid: tuple[str, ...], jobs: int | None, verbose: bool) -> None:
    """Run an entry point of the project at URI and record it as an MLflow run."""
    from projectrun import params, runner

    if grid:
        from projectrun import sweepplan

        if run_id or run_name:
            raise click.UsageError("--grid starts a sweep; --run-id and --run-name do not apply")
        spec = sweepplan.spec_from_grid(
            uri, entry_point, params.parse_assignments(param_list, "-P"),
            sweepplan.parse_grid_flags(grid), version=version, env_manager=env_manager)
        _sweep(spec, dry_run=dry_run, as_json=as_json, as_csv=False, jobs=jobs, resume=False,
               allow_changed=False, experiment_name=experiment_name, experiment_id=experiment_id,
               env_manager=env_manager, offline=offline, sweep_file=None, verbose=verbose)
        return
    if jobs is not None:
        raise click.UsageError("-j/--jobs goes with --grid (or `projectrun sweep`)")

    if backend != "local":
        raise click.UsageError(f"--backend {backend}: only 'local' is supported by projectrun")
    if as_json and not dry_run:
        raise click.UsageError("--json goes with --dry-run")
    if experiment_name and experiment_id:
        raise click.UsageError("give only one of --experiment-name and --experiment-id")
    if run_id and (experiment_name or experiment_id):
        raise click.UsageError("--run-id continues a run in its own experiment; drop the experiment flag")
    request = runner.LaunchRequest(
        uri=uri, entry_point=entry_point, version=version,
        parameters=params.parse_assignments(param_list, "-P"),
        experiment_name=experiment_name, experiment_id=experiment_id, run_name=run_name,
        run_id=run_id, storage_dir=storage_dir,
        env_manager=env_manager, docker_args=_docker_args(docker_args), build_image=build_image,
        verbose=verbose, offline=offline,
    )
    if dry_run:
        the_plan = runner.plan(request)
        the_plan.source.close()
        doc = the_plan.as_dict()
        if as_json:
            click.echo(redact.text(json.dumps(doc, indent=2)))
        else:
            click.echo(redact.text(f"command:     {doc['command']}"))
            click.echo(f"cwd:         {doc['cwd']}")
            click.echo(f"entry point: {doc['entry_point']}")
            click.echo(f"env manager: {doc['env_manager']}")
            for k, v in doc["params"].items():
                click.echo(redact.text(f"param:       {k}={v}"))
        return
    runner.launch(request, _report, _progress())


@cli.command("validate")
@click.argument("uri", default=".")
@click.option("-v", "--version", "version", help="Git branch, tag or commit (git URIs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
def validate_cmd(uri: str, version: str | None, as_json: bool) -> None:
    """Check an MLproject (and its env file) and show what it offers; builds and records nothing."""
    from projectrun import envs, sources, spec

    source = sources.resolve(uri, version, report=_report)
    try:
        project = spec.load_project(source.directory)
        if project.env_type in (spec.PYTHON_ENV, spec.CONDA_ENV):  # the env file, with lines
            envs.get_kind(envs.select_manager(project, None)).validate(project)
    except SpecError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "errors": exc.problems, "warnings": []}, indent=2))
            sys.exit(EXIT_USAGE)
        raise
    finally:
        source.close()
    problems = [p for ps in project.entry_point_problems.values() for p in ps]
    doc = _project_doc(project)
    if as_json:
        click.echo(json.dumps({"valid": not problems, "errors": problems,
                               "warnings": list(project.warnings), "project": doc}, indent=2))
    else:
        _print_project(doc)
        for w in project.warnings:
            click.echo(f"warning: {w}", err=True)
        for p in problems:
            click.echo(p, err=True)
    if problems:
        sys.exit(EXIT_USAGE)


@cli.command("sweep")
@click.argument("sweep_file", type=click.Path(dir_okay=False))
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Trials run at a time (default: the file's `parallel`).")
@click.option("--dry-run", is_flag=True, help="Print the planned trials; run and record nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="With --dry-run: the plan as CSV.")
@click.option("--resume", is_flag=True, help="Continue the latest sweep of this file: skip FINISHED trials.")
@click.option("--resume-run", metavar="RUN_ID", help="Continue the sweep with this parent run id.")
@click.option("--allow-changed", is_flag=True, help="With --resume: continue even if the file changed.")
@click.option("--experiment-name", help="Experiment to record in (overrides the file's `experiment`).")
@click.option("--experiment-id", help="Experiment id to record in.")
@click.option("--env-manager", type=click.Choice(ENV_MANAGERS), help="Overrides the file's env_manager.")
@click.option("--offline", is_flag=True, help="Git projects: use the clone cache without fetching.")
@click.option("--backend", type=click.Choice(["local", "ray"]),
              help="Where trials run (overrides the file's `backend`): this machine, or a Ray cluster.")
@click.option("--address", metavar="ADDR",
              help="Ray cluster to connect to (host:port, auto, ray://host:10001); default RAY_ADDRESS.")
@click.option("--verbose", is_flag=True)
def sweep_cmd(sweep_file: str, jobs: int | None, dry_run: bool, as_json: bool, as_csv: bool,
              resume: bool, resume_run: str | None, allow_changed: bool, experiment_name: str | None,
              experiment_id: str | None, env_manager: str | None, offline: bool,
              backend: str | None, address: str | None, verbose: bool) -> None:
    """Run a matrix of trials from a sweep file under one MLflow parent run."""
    import os

    from projectrun import sweepplan

    spec = sweepplan.load_sweep(sweep_file)
    _sweep(spec, dry_run=dry_run, as_json=as_json, as_csv=as_csv, jobs=jobs,
           resume=resume_run or resume, allow_changed=allow_changed, experiment_name=experiment_name,
           experiment_id=experiment_id, env_manager=env_manager, offline=offline,
           sweep_file=os.path.abspath(sweep_file), verbose=verbose, backend=backend, address=address)


def _sweep(spec: Any, *, dry_run: bool, as_json: bool, as_csv: bool, jobs: int | None,
           resume: bool | str, allow_changed: bool, experiment_name: str | None,
           experiment_id: str | None, env_manager: str | None, offline: bool,
           sweep_file: str | None, verbose: bool, backend: str | None = None,
           address: str | None = None) -> None:
    from projectrun import sweep, sweepplan

    if (as_json or as_csv) and not dry_run:
        raise click.UsageError("--json/--csv go with --dry-run (results are stored on the parent run)")
    if experiment_name and experiment_id:
        raise click.UsageError("give only one of --experiment-name and --experiment-id")
    if dry_run:
        plan = sweepplan.expand(spec)
        _print_plan(plan, as_json, as_csv)
        return
    options = sweep.SweepOptions(jobs=jobs, resume=resume, allow_changed=allow_changed,
                                 experiment_name=experiment_name, experiment_id=experiment_id,
                                 env_manager=env_manager, offline=offline, sweep_file=sweep_file,
                                 verbose=verbose, progress=_progress(), backend=backend,
                                 address=address)
    try:
        result = sweep.run_sweep(spec, options, _report)
    except sweep.SweepInterrupted as exc:
        _print_results(exc.result)
        raise
    _print_results(result)
    if result.status != "FINISHED":
        bad = sum(r.status in ("FAILED", "KILLED", "NOT_RUN") for r in result.results)
        raise RunFailedError(f"sweep {result.parent_run_id}: {bad} of {len(result.results)} trial(s) "
                             f"did not finish; rerun the missing ones with --resume")


def _print_plan(plan: Any, as_json: bool, as_csv: bool) -> None:
    from projectrun import sweep

    if as_json:
        click.echo(plan.to_json())
        return
    rows = [{"index": t.index, "key": t.key, **t.params} for t in plan.trials]
    if as_csv:
        click.echo(sweep.to_csv(rows), nl=False)
        return
    names = list(dict.fromkeys(k for t in plan.trials for k in t.params))
    _table(["#", "key", *names], [[str(t.index), t.key, *(t.params.get(n, "") for n in names)]
                                  for t in plan.trials])
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(plan.trials)} trial(s) planned", err=True)


def _print_results(result: Any) -> None:
    names = list(dict.fromkeys(k for r in result.results for k in r.trial.params))
    rows = [[str(r.trial.index), *(r.trial.params.get(n, "") for n in names), r.status,
             "" if r.objective is None else f"{r.objective:g}", r.run_id or ""] for r in result.results]
    _table(["#", *names, "status", "objective", "run"], rows)
    if result.best is not None:
        click.echo(f"best: trial {result.best.trial.index} (run {result.best.run_id}) "
                   f"objective={result.best.objective:g}", err=True)
    click.echo(f"sweep {result.parent_run_id} {result.status}", err=True)


def _project_doc(project: Any) -> dict[str, Any]:
    return {
        "name": project.name,
        "directory": str(project.directory),
        "file": str(project.file) if project.file else None,
        "env_type": project.env_type,
        "env_file": str(project.env_file) if project.env_file else None,
        "docker_image": project.docker_env.image if project.docker_env else None,
        "entry_points": {
            ep.name: {
                "command": ep.command,
                "parameters": {
                    p.name: {"type": p.type, "default": p.default, "required": p.required}
                    for p in ep.parameters.values()
                },
            }
            for ep in project.entry_points.values()
        },
    }


def _print_project(doc: dict[str, Any]) -> None:
    env = doc["env_type"] or "none (bare virtualenv of the current Python)"
    if doc["env_file"]:
        env += f" ({doc['env_file']})"
    if doc["docker_image"]:
        env += f" (image {doc['docker_image']})"
    click.echo(f"project: {doc['name'] or '(unnamed)'}  [{doc['file'] or 'no MLproject file'}]")
    click.echo(f"env:     {env}")
    if not doc["entry_points"]:
        click.echo("entry points: none declared (run scripts with -e file.py or -e file.sh)")
    for name, ep in doc["entry_points"].items():
        click.echo(f"entry point {name}:")
        for pname, p in ep["parameters"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            click.echo(f"    {pname:<20} {p['type']:<8} {default}")
        click.echo(f"    command: {' '.join((ep['command'] or '(none)').split())}")


def _age(seconds: float | None) -> str:
    import time

    if not seconds:
        return "-"
    delta = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit} ago"
    return "just now"


def _size(n: int | None) -> str:
    from projectrun.cache import size_text

    return size_text(n)


def _older_than(text: str) -> float:
    from projectrun.durations import parse_duration

    try:
        return parse_duration(text, allow_zero=True)
    except ValueError:
        raise click.UsageError(f"--older-than {text}: give a duration such as 30d, 12h or 90m") from None


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from projectrun import redact

    table = Table(*headers, box=None, pad_edge=False)
    for row in rows:
        table.add_row(*(redact.text(cell) for cell in row))  # a secret -P value shows as ***
    Console(soft_wrap=True).print(table)


@cli.group("envs")
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
    _table(["kind", "key", "project", "size", "last used"],
           [[e.kind, e.key + _entry_state(e), e.project or "-",
             _size(e.size), _age(e.last_used or e.created)] for e in entries])


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

    removed = cache.prune(_older_than(older_than), dry_run=dry_run)
    if not dry_run:
        from projectrun import envs

        for entry in removed:
            envs.release(entry.kind, entry.meta)
    verb = "would remove" if dry_run else "removed"
    for e in removed:
        click.echo(f"{verb} {e.kind} env {e.key} ({_size(e.size)}, last used {_age(e.last_used)})", err=True)
    total = sum(e.size or 0 for e in removed)
    click.echo(f"{verb} {len(removed)} environment(s), {_size(total)}", err=True)


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

    source = sources.resolve(uri, version, report=_report)
    try:
        project = spec.load_project(source.directory)
        manager = envs.select_manager(project, env_manager)
        ctx = envs.Context(report=_report, verbose=verbose, progress=_progress())
        prepared = envs.get_kind(manager).prepare(project, ctx)
    finally:
        source.close()
    click.echo(f"{manager} env {prepared.key or '(none needed)'} ready", err=True)


@cli.command("lock")
@click.argument("uri", default=".")
@click.option("--platform", "platforms", multiple=True, metavar="PLATFORM",
              help="conda platform to lock for (linux-64, osx-arm64, ...); repeat. Default: this machine's.")
@click.option("--offline", is_flag=True, help="Solve from the cached channel metadata only.")
def lock_cmd(uri: str, platforms: tuple[str, ...], offline: bool) -> None:
    """Write conda-lock.yml next to the project's conda.yaml; later runs install exactly it."""
    from projectrun import envs, sources, spec
    from projectrun.envs import condalock
    from projectrun.errors import UsageError

    source = sources.resolve(uri, None, report=_report)
    try:
        project = spec.load_project(source.directory)
        if project.env_type != spec.CONDA_ENV or project.env_file is None:
            raise UsageError(f"projectrun lock: {project.file or source.directory} has no conda_env "
                             f"(only conda environments are locked)")
        ctx = envs.Context(report=_report, offline=offline)
        path, counts = condalock.write_lock(project.env_file, platforms, ctx)
    finally:
        source.close()
    what = ", ".join(f"{n} packages for {p}" for p, n in counts.items())
    click.echo(f"projectrun: wrote {path} ({what})", err=True)


@cli.group("runs")
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

        spool.replay(tracker, _report)  # runs that ended while the store was down, first
    found = [f for exp in ids for f in reconcile.reconcile(tracker, exp, dry_run=dry_run)]
    if as_json:
        click.echo(json.dumps([f.__dict__ for f in found], indent=2))
        return
    verb = "would end" if dry_run else "ended"
    _table(["run", "experiment", "launcher", "action"],
           [[f.run_id, f.experiment_id, f.state,
             f"{verb} FAILED: {f.reason}" if f.state == "dead" else f"left RUNNING: {f.reason}"]
            for f in found])
    dead = sum(f.state == "dead" for f in found)
    click.echo(f"projectrun: {len(found)} running run(s); {verb} {dead}", err=True)


@cli.group("sources")
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
    _table(["key", "url", "size", "last fetched", "last used"],
           [[m["key"], redact.text(m["url"]), _size(m.get("size")), _age(m.get("fetched")), _age(m.get("used"))]
            for m in mirrors])


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

    removed = gitsource.prune(_older_than(older_than), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for m in removed:
        if m["what"] == "worktree":
            click.echo(f"{verb} work tree {m['path']} of a launch that died ({m.get('url')})",
                       err=True)
        elif m["what"] != "lock":
            click.echo(f"{verb} mirror of {m.get('url')} ({_size(m.get('size'))})", err=True)
    click.echo(f"{verb} {sum(m['what'] == 'mirror' for m in removed)} mirror(s)", err=True)


@cli.group("cache")
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
    _table(["folder", "entries", "size", "prune removes"],
           [[r["folder"], str(r["entries"]), _size(r["size"]), r["prune"].replace("`", "")]
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

    removed = cachegc.prune(_older_than(older_than), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps([{**r.__dict__, "path": str(r.path)} for r in removed], indent=2))
    verb = "would remove" if dry_run else "removed"
    for r in removed if not as_json else []:
        click.echo(f"{verb} {r.what} ({r.path}, {_size(r.size)})", err=True)
    click.echo(f"{verb} {len(removed)} item(s), {_size(sum(r.size for r in removed))}", err=True)


def _report(message: str) -> None:
    click.echo(f"projectrun: {redact.text(message)}", err=True)


def _progress() -> Any:
    """Build progress on stderr: a bar on a terminal, plain lines through _report otherwise."""
    from projectrun.progress import for_stream

    return for_stream(sys.stderr, _report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the exit code of ``_main``, guarded against rattler's crash at exit."""
    code = _main(argv)
    if "rattler" in sys.modules and argv is None:
        # A process that used rattler's gateway can die in interpreter finalisation (exit 134 or
        # 139 after the work was done, a few % of runs): collect its objects, flush, and leave
        # without finalising.
        import gc
        import os

        gc.collect()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI, turn every error into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    for arg in args:  # a token in a git URL is masked in every message, even a usage error
        redact.register_url(arg)
    try:
        cli.main(args=args, prog_name="projectrun", standalone_mode=False)
    except ProjectRunError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            click.echo(f"projectrun: error: {redact.text(line)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("projectrun: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"projectrun: error: {redact.text(exc.format_message())}", err=True)
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        click.echo("projectrun: interrupted", err=True)
        return 130
    except Terminated as exc:  # SIGTERM/SIGHUP outside a run (a build, a sweep's set-up)
        click.echo(f"projectrun: stopped by {signal.Signals(exc.signum).name}", err=True)
        return 128 + exc.signum
    except Exception as exc:
        if debug:
            raise
        click.echo(redact.text(f"projectrun: internal error: {type(exc).__name__}: {exc} "
                               f"(rerun with --debug for a traceback, and please report it)"),
                   err=True)
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
