"""Case 8: a docker_env project on a private Docker engine (see bench/README.md).

A private dockerd and its ``python3`` base image come from tests/dockerengine.py
(``running_engine(reuse=False)`` + ``base_image``), held by a small process of
bench/.venv-mlflow's python (the harness itself stays standard library only) until the case
ends. On that engine, with ``DOCKER_HOST`` set for every command, it times:

* a warm launch (image cached): ``projectrun DIR`` vs ``mlflow run DIR --build-image`` vs the
  floor, a bare ``docker run --rm IMAGE python3 train.py`` of projectrun's image;
* a launch after a one-line edit of ``train.py`` (a comment appended before each run), both tools.

It then checks, from the engine, that each of projectrun's rebuilds after an edit made exactly one
new filesystem layer, the COPY of the project, on the base image's own layers, and that no warm
launch built anything.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run import (
    MLFLOW_VENV,
    PR_VENV,
    REPO,
    Case,
    Check,
    Context,
    Prep,
    SetupError,
    Variant,
    dist_version,
    first_error_line,
    pip,
    run_timed,
    say,
    start_service,
    venv_bin,
)

CASE_ID = 8
PROJECT_NAME = "bench-docker"
COMMAND = ("python3", "train.py")  # the base image has Debian's python3, no `python`
TRAIN = '"""A no-op training script: the case times the launch, not the work."""\nimport sys\n'
#: what a warm projectrun launch asks the engine before `docker run` (envs/docker.py)
INSPECT_TWICE = ('docker image inspect --format "{{.Id}}" "$1" >/dev/null && '
                 'docker image inspect --format "{{.Id}}" "$2" >/dev/null')
#: projectrun reports each image it builds with this line (on stderr, without --verbose)
BUILT = re.compile(r"building docker image (\S+) on ")
#: tests/dockerengine.py's engine and base image, in a process of their own until SIGTERM
ENGINE_HOLDER = '''\
"""Case 8's engine: a private dockerd (tests/dockerengine.py) and its base image, until SIGTERM."""
import json, os, signal, sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import dockerengine


def leave(signum, frame):
    raise SystemExit(0)


signal.signal(signal.SIGTERM, leave)
dockerengine.ensure_packages()
with dockerengine.running_engine(Path(sys.argv[2]), reuse=False) as engine:
    image = dockerengine.base_image(engine, dockerengine.default_cache_dir())
    client = engine.client()
    version = client.version().get("Version", "")
    client.close()
    info = {"host": engine.host, "image": image, "storage_driver": engine.storage_driver,
            "server_version": version, "data_root": str(engine.data_root)}
    out = Path(sys.argv[3])
    Path(f"{out}.tmp").write_text(json.dumps(info))
    os.replace(f"{out}.tmp", out)
    print(f"engine ready: {info}", flush=True)
    while True:
        signal.pause()
