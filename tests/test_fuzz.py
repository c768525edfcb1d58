"""Bad input, fuzzed: no input to the YAML loaders or to -P gives a traceback or an internal error.

In-process, hypothesis feeds generated text, bytes and YAML documents to every loader (MLproject,
python_env.yaml, conda.yaml, sweep files) and to -P parsing, and only ProjectRunError may come
out. A few generated inputs go through the real CLI, and every hostile case a new user could hit
(alias bomb, /dev/zero, a FIFO, a directory, deep nesting, non-UTF-8, 50 MB, 100k entry points,
an env file outside the project) is run as a user would, under a timeout and a 2 GB address-space
limit so that a blow-up fails the test instead of the machine. The budget is fixed
(derandomized, bounded example counts) so the file runs the same way in CI every time.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import FIXTURES, child_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projectrun import params, spec, sweepplan, yamlfile
from projectrun.envs import condaspec, pythonspec
from projectrun.errors import ProjectRunError

#: FUZZ_SCALE=20 pytest tests/test_fuzz.py hunts harder (and FUZZ_SEED=n elsewhere) than CI does
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(max_examples=150 * SCALE, deadline=None, database=None,
                derandomize="FUZZ_SEED" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLI_FUZZ = settings(FUZZ, max_examples=5 * SCALE)
#: a hostile input must be answered within this (the brief: "quickly"); a hang fails the test
TIMEOUT = 60
MEMORY = 2 * 1024**3

# ---------------------------------------------------------------------------------------------
# Generated input

KEYS = ["name", "entry_points", "main", "parameters", "command", "type", "default", "python_env",
        "conda_env", "docker_env", "image", "volumes", "environment", "dockerfile", "python",
        "build_dependencies", "dependencies", "pip", "channels", "variables", "prefix", "project",
        "entry_point", "method", "samples", "seed", "max_runs", "include", "exclude", "cases",
        "parallel", "timeout", "objective", "metric", "goal", "from", "to", "step", "lin", "num",
        "geom", "uniform", "log_uniform", "int_uniform", "choice", "on_failure", "retries",
        "<<", "databricks_spark_job", "python_file"]
WORDS = ["float", "int", "string", "path", "uri", "grid", "random", "minimize", "python=3.11",
         "pip", "numpy>=1.0", "-r requirements.txt", "-c ../x.txt", "echo {alpha}", "{", "}}",
         "{0}", "{x!z}", ".", "..", "../../../etc/hostname", "/dev/zero", "conda-forge", "3.10",
         "1e-3", "0x1F", "2001-02-30", "~", "", " ", "\t", "é", "\u2028", "30m", "-1", "1e400"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20),
                    st.floats(allow_nan=True), st.sampled_from(WORDS), st.text(max_size=12))
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=6), st.integers(-3, 3))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
#: YAML syntax soup: anchors, aliases, tags, merge keys, flow and block markers, directives
FRAGMENTS = ["- ", ": ", "? ", "{", "}", "[", "]", ", ", "&a ", "*a", "&b ", "*b", "!!int ",
             "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!str ",
             "!!python/object:os.system ", "!<tag:x> ", "<<: ", "|", ">-", "'", '"', "\\",
             "\n", "\n  ", "\n    ", "  ", "#", "%YAML 1.1\n", "%TAG ! x\n", "---\n", "...\n",
             "\t", "\r", "\x85", "\ufeff", "@", "`", *KEYS, *WORDS]
soup = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)


def _dumped(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, default_flow_style=None, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return ""


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid dump with a few characters changed: mostly-right files are what users write."""
    text = draw(documents.map(_dumped))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(FRAGMENTS)) + text[i + draw(st.integers(0, 2)):]
    return text


