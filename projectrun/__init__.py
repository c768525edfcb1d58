"""projectrun: run MLflow Projects with validated specs, cached environments and honest run records.

Python API::

    import projectrun
    project = projectrun.load_project("fixtures/scip")
    result = projectrun.run("fixtures/scip", parameters={"l1_ratio": "0.003"}, experiment_name="scip")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_project", "run", "run_sweep"]

if TYPE_CHECKING:
    from projectrun.runner import RunResult
    from projectrun.spec import Project
    from projectrun.sweep import SweepResult


def load_project(directory: str) -> Project:
    """Load and validate the MLproject in ``directory`` (raises SpecError)."""
    from projectrun.spec import load_project as _load

    return _load(directory)


def run(uri: str, entry_point: str = "main", parameters: dict[str, Any] | None = None,
        **options: Any) -> RunResult:
    """Launch one run, as ``projectrun URI`` does; options are LaunchRequest fields."""
    from projectrun import report
    from projectrun.runner import LaunchRequest, launch

    params = {k: str(v) for k, v in (parameters or {}).items()}
    return launch(LaunchRequest(uri=uri, entry_point=entry_point, parameters=params, **options),
                  report.stderr)


def run_sweep(path: str, **options: Any) -> SweepResult:
    """Run a sweep file, as ``projectrun sweep PATH`` does; options are SweepOptions fields
    (jobs, resume, allow_changed, experiment_name, experiment_id, env_manager, offline, verbose,
    backend="ray", address="host:6379")."""
    import os

    from projectrun import report
    from projectrun.sweep import SweepOptions
    from projectrun.sweep import run_sweep as _run
    from projectrun.sweepplan import load_sweep

    options.setdefault("sweep_file", os.path.abspath(path))
    return _run(load_sweep(path), SweepOptions(**options), report.quiet)
