"""`envs verify`: real envs corrupted the ways disks and people corrupt them, found, flagged, and
rebuilt by the next launch. The per-launch check stays cheap (the interpreter runs; a flag is
read); walking every file is verify's job."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, CliRunner, client_for

pytestmark = pytest.mark.slow


def _python_project(tmp_path: Path) -> Path:
    project = tmp_path / "pyenv"
    shutil.copytree(FIXTURES / "pyenv", project)
    return project


def _verify(cli: CliRunner, home: dict[str, str], *args: str) -> tuple[int, list[dict]]:  # type: ignore[type-arg]
    res = cli("envs", "verify", *args, "--json", env=home)
    return res.returncode, json.loads(res.stdout)


def _statuses(workdir: Path) -> list[str]:
    runs = client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["0"])
    return [r.info.status for r in runs]


def test_missing_site_packages_file_is_found_flagged_and_rebuilt(
        cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home")}
    project = _python_project(tmp_path)
    assert cli(str(project), env=home).returncode == 0
    code, verdicts = _verify(cli, home)
    assert code == 0 and [v["state"] for v in verdicts] == ["ok"]
    (entry,) = verdicts
    env_dir = Path(entry["path"])
    (six,) = env_dir.glob("lib/python*/site-packages/six.py")
    six.unlink()

    res = cli("envs", "verify", entry["key"][:6], env=home)
    assert res.returncode == 1
    assert "BROKEN" in res.stdout and "six-1.16.0.dist-info/RECORD" in res.stdout
    assert "1 broken (the next launch that needs one rebuilds it)" in res.stderr
    listed = cli("envs", "list", env=home)
    assert "(broken)" in listed.stdout

    again = cli(str(project), env=home)
    assert again.returncode == 0, again.stderr
    assert f"rebuilding virtualenv env {entry['key']}: envs verify found it broken" in again.stderr
    assert "six 1.16.0" in again.stdout and six.exists()
    assert _verify(cli, home)[0] == 0
    assert _statuses(workdir) == ["FINISHED", "FINISHED"]


def test_missing_record_and_deleted_interpreter(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home")}
    project = _python_project(tmp_path)
    assert cli(str(project), env=home).returncode == 0
    (entry,) = _verify(cli, home)[1]
    env_dir = Path(entry["path"])
    (record,) = env_dir.glob("lib/python*/site-packages/six-*.dist-info/RECORD")
    record.unlink()
    code, verdicts = _verify(cli, home)
    assert code == 1 and "six-1.16.0.dist-info has no RECORD file" in verdicts[0]["reason"]
    assert cli(str(project), env=home).returncode == 0  # rebuilt

    # A deleted interpreter needs no verify: the check before every use runs it.
    (env_dir / "bin" / "python").unlink()
    again = cli(str(project), env=home)
    assert again.returncode == 0, again.stderr
    assert f"rebuilding virtualenv env {entry['key']}" in again.stderr
    assert "is missing or points to an interpreter that no longer exists" in again.stderr
    assert _verify(cli, home)[0] == 0


def test_conda_prefix_missing_a_file_of_its_records(cli: CliRunner, workdir: Path, tmp_path: Path,
                                                    conda_env: dict[str, str]) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home"), **conda_env}
    project = tmp_path / "conda-demo"
    shutil.copytree(FIXTURES / "conda", project)
    assert cli(str(project), env=home).returncode == 0
    code, verdicts = _verify(cli, home)
    assert code == 0 and [v["state"] for v in verdicts] == ["ok"]
    prefix = Path(verdicts[0]["path"])
    (meta,) = prefix.glob("conda-meta/hello-tool-*.json")
    listed = json.loads(meta.read_text())["files"]
    tool = prefix / next(f for f in listed if f.startswith("bin/"))
    tool.unlink()
    code, verdicts = _verify(cli, home)
    assert code == 1 and f"listed in conda-meta/{meta.name} are missing" in verdicts[0]["reason"]
    again = cli(str(project), env=home)
    assert again.returncode == 0, again.stderr
    assert "envs verify found it broken" in again.stderr and tool.exists()

    # the pip section's distributions are checked too (six, installed by uv into the prefix)
    (six,) = prefix.glob("lib/python*/site-packages/six.py")
    six.unlink()
    code, verdicts = _verify(cli, home)
    assert code == 1 and "six-" in verdicts[0]["reason"]


def test_verify_of_nothing_and_of_an_unknown_key(cli: CliRunner, tmp_path: Path) -> None:
    home = {"PROJECTRUN_HOME": str(tmp_path / "home")}
    res = cli("envs", "verify", env=home)
    assert res.returncode == 0 and "0 environment(s) checked, 0 broken" in res.stderr
    res = cli("envs", "verify", "nope", env=home)
    assert res.returncode == 2 and "no cached environment matches 'nope'" in res.stderr