@st.composite
def shaped(draw: st.DrawFn, top: str) -> str:
    """A document with the loader's own top-level keys, so the checks after the schema run too."""
    body = draw(st.dictionaries(st.sampled_from(KEYS), documents, max_size=4))
    if top == "mlproject":
        eps = draw(st.dictionaries(st.sampled_from(["main", "b", "x.py"]), st.fixed_dictionaries(
            {"command": st.one_of(st.sampled_from(WORDS), scalars)},
            optional={"parameters": st.dictionaries(st.sampled_from(["alpha", "name", "p"]),
                                                    documents, max_size=3)}), max_size=2))
        body = {**body, "entry_points": eps}
    elif top == "sweep":
        body = {**body, "project": draw(st.sampled_from([".", "..", "x", "/nope"])),
                "parameters": draw(st.dictionaries(st.sampled_from(["alpha", "name"]), documents,
                                                   max_size=3))}
    return _dumped(body)


def texts(top: str) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=200), soup, mutated(), shaped(top))


encoded = texts("any").map(lambda t: t.encode("utf-8", "surrogatepass"))
raw_bytes = st.one_of(st.binary(max_size=200), encoded,
                      st.builds(lambda a, b: a + b, encoded, st.binary(max_size=4)))


def _write(path: Path, content: str | bytes) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))


# ---------------------------------------------------------------------------------------------
# Each loader, in process: only ProjectRunError may come out


def _project(root: Path, content: str | bytes) -> None:
    _write(root / "MLproject", content)
    try:
        project = spec.load_project(root)
    except ProjectRunError:
        return
    for name in [*project.entry_points, "main", "x.py"]:
        try:
            ep = project.entry_point(name)
            if ep.command is not None:
                resolved = params.resolve(ep, {}, cwd=root, project_dir=root)
                params.render_command(ep, resolved)
        except ProjectRunError:
            pass


def _python_env(root: Path, content: str | bytes) -> None:
    _write(root / "python_env.yaml", content)
    try:
        pythonspec.load_python_env(root / "python_env.yaml", root)
    except ProjectRunError:
        pass


def _conda(root: Path, content: str | bytes) -> None:
    _write(root / "conda.yaml", content)
    for load in (lambda p: condaspec.load_conda_env(p), lambda p: pythonspec.from_conda_yaml(p, root)):
        try:
            load(root / "conda.yaml")
        except ProjectRunError:
            pass


def _sweep(root: Path, content: str | bytes) -> None:
    _write(root / "sweep.yaml", content)
    try:
        plan = sweepplan.expand(sweepplan.load_sweep(root / "sweep.yaml"))
        sweepplan.check_against_entry_point(plan, spec.load_project(FIXTURES / "params").entry_point("main"))
    except ProjectRunError:
        pass


LOADERS = {"mlproject": _project, "python_env": _python_env, "conda": _conda, "sweep": _sweep}


@pytest.mark.parametrize("kind", LOADERS)
@FUZZ
@given(data=st.data())
def test_loader_text(kind: str, data: st.DataObject, tmp_path: Path) -> None:
    LOADERS[kind](tmp_path, data.draw(texts(kind)))


@pytest.mark.parametrize("kind", LOADERS)
@settings(FUZZ, max_examples=60 * SCALE)
@given(content=raw_bytes)
def test_loader_bytes(kind: str, content: bytes, tmp_path: Path) -> None:
    LOADERS[kind](tmp_path, content)


@settings(FUZZ, max_examples=40 * SCALE)
@given(doc=documents, nesting=st.integers(0, 130))
def test_deep_documents(doc: Any, nesting: int, tmp_path: Path) -> None:
    """Nesting around the limit, in flow and block style, under every key of every loader."""
    for _ in range(nesting):
        doc = [doc] if nesting % 2 else {"k": doc}
    for kind, key in (("mlproject", "entry_points"), ("python_env", "dependencies"),
                      ("conda", "dependencies"), ("sweep", "parameters")):
        for text in (f"{key}: {_dumped(doc) or '~'}", _dumped({key: doc})):
            LOADERS[kind](tmp_path, text)


def _safe_load(text: str) -> tuple[bool, Any]:
    """(True, data) when MLflow's ``yaml.safe_load`` accepts the text."""
    try:
        return True, yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError, RecursionError):
        return False, None  # refused by ours in one line: the loader tests above


