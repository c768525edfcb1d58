"""Launching git URLs through the CLI: tags, the clone cache, versions, and bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CliRunner, client_for
from gitrepos import Daemon, Origin


def _run(workdir: Path, exp: str = "0"):  # type: ignore[no-untyped-def]
    runs = client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs([exp])
    assert len(runs) == 1
    return runs[0]


def test_git_url_with_branch_records_mlflow_git_tags(cli: CliRunner, workdir: Path,
                                                      origin: Origin, daemon: Daemon) -> None:
    url = f"{daemon.url}/origin.git#sub/proj"
    res = cli(url, "-v", "dev", env={"PROJECTRUN_HOME": str(workdir / "home")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "dev"
    tags = _run(workdir).data.tags
    assert tags["mlflow.source.name"] == url  # MLflow records the URI as given
    assert tags["mlflow.source.git.commit"] == origin.shas["dev"]
    assert tags["mlflow.source.git.repoURL"] == f"{daemon.url}/origin.git"
    assert tags["mlflow.source.git.branch"] == "dev"
    assert tags["mlflow.source.git.dirty"] == "false"


def test_second_launch_fetches_instead_of_cloning(cli: CliRunner, workdir: Path, origin: Origin) -> None:
    home = {"PROJECTRUN_HOME": str(workdir / "home")}
    url = f"{origin.file_url}#sub/proj"
    first = cli(url, "-v", "v1.0", env=home)
    assert first.returncode == 0, first.stderr
    assert "cloning" in first.stderr and first.stdout.strip() == "1.0"
    second = cli(url, "-v", origin.shas["c2"][:8], env=home)
    assert second.returncode == 0, second.stderr
    assert "cloning" not in second.stderr and second.stdout.strip() == "1.1"
    listed = cli("sources", "list", "--json", env=home)
    assert '"url"' in listed.stdout and origin.file_url in listed.stdout
    offline = cli(url, "-v", "v1.1", "--offline", env=home)
    assert offline.returncode == 0 and "fetching" not in offline.stderr
    mirror = next((workdir / "home" / "git").glob("*.git"))
    worktrees = mirror / "worktrees"
    assert not worktrees.exists() or not list(worktrees.iterdir())  # every checkout was removed


def test_local_repo_with_version_leaves_working_copy_alone(cli: CliRunner, workdir: Path,
                                                           origin: Origin, tmp_path: Path) -> None:
    import subprocess

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin.bare), str(clone)], check=True)
    res = cli(f"{clone}#sub/proj", "-v", "v1.0", env={"PROJECTRUN_HOME": str(workdir / "home")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1.0"
    assert (clone / "VERSION").read_text() == "main"  # MLflow would have checked out v1.0 here


@pytest.mark.parametrize("suffix,args,fragment", [
    ("#sub/proj", ["-v", "nope"],  # newest first
     "no branch, tag or commit 'nope'; branches: main, dev; tags: v1.1, v1.0"),
    ("#sub/missing", ["-v", "v1.0"], "no subdirectory 'sub/missing'"),
    ("", ["-v", "v1.0"], "no MLproject file at the repository root"),
])
def test_bad_git_input_is_one_line_exit_2(cli: CliRunner, workdir: Path, origin: Origin,
                                          suffix: str, args: list[str], fragment: str) -> None:
    res = cli(origin.file_url + suffix, *args, env={"PROJECTRUN_HOME": str(workdir / "home")})
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert len(errors) == 1 and fragment in errors[0], res.stderr
    assert origin.file_url in errors[0]
    assert not (workdir / "mlflow.db").exists()


def test_not_a_repository(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.git").mkdir()
    res = cli(f"file://{tmp_path}/nothing-here.git", env={"PROJECTRUN_HOME": str(workdir / "home")})
    assert res.returncode == 2, res.stderr
    assert "nothing-here.git" in res.stderr.splitlines()[-1]
    assert not list((workdir / "home").glob("git/*.git"))  # no half-written mirror


def test_ext_transport_refused(cli: CliRunner, workdir: Path) -> None:
    res = cli("ext::sh -c touch% /tmp/pwned", env={"PROJECTRUN_HOME": str(workdir / "home")})
    assert res.returncode == 2
    assert "projectrun: error:" in res.stderr and not Path("/tmp/pwned").exists()


def test_a_file_remote_that_is_gone_is_served_from_the_mirror(cli: CliRunner, workdir: Path,
                                                               tmp_path: Path) -> None:
    """Before, a vanished ``file://`` repository read as "no such directory, and not a git URL"
    though its mirror was cached; it is unreachable like a host that is down."""
    from gitrepos import make_origin

    origin = make_origin(tmp_path / "moving")
    url = f"{origin.file_url}#sub/proj"
    home = {"PROJECTRUN_HOME": str(workdir / "home")}
    assert cli(url, "-v", "v1.1", env=home).returncode == 0
    origin.bare.rename(origin.bare.with_name("moved.git"))
    again = cli(url, "-v", "v1.1", env=home)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "1.1" and "using the cached copy" in again.stderr
    default = cli(url, env=home)  # no -v: the mirror's default branch
    assert default.returncode == 0 and default.stdout.strip() == "main", default.stderr
    missing = cli(url, "-v", "nope", env=home)
    errors = [ln for ln in missing.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert missing.returncode == 1 and len(errors) == 1, missing.stderr
    assert "cannot reach" in errors[0] and "no version 'nope'" in errors[0]
