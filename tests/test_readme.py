"""The README's quick start and test command, as users copy them: the quick start is run for
real (installed from this checkout into a fresh venv, the demo's python_env built), and CI runs
the test command verbatim."""
from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, child_env, client_for


def _code_block_after(heading_text: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(heading_text, 1)[1]
    return re.search(r"```\n(.+?)\n```", after, re.DOTALL).group(1).strip()  # type: ignore[union-attr]


def test_ci_runs_the_readme_test_command() -> None:
    command = _code_block_after("Run the test suite:")
    assert command.splitlines() == [command]  # one command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_ci_runs_the_readme_lint_command() -> None:
    command = _code_block_after("then the linters")
    assert command.startswith("ruff check ") and "mypy " in command
    assert command in (REPO / ".ci" / "run").read_text().splitlines()


@pytest.mark.slow
def test_quick_start_as_written(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """``pip install . && projectrun fixtures/scip ...`` from the README, then what it says
    ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows.

    The install step installs this checkout with ``uv pip install .`` into a fresh venv: the
    same wheel (hatchling, so the packaged schemas and the ``projectrun`` script are what is
    tested, not this editable checkout) and the same dependencies as ``pip install .``, in
    seconds from uv's cache instead of minutes. The demo's python_env (pyscipopt,
    mlflow-skinny) is then really built by the installed projectrun.
    """
    install, command = (c.strip() for c in _code_block_after("## Quick start").split("&&"))
    assert install == "pip install ."
    argv = shlex.split(command)
    assert argv[0] == "projectrun"

    # Both the install and the demo env would take the newest mlflow-skinny; a newer MLflow
    # writes a schema this test venv's MLflow (the newest *full* mlflow installable) may not
    # read. A user gets the same skinny everywhere; here everything is held to the test venv's
    # version with uv's own constraint variable.
    scratch = tmp_path_factory.mktemp("quick-start")
    pins = scratch / "constraints.txt"
    pins.write_text(f"mlflow-skinny=={importlib.metadata.version('mlflow-skinny')}\n")
    venv = scratch / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    installed = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "install", "--quiet", "--python",
         str(venv / "bin" / "python"), str(REPO)],
        env=child_env({"UV_CONSTRAINT": str(pins)}), capture_output=True, text=True,
        timeout=900, check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]

    (workdir / "fixtures").symlink_to(FIXTURES)  # the README's commands run from the repo root
    env = child_env({"UV_CONSTRAINT": str(pins), "VIRTUAL_ENV": str(venv),
                     "PROJECTRUN_HOME": str(tmp_path_factory.getbasetemp() / "projectrun-home")})
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"  # as in the activated venv
    assert shutil.which("projectrun", path=env["PATH"]) == str(venv / "bin" / "projectrun")
    res = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.splitlines()[-1].startswith("projectrun: run ")  # "... FINISHED"
    assert res.stderr.splitlines()[-1].endswith(" FINISHED")

    client = client_for("sqlite:///mlflow.db")  # the README's URI, from the same directory
    experiment = client.get_experiment_by_name("scip")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"  # the python_env was built
    assert run.data.params["l1_ratio"] == "0.003"
    assert run.data.metrics["n_bins"] == 3  # logged by the demo script itself
    assert [a.path for a in client.list_artifacts(run.info.run_id, "projectrun")] == [
        "projectrun/output.log"]


def test_cache_layout_lists_every_folder_prune_knows() -> None:
    """The README's table and ``projectrun cache list`` come from the same rows."""
    from projectrun.cachegc import LAYOUT

    section = (REPO / "README.md").read_text().split("### Cache layout", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{f.path}` | {f.holds} | {f.prune} |" for f in LAYOUT]
