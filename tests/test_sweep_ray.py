"""Sweeps on a real Ray cluster: a head and a worker node on 127.0.0.1, started once per module.

Each node is its own `ray start` session (so a test can kill one node's whole process group),
and sets PROJECTRUN_TEST_NODE, which the trial prints: the runs' logs say which node ran them.
The node-loss test runs last because it takes the worker node away.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import BIN, FIXTURES, CliRunner, child_env, client_for, free_port

pytestmark = pytest.mark.slow

PROJECT = FIXTURES / "raytrial"
# Ray declares a node dead after missed health checks: seconds here instead of its default ~30 s.
FAST_HEALTH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
               "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    #: node name -> process group id of its `ray start` session
    groups: dict[str, int] = field(default_factory=dict)

    def start_node(self, name: str, env: dict[str, str], head: bool = False) -> None:
        args = ["--head", "--port", self.address.rsplit(":", 1)[1], "--include-dashboard=false"] \
            if head else ["--address", self.address]
        resources = json.dumps({f"{name}_node": 1})
        proc = subprocess.Popen(
            [str(Path(BIN) / "ray"), "start", *args, "--num-cpus", "1", "--node-ip-address",
             "127.0.0.1", "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
             "--resources", resources],
            env={**env, "PROJECTRUN_TEST_NODE": name}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        self.groups[name] = proc.pid  # the daemons it started stay in its process group

    def kill_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.groups.pop(name), sig)
        except ProcessLookupError:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # unix socket paths must stay short: a temp dir directly under /tmp
    temp_dir = Path(tempfile.mkdtemp(prefix="prray", dir="/tmp"))
    home = str(tmp_path_factory.getbasetemp() / "projectrun-home")
    env = child_env({"PROJECTRUN_HOME": home, "RAY_TMPDIR": str(temp_dir), **FAST_HEALTH})
    cluster = Cluster(f"127.0.0.1:{free_port()}", temp_dir)
    try:
        cluster.start_node("head", env, head=True)
        cluster.start_node("worker", env)
        yield cluster
    finally:
        groups = list(cluster.groups.values())
        for name in list(cluster.groups):
            cluster.kill_node(name, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while any(_group_alive(g) for g in groups) and time.monotonic() < deadline:
            time.sleep(0.2)
        for g in groups:
            try:
                os.killpg(g, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _sweep_file(workdir: Path, body: str, name: str = "sweep.yaml") -> Path:
    path = workdir / name
    path.write_text(f"project: {PROJECT}\nexperiment: ray\nbackend: ray\n" + body)
    return path


def _runs(uri: str, filter_string: str = "") -> list:  # type: ignore[type-arg]
    client = client_for(uri)
    exp = client.get_experiment_by_name("ray").experiment_id
    return client.search_runs([exp], filter_string, max_results=1000, order_by=["start_time DESC"])


def _parent(uri: str):  # type: ignore[no-untyped-def]
    return _runs(uri, "tags.`projectrun.sweep` = 'parent'")[0]


def _children(uri: str, parent_id: str) -> list:  # type: ignore[type-arg]
    return _runs(uri, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _pid_files(out: Path) -> list[dict[str, object]]:
    found = []
    for path in out.glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:  # being written
            continue
    return found


def _wait_for_pids(out: Path, count: int, proc: subprocess.Popen[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while len(found := _pid_files(out)) < count:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "trials did not start"
        time.sleep(0.1)
    return found


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Without a cluster


def test_sweep_file_backend_keys_are_checked(cli: CliRunner, workdir: Path) -> None:
    bad = _sweep_file(workdir, "ray: {num_cpu: 1}\nparameters: {alpha: [1]}\n")
    res = cli("sweep", str(bad), "--dry-run")
    assert res.returncode == 2
    assert "unknown key 'num_cpu' in ray (did you mean 'num_cpus'?)" in res.stderr
    wrong = _sweep_file(workdir, "parameters: {alpha: [1]}\n", "b.yaml")
    wrong.write_text(wrong.read_text().replace("backend: ray", "backend: spark"))
    res = cli("sweep", str(wrong), "--dry-run")
    assert res.returncode == 2 and "backend" in res.stderr


def test_address_needs_the_ray_backend(cli: CliRunner, workdir: Path) -> None:
    sweep = _sweep_file(workdir, "parameters: {alpha: [1]}\n")
    sweep.write_text(sweep.read_text().replace("backend: ray\n", ""))
    res = cli("sweep", str(sweep), "--address", "127.0.0.1:1")
    assert res.returncode == 2 and "--address goes with --backend ray" in res.stderr


def test_a_file_store_is_refused_for_nodes_on_other_hosts() -> None:
    from projectrun.schedulers.ray import local_store_problem

    problem = local_store_problem("sqlite:////data/mlflow.db", ["here", "gpu-box"], "here")
    assert problem is not None and "gpu-box" in problem and "tracking server" in problem
    assert local_store_problem("file:///data/mlruns", ["here", "b"], "here") is not None
    assert local_store_problem("sqlite:////data/mlflow.db", ["here", "here"], "here") is None
    assert local_store_problem("http://tracking:5000", ["here", "gpu-box"], "here") is None
    assert local_store_problem("databricks", ["here", "gpu-box"], "here") is None  # not a path


def test_without_ray_the_backend_says_how_to_install_it(workdir: Path) -> None:
    sweep = _sweep_file(workdir, "parameters: {alpha: [1]}\n")
    code = ("import sys; sys.modules['ray'] = None; from projectrun.cli import main; "
            f"sys.exit(main(['sweep', {str(sweep)!r}]))")
    res = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=child_env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert "--backend ray needs ray, which is not installed: pip install 'projectrun[ray]'" in res.stderr
    assert not _runs_exist(workdir)


def _runs_exist(workdir: Path) -> bool:
    if not (workdir / "mlflow.db").exists():
        return False
    client = client_for(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ray")
    return exp is not None and bool(client.search_runs([exp.experiment_id]))


def test_the_local_backend_never_imports_ray(workdir: Path) -> None:
    sweep = _sweep_file(workdir, "parameters: {alpha: [1]}\n")
    sweep.write_text(sweep.read_text().replace("backend: ray", "backend: local"))
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "projectrun", "sweep", str(sweep)],
                         cwd=workdir, env=child_env(), capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "projectrun.sweep" in imported
    assert not {m for m in imported if m == "ray" or m.startswith("ray.")}


# ---------------------------------------------------------------------------------------------
# On the cluster


def test_trials_run_on_every_node_and_are_recorded_like_local_ones(
        cli: CliRunner, workdir: Path, ray_cluster: Cluster, mlflow_server: str) -> None:
    sweep = _sweep_file(workdir, "ray: {num_cpus: 1}\nparameters:\n  alpha: [1, 2, 3, 4]\n  sleep: 1.5\n")
    env = {"MLFLOW_TRACKING_URI": mlflow_server}
    res = cli("sweep", str(sweep), "--address", ray_cluster.address, "-j", "2", env=env)
    assert res.returncode == 0, res.stderr
    assert "[4/4]" in res.stderr and "on ray" in res.stderr
    parent = _parent(mlflow_server)
    assert parent.info.status == "FINISHED" and parent.data.tags["mlflow.project.backend"] == "ray"
    children = _children(mlflow_server, parent.info.run_id)
    assert sorted(c.data.params["alpha"] for c in children) == ["1", "2", "3", "4"]
    assert all(c.info.status == "FINISHED" for c in children)
    client = client_for(mlflow_server)
    nodes = set()
    for child in children:
        log = client.download_artifacts(child.info.run_id, "projectrun/output.log", str(workdir))
        nodes.add(Path(log).read_text().split()[0])
        assert child.data.tags["projectrun.ray.node_id"]
    assert nodes == {"node=head", "node=worker"}  # two in flight, one CPU per node

    # the same trial run locally writes the same tags (less the node), params and run name
    local = _sweep_file(workdir, "parameters:\n  alpha: 1\n  sleep: 1.5\n", "local.yaml")
    res = cli("sweep", str(local), "--backend", "local", env=env)
    assert res.returncode == 0, res.stderr
    (local_child,) = _children(mlflow_server, _parent(mlflow_server).info.run_id)
    ray_child = next(c for c in children if c.data.params["alpha"] == "1")
    assert set(ray_child.data.tags) - set(local_child.data.tags) == {
        "projectrun.ray.node_id", "projectrun.ray.node_ip"}
    assert set(local_child.data.tags) <= set(ray_child.data.tags)
    assert ray_child.data.params == local_child.data.params
    assert ray_child.data.tags["mlflow.runName"] == local_child.data.tags["mlflow.runName"]
    assert ray_child.data.tags["projectrun.command"] == local_child.data.tags["projectrun.command"]


def _held_sweep(workdir: Path, cluster: Cluster, head: str) -> tuple[Path, Path, subprocess.Popen[str],
                                                                     list[dict[str, object]]]:
    """A Ray sweep (-j 2) whose trials wait while the file ``hold`` exists: (sweep file, hold,
    the driver process, the two trials running)."""
    out, hold = workdir / "pids", workdir / "hold"
    out.mkdir()
    hold.write_text("")
    sweep = _sweep_file(workdir, f"{head}  sleep: 120\n  hold: {hold}\n  out: {out}\n")
    env = child_env({"PROJECTRUN_HOME": os.environ["PROJECTRUN_HOME"]})
    proc = subprocess.Popen([sys.executable, "-m", "projectrun", "sweep", str(sweep), "--address",
                             cluster.address, "-j", "2"], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return sweep, hold, proc, _wait_for_pids(out, 2, proc)


def test_ctrl_c_kills_the_trials_in_flight_and_resume_runs_the_rest(
        workdir: Path, cli: CliRunner, ray_cluster: Cluster) -> None:
    # a sqlite store in the working directory: every node is on this host, so it is allowed
    sweep, hold, proc, running = _held_sweep(workdir, ray_cluster, "parameters:\n  alpha: [1, 2, 3, 4]\n")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "continue it with --resume" in err
    assert not any(_pid_alive(int(str(p["pid"]))) for p in running)  # their groups are gone
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    parent = _parent(store)
    assert parent.info.status == "KILLED"
    first = _children(store, parent.info.run_id)
    assert sorted(c.info.status for c in first) == ["KILLED", "KILLED"]

    hold.unlink()  # the trials now end at once
    res = cli("sweep", str(sweep), "--resume", "--address", ray_cluster.address, "-j", "2")
    assert res.returncode == 0, res.stderr
    parent = _parent(store)
    assert parent.info.status == "FINISHED"
    children = _children(store, parent.info.run_id)
    done = [c.data.params["alpha"] for c in children if c.info.status == "FINISHED"]
    assert sorted(done) == ["1", "2", "3", "4"]  # each trial finished exactly once
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)

    # --resume works across backends: nothing is left, so the local pool runs nothing
    again = cli("sweep", str(sweep), "--resume", "--backend", "local")
    assert again.returncode == 0, again.stderr
    assert "0 trial(s) to run (4 already finished)" in again.stderr


def test_a_lost_node_fails_its_attempt_and_the_retry_runs_elsewhere(
        workdir: Path, ray_cluster: Cluster) -> None:
    """Runs last: it takes the worker node away."""
    _, hold, proc, running = _held_sweep(
        workdir, ray_cluster, "retries: 1\nray: {num_cpus: 1}\nparameters:\n  alpha: [1, 2]\n")
    on_worker = next(p for p in running if p["node"] == "worker")
    ray_cluster.kill_node("worker")
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    deadline = time.monotonic() + 120
    while not any(c.info.status == "FAILED" for c in _children(store, _parent(store).info.run_id)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    hold.unlink()  # the head's trial ends, then the retry runs on the head
    _, err = proc.communicate(timeout=120)
    try:  # the lost node's entry point may outlive its raylet here; a lost machine takes it along
        os.kill(int(str(on_worker["pid"])), signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode == 0, err
    parent = _parent(store)
    assert parent.info.status == "FINISHED"
    children = _children(store, parent.info.run_id)
    lost = [c for c in children if c.info.status == "FAILED"]
    assert len(lost) == 1 and "Ray task was lost" in lost[0].data.tags["projectrun.trial.error"]
    alpha = lost[0].data.params["alpha"]
    assert alpha == str(int(float(str(on_worker["alpha"]))))
    retry = [c for c in children if c.data.params["alpha"] == alpha and c.info.status == "FINISHED"]
    assert [c.data.tags["projectrun.trial.attempt"] for c in retry] == ["2"]
    assert sorted(c.info.status for c in children) == ["FAILED", "FINISHED", "FINISHED"]
