"""Sweeps end to end: real child runs under a parent run in a real sqlite store."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner, child_env, client_for


def _store(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def _write(workdir: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = workdir / name
    path.write_text(f"project: {FIXTURES / 'sweep'}\nexperiment: sw\n" + text)
    return path


def _children(workdir: Path, parent: str) -> list:  # type: ignore[type-arg]
    client = client_for(_store(workdir))
    exp = client.get_experiment_by_name("sw").experiment_id
    return client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)


def _parent(workdir: Path):  # type: ignore[no-untyped-def]
    client = client_for(_store(workdir))
    exp = client.get_experiment_by_name("sw").experiment_id
    parents = client.search_runs([exp], "tags.`projectrun.sweep` = 'parent'",
                                 order_by=["start_time DESC"])
    return parents[0]


def test_grid_with_include_exclude_cases_runs_exactly_the_plan(cli: CliRunner,
                                                               workdir: Path) -> None:
    sweep = _write(workdir, """
parameters:
  alpha: [0.1, 0.2, 0.3]
  beta: {from: 1, to: 2, step: 1}
exclude:
  - {alpha: 0.3, beta: 2}
include:
  - {alpha: 0.5, beta: 7}
""")
    dry = cli("sweep", str(sweep), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = [t["params"] for t in json.loads(dry.stdout)["trials"]]
    assert len(planned) == 6  # 3*2 - 1 excluded + 1 included
    assert {"alpha": "0.5", "beta": "7"} in planned and {"alpha": "0.3", "beta": "2"} not in planned
    assert not (workdir / "mlflow.db").exists()  # a dry run records nothing
    res = cli("sweep", str(sweep), "-j", "2")
    assert res.returncode == 0, res.stderr
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    children = _children(workdir, parent.info.run_id)
    assert sorted((c.data.params["alpha"], c.data.params["beta"]) for c in children) == sorted(
        (p["alpha"], p["beta"]) for p in planned)
    assert all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["projectrun.trial.key"] for c in children}) == 6
    arts = [a.path for a in client_for(_store(workdir)).list_artifacts(parent.info.run_id, "sweep")]
    assert sorted(arts) == ["sweep/leaderboard.csv", "sweep/leaderboard.json", "sweep/plan.json"]


def test_cases_move_together(cli: CliRunner, workdir: Path) -> None:
    sweep = _write(workdir, """
parameters:
  alpha: [0.1, 0.2]
cases:
  - {beta: 1, sleep: 0}
  - {beta: 2, sleep: 0.1}
""")
    res = cli("sweep", str(sweep), "--dry-run", "--json")
    trials = [t["params"] for t in json.loads(res.stdout)["trials"]]
    assert [(t["alpha"], t["beta"], t["sleep"]) for t in trials] == [
        ("0.1", "1", "0"), ("0.1", "2", "0.1"), ("0.2", "1", "0"), ("0.2", "2", "0.1")]


def test_random_search_is_reproducible_with_a_seed(cli: CliRunner, workdir: Path) -> None:
    body = ("method: random\nsamples: 5\nseed: {seed}\nparameters:\n"
            "  alpha: {{uniform: [0, 1]}}\n  beta: [1, 2, 3]\n")
    first = _write(workdir, body.format(seed=7), "a.yaml")
    again = _write(workdir, body.format(seed=7), "b.yaml")
    other = _write(workdir, body.format(seed=8), "c.yaml")

    def trials(path: Path) -> list[dict[str, str]]:
        res = cli("sweep", str(path), "--dry-run", "--json")
        assert res.returncode == 0, res.stderr
        return [t["params"] for t in json.loads(res.stdout)["trials"]]

    assert trials(first) == trials(again)
    assert trials(first) != trials(other)
    assert len(trials(first)) == 5


def test_typo_in_a_parameter_name_is_refused_before_anything_runs(cli: CliRunner,
                                                                  workdir: Path) -> None:
    sweep = _write(workdir, "parameters:\n  alpah: [0.1, 0.2]\n")
    res = cli("sweep", str(sweep))
    assert res.returncode == 2
    assert "does not declare 'alpah' (did you mean 'alpha'?)" in res.stderr
    assert not (workdir / "mlflow.db").exists() or not _parent_exists(workdir)


def _parent_exists(workdir: Path) -> bool:
    client = client_for(_store(workdir))
    exp = client.get_experiment_by_name("sw")
    return exp is not None and bool(client.search_runs([exp.experiment_id]))


def test_parallel_trials_overlap(cli: CliRunner, workdir: Path) -> None:
    out = workdir / "times"
    out.mkdir()
    sweep = _write(workdir,
                   f"parameters:\n  alpha: [0.1, 0.2, 0.3, 0.4]\n  sleep: 1.5\n  out: {out}\n")
    res = cli("sweep", str(sweep), "-j", "4")
    assert res.returncode == 0, res.stderr
    spans = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(spans) == 4
    latest_start = max(s["start"] for s in spans)
    earliest_end = min(s["end"] for s in spans)
    assert latest_start < earliest_end  # all four were running at the same moment


def test_fail_fast_stops_launching_continue_runs_all(cli: CliRunner, workdir: Path) -> None:
    body = "parameters:\n  alpha: [0.1, 0.2, 0.3, 0.4]\n  fail_on: 0.2\non_failure: {mode}\n"
    res = cli("sweep", str(_write(workdir, body.format(mode="continue"), "c.yaml")), "-j", "1")
    assert res.returncode == 1
    assert "trial 1 FAILED" in res.stderr and "alpha=0.2 is the failing value" in res.stderr
    statuses = sorted(c.info.status for c in _children(workdir, _parent(workdir).info.run_id))
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    assert _parent(workdir).info.status == "FAILED"

    res = cli("sweep", str(_write(workdir, body.format(mode="fail_fast"), "f.yaml")), "-j", "1")
    assert res.returncode == 1
    assert "on_failure is fail_fast" in res.stderr
    statuses = sorted(c.info.status for c in _children(workdir, _parent(workdir).info.run_id))
    assert statuses == ["FAILED", "FINISHED"]  # trials 2 and 3 never started


def test_retries_make_new_attempts(cli: CliRunner, workdir: Path) -> None:
    body = "parameters:\n  alpha: 0.2\n  fail_on: 0.2\nretries: 2\n"
    res = cli("sweep", str(_write(workdir, body)))
    assert res.returncode == 1
    children = _children(workdir, _parent(workdir).info.run_id)
    assert sorted(c.data.tags["projectrun.trial.attempt"] for c in children) == ["1", "2", "3"]


def test_best_run_is_tagged_on_the_parent(cli: CliRunner, workdir: Path) -> None:
    sweep = _write(workdir, """
