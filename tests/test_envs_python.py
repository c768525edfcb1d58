"""The python_env kind: spec loading, cache keys, and real venv builds from PyPI (uv and pip)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slowpkg

from projectrun import cache
from projectrun.envs import Context, get_kind, interpreters
from projectrun.envs import python as pyenv
from projectrun.envs.pythonspec import from_conda_yaml, load_python_env, spec_for
from projectrun.errors import EnvBuildError, SpecError
from projectrun.spec import load_project

CURRENT = ".".join(map(str, sys.version_info[:2]))


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv(cache.HOME_ENV_VAR, str(path))
    for var in (pyenv.INSTALLER_ENV_VAR, interpreters.DOWNLOADS_ENV_VAR, "SLOWPKG_FLAG", "SLOWPKG_SLEEP"):
        monkeypatch.delenv(var, raising=False)
    return path


def make_project(root: Path, env_yaml: str | None, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "MLproject").write_text("name: t\nentry_points:\n  main:\n    command: python -V\n")
    if env_yaml is not None:
        (root / "python_env.yaml").write_text(textwrap.dedent(env_yaml))
    for name, text in (files or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def key_of(project_dir: Path, manager: str = "virtualenv") -> str:
    spec = spec_for(load_project(project_dir))
    interp = interpreters.find(spec.python, pyenv.find_uv())
    return cache.make_key(pyenv.key_inputs(spec, interp, manager))


class Prepare:
    """prepare() with its progress lines collected."""

    def __init__(self, manager: str = "virtualenv") -> None:
        self.manager = manager
        self.messages: list[str] = []
        self.log: list[str] = []  # installer output, for the run's log

    def __call__(self, project_dir: Path, verbose: bool = False):  # type: ignore[no-untyped-def]
        ctx = Context(report=self.messages.append, verbose=verbose, log=self.log.append)
        return get_kind(self.manager).prepare(load_project(project_dir), ctx)

    @property
    def builds(self) -> int:
        return sum(m.startswith("building python env") for m in self.messages)


def in_env(prepared, code: str, cwd: Path) -> str:  # type: ignore[no-untyped-def]
    """Run python code through the prepared prefix, the way the launcher runs an entry point."""
    run = prepared.invocation(f"python -c {json.dumps(code)}", dict(os.environ), cwd)
    return subprocess.run(run.argv, cwd=run.cwd, env=run.env, capture_output=True, text=True,
                          check=True).stdout.strip()


# --- loading python_env.yaml ---------------------------------------------------------------


def test_loads_mlflow_format_with_nested_requirement_files(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", """\
        python: "3.11"
        build_dependencies:
          - pip
        dependencies:
          - -r requirements.txt
          - --constraint=constraints.txt
          - idna  # trailing comment
        """, {"requirements.txt": "six\n-r more/extra.txt\n", "more/extra.txt": "tomli\n",
              "constraints.txt": "six<2\n"})
    spec = load_python_env(proj / "python_env.yaml", proj)
    assert spec.python == "3.11"
    assert spec.build_dependencies == ("pip",)
    assert spec.dependencies == ("-r requirements.txt", "--constraint=constraints.txt", "idna")
    assert [f.written for f in spec.files] == ["requirements.txt", "more/extra.txt", "constraints.txt"]
    assert pyenv.install_args([*spec.dependencies, "six ; python_version > '3'  # why", "# note"]) == [
        "-r", "requirements.txt", "--constraint=constraints.txt", "idna", "six ; python_version > '3'"]


def test_unquoted_python_version_gets_a_quoting_hint(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", "dependencies: [six]\npython: 3.10\n")
    with pytest.raises(SpecError) as info:
        load_python_env(proj / "python_env.yaml", proj)
    assert info.value.problems == [(
        f"{proj / 'python_env.yaml'}:2: 'python' must be a string, but YAML reads 3.10 as the number "
        f"3.1; quote it: python: \"3.10\"")]


def test_schema_problems_have_file_and_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", 'python: "3.11"\ndependencies:\n  - six\n  - 3\npackages: [x]\n')
    with pytest.raises(SpecError) as info:
        load_python_env(proj / "python_env.yaml", proj)
    first, second = info.value.problems
    assert first.startswith(f"{proj / 'python_env.yaml'}:4: ") and "dependencies" in first
    assert second == (f"{proj / 'python_env.yaml'}:5: unknown key 'packages' (python_env.yaml has "
                      f"only python, build_dependencies, dependencies)")


def test_missing_requirements_file_points_at_the_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", 'python: "3.11"\ndependencies:\n  - six\n  - -r reqs.txt\n')
    with pytest.raises(SpecError, match=r"python_env.yaml:4: requirements file 'reqs.txt' cannot be read"):
        load_python_env(proj / "python_env.yaml", proj)
    (proj / "reqs.txt").write_text("six\n-c nope.txt\n")
    with pytest.raises(SpecError, match=r"reqs.txt:2: constraints file 'nope.txt' cannot be read"):
        load_python_env(proj / "python_env.yaml", proj)


def test_conda_yaml_converted_like_mlflow(tmp_path: Path) -> None:
    conda = tmp_path / "conda.yaml"
    conda.write_text("name: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.11.7\n  - pip=24.0\n"
                     "  - numpy=1.26\n  - pip:\n    - six\n    - -r req.txt\n")
    (tmp_path / "req.txt").write_text("idna\n")
    spec = from_conda_yaml(conda, tmp_path)
    assert (spec.python, spec.build_dependencies, spec.dependencies) == ("3.11.7", ("pip==24.0",),
                                                                         ("six", "-r req.txt"))
    assert [f.written for f in spec.files] == ["req.txt"]
    assert any("numpy=1.26" in w for w in spec.warnings)
    conda.write_text("dependencies:\n  - python\n")
    with pytest.raises(SpecError, match=r"conda.yaml:2: 'python': python must be pinned"):
        from_conda_yaml(conda, tmp_path)


# --- cache keys -------------------------------------------------------------------------


def test_key_follows_content_not_location(tmp_path: Path) -> None:
    env = f'python: "{CURRENT}"\ndependencies: [-r requirements.txt]\n'
    a = make_project(tmp_path / "a", env, {"requirements.txt": "six\n"})
    b = make_project(tmp_path / "elsewhere" / "b", env, {"requirements.txt": "six\n"})
    assert key_of(a) == key_of(b)
    (b / "requirements.txt").write_text("six==1.17.0\n")
    assert key_of(a) != key_of(b)
    assert key_of(a, "uv") != key_of(a, "virtualenv")
    (a / "python_env.yaml").write_text(env + "build_dependencies: [pip]\n")
    assert key_of(a) != key_of(make_project(tmp_path / "c", env, {"requirements.txt": "six\n"}))


# --- real builds ------------------------------------------------------------------------


@pytest.mark.slow
def test_build_then_cache_hit_and_activation(tmp_path: Path, home: Path) -> None:
    proj = make_project(tmp_path / "p", f'python: "{CURRENT}"\ndependencies: [six, -r requirements.txt]\n',
                        {"requirements.txt": "tomli\n"})
    prepare = Prepare()
    first = prepare(proj)
    env_dir = home / "envs" / f"virtualenv-{first.key}"
    marker_mtime = (env_dir / cache.MARKER).stat().st_mtime_ns
    assert (first.manager, first.tag) == ("virtualenv", "virtualenv")
    run = first.invocation("true", {"PATH": "/usr/bin", "PYTHONHOME": "/x"}, proj)
    assert run.env == {"PATH": f"{env_dir}/bin:/usr/bin", "VIRTUAL_ENV": str(env_dir)}
    assert prepare.log and not any("Installed" in m for m in prepare.messages)  # uv's lines: log only
    assert prepare.builds == 1
    assert "(python 3." in prepare.messages[0] and "2 requirements" in prepare.messages[0]

    second = prepare(proj)
    assert second == first and prepare.builds == 1
    assert (env_dir / cache.MARKER).stat().st_mtime_ns == marker_mtime
    prefix = in_env(second, "import sys, six, tomli; print(sys.prefix)", proj)
    assert Path(prefix) == env_dir
    in_env(second, "import pip", proj)  # the virtualenv manager seeds pip, as `python -m venv` does

    prepare(proj, verbose=True)
    assert prepare.messages[-1].startswith(f"using cached python env {first.key}")


@pytest.mark.slow
def test_spec_or_requirements_change_gives_a_new_env(tmp_path: Path, home: Path) -> None:
    proj = make_project(tmp_path / "p", f'python: "{CURRENT}"\ndependencies: [-r requirements.txt]\n',
                        {"requirements.txt": "six\n"})
    prepare = Prepare()
    first = prepare(proj)
    (proj / "requirements.txt").write_text("six\nidna\n")
    second = prepare(proj)
    assert second.key != first.key and prepare.builds == 2
    assert in_env(second, "import idna; print('ok')", proj) == "ok"
    (proj / "python_env.yaml").write_text(f'python: "{CURRENT}"\ndependencies: [-r requirements.txt, tomli]\n')
    third = prepare(proj)
    assert third.key not in (first.key, second.key) and prepare.builds == 3
    assert {e.key for e in cache.list_entries()} == {first.key, second.key, third.key}


@pytest.mark.slow
def test_broken_env_is_rebuilt(tmp_path: Path, home: Path) -> None:
    proj = make_project(tmp_path / "p", None)  # no env file: a bare venv with the current python
    prepare = Prepare()
    first = prepare(proj)
    env_dir = home / "envs" / f"virtualenv-{first.key}"
    (env_dir / "bin" / "python").unlink()
    assert prepare(proj).key == first.key and prepare.builds == 2
    assert any(m.startswith(f"rebuilding virtualenv env {first.key}:") for m in prepare.messages)
    version = in_env(first, "import platform; print(platform.python_version())", proj)
    assert version == ".".join(map(str, sys.version_info[:3]))


@pytest.mark.slow
def test_uv_manager_venv_has_no_pip(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", "dependencies: [six]\n")
    prepared = Prepare("uv")(proj)
    assert prepared.tag == "uv"
    assert in_env(prepared, "import importlib.util as u; print(u.find_spec('pip') is None)", proj) == "True"


@pytest.mark.slow
def test_pip_fallback(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pyenv.INSTALLER_ENV_VAR, "pip")
    proj = make_project(tmp_path / "p", f'python: "{CURRENT}"\ndependencies: [six]\n')
    prepare = Prepare()
    prepared = prepare(proj)
    assert "with pip in" in prepare.messages[0]
    assert in_env(prepared, "import six; print('ok')", proj) == "ok"
    meta = cache.read_meta(home / "envs" / f"virtualenv-{prepared.key}")
    assert meta["inputs"]["installer"] == "pip"
    monkeypatch.delenv(pyenv.INSTALLER_ENV_VAR)
    assert prepare(proj).key == prepared.key and prepare.builds == 1  # the installer is not in the key


def test_missing_python_is_one_clear_line(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", 'python: "3.5"\ndependencies: [six]\n')
    with pytest.raises(EnvBuildError) as info:
        Prepare()(proj)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"python 3.5 (asked for in {proj / 'python_env.yaml'}) was not found")
    assert interpreters.DOWNLOADS_ENV_VAR in message and "pyenv install 3.5" in message
    assert not (cache.root() / "envs").exists() or cache.list_entries() == []


@pytest.mark.slow
def test_other_installed_python_is_found(tmp_path: Path) -> None:
    other = next((v for v in ("3.12", "3.10", "3.13", "3.11")
                  if v != CURRENT and _findable(v)), None)
    if other is None:
        pytest.skip("no second Python version installed")
    proj = make_project(tmp_path / "p", f'python: "{other}"\n')
    prepared = Prepare()(proj)
    version = in_env(prepared, "import platform; print(platform.python_version())", proj)
    assert version.startswith(other + ".")


def _findable(version: str) -> bool:
    try:
        interpreters.find(version, pyenv.find_uv())
    except EnvBuildError:
        return False
    return True


# --- concurrency and interruption (subprocess builders) ---------------------------------


CHILD = """
import json, sys
from projectrun import cache
from projectrun.envs import Context, get_kind
from projectrun.spec import load_project
messages = []
prepared = get_kind("virtualenv").prepare(load_project(sys.argv[1]), Context(report=messages.append))
meta = cache.read_meta(cache.entry_path("virtualenv", prepared.key))
print(json.dumps({"key": prepared.key, "build_id": meta["build_id"], "messages": messages}))
"""


def slow_project(root: Path) -> Path:
    return make_project(root, f'python: "{CURRENT}"\ndependencies: [six, ./slowpkg]\n', slowpkg.FILES)


def child(project_dir: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(project_dir)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_parallel_builders_build_once(tmp_path: Path) -> None:
    proj = slow_project(tmp_path / "p")
    procs = [child(proj, SLOWPKG_SLEEP="1.5") for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    results = [json.loads(out) for out, _ in outputs]
    builds = [r for r in results if any(m.startswith("building python env") for m in r["messages"])]
    waits = [r for r in results if any(m.startswith("waiting for another projectrun") for m in r["messages"])]
    assert len(builds) == 1 and len(waits) >= 1
    assert len({r["key"] for r in results}) == 1 and len({r["build_id"] for r in results}) == 1


@pytest.mark.slow
def test_killed_build_is_never_reused(tmp_path: Path, home: Path) -> None:
    proj = slow_project(tmp_path / "p")
    flag = tmp_path / "started"
    # The installer runs in a process group of its own, so the SIGKILL below orphans it and the
    # rebuild waits for it (it holds the build lock): its stall is kept short.
    proc = child(proj, SLOWPKG_FLAG=str(flag), SLOWPKG_SLEEP="8")
    deadline = time.monotonic() + 60
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGKILL)  # the builder and its installer, mid-install
    proc.wait()
    [entry] = cache.list_entries()
    assert not entry.complete and (entry.path / "bin" / "python").exists()

    prepare = Prepare()
    prepared = prepare(proj)
    assert prepared.key == entry.key and prepare.builds == 1
    assert in_env(prepared, "import slowpkg, six; print(slowpkg.VALUE)", proj) == "42"
