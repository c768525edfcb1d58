"""Hostile input through the real CLI: -P values are data, never shell; project-relative paths
(``#subdir``, ``-e script``, ``path`` defaults) cannot leave the project unless the user gives an
absolute path.

Rule for ``path`` parameters: a value the user passes with -P is the user's own path, relative
to their working directory (as in MLflow) or absolute, and may be anywhere. What the project's
author wrote (a default, looked up in the checkout when it is not in the cwd) may not reach
outside the git checkout it came from. A default such as ``../../data/raw.csv`` in a subdirectory
project stays valid: real MLprojects do that inside their repository.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import CliRunner, client_for
from gitrepos import commit, git

DUMP = "import json, sys; print('ARGV ' + json.dumps(sys.argv[1:]))\n"

HOSTILE = [
    "; touch pwned",
    "$(touch pwned)",
    "`touch pwned`",
    "a && touch pwned || touch pwned",
    "line one\nline two; touch pwned",
    "it's \"quoted\" 'twice'",
    "héllo ✓ 日本語 🚀",
    "--flag=value",
    "*",
    "~",
    "> pwned",
    "  spaced  out  ",
    "",
    "back\\slash\\",
    "{b} {0} %s",
    "$HOME ${PATH}",
    "-",
    "\t",
]


def dump_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "MLproject").write_text(textwrap.dedent("""\
        name: dump
        entry_points:
          main:
            parameters:
              a: string
              b: {type: string, default: x}
            command: "python dump.py {a} {b}"
        """))
    (root / "dump.py").write_text(DUMP)
    return root


def argv(stdout: str) -> list[str]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("ARGV "))
    return list(json.loads(line[len("ARGV "):]))


def only_run(workdir: Path):  # type: ignore[no-untyped-def]
    (run,) = client_for(f"sqlite:///{workdir / 'mlflow.db'}").search_runs(["0"])
    return run


@pytest.mark.parametrize("value", HOSTILE, ids=[repr(v)[:24] for v in HOSTILE])
def test_declared_and_extra_values_arrive_as_one_argument_each(
        cli: CliRunner, workdir: Path, tmp_path: Path, value: str) -> None:
    project = dump_project(tmp_path / "p")
    res = cli(str(project), "-P", f"a={value}", "-P", f"b={value}", "-P", f"extra={value}")
    assert res.returncode == 0, res.stderr
    assert argv(res.stdout) == [value, value, "--extra", value]
    assert not (workdir / "pwned").exists() and not (project / "pwned").exists()
    params = only_run(workdir).data.params
    assert params == {"a": value, "b": value, "extra": value}  # logged as given


def test_a_hostile_extra_param_name_is_one_argument_too(cli: CliRunner, workdir: Path,
                                                        tmp_path: Path) -> None:
    project = dump_project(tmp_path / "p")
    res = cli(str(project), "-P", "a=1", "-P", "x;touch pwned=2")
    assert res.returncode == 0, res.stderr
    assert argv(res.stdout) == ["1", "x", "--x;touch pwned", "2"]
    assert not (project / "pwned").exists()


def test_nul_is_refused_before_anything_is_recorded(workdir: Path, tmp_path: Path) -> None:
    """NUL cannot pass through argv at all: execve() takes C strings, so `-P a=x<NUL>y` never
    reaches projectrun's command line (the shell or Python refuses it first). From Python it
    could: it is one ParameterError before any run exists, not a ValueError from Popen."""
    import projectrun
    from projectrun.errors import ParameterError

    project = dump_project(tmp_path / "p")
    with pytest.raises(ParameterError, match="contains a NUL character"):
        projectrun.run(str(project), parameters={"a": "x\0y"})
    assert not (workdir / "mlflow.db").exists()
    with pytest.raises(ValueError, match="null byte"):
        subprocess.run([sys.executable, "-m", "projectrun", str(project), "-P", "a=x\0y"],
                       check=False)


# --- entry-point scripts ------------------------------------------------------------------------


def test_script_outside_the_project_is_refused(cli: CliRunner, workdir: Path, tmp_path: Path) -> None:
    project = dump_project(tmp_path / "deep" / "p")
    outside = tmp_path / "x.py"
    outside.write_text(DUMP)
    res = cli(str(project), "-e", "../../x.py")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        (f"projectrun: error: -e ../../x.py: the script is outside the project directory "
         f"{project}; give a path inside it, or an absolute path")]
    (project / "link.py").symlink_to(outside)  # a symlink is followed before the check
    assert cli(str(project), "-e", "link.py").returncode == 2
    assert not (workdir / "mlflow.db").exists()  # nothing was recorded

    (project / "sub").mkdir()
    inside = cli(str(project), "-e", "sub/../dump.py", "-P", "k=v")
    assert inside.returncode == 0, inside.stderr
    absolute = cli(str(project), "-e", str(outside), "-P", "k=v")  # asked for: allowed
    assert absolute.returncode == 0, absolute.stderr
    assert argv(absolute.stdout) == ["--k", "v"]


# --- #subdir ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["..", "../other", "a/../../other", "/../.."])
def test_local_subdir_cannot_leave_the_project(cli: CliRunner, tmp_path: Path, sub: str) -> None:
    project = dump_project(tmp_path / "p")
    (tmp_path / "other").mkdir()
    (project / "a").mkdir()
    res = cli(f"{project}#{sub}")
    assert res.returncode == 2
    assert f"subdirectory '{sub}' points outside the project" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository: a project in sub/proj, data beside it, a symlink out of the repo."""
    work = tmp_path / "repo"
    git("init", "-q", str(work))
    mlproject = textwrap.dedent("""\
        name: inrepo
        entry_points:
          main:
            parameters:
              data: {type: path, default: ../../data/x.csv}
            command: "python -c 'import sys; print(open(sys.argv[1]).read())' {data}"
          escape:
            parameters:
              data: {type: path, default: ../../../secret.txt}
            command: "python -c 'import sys; print(open(sys.argv[1]).read())' {data}"
        """)
    commit(work, {"sub/proj/MLproject": mlproject, "data/x.csv": "in-repo data\n"}, "project")
    (work / "escape").symlink_to(tmp_path)
    git("add", "escape", cwd=work)
    git("commit", "-q", "-m", "symlink", cwd=work)
    return work


