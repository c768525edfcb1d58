"""python_env projects through the CLI: default manager, cache reuse, parallel launches, envs commands."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURES, CliRunner, child_env, client_for


def _project(tmp: Path) -> Path:
    project = tmp / "pyenv"
    shutil.copytree(FIXTURES / "pyenv", project)
    return project


def _runs(workdir: Path) -> list:  # type: ignore[type-arg]
    return client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["0"])


def test_python_env_builds_once_then_reuses(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home")}
    project = _project(tmp_path)
    first = cli(str(project), env=home)
    assert first.returncode == 0, first.stderr
    assert "building python env" in first.stderr
    prefix = first.stdout.split()[2]
    assert prefix.startswith(str(tmp_path / "home")) and "six 1.16.0" in first.stdout
    second = cli(str(project), "-P", "word=again", env=home)
    assert second.returncode == 0, second.stderr
    assert "python env" not in second.stderr and "install" not in second.stderr  # quiet when cached
    assert second.stdout.split()[2] == prefix
    runs = _runs(workdir)
    assert {r.data.tags["mlflow.project.env"] for r in runs} == {"virtualenv"}
    assert len({r.data.tags["projectrun.env.key"] for r in runs}) == 1
    listed = json.loads(cli("envs", "list", "--json", env=home).stdout)
    assert [(e["kind"], e["project"]) for e in listed] == [("virtualenv", str(project))]
    assert listed[0]["key"] == runs[0].data.tags["projectrun.env.key"]

    # editing requirements.txt gives a new env; the old one stays until pruned
    (project / "requirements.txt").write_text("six==1.17.0\n")
    third = cli(str(project), env=home)
    assert third.returncode == 0, third.stderr
    assert "building python env" in third.stderr and "six 1.17.0" in third.stdout
    assert len(json.loads(cli("envs", "list", "--json", env=home).stdout)) == 2

    dry = cli("envs", "prune", "--older-than", "0s", "--dry-run", env=home)
    assert "would remove 2 environment(s)" in dry.stderr
    assert len(json.loads(cli("envs", "list", "--json", env=home).stdout)) == 2
    key = listed[0]["key"]
    assert cli("envs", "remove", key[:6], env=home).returncode == 0
    assert len(json.loads(cli("envs", "list", "--json", env=home).stdout)) == 1
    assert cli("envs", "prune", "--older-than", "0s", env=home).returncode == 0
    assert json.loads(cli("envs", "list", "--json", env=home).stdout) == []


def test_uv_manager_and_prebuild(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home")}
    project = _project(tmp_path)
    built = cli("envs", "build", str(project), "--env-manager", "uv", env=home)
    assert built.returncode == 0, built.stderr
    assert "uv env" in built.stderr and "ready" in built.stderr
    res = cli(str(project), "--env-manager", "uv", env=home)
    assert res.returncode == 0, res.stderr
    assert "building" not in res.stderr
    assert _runs(workdir)[0].data.tags["mlflow.project.env"] == "uv"


def test_four_parallel_launches_build_once(workdir: Path, tmp_path: Path) -> None:
    project = _project(tmp_path)
    env = child_env({"PROJECTRUN_HOME": str(tmp_path / "home")})
    procs = [subprocess.Popen([sys.executable, "-m", "projectrun", str(project), "-P", f"word=w{i}"],
                              cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for i in range(4)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    builds = sum("building python env" in err for _, _, err in results)
    assert builds == 1
    runs = _runs(workdir)
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4
    assert len({r.data.tags["projectrun.env.key"] for r in runs}) == 1


def test_env_build_failure_fails_the_run(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "requirements.txt").write_text("this-package-does-not-exist-projectrun==0.0.1\n")
    res = cli(str(project), env={"PROJECTRUN_HOME": str(tmp_path / "home")})
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("projectrun: error: installing dependencies failed")
    (run,) = _runs(workdir)
    assert run.info.status == "FAILED"  # MLflow leaves it RUNNING
    log = client_for(f"sqlite:///{workdir / 'mlflow.db'}").download_artifacts(
        run.info.run_id, "projectrun/output.log", str(tmp_path))
    assert "installing dependencies failed" in Path(log).read_text()
