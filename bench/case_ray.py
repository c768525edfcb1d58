"""Case 9: no-op sweep trials on a local Ray cluster vs the local backend (see bench/README.md).

A real cluster on 127.0.0.1 (a head and a worker node, one CPU each, each its own `ray start`
session) runs ``projectrun sweep sweep.yaml -j 2 --backend ray --address ADDR``; the same sweep
with the local backend runs against the same sqlite store from the same venv. Both run 100
trials and 10 trials, so the per-trial cost can be told apart from what every Ray sweep pays
once (import ray, connect, ship the project, start the job's workers).

The Ray nodes and the sweeps run from ``bench/.venv-projectrun-ray`` (``pip install
'<repo>[ray]' uv``), not from ``bench/.venv-projectrun``: Ray and its ~25 dependencies would
change the plain user install every other case times.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from run import (
    REPO,
    SOURCE_STAMP,
    Case,
    Check,
    Context,
    Prep,
    SetupError,
    Variant,
    compile_bytecode,
    create_venv,
    dist_version,
    first_error_line,
    free_port,
    pip,
    python_version,
    say,
    source_fingerprint,
    stop_group,
    venv_bin,
    write_noop_project,
)

CASE_ID = 9
RAY_VENV = Path(__file__).resolve().parent / ".venv-projectrun-ray"
#: trials of the sweep the target is about, and of the short sweep that separates the fixed cost
TRIALS, FEW_TRIALS = 100, 10
#: -j for both backends: the cluster has one CPU per node, two nodes (and the machine 2 cores)
JOBS = 2
NODE_START_TIMEOUT = 180.0
#: waits until the worker node has registered with the head; prints the cluster's shape
CLUSTER_CHECK = """\
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
deadline = time.monotonic() + 60
while sum(bool(n["Alive"]) for n in ray.nodes()) < int(sys.argv[2]) and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({"alive_nodes": sum(bool(n["Alive"]) for n in ray.nodes()),
                  "cpus": ray.cluster_resources().get("CPU", 0)}))