@settings(FUZZ, max_examples=300 * SCALE)
@given(text=st.one_of(soup, mutated(), documents.map(_dumped)))
def test_same_values_as_safe_load(text: str) -> None:
    """What MLflow's ``yaml.safe_load`` accepts, ours reads as the same values (or refuses by a
    limit: aliases, nesting, control characters)."""
    accepted, expected = _safe_load(text)
    if not accepted:
        return
    try:
        data, _ = yamlfile._parse(Path("x.yaml"), yamlfile._decode(Path("x.yaml"), text.encode(
            "utf-8", "surrogatepass")))
    except ProjectRunError as exc:
        assert any(w in str(exc) for w in ("alias", "nested", "control", "UTF-8")), exc
        return
    assert repr(data) == repr(expected)


@settings(FUZZ, max_examples=150 * SCALE)
@given(doc=documents, style=st.sampled_from([None, True, False]))
def test_libyaml_path_reads_the_same(doc: Any, style: bool | None) -> None:
    """Large files go through libyaml; on what YAML writers produce it gives the same values.
    (On corner cases such as a BOM in mid-stream the two parsers differ; only files over
    PURE_PYTHON_BYTES, which MLflow itself could not load in reasonable time, take this path.)"""
    text = yaml.safe_dump(doc, default_flow_style=style, allow_unicode=True)
    data, lines = yamlfile._parse(Path("x.yaml"), text, fast=True)
    assert repr(data) == repr(yaml.safe_load(text))
    assert lines == yamlfile._parse(Path("x.yaml"), text)[1]


@FUZZ
@given(items=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
    ["name=x", "alpha=abc", "alpha=1e999", "epochs=1.5", "epochs= 7 ", "=x", "x", "data=",
     "source=http://[", "source=s3://b/k", "data=%zz", "data=file://host/x", "data=file:///nope",
     "name==", "alpha=nan", "epochs=99999999999999999999999", "source=::", "data=a\udcff"])),
    max_size=6))
def test_param_assignments(items: list[str], tmp_path: Path) -> None:
    project = spec.load_project(FIXTURES / "params")
    try:
        given_ = params.parse_assignments(items)
        ep = project.entry_point("main")
        params.render_command(ep, params.resolve(ep, given_, cwd=tmp_path, project_dir=project.directory))
    except ProjectRunError:
        pass