'''


# --------------------------------------------------------------------------- setup

def ensure_docker_sdk(venv: Path) -> str:
    """``pip install docker`` into ``venv`` when missing, as a user of the tool must: mlflow's
    docker backend imports it, and projectrun builds and pulls with it (neither depends on it)."""
    version = dist_version(venv, "docker")
    if version is None:
        pip(venv, "install", "docker")
        version = dist_version(venv, "docker")
    return version or ""


def start_engine(ctx: Context) -> dict[str, Any]:
    """The engine holder, started in its own session; its cleanup stops the engine (SIGTERM)."""
    base = ctx.case_dir(CASE_ID, "engine")
    ready = base / "engine.json"
    argv = [str(venv_bin(MLFLOW_VENV, "python")), "-c", ENGINE_HOLDER, str(REPO / "tests"),
            str(base / "root"), str(ready)]
    say("  starting a private dockerd (tests/dockerengine.py) and importing its base image")
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "PYTHONPATH")}
    proc = start_service(argv, base, env, base / "holder.log", ready.is_file, ctx,
                         "the docker engine (tests/dockerengine.py)", wait=300.0)
    stop = ctx.cleanups.pop()  # start_service's: SIGTERM, then SIGKILL after 10 s

    def cleanup() -> None:
        # dockerd stops its containers first: give it its 30 s, then fall back to the group kill
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
        stop()

    ctx.cleanups.append(cleanup)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


def docker(engine: dict[str, Any], *args: str) -> str:
    """One docker CLI call against the case's engine; its stdout."""
    r = subprocess.run(["docker", *args], capture_output=True, text=True, check=False,
                       env={**os.environ, "DOCKER_HOST": engine["host"]})
    if r.returncode != 0:
        raise SetupError(f"docker {' '.join(args)} failed: {first_error_line(r.stderr)}")
    return r.stdout


def write_project(path: Path, image: str | None) -> Path:
    """The project; with ``image`` None, the same one without docker_env (a host launch)."""
    path.mkdir(parents=True, exist_ok=True)
    env = f"docker_env:\n  image: {image}\n" if image else ""
    (path / "MLproject").write_text(f"name: {PROJECT_NAME}\n{env}entry_points:\n  main:\n"
                                    f"    command: \"{' '.join(COMMAND)}\"\n")
    (path / "train.py").write_text(TRAIN)
    return path


def first_build(ctx: Context, proj: Path, cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    """projectrun's first launch of the project (untimed): builds its image; (tag, seconds)."""
    log = ctx.case_dir(CASE_ID, "logs") / "first-build.log"
    elapsed, code, text = run_timed([ctx.projectrun, str(proj), "--experiment-name", "bench"], cwd,
                                    env, log, ctx.timeout)
    built = BUILT.findall(text)
    if code != 0 or len(built) != 1:
        raise SetupError(f"projectrun's first docker launch failed (exit {code}, {len(built)} "
                         f"image builds): {first_error_line(text)} (log: {log})")
    return built[0], elapsed


# --------------------------------------------------------------------------- the layer check

@dataclass
class LayerCheck(Check):
    """Pass/fail from the engine, not from timings: filled in by ``collect`` before it stops."""

    evidence: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, variants: dict[str, Variant]) -> dict[str, Any]:
        ok = self.evidence.get("ok")
        return {"label": self.label, "num": self.num, "den": None, "den_plus": [],
                "value": None if ok is None else int(ok), "unit": "pass", "target": None,
                "target_text": self.target_text, "met": ok,
                "shown": self.evidence.get("shown", "-"), "evidence": self.evidence}


def layers(engine: dict[str, Any], ref: str) -> list[str]:
    """The image's filesystem layers (diff ids), base first."""
    found: list[str] = json.loads(docker(engine, "image", "inspect", "--format",
                                         "{{json .RootFS.Layers}}", ref))
    return found


def top_layer(engine: dict[str, Any], ref: str) -> tuple[str, int]:
    """(instruction, bytes) of the newest history row that added files."""
    rows = docker(engine, "history", "--no-trunc", "--human=false", "--format",
                  "{{.Size}}\t{{.CreatedBy}}", ref).splitlines()
    for row in rows:
        size, _, created_by = row.partition("\t")
        if int(size or 0) > 0:
            return created_by.strip(), int(size)
    return "", 0


def builds_in(logs: list[Path]) -> list[list[str]]:
    """For each log that exists, the image tags projectrun said it built."""
    return [BUILT.findall(log.read_text(errors="replace")) for log in logs if log.exists()]


def run_logs(logs: Path, key: str, repeat: int) -> list[Path]:
    """The harness's logs of one variant (warm-up, then the timed runs), in order."""
    return [logs / f"{key}-warmup.log", *(logs / f"{key}-run{i}.log" for i in range(repeat))]


def judge_rebuilds(engine: dict[str, Any], base: str, chain: list[str]) -> list[str]:
    """What is wrong with each consecutive pair of images in ``chain`` (none: copy layer only)."""
    base_layers = layers(engine, base)
    problems = []
    for prev, new in itertools.pairwise(chain):
        old_layers, new_layers = layers(engine, prev), layers(engine, new)
        step, _ = top_layer(engine, new)
        if new_layers[:-1] != base_layers or old_layers[:-1] != base_layers:
            problems.append(f"{new}: the layers under the top one are not the base image's")
        elif len(new_layers) != len(base_layers) + 1 or new_layers[-1] == old_layers[-1]:
            problems.append(f"{new}: {len(new_layers) - len(base_layers)} layers on the base, "
                            f"top {'unchanged' if new_layers[-1] == old_layers[-1] else 'new'}")
        elif "COPY" not in step:
            problems.append(f"{new}: the new layer was made by {step!r}, not a COPY")
    return problems


def collect(check: LayerCheck, case: Case, ctx: Context, engine: dict[str, Any],
            warm_tag: str) -> Callable[[], None]:
    """Fill ``check`` from the run logs and the engine (runs as a cleanup, before the engine stops)."""
    def run() -> None:
        logs = ctx.case_dir(CASE_ID, "logs")
        edits = builds_in(run_logs(logs, "pr-edit", ctx.repeat))
        warm = builds_in(run_logs(logs, "pr-warm", ctx.repeat)[1:])  # [0]: the warm-up
        chain = [warm_tag, *(tag for built in edits for tag in built)]
        problems = [] if edits else ["no edited launch ran"]
        if any(len(built) != 1 for built in edits):
            problems.append(f"{sum(len(b) != 1 for b in edits)} of {len(edits)} edited launches "
                            f"did not build exactly one image")
        if any(warm):
            problems.append(f"{sum(map(len, warm))} warm launches built an image")
        try:
            problems += judge_rebuilds(engine, engine["image"], chain)
            step, size = top_layer(engine, chain[-1])
            base_layers = len(layers(engine, engine["image"]))
        except (SetupError, ValueError, IndexError) as exc:
            check.evidence.update(ok=False, shown=f"could not inspect: {exc}")
            return
        n = len(chain) - 1
        check.evidence.update(
            ok=not problems and n > 0, images=chain, problems=problems, top_step=step, top_bytes=size,
            base_layers=base_layers,
            shown=(f"{n} rebuilds: the base's {base_layers} layer(s) shared, 1 new COPY layer each "
                   f"(last {size} B); warm launches built nothing" if not problems
                   else "; ".join(problems)[:300]))
        case.notes.append(f"copy-layer check: images {' -> '.join(chain)}; each new image's "
                          f"top layer: {step!r} ({size} B); problems: {problems or 'none'}")
        case.notes.append(mlflow_shape(engine))

    return run


def mlflow_shape(engine: dict[str, Any]) -> str:
    """For comparison: what mlflow's last --build-image image is made of."""
    try:
        base, built = layers(engine, engine["image"]), layers(engine, f"{PROJECT_NAME}:latest")
        step, size = top_layer(engine, f"{PROJECT_NAME}:latest")
    except (SetupError, ValueError) as exc:
        return f"mlflow's image could not be inspected: {exc}"
    below = "the base image's layers below" if built[:-1] == base else "NOT on the base's layers"
    return (f"mlflow's image {PROJECT_NAME}:latest: {len(built)} filesystem layers, {below}; top: "
            f"{step!r} ({size} B). mlflow sends its build context and calls the builder on every "
            f"launch; the classic builder's cache gives back the same image when nothing changed")


# --------------------------------------------------------------------------- the case

def appender(proj: Path) -> Callable[[int], Prep]:
    """Before each run (untimed): one more comment line in train.py, so the code has changed."""
    def per_run(rep: int) -> Prep:
        with open(proj / "train.py", "a", encoding="utf-8") as fh:
            fh.write(f"# edit {rep + 2}\n")  # the warm-up is rep -1
        return Prep()
    return per_run


def variants(ctx: Context, projects: dict[str, Path], env: dict[str, dict[str, str]],
             base: str, image: str) -> list[Variant]:
    pr, ml = [ctx.projectrun], [ctx.mlflow, "run"]
    flags = ["--experiment-name", "bench"]
    cwd: Callable[[str], Path] = lambda name: ctx.case_dir(CASE_ID, f"cwd-{name}")
    return [
        Variant("pr-warm", "projectrun DIR (docker; image cached)", cwd("pr-warm"),
                [*pr, str(projects["warm"]), *flags], env["pr"]),
        Variant("mlflow-warm", "mlflow run DIR --build-image (nothing changed)", cwd("mlflow-warm"),
                [*ml, str(projects["warm"]), "--build-image", *flags], env["mlflow"]),
        Variant("bare", f"floor: docker run --rm IMAGE {' '.join(COMMAND)} (projectrun's image)",
                cwd("bare"), ["docker", "run", "--rm", image, *COMMAND], env["pr"]),
        Variant("pr-edit", "projectrun DIR after a one-line edit of train.py", cwd("pr-edit"),
                [*pr, str(projects["pr-edit"]), *flags], env["pr"],
                per_run=appender(projects["pr-edit"])),
        Variant("mlflow-edit", "mlflow run DIR --build-image after a one-line edit",
                cwd("mlflow-edit"), [*ml, str(projects["mlflow-edit"]), "--build-image", *flags],
                env["mlflow"], per_run=appender(projects["mlflow-edit"])),
        # where a warm launch's time goes: projectrun's own launch, and its two engine queries
        Variant("ref-local", "reference: projectrun DIR, the same project without docker_env "
                "(entry point on the host)", cwd("ref-local"),
                [*pr, str(projects["local"]), *flags], env["pr"]),
        Variant("ref-inspect", "reference: the 2 `docker image inspect` of a warm projectrun "
                "launch (base, then project image)", cwd("ref-inspect"),
                ["sh", "-c", INSPECT_TWICE, "sh", base, image],
                env["pr"]),
    ]


def checks(layer_check: LayerCheck) -> list[Check]:
    return [
        Check("warm: projectrun / mlflow --build-image", "pr-warm", "mlflow-warm", 1 / 3, "<= 1/3"),
        Check("warm: projectrun / bare docker run", "pr-warm", "bare", 1.5, "<= 1.5x"),
        Check("edited: projectrun / mlflow --build-image", "pr-edit", "mlflow-edit", None, "(info)"),
        Check("edited / warm projectrun", "pr-edit", "pr-warm", None, "(info)"),
        # counts the entry point's python start twice (about 0.02 s)
        Check("warm projectrun / (bare docker run + local launch + 2 inspects)", "pr-warm", "bare",
              None, "(info)", den_plus=("ref-local", "ref-inspect")),
        layer_check,
    ]


def case_docker(ctx: Context) -> Case:
    case = Case(CASE_ID, "docker_env project", "a no-op `python3 train.py` launch of a docker_env "
                "project (image: tests/dockerengine.py's python3 base) on a private dockerd: warm "
                "(image cached) projectrun vs `mlflow run --build-image` vs a bare `docker run` of "
                "the same image and command; and after a one-line edit of train.py, both tools. "
                "References: projectrun's launch of the same project without docker_env, and the "
                "two `docker image inspect` calls of a warm launch",
                "engine, base image and both tools' images made before timing (untimed first "
                "launches); the edited rows append a line to train.py before every run; sqlite db "
                "(the default, mlflow.db in each variant's cwd) warm", repeat=ctx.repeat)
    case.extra["docker_sdk"] = {"mlflow_venv": ensure_docker_sdk(MLFLOW_VENV),
                                "projectrun_venv": ensure_docker_sdk(PR_VENV)}
    engine = start_engine(ctx)
    case.extra["engine"] = engine
    say(f"  engine {engine['host']} ({engine['storage_driver']}, dockerd {engine['server_version']}); "
        f"base image {engine['image']}")
    projects = {name: write_project(ctx.case_dir(CASE_ID, f"project-{name}"), engine["image"])
                for name in ("warm", "pr-edit", "mlflow-edit")}
    projects["local"] = write_project(ctx.case_dir(CASE_ID, "project-local"), None)
    home = str(ctx.case_dir(CASE_ID, "pr-home"))
    env = {"pr": ctx.pr_env(PROJECTRUN_HOME=home, DOCKER_HOST=engine["host"]),
           "mlflow": ctx.mlflow_env(DOCKER_HOST=engine["host"])}
    tag, elapsed = first_build(ctx, projects["warm"], ctx.case_dir(CASE_ID, "cwd-pr-warm"), env["pr"])
    case.notes.append(f"projectrun's first launch (builds {tag} on {engine['image']}; untimed): "
                      f"{elapsed:.2f} s")
    case.notes.append(
        "store: the default sqlite:///mlflow.db of each variant's cwd, for both tools. mlflow "
        "bind-mounts the db file at /mlflow/tmp/mlruns and rewrites MLFLOW_TRACKING_URI for the "
        "container; projectrun mounts the db's directory at its own path. With --build-image, "
        "mlflow builds FROM the local base image and never pulls")
    case.extra["docker_sdk_note"] = (
        "neither tool's install brings the docker SDK: mlflow's docker backend imports it, and "
        "projectrun's image builds and pulls need it; the case pip-installs it into both venvs")
    case.variants = variants(ctx, projects, env, engine["image"], tag)
    layer_check = LayerCheck("edited: projectrun rebuilt only the COPY layer", "pr-edit", None, None,
                             "base layers shared, one new COPY layer per edit")
    case.checks = checks(layer_check)
    ctx.cleanups.append(collect(layer_check, case, ctx, engine, tag))  # runs before the engine stops
    return case

