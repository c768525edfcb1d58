"""Many launches at once on one sqlite store and one env cache, and pruning under running launches.

Real processes, a real uv build from PyPI, a real sqlite store: what a CI machine running a
sweep of separate launches does, or a cron job pruning the cache while runs are going.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import CliRunner, child_env, client_for

pytestmark = pytest.mark.slow
PARALLEL = 16
CURRENT = ".".join(map(str, sys.version_info[:2]))


def six_project(root: Path, command: str) -> Path:
    root.mkdir(parents=True)
    (root / "MLproject").write_text(textwrap.dedent(f"""\
        name: six
        python_env: python_env.yaml
        entry_points:
          main:
            parameters:
              word: {{type: string, default: hi}}
              go: {{type: string, default: ""}}
            command: "{command}"
        """))
    (root / "python_env.yaml").write_text(f'python: "{CURRENT}"\ndependencies: [six==1.17.0]\n')
    return root


def launch(project: Path, workdir: Path, home: Path, *params: str) -> subprocess.Popen[str]:
    args = [a for p in params for a in ("-P", p)]
    return subprocess.Popen([sys.executable, "-m", "projectrun", str(project), *args], cwd=workdir,
                            env=child_env({"PROJECTRUN_HOME": str(home)}), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def runs(workdir: Path) -> list:  # type: ignore[type-arg]
    return client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["0"], max_results=1000)


def sweep(project: Path, workdir: Path, home: Path, name: str) -> subprocess.Popen[str]:
    """A sweep of 2 trials (-j 2) of ``project``, into the Default experiment like the launches."""
    file = workdir / f"{name}.yaml"
    file.write_text(f"project: {project}\nexperiment: Default\nname: {name}\n"
                    f"parameters:\n  word: [{name}-0, {name}-1]\nparallel: 2\n")
    return subprocess.Popen([sys.executable, "-m", "projectrun", "sweep", str(file)], cwd=workdir,
                            env=child_env({"PROJECTRUN_HOME": str(home)}), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sixteen_launches_and_two_sweeps_at_once_record_every_run_and_build_once(
        workdir: Path, tmp_path: Path) -> None:
    project = six_project(tmp_path / "p", "python -c 'import six, sys; print(six.__version__, "
                                          "sys.argv[1])' {word}")
    home = tmp_path / "home"
    procs = [launch(project, workdir, home, f"word=w{i}") for i in range(PARALLEL)]
    sweeps = [sweep(project, workdir, home, f"s{n}") for n in range(2)]
    results = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    swept = [(p.wait(timeout=900), *p.communicate()) for p in sweeps]
    assert [code for code, _, _ in results] == [0] * PARALLEL, [e[-2000:] for _, _, e in results if e]
    assert [code for code, _, _ in swept] == [0, 0], [e[-2000:] for _, _, e in swept]
    assert sorted(out.split()[1] for _, out, _ in results) == sorted(f"w{i}" for i in range(PARALLEL))
    assert all(out.split()[0] == "1.17.0" for _, out, _ in results)
    assert sum("building python env" in err for _, _, err in results + swept) == 1
    recorded = runs(workdir)
    parents = [r for r in recorded if "mlflow.parentRunId" not in r.data.tags and "word" not in r.data.params]
    trials = [r for r in recorded if "mlflow.parentRunId" in r.data.tags]
    assert len(recorded) == PARALLEL + 2 + 4 and len(parents) == 2 and len(trials) == 4
    assert all(r.info.status == "FINISHED" for r in recorded)
    words = sorted(r.data.params["word"] for r in recorded if "word" in r.data.params)
    assert words == sorted([f"w{i}" for i in range(PARALLEL)] + [f"s{n}-{i}" for n in range(2) for i in range(2)])
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {p.info.run_id for p in parents}
    assert len({r.data.tags["projectrun.env.key"] for r in recorded if "word" in r.data.params}) == 1
    listed = subprocess.run([sys.executable, "-m", "projectrun", "envs", "list", "--json"],
                            env=child_env({"PROJECTRUN_HOME": str(home)}), capture_output=True,
                            text=True, timeout=60, check=True)
    assert len(json.loads(listed.stdout)) == 1


def test_prune_and_remove_leave_an_env_in_use_alone(cli: CliRunner, workdir: Path,
                                                    tmp_path: Path) -> None:
    """Before, prune skipped only envs being built: `prune --older-than 0s` deleted the venv of a
    running launch under it. Now every launch holds the env's users lock while it runs."""
    waiting = ("python -c 'import os, sys, time; open(sys.argv[1] + \\\".up\\\", \\\"w\\\").close(); "
               "[time.sleep(0.05) for _ in iter(lambda: os.path.exists(sys.argv[1]), True)]; "
               "import six; print(six.__version__)' {go}")
    project = six_project(tmp_path / "p", waiting)
    home = tmp_path / "home"
    env = {"PROJECTRUN_HOME": str(home)}
    go = tmp_path / "go"
    running = launch(project, workdir, home, f"go={go}")
    deadline = time.monotonic() + 300
    while not Path(f"{go}.up").exists():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.05)

    pruned = cli("envs", "prune", "--older-than", "0s", env=env)
    assert pruned.returncode == 0 and "removed 0 environment(s)" in pruned.stderr, pruned.stderr
    key = json.loads(cli("envs", "list", "--json", env=env).stdout)[0]["key"]
    removed = cli("envs", "remove", key, env=env)
    assert removed.returncode == 2
    assert "a running launch is using it" in removed.stderr

    go.touch()
    out, err = running.communicate(timeout=300)
    assert running.returncode == 0, err
    assert out.strip() == "1.17.0"  # six imported after the prune: the env was still there
    assert runs(workdir)[0].info.status == "FINISHED"
    pruned = cli("envs", "prune", "--older-than", "0s", env=env)
    assert "removed 1 environment(s)" in pruned.stderr  # idle now: pruned


def test_prune_looping_while_launches_run(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    """Prune as often as it can while launches start and end: an env may be deleted between
    launches (and rebuilt), never under one."""
    project = six_project(tmp_path / "p", "python -c 'import six; print(six.__version__)'")
    home = tmp_path / "home"
    env = child_env({"PROJECTRUN_HOME": str(home)})
    assert cli("envs", "build", str(project), env={"PROJECTRUN_HOME": str(home)}).returncode == 0
    procs = [launch(project, workdir, home, f"word=w{i}") for i in range(4)]
    prunes = 0
    while any(p.poll() is None for p in procs) and prunes < 200:
        subprocess.run([sys.executable, "-m", "projectrun", "envs", "prune", "--older-than", "0s"],
                       env=env, capture_output=True, timeout=120, check=True)
        prunes += 1
    assert prunes > 0, "every launch ended before the first prune: nothing raced"
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0] * 4, [e[-2000:] for _, _, e in results]
    assert all(out.strip() == "1.17.0" for _, out, _ in results)
    assert sorted(r.info.status for r in runs(workdir)) == ["FINISHED"] * 4
