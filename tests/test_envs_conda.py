"""conda_env projects end to end: real packages from a channel the session builds, no conda.

Every test runs the real CLI against a real sqlite store; channels are a file:// tree and the same
tree over http on 127.0.0.1 (tests/condachannel.py), so nothing needs conda-forge.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, CliRunner, client_for, only_run

pytestmark = pytest.mark.slow


def sqlite_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def project(tmp_path: Path, conda_yaml: str, name: str = "proj",
            command: str = "hello-tool && python show.py", files: dict[str, str] | None = None) -> Path:
    """The demo's shape with another conda.yaml."""
    root = tmp_path / name
    root.mkdir()
    shutil.copy(FIXTURES / "conda" / "show.py", root / "show.py")
    (root / "MLproject").write_text(f"name: {name}\nconda_env: conda.yaml\nentry_points:\n"
                                    f"  main:\n    command: \"{command}\"\n")
    (root / "conda.yaml").write_text(conda_yaml)
    for rel, text in (files or {}).items():
        (root / rel).write_text(text)
    return root


def shown(stdout: str) -> dict:  # type: ignore[type-arg]
    """The JSON line show.py printed."""
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("{")))


def test_quick_start_shape_runs_activated_with_mlflow_tags(
        cli: CliRunner, workdir: Path, conda_env: dict[str, str], tmp_path: Path) -> None:
    home = Path(os.environ["PROJECTRUN_HOME"])
    demo = tmp_path / "conda-demo"
    shutil.copytree(FIXTURES / "conda", demo)
    first = cli(str(demo), "-P", "greeting=hi there", env=conda_env)
    assert first.returncode == 0, first.stderr
    out = shown(first.stdout)
    prefix = Path(out["prefix"])
    assert prefix.parent == home / "envs" and prefix.name.startswith("conda-")
    assert out["executable"].startswith(str(prefix)) and out["six"] == "1.17.0"
    assert out["greeting"] == "hi there" and out["hello_tool"] == str(prefix / "bin" / "hello-tool")
    assert out["env"]["CONDA_PREFIX"] == str(prefix) and out["env"]["CONDA_SHLVL"] == "1"
    assert out["env"]["CONDA_DEFAULT_ENV"] == str(prefix) and out["env"]["VIRTUAL_ENV"] is None
    assert out["env"]["HELLO_TOOL_HOME"] == f"{prefix}/share/hello-tool"  # set by activate.d
    assert "hello-tool 2.0" in first.stdout
    # progress: a few plain lines (not a TTY) and a one-line summary; uv's lines only in the log
    assert f"building conda env {prefix.name[6:]}" in first.stderr
    assert f"built conda env {prefix.name[6:]}: " in first.stderr and " packages, " in first.stderr
    assert "six==1.17.0" not in first.stderr
    assert len(first.stderr.splitlines()) <= 10, first.stderr

    run = only_run(sqlite_uri(workdir))
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mlflow.project.env"] == "conda" and tags["mlflow.source.type"] == "PROJECT"
    assert tags["mlflow.project.entryPoint"] == "main" and tags["mlflow.source.name"] == str(demo)
    assert tags["mlflow.project.backend"] == "local"
    assert tags["projectrun.env.key"] == prefix.name[6:]
    assert run.data.params == {"greeting": "hi there"}
    log = Path(client_for(sqlite_uri(workdir)).download_artifacts(
        run.info.run_id, "projectrun/output.log", str(tmp_path))).read_text()
    assert "six==1.17.0" in log and "hello-tool 2.0" in log  # build output is in the run's log

    second = cli(str(demo), env=conda_env)
    assert second.returncode == 0, second.stderr
    assert shown(second.stdout)["prefix"] == str(prefix)
    assert "conda env" not in second.stderr  # nothing about envs on a cached launch
    verbose = cli(str(demo), "--verbose", env=conda_env)
    assert f"using cached conda env {prefix.name[6:]}" in verbose.stderr