"""


# --------------------------------------------------------------------------- installation

def setup_ray_venv(python: str) -> dict[str, Any]:
    """``pip install '<repo>[ray]' uv`` (non-editable) into bench/.venv-projectrun-ray, as a user
    who wants ``--backend ray`` installs it; reinstalled when the sources change (as
    ``setup_projectrun`` does for bench/.venv-projectrun)."""
    create_venv(RAY_VENV, python)
    stamp = RAY_VENV / SOURCE_STAMP
    fingerprint = source_fingerprint()
    with_extra = f"{REPO}[ray]"
    if dist_version(RAY_VENV, "projectrun") is None or dist_version(RAY_VENV, "ray") is None:
        pip(RAY_VENV, "install", with_extra, "uv")
    elif not stamp.exists() or stamp.read_text().strip() != fingerprint:
        say(f"the sources changed since {RAY_VENV} was installed; reinstalling projectrun")
        pip(RAY_VENV, "install", "--force-reinstall", "--no-deps", str(REPO))
        pip(RAY_VENV, "install", with_extra)
    else:
        say(f"reusing {RAY_VENV}: projectrun[ray] installed from the current sources")
    stamp.write_text(fingerprint + "\n")
    say(f"byte-compiling {RAY_VENV.name} ({compile_bytecode(RAY_VENV):.1f} s)")
    return {"venv": str(RAY_VENV), "install": f"pip install '{with_extra}' uv (non-editable)",
            "projectrun": dist_version(RAY_VENV, "projectrun"), "ray": dist_version(RAY_VENV, "ray"),
            "mlflow_skinny": dist_version(RAY_VENV, "mlflow-skinny"),
            "python": python_version(RAY_VENV)}


# --------------------------------------------------------------------------- the cluster

@dataclass
class RayCluster:
    address: str
    temp_dir: Path
    shape: dict[str, Any]


def start_node(ctx: Context, args: list[str], env: dict[str, str], temp_dir: Path, log: Path,
               name: str) -> None:
    """One ``ray start`` in its own session. Its daemons stay in that process group, which the
    cleanup stops (registered before the wait, so a node that fails half-way is stopped too).
    Not ``ray stop``: it stops every Ray process of this user on the machine, including a
    cluster another program (a test run) started."""
    argv = [str(venv_bin(RAY_VENV, "ray")), "start", *args, "--num-cpus", "1",
            "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir), "--disable-usage-stats",
            "--dashboard-agent-listen-port", str(free_port())]
    say(f"  starting the {name} node: ray start {' '.join(args)} ...")
    fh = open(log, "wb")  # noqa: SIM115 - closed by the cleanup
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                            stderr=subprocess.STDOUT, start_new_session=True)

    def cleanup() -> None:
        stop_group(proc)
        fh.close()

    ctx.cleanups.append(cleanup)
    try:
        code = proc.wait(timeout=NODE_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SetupError(f"ray start ({name}) did not return within {NODE_START_TIMEOUT:.0f} s "
                         f"(log: {log})") from None
    if code != 0:
        raise SetupError(f"ray start ({name}) exited with code {code}: "
                         f"{first_error_line(log.read_text(errors='replace'))} (log: {log})")


def start_cluster(ctx: Context, env: dict[str, str], logs: Path) -> RayCluster:
    """A head and one worker node on 127.0.0.1, one CPU each; stopped by ``ctx.cleanups``."""
    # directly under /tmp: Ray's unix socket paths live in it and must stay under 108 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="prb9-", dir="/tmp"))
    ctx.cleanups.append(lambda: shutil.rmtree(temp_dir, ignore_errors=True))  # runs last
    port = free_port()
    address = f"127.0.0.1:{port}"
    node_env = {**env, "RAY_TMPDIR": str(temp_dir)}
    start_node(ctx, ["--head", "--port", str(port), "--ray-client-server-port", str(free_port()),
                     "--include-dashboard=false"],
               node_env, temp_dir, logs / "ray-head.log", "head")
    start_node(ctx, ["--address", address], node_env, temp_dir, logs / "ray-worker.log", "worker")
    check = subprocess.run([str(venv_bin(RAY_VENV, "python")), "-c", CLUSTER_CHECK, address, "2"],
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    if check.returncode != 0:
        raise SetupError(f"the Ray cluster at {address} does not answer: "
                         f"{first_error_line(check.stderr)}")
    shape: dict[str, Any] = json.loads(check.stdout.strip().splitlines()[-1])
    if shape["alive_nodes"] != 2:
        raise SetupError(f"the Ray cluster at {address} has {shape['alive_nodes']} live node(s), "
                         f"expected 2 (logs: {logs})")
    return RayCluster(address, temp_dir, shape)


# --------------------------------------------------------------------------- checks

@dataclass
class OverheadCheck(Check):
    """What Ray adds over the local backend, from medians of sweeps of two sizes.

    ``part``: ``per_trial`` is (median(num) - median(den)) / trials in ms, the cluster's fixed
    cost spread over the trials; ``slope`` fits a line through the differences at ``trials``
    and at ``few`` trials (variants ``few_num``, ``few_den``) and gives its slope in ms, the
    cost of one more trial; ``fixed`` is that line's intercept in s, what every sweep pays."""

    trials: int = TRIALS
    part: str = "per_trial"
    few_num: str = ""
    few_den: str = ""
    few: int = FEW_TRIALS

    def evaluate(self, variants: dict[str, Variant]) -> dict[str, Any]:
        value = self.value(variants)
        met = None if value is None or self.target is None else value <= self.target
        return {"label": self.label, "num": self.num, "den": self.den, "den_plus": [],
                "part": self.part, "trials": self.trials,
                "few": [self.few_num, self.few_den, self.few] if self.part != "per_trial" else None,
                "value": None if value is None else round(value, 4),
                "unit": "s" if self.part == "fixed" else "ms", "target": self.target,
                "target_text": self.target_text, "met": met}

    def value(self, variants: dict[str, Variant]) -> float | None:
        many = difference(variants, self.num, self.den or "")
        if many is None:
            return None
        if self.part == "per_trial":
            return many / self.trials * 1000
        few = difference(variants, self.few_num, self.few_den)
        if few is None:
            return None
        slope = (many - few) / (self.trials - self.few)
        return slope * 1000 if self.part == "slope" else few - slope * self.few


def difference(variants: dict[str, Variant], num: str, den: str) -> float | None:
    a, b = variants[num].median, variants[den].median
    return None if a is None or b is None else a - b


