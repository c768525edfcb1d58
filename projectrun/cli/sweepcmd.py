"""``projectrun sweep`` (and ``projectrun run --grid``): plan, run, print the trials."""
from __future__ import annotations

from typing import Any

import click

from projectrun import report
from projectrun.cli import output
from projectrun.envs import MANAGERS as ENV_MANAGERS
from projectrun.errors import RunFailed as RunFailedError


@click.command("sweep")
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
    run_sweep(spec, dry_run=dry_run, as_json=as_json, as_csv=as_csv, jobs=jobs,
           resume=resume_run or resume, allow_changed=allow_changed, experiment_name=experiment_name,
           experiment_id=experiment_id, env_manager=env_manager, offline=offline,
           sweep_file=os.path.abspath(sweep_file), verbose=verbose, backend=backend, address=address)


def run_sweep(spec: Any, *, dry_run: bool, as_json: bool, as_csv: bool, jobs: int | None,
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
                                 verbose=verbose, progress=output.progress(), backend=backend,
                                 address=address)
    try:
        result = sweep.run_sweep(spec, options, report.stderr)
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
    output.table(["#", "key", *names], [[str(t.index), t.key, *(t.params.get(n, "") for n in names)]
                                        for t in plan.trials])
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"{len(plan.trials)} trial(s) planned", err=True)


def _print_results(result: Any) -> None:
    names = list(dict.fromkeys(k for r in result.results for k in r.trial.params))
    rows = [[str(r.trial.index), *(r.trial.params.get(n, "") for n in names), r.status,
             "" if r.objective is None else f"{r.objective:g}", r.run_id or ""] for r in result.results]
    output.table(["#", *names, "status", "objective", "run"], rows)
    if result.best is not None:
        click.echo(f"best: trial {result.best.trial.index} (run {result.best.run_id}) "
                   f"objective={result.best.objective:g}", err=True)
    click.echo(f"sweep {result.parent_run_id} {result.status}", err=True)