@pytest.mark.parametrize("sub", ["../..", "sub/../..", "escape"])
def test_git_subdir_cannot_leave_the_checkout(cli: CliRunner, repo: Path, workdir: Path,
                                              sub: str) -> None:
    res = cli(f"{repo.as_uri()}#{sub}", "-v", "main")
    assert res.returncode == 2, res.stderr
    assert f"subdirectory '{sub}' points outside the repository" in res.stderr
    assert not (workdir / "mlflow.db").exists()


def test_path_defaults_may_not_leave_the_checkout(cli: CliRunner, repo: Path, workdir: Path,
                                                  tmp_path: Path) -> None:
    tmp = tmp_path / "t"  # where the per-launch checkout lands: its parent holds "secret.txt"
    tmp.mkdir()
    (tmp / "secret.txt").write_text("not the project's\n")
    env = {"TMPDIR": str(tmp)}
    ok = cli(f"{repo.as_uri()}#sub/proj", "-v", "main", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "in-repo data" in ok.stdout  # ../../data inside the repository is fine

    res = cli(f"{repo.as_uri()}#sub/proj", "-v", "main", "-e", "escape", env=env)
    assert res.returncode == 2, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error:")]
    assert errors == [
        ("projectrun: error: default data=../../../secret.txt: 'data' is a path parameter whose "
         "default ../../../secret.txt points outside the project's checkout; pass -P data=PATH "
         "to use a file elsewhere")]
    assert "Traceback" not in res.stderr

    mine = tmp / "secret.txt"  # the user's own -P path, relative to the cwd: theirs to give
    given = cli(f"{repo.as_uri()}#sub/proj", "-v", "main", "-e", "escape", "-P",
                f"data={os.path.relpath(mine, workdir)}", env=env)
    assert given.returncode == 0, given.stderr
    assert "not the project's" in given.stdout