def test_conda_is_the_default_and_virtualenv_keeps_mlflows_conversion(
        cli: CliRunner, conda_env: dict[str, str]) -> None:
    dry = cli(str(FIXTURES / "conda"), "--dry-run", "--json")
    assert json.loads(dry.stdout)["env_manager"] == "conda"
    local = cli(str(FIXTURES / "conda"), "--env-manager", "local", "-e", "show.py", env=conda_env)
    assert local.returncode == 0 and shown(local.stdout)["prefix"] == sys.prefix


def test_channel_alias_from_condarc_over_http(cli: CliRunner, tmp_path: Path, conda_http: str) -> None:
    condarc = tmp_path / "condarc"
    condarc.write_text(f"channel_alias: {conda_http}\n")
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                   "  - hello-tool=1.0\n  - extra::extra-tool\n  - pip:\n    - six==1.17.0\n",
                   command="hello-tool && extra-tool && python show.py")
    res = cli(str(proj), env={"CONDARC": str(condarc)})
    assert res.returncode == 0, res.stderr
    assert "hello-tool 1.0" in res.stdout and "extra-tool 0.1" in res.stdout


def test_parallel_launches_build_once_and_envs_share_the_package_cache(
        cli: CliRunner, tmp_path: Path, conda_env: dict[str, str], workdir: Path) -> None:
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                   "  - tinypkg\n  - pip:\n    - six==1.17.0\n",
                   command="python -c 'import tinypkg, six, sys; print(sys.prefix)'")
    def conda_envs() -> int:
        listed = cli("envs", "list", "--json")
        return [e["kind"] for e in json.loads(listed.stdout)].count("conda")

    before = conda_envs()
    env = {**os.environ, **conda_env}
    for k in list(env):
        if k.startswith("MLFLOW_"):
            env.pop(k)
    procs = [subprocess.Popen([sys.executable, "-m", "projectrun", str(proj)], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
    assert sum("building conda env" in err for _, _, err in results) == 1
    assert len({out.strip().splitlines()[-1] for _, out, _ in results}) == 1
    # a second env with the same python: its files are hard links into the shared package cache
    other = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n",
                    name="other", command="python -c 'import sys; print(sys.prefix)'")
    res = cli(str(other), env=conda_env)
    assert res.returncode == 0, res.stderr
    libpython = next(Path(res.stdout.strip().splitlines()[-1]).glob("lib/libpython3*.so*"))
    assert libpython.stat().st_nlink >= 3  # the cache and both envs
    assert conda_envs() == before + 2


def test_lock_then_runs_install_exactly_the_lock(cli: CliRunner, tmp_path: Path,
                                                 conda_env: dict[str, str]) -> None:
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                   "  - hello-tool\n  - pip:\n    - six==1.17.0\n")
    locked = cli("lock", str(proj), env=conda_env)
    assert locked.returncode == 0, locked.stderr
    assert "wrote" in locked.stderr and "packages for linux-64" in locked.stderr
    lock = yaml.safe_load((proj / "conda-lock.yml").read_text())
    names = {p["name"]: p for p in lock["package"]}
    assert names["hello-tool"]["version"] == "2.0" and "libgreet" in names
    assert all(p["hash"]["sha256"] and p["hash"]["md5"] and p["manager"] == "conda"
               for p in lock["package"])
    assert lock["metadata"]["platforms"] == ["linux-64"] and lock["version"] == 1

    run = cli(str(proj), env=conda_env)
    assert run.returncode == 0, run.stderr
    assert "conda-lock.yml (locked)" in run.stderr and "hello-tool 2.0" in run.stdout

    # a lock that no longer matches its conda.yaml is refused in one line, nothing re-solved
    (proj / "conda.yaml").write_text((proj / "conda.yaml").read_text().replace(
        "  - hello-tool\n", "  - hello-tool=1.0\n"))
    stale = cli(str(proj), env=conda_env)
    assert stale.returncode == 2, stale.stderr
    line = [ln for ln in stale.stderr.splitlines() if "error" in ln]
    assert len(line) == 1 and "conda-lock.yml: out of date" in line[0]
    assert f"projectrun lock {proj}" in line[0] and "Traceback" not in stale.stderr

    relock = cli("lock", str(proj), env=conda_env)
    assert relock.returncode == 0, relock.stderr
    text = (proj / "conda-lock.yml").read_text()
    tool = next(p for p in yaml.safe_load(text)["package"] if p["name"] == "hello-tool")
    (proj / "conda-lock.yml").write_text(text.replace(tool["hash"]["sha256"], "0" * 64))
    tampered = cli(str(proj), env=conda_env)
    assert tampered.returncode == 1, tampered.stderr
    assert "hash" in tampered.stderr.lower() and "Traceback" not in tampered.stderr


