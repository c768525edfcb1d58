"""MLflow is the oracle: projectrun must load, refuse and render real MLproject files as it does.

Why: projectrun promises to run every project ``mlflow run`` runs, with byte-for-byte the same
command, and to turn every file MLflow refuses (often with a bare AttributeError or KeyError) into a
``file:line: message``. A corpus of real MLproject files (../shared/corpus beside the repo, some
broken on purpose) is run through MLflow's own loader and through projectrun side by side.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
if not CORPUS.is_dir():
    pytest.skip(f"MLproject corpus not found at {CORPUS}", allow_module_level=True)

mlflow_spec = pytest.importorskip("mlflow.projects._project_spec")

from projectrun import cli, spec
from projectrun.errors import ParameterError, ProjectRunError, SpecError
from projectrun.runner import LaunchRequest, plan

DIRS = sorted(p for p in CORPUS.iterdir() if p.is_dir())
IDS = [d.name for d in DIRS]


def _features() -> dict[str, set[str]]:
    """MANIFEST.tsv's features per corpus directory (empty when there is no manifest)."""
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return {}
    rows = [line.rstrip("\n").split("\t") for line in manifest.read_text().splitlines()[1:]]
    return {r[0]: set(r[4].split(",")) if len(r) > 4 else set() for r in rows if r and r[0] in IDS}


FEATURES = _features()
#: Committed broken env files: MLflow reads the MLproject but fails when it builds the env.
ENV_FILE_BROKEN = ("env_file_invalid_yaml", "requirements_txt_omitted")


def _env_file_broken(directory: Path) -> bool:
    return any(f.startswith(ENV_FILE_BROKEN) for f in FEATURES.get(directory.name, ()))


def _host_vars(directory: Path) -> list[str]:
    """Variables a docker_env copies from the host: its users have them set, so the tests do."""
    try:
        project = spec.load_project(directory)
    except SpecError:
        return []
    wanted = project.docker_env.environment if project.docker_env else ()
    return [e for e in wanted if isinstance(e, str)]