# ---------------------------------------------------------------------------------------------
# The real CLI


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def run_cli(*args: str | bytes, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``python -m projectrun ARGS`` in a child limited to 2 GB of address space."""
    return subprocess.run([sys.executable, "-m", "projectrun", *args], cwd=cwd, text=True,
                          errors="backslashreplace", capture_output=True, timeout=TIMEOUT,
                          env=child_env({"PROJECTRUN_HOME": str(home)}), preexec_fn=_limit_memory,
                          check=False)


def assert_clean(res: subprocess.CompletedProcess[str], codes: tuple[int, ...] = (0, 2)) -> None:
    assert res.returncode in codes, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr


def assert_one_line(res: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2 and exactly one ``projectrun: error:`` line holding every fragment."""
    assert_clean(res, (2,))
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error: ")]
    assert len(ours) == 1, res.stderr
    for fragment in fragments:
        assert fragment in ours[0], ours[0]
    return ours[0]


@pytest.fixture
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "projectrun-home"


@CLI_FUZZ
@given(text=st.one_of(soup, mutated(), shaped("mlproject")))
def test_cli_validate_generated(text: str, tmp_path_factory: pytest.TempPathFactory, home: Path) -> None:
    root = tmp_path_factory.mktemp("gen")
    _write(root / "MLproject", text)
    assert_clean(run_cli("validate", str(root), cwd=root, home=home))


@settings(CLI_FUZZ, max_examples=10 * SCALE)
@given(text=shaped("mlproject"), entry=st.sampled_from(["main", "b", "x.py"]),
       items=st.lists(st.sampled_from(["alpha=1", "name=a b", "p=;rm -rf", "=", "x", "alpha=é",
                                       "name=\x01\x7f", "name=\udcff"]), max_size=3))
def test_cli_dry_run_generated(text: str, entry: str, items: list[str],
                               tmp_path_factory: pytest.TempPathFactory, home: Path) -> None:
    root = tmp_path_factory.mktemp("gen")
    _write(root / "MLproject", text)
    argv = [os.fsencode(a) for i in items for a in ("-P", i)]
    res = run_cli(str(root), "-e", entry, "--dry-run", "--env-manager", "local", *argv,
                  cwd=root, home=home)
    assert_clean(res)


ALIAS_BOMB = "".join(
    f"{a}: &{a} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
    for p, a in zip(["", *"abcdefgh"], "abcdefghi")) + "entry_points:\n  main: {command: echo}\n"


def test_alias_bomb(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").write_text(ALIAS_BOMB)
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "MLproject:6: YAML aliases here repeat more than 100000 values")


def test_recursive_alias(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").write_text("entry_points: &e\n  main: {command: echo, x: *e}\n")
    assert_one_line(run_cli(str(tmp_path), "--dry-run", cwd=tmp_path, home=home),
                    "MLproject:2: alias '*e' is used inside the node it names")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_dev_zero_as_mlproject(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").symlink_to("/dev/zero")
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "MLproject:1: cannot read file: it is a character device (a symlink to /dev/zero)")


def test_fifo_as_mlproject(tmp_path: Path, home: Path) -> None:
    os.mkfifo(tmp_path / "MLproject")
    assert_one_line(run_cli(str(tmp_path), "--dry-run", cwd=tmp_path, home=home),
                    "MLproject:1: cannot read file: it is a named pipe (FIFO)")


def test_fifo_as_sweep_file(tmp_path: Path, home: Path) -> None:
    os.mkfifo(tmp_path / "sweep.yaml")
    assert_one_line(run_cli("sweep", "sweep.yaml", "--dry-run", cwd=tmp_path, home=home),
                    "sweep.yaml:1: cannot read file: it is a named pipe (FIFO)")


def test_fifo_as_env_file(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").write_text("python_env: env.yaml\nentry_points:\n  main: {command: echo}\n")
    os.mkfifo(tmp_path / "env.yaml")
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "env.yaml:1: cannot read file: it is a named pipe (FIFO)")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_requirements_file_is_a_device(tmp_path: Path, home: Path) -> None:
    (tmp_path / "python_env.yaml").write_text('python: "3.11"\ndependencies: ["-r /dev/zero"]\n')
    (tmp_path / "MLproject").write_text("entry_points:\n  main: {command: echo}\n")
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "python_env.yaml:2: requirements file '/dev/zero' cannot be read (it is a character device")


def test_directory_as_mlproject(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").mkdir()
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "MLproject:1: cannot read file: it is a directory")


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting(style: str, tmp_path: Path, home: Path) -> None:
    depth = 5000 if style == "flow" else 1000  # indentation: 1000 levels are 1 MB already
    body = "[" * depth + "]" * depth if style == "flow" else "".join(
        f"{'  ' * i}k:\n" for i in range(depth))
    (tmp_path / "MLproject").write_text(f"entry_points:\n  main: {{command: echo}}\nx: {body}\n"
                                        if style == "flow" else body)
    line = "3" if style == "flow" else "100"
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    f"MLproject:{line}: nested more than 100 levels deep")


def test_not_utf8(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").write_bytes(b"entry_points:\n  main: {command: echo}\nname: caf\xe9\n")
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "MLproject:3: not UTF-8 text: byte 0xe9 at offset 47 (column 10)")


def test_control_character(tmp_path: Path, home: Path) -> None:
    (tmp_path / "MLproject").write_text("entry_points:\n  main: {command: \"echo\x00\"}\n")
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "MLproject:2: invalid YAML: control character U+0000")


def test_fifty_megabytes(tmp_path: Path, home: Path) -> None:
    with open(tmp_path / "MLproject", "w") as fh:
        fh.write("entry_points:\n  main: {command: echo}\n")
        fh.writelines(f"# {'x' * (1024 * 1024 - 3)}\n" for _ in range(50))
    assert_one_line(run_cli("validate", str(tmp_path), cwd=tmp_path, home=home),
                    "cannot read file: it is 52.4 MB; projectrun reads files of at most 5 MB")