# --------------------------------------------------------------------------- the case

def sweep_writer(cwd: Path, proj: Path, key: str, trials: int,
                 extra: list[str]) -> Callable[[int], Prep]:
    """A new sweep file with a new name for every run (the warm-up too), so nothing is resumed."""
    projectrun = str(venv_bin(RAY_VENV, "projectrun"))

    def per_run(rep: int) -> Prep:
        path = cwd / f"sweep-{key}-{rep + 1 if rep >= 0 else 'warmup'}.yaml"
        values = ", ".join(str(i) for i in range(trials))
        path.write_text(f"name: bench-ray-{path.stem}-{os.getpid()}\nproject: {json.dumps(str(proj))}\n"
                        f"entry_point: main\nexperiment: bench-ray\nenv_manager: local\n"
                        f"parameters:\n  i: [{values}]\n")
        return Prep(argv=[projectrun, "sweep", str(path), "-j", str(JOBS), *extra])

    return per_run


def sweep_variant(cwd: Path, proj: Path, env: dict[str, str], trials: int,
                  address: str | None) -> Variant:
    backend = "ray" if address else "local"
    extra = ["--backend", "ray", "--address", address] if address else []
    shown = " --backend ray --address ADDR" if address else " (local backend)"
    key = f"{backend}-{trials}"
    per_run = sweep_writer(cwd, proj, key, trials, extra)
    return Variant(key, f"projectrun sweep sweep.yaml -j {JOBS}{shown} ({trials} trials)", cwd,
                   per_run(-1).argv or [], env, per_run=per_run)


def case_ray(ctx: Context) -> Case:
    case = Case(CASE_ID, f"{TRIALS} no-op trials on a local Ray cluster vs the local backend",
                f"`projectrun sweep sweep.yaml -j {JOBS} --backend ray --address ADDR` against a "
                f"Ray cluster on 127.0.0.1 (head + 1 worker node, 1 CPU each) vs the same sweep "
                f"with the local backend; {TRIALS} and {FEW_TRIALS} trials of a no-op entry point "
                f"with param i, env_manager local; both from bench/.venv-projectrun-ray",
                "cluster started before timing and warmed by one untimed sweep per variant; one "
                "sqlite store in the shared cwd (warm); a new sweep file and name per run, so "
                "nothing is resumed", repeat=ctx.repeat)
    case.extra["ray_venv"] = setup_ray_venv(ctx.python)
    env = {k: v for k, v in ctx.env(RAY_VENV).items() if k != "RAY_ADDRESS"}
    cluster = start_cluster(ctx, env, ctx.case_dir(CASE_ID, "logs"))
    case.extra["ray_cluster"] = {"address": cluster.address, "temp_dir": str(cluster.temp_dir),
                                 **cluster.shape}
    case.notes.append(f"Ray {case.extra['ray_venv']['ray']} cluster at {cluster.address}: "
                      f"{cluster.shape['alive_nodes']} nodes, {cluster.shape['cpus']:g} CPUs "
                      f"(dashboard off); it runs during the local rows too")
    proj = write_noop_project(ctx.case_dir(CASE_ID, "noop"), params=True)
    cwd = ctx.case_dir(CASE_ID, "cwd")
    case.variants = [sweep_variant(cwd, proj, env, n, address)
                     for n in (TRIALS, FEW_TRIALS) for address in (cluster.address, None)]
    case.checks = checks()
    return case


def checks() -> list[Check]:
    many = (f"ray-{TRIALS}", f"local-{TRIALS}")
    few_num, few_den = f"ray-{FEW_TRIALS}", f"local-{FEW_TRIALS}"
    return [
        OverheadCheck(f"(ray - local) / {TRIALS} trials, fixed cost included (the issue's figure)",
                      *many, 50.0, "<= 50 ms"),
        OverheadCheck(f"per extra trial: slope of (ray - local) from {FEW_TRIALS} to {TRIALS} trials",
                      *many, None, "(info)", part="slope", few_num=few_num, few_den=few_den),
        OverheadCheck("fixed cost of a Ray sweep (intercept of the same line)", *many, None,
                      "(info)", part="fixed", few_num=few_num, few_den=few_den),
    ]