@pytest.mark.parametrize("conda_yaml, code, expected", [
    ("channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - foo bar baz qux\n", 2,
     "conda.yaml:4"),
    ("channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - legacy-tool\n", 1,
     "legacy-tool"),
    ("channels: [conda-forge]\ndependencies:\n  - no-such-package-xyz\n", 1,
     "no-such-package-xyz"),
    ("channels: ['http://127.0.0.1:9/nowhere']\ndependencies:\n  - python\n", 1,
     "http://127.0.0.1:9/nowhere"),
    (("channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip:\n"
      "    - no-such-pypi-package-projectrun-xyz==9.9\n"), 1,
     "no-such-pypi-package-projectrun-xyz"),
    ("channels: [conda-forge\ndependencies: []\n", 2, "conda.yaml:"),
])
def test_bad_conda_env_is_one_line_and_the_run_is_not_left_running(
        cli: CliRunner, tmp_path: Path, workdir: Path, conda_env: dict[str, str],
        conda_yaml: str, code: int, expected: str) -> None:
    proj = project(tmp_path, conda_yaml)
    res = cli(str(proj), env=conda_env)
    assert res.returncode == code, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert len(errors) == 1 and expected in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    if code == 1:  # build failures happen after the run exists: it ends FAILED
        assert only_run(sqlite_uri(workdir)).info.status == "FAILED"
        assert "solved" not in errors[0] or "channels searched" in errors[0]


def test_failed_pip_step_is_never_reused(cli: CliRunner, tmp_path: Path,
                                         conda_env: dict[str, str]) -> None:
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                   "  - pip:\n    - -r requirements.txt\n",
                   files={"requirements.txt": "no-such-pypi-package-projectrun-xyz==9.9\n"},
                   command="python -c 'import six; print(six.__version__)'")
    assert cli(str(proj), env=conda_env).returncode == 1
    (proj / "requirements.txt").write_text("six==1.17.0\n")
    fixed = cli(str(proj), env=conda_env)
    assert fixed.returncode == 0, fixed.stderr
    assert "building conda env" in fixed.stderr and fixed.stdout.strip() == "1.17.0"


def test_validate_checks_conda_yaml(cli: CliRunner, tmp_path: Path) -> None:
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - numpy >>=1.2\n")
    res = cli("validate", str(proj))
    assert res.returncode == 2 and f"{proj / 'conda.yaml'}:3" in res.stderr, res.stderr


def test_rattler_never_crashes_the_exit_code(cli: CliRunner, tmp_path: Path,
                                              conda_env: dict[str, str]) -> None:
    """rattler's gateway can crash interpreter finalisation (exit 134/139 in a few % of runs);
    the CLI leaves without finalising, so every one of these solves exits 0."""
    proj = project(tmp_path, "channels: [conda-forge]\ndependencies:\n  - python=3.11\n  - tinypkg\n")
    codes = [cli("lock", str(proj), env=conda_env).returncode for _ in range(12)]
    assert codes == [0] * 12