def test_hundred_thousand_entry_points(tmp_path: Path, home: Path) -> None:
    with open(tmp_path / "MLproject", "w") as fh:
        fh.write("entry_points:\n")
        fh.writelines(f"  ep{i}: {{command: echo {i}}}\n" for i in range(100_000))
    assert_one_line(run_cli(str(tmp_path), "-e", "ep7", "--dry-run", cwd=tmp_path, home=home),
                    "MLproject:25001: more than 100000 YAML values")


def test_many_entry_points_under_the_limit(tmp_path: Path, home: Path) -> None:
    with open(tmp_path / "MLproject", "w") as fh:
        fh.write("entry_points:\n")
        fh.writelines(f"  ep{i}: {{command: echo {i}}}\n" for i in range(20_000))
    res = run_cli(str(tmp_path), "-e", "ep19999", "--dry-run", cwd=tmp_path, home=home)
    assert_clean(res, (0,))
    assert "command:     echo 19999" in res.stdout


@pytest.mark.parametrize("key", ["python_env", "conda_env"])
def test_env_file_outside_the_project(key: str, tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "secret.yaml").write_text("python: '3.11'\n")
    (project / "MLproject").write_text(f"{key}: ../secret.yaml\nentry_points:\n  main: {{command: echo}}\n")
    assert_one_line(run_cli("validate", str(project), cwd=tmp_path, home=home),
                    f"MLproject:1: {key} file '../secret.yaml' is outside the project")


def test_env_file_symlink_outside_the_project(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "secret.yaml").write_text("python: '3.11'\n")
    (project / "python_env.yaml").symlink_to(tmp_path / "secret.yaml")
    (project / "MLproject").write_text("entry_points:\n  main: {command: echo}\n")
    assert_one_line(run_cli("validate", str(project), cwd=tmp_path, home=home),
                    "python_env.yaml: python_env file 'python_env.yaml' is outside the project")


def test_env_file_absolute_path_is_allowed(tmp_path: Path, home: Path) -> None:
    """MLflow joins with os.path.join, so an absolute path the user wrote is theirs to give."""
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "shared.yaml").write_text("python: '3.11'\n")
    (project / "MLproject").write_text(f"python_env: {tmp_path / 'shared.yaml'}\n"
                                       f"entry_points:\n  main: {{command: echo}}\n")
    res = run_cli("validate", str(project), cwd=tmp_path, home=home)
    assert_clean(res, (0,))
    assert str(tmp_path / "shared.yaml") in res.stdout


@pytest.mark.parametrize("value", [b"name=\xff\xfe", b"name=\x01\x1b[31m\x7f", "name=" + "é" * 50_000,
                                   b"=x", b"name", b"\xff=1", "name=a\u2028b"])
def test_param_weird_bytes(value: bytes | str, tmp_path: Path, home: Path) -> None:
    """argv cannot carry NUL; everything else it can carry is a value, or one line of usage."""
    res = run_cli(str(FIXTURES / "params"), "-P", value, "--dry-run", "--env-manager", "local",
                  cwd=tmp_path, home=home)
    assert_clean(res)
    if res.returncode == 2:
        assert_one_line(res)


@pytest.mark.parametrize("uri", ["http://[", "file://[x", "https://[::1/repo.git"])
def test_unparseable_project_uri(uri: str, tmp_path: Path, home: Path) -> None:
    res = run_cli(uri, "--dry-run", cwd=tmp_path, home=home)
    assert res.returncode == 2
    assert_one_line(res, uri, "not a valid path or URL")


def test_unparseable_tracking_uri(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "MLproject").write_text("entry_points:\n  main:\n    command: echo hi\n")
    env = {**os.environ, "HOME": str(home), "PROJECTRUN_HOME": str(home), "MLFLOW_TRACKING_URI": "http://["}
    res = subprocess.run([sys.executable, "-m", "projectrun", str(project), "--env-manager", "local"],
                         cwd=tmp_path, text=True, capture_output=True, env=env, timeout=60,
                         check=False)
    assert res.returncode == 2
    assert_one_line(res, "MLFLOW_TRACKING_URI=http://[", "not a valid URI")
    assert not (tmp_path / "mlflow.db").exists()