def _diverse_subset(size: int) -> set[str]:
    """Directories that together show the most MANIFEST features (greedy set cover)."""
    features = FEATURES
    if not features:
        return {d.name for d in DIRS[:: max(1, len(DIRS) // size)]}
    chosen: list[str] = []
    covered: set[str] = set()
    while len(chosen) < min(size, len(features)):
        best = max(sorted(set(features) - set(chosen)), key=lambda d: len(features[d] - covered))
        chosen.append(best)
        covered |= features[best]
    return set(chosen)


#: Spawning ``python -m projectrun`` costs ~0.2 s, so 15 directories chosen to cover the most
#: features get the real subprocess; every directory gets the same CLI in-process.
SUBPROCESS_DIRS = _diverse_subset(15)
#: Names projectrun also reads (MLflow ignores them); MLflow then sees a copy renamed to MLproject.
YAML_NAMES = ("mlproject.yaml", "mlproject.yml")
#: A user-facing problem: ``/abs/file:LINE: text`` on one line.
PROBLEM_LINE = re.compile(r"^(/[^\n]*?):\d+: \S[^\n]*$")
EXTRA = ("extra_key", "v w")
SAMPLE = {"float": "0.5", "int": "3", "uri": "file:///tmp/x"}


def _is_remote(value: Any) -> bool:
    """A path default MLflow would download (s3://, https://...): never touch the network here."""
    parsed = urllib.parse.urlparse(str(value))
    return bool(parsed.scheme) and not (parsed.scheme == "file" and not parsed.netloc)


@dataclass
class EntryOracle:
    """What MLflow makes of one entry point with our parameters."""

    params: dict[str, str]
    command: str | None = None
    error: str | None = None
    #: MLflow's command when run from the project directory (path defaults relative to it)
    command_from_project: str | None = None


@dataclass
class Oracle:
    """MLflow's verdict on one corpus directory."""

    directory: Path
    cwd: Path
    load_error: str | None = None
    entry_points: dict[str, EntryOracle] = field(default_factory=dict)
    #: env type as projectrun names it (None: no env file) and the env file relative to the project
    env: tuple[str | None, str | None] = (None, None)


def _mlflow_view(directory: Path, scratch: Path) -> Path:
    """The directory MLflow should load: a copy with MLproject.yaml renamed, if that is the file."""
    names = os.listdir(directory)
    if any(n.lower() == "mlproject" for n in names):
        return directory
    yaml_names = [n for n in names if n.lower() in YAML_NAMES]
    if not yaml_names:
        return directory
    copy = _writable_copy(directory, scratch / "mlflow-view" / directory.name)
    (copy / yaml_names[0]).rename(copy / "MLproject")
    return copy


def _writable_copy(directory: Path, target: Path) -> Path:
    """The corpus is read-only and copytree keeps modes; a copy we may rename and add files in."""
    shutil.copytree(directory, target, copy_function=shutil.copyfile)
    for root, dirs, _ in os.walk(target):
        for d in [root, *(os.path.join(root, x) for x in dirs)]:
            os.chmod(d, 0o755)
    return target


def _params_for(ep: Any, inputs: Path) -> dict[str, str]:
    """A plausible value for each required param (strings with a space, to exercise quoting)."""
    out: dict[str, str] = {}
    for name, p in ep.parameters.items():
        remote_path_default = p.type == "path" and p.default is not None and _is_remote(p.default)
        if p.default is not None and not remote_path_default:
            continue
        if p.type == "path":
            f = inputs / f"{name}.txt"
            f.write_text("x\n")
            out[str(name)] = str(f)
        else:
            out[str(name)] = SAMPLE.get(p.type, "a b")
    out[EXTRA[0]] = EXTRA[1]
    return out


def _compute(ep: Any, params: dict[str, str], cwd: Path, storage: Path) -> str:
    """MLflow's command from ``cwd``: it resolves relative path values against its own cwd."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return str(ep.compute_command(params, str(storage)))
    finally:
        os.chdir(previous)


def _ask_mlflow(directory: Path, scratch: Path) -> Oracle:
    """Load with MLflow and compute every entry point's command from an empty cwd."""
    cwd = scratch / "cwd"
    inputs = scratch / "inputs"
    storage = scratch / "storage"
    for d in (cwd, inputs, storage):
        d.mkdir(parents=True)
    oracle = Oracle(directory, cwd)
    view = _mlflow_view(directory, scratch)
    try:
        project = mlflow_spec.load_project(str(view))
    except Exception as exc:  # noqa: BLE001 - MLflow crashes with anything on a broken file
        oracle.load_error = f"{type(exc).__name__}: {exc}"
        return oracle
    env_file = project.env_config_path
    if env_file is None and project.env_type == "python_env":
        oracle.env = (None, None)  # MLflow's "bare virtualenv": projectrun says None
    else:
        oracle.env = (project.env_type, env_file and os.path.relpath(env_file, view))
    for name, ep in project._entry_points.items():
        eo = EntryOracle(_params_for(ep, inputs))
        try:
            eo.command = _compute(ep, eo.params, cwd, storage)
        except Exception as exc:  # noqa: BLE001
            eo.error = f"{type(exc).__name__}: {exc}"
            try:
                eo.command_from_project = _compute(ep, eo.params, directory, storage)
            except Exception:  # noqa: BLE001, S110 - MLflow cannot build it from either place
                pass
        oracle.entry_points[str(name)] = eo
    return oracle


@pytest.fixture(scope="module")
def ask_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """MLflow's verdict per directory, computed once and shared by every test of that directory."""
    cache: dict[Path, Oracle] = {}

    def get(directory: Path) -> Oracle:
        if directory not in cache:
            cache[directory] = _ask_mlflow(directory, tmp_path_factory.mktemp(directory.name[:40]))
        return cache[directory]

    yield get


def _assert_user_facing(exc: ProjectRunError) -> None:
    """Every line is ``file:line: message``, or at least one plain line, never a traceback."""
    lines = str(exc).splitlines()
    assert lines, f"{type(exc).__name__} with no message"
    for line in lines:
        assert "Traceback" not in line and line.strip() == line and line, line
    if isinstance(exc, SpecError):
        bad = [p for p in exc.problems if not PROBLEM_LINE.match(p)]
        assert not bad, f"problems without file:line: {bad}"


def _first_runnable(oracle: Oracle) -> tuple[str, EntryOracle] | None:
    """The entry point the CLI is tried on: the first one MLflow can build a command for."""
    return next(((n, e) for n, e in oracle.entry_points.items() if e.command is not None), None)


def _run_args(directory: Path, name: str, params: dict[str, str]) -> list[str]:
    """CLI arguments; the URI comes first, as the default-to-`run` group expects."""
    args = [str(directory), "-e", name]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    return [*args, "--dry-run", "--json"]


def _child_env() -> dict[str, str]:
    """The developer's MLflow settings must not reach the child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_load_and_command_match_mlflow(directory: Path, ask_mlflow: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Same verdict on the file, and for every entry point the same command or a clean refusal."""
    oracle: Oracle = ask_mlflow(directory)
    monkeypatch.chdir(oracle.cwd)
    if oracle.load_error is not None:
        with pytest.raises(SpecError) as info:
            spec.load_project(directory)
        _assert_user_facing(info.value)
        return
    project = spec.load_project(directory)
    assert sorted(project.entry_points) == sorted(oracle.entry_points)
    env_file = project.env_file and os.path.relpath(project.env_file, project.directory)
    assert (project.env_type, env_file) == oracle.env
    for var in _host_vars(directory):
        monkeypatch.setenv(var, "set-by-test")
    for name, eo in oracle.entry_points.items():
        # The command does not depend on the env kind; env files are checked in the CLI test.
        request = LaunchRequest(uri=str(directory), entry_point=name, parameters=dict(eo.params),
                                env_manager="local")
        if eo.command is not None:
            assert plan(request).command == eo.command, name
        elif eo.command_from_project is not None:
            # Deliberate difference: a relative path default missing from the cwd is taken from
            # the project, i.e. projectrun behaves like `mlflow run .` started in the project dir.
            assert plan(request).command == eo.command_from_project, name
        else:
            with pytest.raises((SpecError, ParameterError)) as refused:
                plan(request)
            _assert_user_facing(refused.value)


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_cli_dry_run_json_command(directory: Path, ask_mlflow: Any, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI (in-process for all, a real subprocess for some) prints MLflow's command as JSON,
    or, where MLflow can run nothing, one error line per problem and exit code 2."""
    oracle: Oracle = ask_mlflow(directory)
    monkeypatch.chdir(oracle.cwd)
    host = {name: "set-by-test" for name in _host_vars(directory)}
    for name, value in host.items():
        monkeypatch.setenv(name, value)
    runnable = _first_runnable(oracle)
    if _env_file_broken(directory):
        runnable = None  # MLflow gives a command but cannot build the env: we say so up front
    if runnable is None:
        name = next(iter(oracle.entry_points), "main")
        params = oracle.entry_points[name].params if name in oracle.entry_points else {}
    else:
        name, eo = runnable
        params = eo.params
    args = _run_args(directory, name, params)
    results = [(cli.main(args), *capsys.readouterr())]
    if directory.name in SUBPROCESS_DIRS:
        proc = subprocess.run([sys.executable, "-m", "projectrun", *args], cwd=oracle.cwd,
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**_child_env(), **host})
        results.append((proc.returncode, proc.stdout, proc.stderr))
    for code, out, err in results:
        if runnable is None:
            assert code == 2 and out == "", (code, out, err)
            lines = err.splitlines()
            assert lines and all(line.startswith("projectrun: error: ") for line in lines), err
        else:
            assert code == 0, err
            assert json.loads(out)["command"] == runnable[1].command


def _problem_file(problem: str) -> Path:
    """The file a ``file:line: message`` problem points at."""
    match = PROBLEM_LINE.match(problem)
    assert match, f"not a file:line: problem: {problem!r}"
    return Path(match.group(1))


def _check_validate_output(code: int, out: str, err: str, oracle: Oracle) -> None:
    """One `validate --json` result against MLflow's verdict on the same directory."""
    assert code in (0, 2), err
    assert "Traceback" not in out + err
    doc = json.loads(out)
    assert (code == 2) == bool(doc["errors"]) == (doc["valid"] is False), doc
    for problem in doc["errors"]:
        assert PROBLEM_LINE.match(problem), problem
    if oracle.load_error is not None:
        assert code == 2, f"MLflow refuses this file ({oracle.load_error}) but validate passes it"
        return
    # validate also checks env files (python_env.yaml and its -r files), which MLflow reads only
    # when it builds the environment; a problem in the MLproject itself must be one MLflow hits.
    names = ("mlproject", *YAML_NAMES)
    in_mlproject = [p for p in doc["errors"] if _problem_file(p).name.lower() in names]
    if in_mlproject:
        failing = [n for n, e in oracle.entry_points.items() if e.error is not None]
        assert failing, f"validate reports {in_mlproject} but MLflow runs every entry point"


@pytest.mark.parametrize("directory", DIRS, ids=IDS)
def test_validate_json(directory: Path, ask_mlflow: Any, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    """`validate --json`: exit 0, or 2 exactly when there are problems; always JSON on stdout."""
    oracle: Oracle = ask_mlflow(directory)
    monkeypatch.chdir(oracle.cwd)
    code = cli.main(["validate", str(directory), "--json"])
    out, err = capsys.readouterr()
    _check_validate_output(code, out, err, oracle)
    if directory.name in SUBPROCESS_DIRS:
        args = [sys.executable, "-m", "projectrun", "validate", str(directory), "--json"]
        proc = subprocess.run(args, cwd=oracle.cwd, capture_output=True, text=True, timeout=60,
                              env=_child_env(), check=False)
        _check_validate_output(proc.returncode, proc.stdout, proc.stderr, oracle)


def test_path_default_missing_from_cwd_is_taken_from_the_project(
        ask_mlflow: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one deliberate difference: MLflow resolves a relative path default against its own cwd,
    so it fails unless started in the project; projectrun then looks in the project too and must
    give what `mlflow run .` started there gives. Checked on every corpus entry point where MLflow
    could not find such a default, after creating the files in a copy of the project."""
    cases = 0
    for directory in DIRS:
        oracle: Oracle = ask_mlflow(directory)
        for name, eo in oracle.entry_points.items():
            if eo.error is None or "no such file or directory" not in eo.error:
                continue
            scratch = tmp_path / f"case{cases}"
            copy = _writable_copy(directory, scratch / "a" / "b" / directory.name)
            ep = mlflow_spec.load_project(str(_mlflow_view(copy, scratch)))._entry_points[name]
            for p in ep.parameters.values():
                default = p.default
                if p.type != "path" or default is None or str(p.name) in eo.params:
                    continue
                target = copy / str(default)
                if str(default).endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("x\n")
            storage = scratch / "storage"
            storage.mkdir()
            with pytest.raises(Exception, match="no such file or directory"):
                _compute(ep, eo.params, oracle.cwd, storage)
            expected = _compute(ep, eo.params, copy, storage)
            monkeypatch.chdir(oracle.cwd)
            request = LaunchRequest(uri=str(copy), entry_point=name, parameters=dict(eo.params))
            assert plan(request).command == expected, (directory.name, name)
            cases += 1
    if not cases:
        pytest.skip("no corpus entry point has a relative path default missing from the cwd")
