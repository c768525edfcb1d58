"""``projectrun run`` (also ``projectrun URI``) and ``projectrun validate``."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from projectrun import redact, report
from projectrun.cli import output
from projectrun.cli.sweepcmd import run_sweep
from projectrun.envs import MANAGERS as ENV_MANAGERS
from projectrun.errors import EXIT_USAGE, SpecError


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


@click.command("run")
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
        run_sweep(spec, dry_run=dry_run, as_json=as_json, as_csv=False, jobs=jobs, resume=False,
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
        the_plan = runner.plan(request, report.stderr)
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
    runner.launch(request, report.stderr, output.progress())


@click.command("validate")
@click.argument("uri", default=".")
@click.option("-v", "--version", "version", help="Git branch, tag or commit (git URIs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON document.")
def validate_cmd(uri: str, version: str | None, as_json: bool) -> None:
    """Check an MLproject (and its env file) and show what it offers; builds and records nothing."""
    from projectrun import envs, sources, spec

    source = sources.resolve(uri, version, report=report.stderr)
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