parameters:
  alpha: [0.1, 0.2, 0.4]
  log_metric: 1
objective: {metric: loss, goal: minimize}
""")
    res = cli("sweep", str(sweep), "-j", "3")
    assert res.returncode == 0, res.stderr
    parent = _parent(workdir)
    best = client_for(_store(workdir)).get_run(parent.data.tags["projectrun.sweep.best_run_id"])
    assert best.data.params["alpha"] == "0.2"
    assert parent.data.metrics["best_loss"] == pytest.approx(1.0)
    board = client_for(_store(workdir)).download_artifacts(parent.info.run_id,
                                                           "sweep/leaderboard.json", str(workdir))
    rows = json.loads(Path(board).read_text())
    assert rows[0]["param.alpha"] == "0.2" and rows[0]["run_id"] == best.info.run_id


def test_interrupted_sweep_resumes_only_missing_trials(workdir: Path, cli: CliRunner) -> None:
    out = workdir / "times"
    out.mkdir()
    sweep = _write(workdir,
                   f"parameters:\n  alpha: [0.1, 0.2, 0.3, 0.4, 0.5]\n  sleep: 1\n  out: {out}\n")
    proc = subprocess.Popen([sys.executable, "-m", "projectrun", "sweep", str(sweep), "-j", "1"],
                            cwd=workdir, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.json"))) < 2:  # two trials done
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "continue it with --resume" in err
    parent = _parent(workdir)
    assert parent.info.status == "KILLED"
    first = _children(workdir, parent.info.run_id)
    finished = {c.data.params["alpha"] for c in first if c.info.status == "FINISHED"}
    assert len(finished) >= 2
    assert all(c.info.status in ("FINISHED", "KILLED") for c in first)  # nothing left RUNNING

    res = cli("sweep", str(sweep), "--resume", "-j", "2")
    assert res.returncode == 0, res.stderr
    parent = _parent(workdir)
    assert parent.info.status == "FINISHED"
    children = _children(workdir, parent.info.run_id)
    done = [c.data.params["alpha"] for c in children if c.info.status == "FINISHED"]
    assert sorted(done) == ["0.1", "0.2", "0.3", "0.4", "0.5"]  # each trial finished exactly once

    sweep.write_text(sweep.read_text().replace("0.5]", "0.6]"))
    changed = cli("sweep", str(sweep), "--resume")
    assert changed.returncode == 2 and "the sweep file changed" in changed.stderr


def test_inline_grid_on_the_run_command(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "sweep"), "--grid", "alpha=0.1,0.2", "--grid", "beta=1,2",
              "-P", "sleep=0", "-j", "2", "--experiment-name", "sw")
    assert res.returncode == 0, res.stderr
    children = _children(workdir, _parent(workdir).info.run_id)
    assert sorted((c.data.params["alpha"], c.data.params["beta"]) for c in children) == [
        ("0.1", "1"), ("0.1", "2"), ("0.2", "1"), ("0.2", "2")]


def test_python_api(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import projectrun

    sweep = _write(workdir, "parameters:\n  alpha: [0.1, 0.2]\n")
    result = projectrun.run_sweep(str(sweep), jobs=2)
    assert result.status == "FINISHED" and len(result.results) == 2


def test_timeout_fails_a_trial_and_stops_its_processes(cli: CliRunner, workdir: Path) -> None:
    body = "parameters:\n  alpha: 0.1\n  sleep: 60\ntimeout: 1s\n"
    res = cli("sweep", str(_write(workdir, body)))
    assert res.returncode == 1
    assert "timed out" in res.stderr
    (child,) = _children(workdir, _parent(workdir).info.run_id)
    assert child.info.status == "FAILED"
