"""End-to-end launches: real child processes recorded in a real sqlite store or mlflow server."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner, child_env, client_for, only_run


def sqlite_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def test_scip_demo_records_params_tags_metrics_and_log(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "scip"), "-P", "l1_ratio=0.003", "--experiment-name", "scip",
              "--env-manager", "local")
    assert res.returncode == 0, res.stderr
    assert "n_bins=3" in res.stdout  # output streamed live to the user
    run = only_run(sqlite_uri(workdir), "scip")
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "0.5", "l1_ratio": "0.003", "model": "model.mps"}
    assert run.data.metrics["n_bins"] == 3 and run.data.metrics["n_conss"] == 3
    assert run.data.metrics["n_ints"] == 1
    tags = run.data.tags
    assert tags["mlflow.source.type"] == "PROJECT"
    assert tags["mlflow.project.entryPoint"] == "main"
    assert tags["mlflow.project.backend"] == "local"
    assert "mlflow.project.env" not in tags  # MLflow writes no env tag for --env-manager local
    assert tags["mlflow.user"] == getpass.getuser()
    assert tags["mlflow.runName"] == run.info.run_name and run.info.run_name
    # fixtures/ lives in this repo's git work tree: MLflow's file://<top>#<subdir> form
    if (FIXTURES.parent / ".git").exists():
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=FIXTURES / "scip", capture_output=True,
                                  text=True, check=True).stdout.strip()

        assert tags["mlflow.source.name"] == f"file://{FIXTURES.parent}#fixtures/scip"
        assert tags["mlflow.source.git.commit"] == git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        assert tags["mlflow.source.git.dirty"] == ("true" if dirty else "false")
    client = client_for(sqlite_uri(workdir))
    log = Path(client.download_artifacts(run.info.run_id, "projectrun/output.log", str(workdir)))
    assert "objective=" in log.read_text()


def test_run_subcommand_is_the_same_command(cli: CliRunner, workdir: Path) -> None:
    res = cli("run", str(FIXTURES / "logger"), "--run-name", "named")
    assert res.returncode == 0, res.stderr
    run = only_run(sqlite_uri(workdir))
    assert run.info.run_name == "named"
    assert run.data.metrics["value"] == 1.5


def test_relative_sqlite_uri_reaches_child_as_the_same_store(cli: CliRunner, workdir: Path) -> None:
    """mlflow run 3.17 fails here: the child opens ./mlflow.db relative to the project dir."""
    project = workdir / "sub" / "proj"
    shutil.copytree(FIXTURES / "logger", project)
    res = cli("sub/proj", "-P", "value=2.5", env={"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"})
    assert res.returncode == 0, res.stderr
    assert not (project / "mlflow.db").exists()
    run = only_run(sqlite_uri(workdir))
    assert run.info.status == "FINISHED"
    assert run.data.metrics["value"] == 2.5


def test_string_param_logged_as_given_not_shell_quoted(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "logger"), "-P", "label=a b", "-P", "extra=x y")
    assert res.returncode == 0, res.stderr
    run = only_run(sqlite_uri(workdir))
    assert run.data.params["label"] == "a b"  # MLflow logs "'a b'"
    assert run.data.params["extra"] == "x y"
    assert run.data.tags["label_seen"] == "a b"  # the child got one argument, unquoted


def test_child_gets_run_id_uri_and_experiment(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "logger"), "--experiment-name", "exp-a")
    assert res.returncode == 0, res.stderr
    run = only_run(sqlite_uri(workdir), "exp-a")
    assert run.data.tags["child_experiment_id"] == run.info.experiment_id
    assert f"logged to {run.info.run_id}" in res.stdout


def test_experiment_from_env_vars(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "logger"), env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    assert res.returncode == 0, res.stderr
    assert only_run(sqlite_uri(workdir), "from-env").info.status == "FINISHED"
    exp_id = client_for(sqlite_uri(workdir)).get_experiment_by_name("from-env").experiment_id
    res = cli(str(FIXTURES / "logger"), env={"MLFLOW_EXPERIMENT_ID": exp_id})
    assert res.returncode == 0, res.stderr
    assert len(client_for(sqlite_uri(workdir)).search_runs([exp_id])) == 2


def test_failed_run_is_failed_and_keeps_its_output(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "fail"), "-P", "code=7")
    assert res.returncode == 1
    run = only_run(sqlite_uri(workdir))
    assert run.info.status == "FAILED"
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("projectrun: error: run ") and run.info.run_id in last and "code 7" in last
    assert last.endswith("its output is in the run's artifacts at projectrun/output.log")
    assert "Traceback" not in res.stderr
    log = client_for(sqlite_uri(workdir)).download_artifacts(run.info.run_id, "projectrun/output.log", str(workdir))
    assert "about to fail" in Path(log).read_text()


def test_dry_run_records_nothing(cli: CliRunner, workdir: Path) -> None:
    res = cli(str(FIXTURES / "params"), "-P", "name=x y", "-P", "more=1", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["command"] == (
        f"python show_args.py --name 'x y' --alpha 0.1 --epochs 10 --label 'hello world' "
        f"--data {FIXTURES / 'params' / 'data.csv'} --source s3://bucket/key --more 1")
    assert doc["cwd"] == str(FIXTURES / "params")
    assert doc["entry_point"] == "main" and doc["env_manager"] == "local"
    assert doc["params"]["name"] == "x y" and doc["params"]["more"] == "1"
    assert not (workdir / "mlflow.db").exists()


def test_child_receives_exactly_the_quoted_arguments(cli: CliRunner, workdir: Path) -> None:
    weird = "it's $HOME `x` \"q\""
    res = cli(str(FIXTURES / "params"), "-P", f"name={weird}", "-P", "epochs=3")
    assert res.returncode == 0, res.stderr
    args = res.stdout.splitlines()
    assert args[args.index("--name") + 1] == weird
    assert args[args.index("--epochs") + 1] == "3"


def test_script_entry_points_run_as_mlflow_runs_them(cli: CliRunner, workdir: Path) -> None:
    project = workdir / "scripts"
    project.mkdir()
    (project / "job.py").write_text("import sys; print('py', sys.argv[1:])\n")
    (project / "job.sh").write_text("echo sh \"$@\"\n")
    res = cli(str(project), "-e", "job.py", "-P", "lr=0.1")
    assert res.returncode == 0, res.stderr
    assert "py ['--lr', '0.1']" in res.stdout
    res = cli(str(project), "-e", "job.sh", "-P", "n=2", env={"SHELL": "/bin/bash"})
    assert res.returncode == 0, res.stderr
    assert "sh --n 2" in res.stdout


def test_server_store(cli: CliRunner, mlflow_server: str) -> None:
    res = cli(str(FIXTURES / "logger"), "-P", "value=4", "--experiment-name", "on-server",
              env={"MLFLOW_TRACKING_URI": mlflow_server})
    assert res.returncode == 0, res.stderr
    run = only_run(mlflow_server, "on-server")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["value"] == 4.0
    assert run.data.params["value"] == "4"
    names = [a.path for a in client_for(mlflow_server).list_artifacts(run.info.run_id, "projectrun")]
    assert names == ["projectrun/output.log"]


def _wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)
    return path.read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_process_group_and_marks_killed(workdir: Path, sig: int, code: int) -> None:
    marker = workdir / "pid.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "projectrun", str(FIXTURES / "sleep"), "-P", f"marker={marker}"],
        cwd=workdir, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    child, pgid, grandchild = (int(x) for x in _wait_for(marker).split())
    assert pgid == child != proc.pid  # the entry point leads its own group
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert not _alive(child) and not _alive(grandchild)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    run = only_run(sqlite_uri(workdir))
    assert run.info.status == "KILLED"
    assert "KILLED" in err.splitlines()[-1]
    assert "projectrun/" not in err  # the child's own KeyboardInterrupt may show; ours never


def test_run_id_continues_an_existing_run(cli: CliRunner, workdir: Path) -> None:
    client = client_for(sqlite_uri(workdir))
    exp = client.create_experiment("pre")
    existing = client.create_run(exp).info.run_id
    res = cli(str(FIXTURES / "logger"), "--run-id", existing, "-P", "value=9")
    assert res.returncode == 0, res.stderr
    run = client.get_run(existing)
    assert run.info.status == "FINISHED" and run.data.metrics["value"] == 9.0
    assert len(client.search_runs([exp])) == 1


def test_explicit_value_equal_to_the_declared_default_is_taken(cli: CliRunner, workdir: Path,
                                                                tmp_path: Path) -> None:
    """``type: int, default: None`` is common in real projects; MLflow takes ``-P n=None``."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: p\nentry_points:\n  main:\n    parameters:\n      n: {type: int, default: None}\n"
        "    command: python -c 'import sys; print(sys.argv[1])' {n}\n")
    res = cli(str(project), "-P", "n=None")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"
    assert only_run(sqlite_uri(workdir), "Default").data.params == {"n": "None"}
    other = cli(str(project), "-P", "n=none")  # not the default: checked as an int
    assert other.returncode == 2 and "'n' is an int parameter" in other.stderr


def test_downloads_to_storage_dir_and_no_temp_dir_is_left(cli: CliRunner, workdir: Path,
                                                          tmp_path: Path) -> None:
    """A remote ``path`` param is downloaded into --storage-dir; before, the temp dir made there
    for it stayed after the run."""
    client = client_for(sqlite_uri(workdir))
    source_run = client.create_run("0").info.run_id
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n1,2\n")
    client.log_artifact(source_run, str(data))
    client.set_terminated(source_run)
    storage, tmp = tmp_path / "storage", tmp_path / "tmp"
    tmp.mkdir()
    res = cli(str(FIXTURES / "params"), "-P", "name=x", "-P", f"data=runs:/{source_run}/rows.csv",
              "--storage-dir", str(storage), env={"TMPDIR": str(tmp)})
    assert res.returncode == 0, res.stderr
    argv = res.stdout.splitlines()
    downloaded = Path(argv[argv.index("--data") + 1])
    assert storage in downloaded.parents and downloaded.name == "rows.csv"
    assert list(storage.iterdir()) == [] and list(tmp.iterdir()) == []  # all removed
