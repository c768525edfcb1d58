"""sources: a project URI becomes a directory plus what the run records about its origin.

Local paths, ``file://`` URIs and ``#subdir`` fragments, in-process; a local git work tree
(tags as MLflow writes them) and ``-v`` on it (a separate checkout, the user's files untouched)
with real repositories. Git URLs over the network are in test_gitsource.py and test_git_cli.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import commit, git

from projectrun import sources
from projectrun.errors import SourceError


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    """A directory outside any git work tree, with a space in its name and nested subdirs."""
    root = tmp_path / "plain dir"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "MLproject").write_text("entry_points: {}\n")
    return root


@pytest.mark.parametrize("form", ["path", "file-uri", "file-uri-unencoded", "quoted"])
def test_a_local_directory_runs_in_place(plain: Path, form: str) -> None:
    uri = {"path": str(plain), "file-uri": plain.as_uri(), "file-uri-unencoded": f"file://{plain}",
           "quoted": f"'{plain}'"}[form]
    assert plain.as_uri().endswith("plain%20dir")
    source = sources.resolve(uri)
    assert source.directory == plain and source.kind == "local"
    assert source.name == str(plain) and source.git_tags == {}  # MLflow: the absolute path
    assert source.root is None and source.cleanup is None


def test_a_relative_path_is_taken_from_the_working_directory(plain: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(plain.parent)
    assert sources.resolve("plain dir").directory == plain
    assert sources.resolve("plain dir#sub").directory == plain / "sub"


@pytest.mark.parametrize("fragment", ["sub", "/sub/", "sub/deep", "sub/../sub/deep", "."])
def test_subdirectory_fragments(plain: Path, fragment: str) -> None:
    wanted = {"sub": "sub", "/sub/": "sub", ".": ""}.get(fragment, "sub/deep")
    for uri in (f"{plain}#{fragment}", f"{plain.as_uri()}#{fragment}"):
        source = sources.resolve(uri)
        assert source.directory == (plain / wanted).resolve(), uri
        assert source.name == str((plain / wanted).resolve())


@pytest.mark.parametrize("fragment", ["..", "../..", "sub/../../x", "outside"])
def test_a_subdirectory_may_not_leave_the_project(plain: Path, fragment: str) -> None:
    (plain / "outside").symlink_to(plain.parent)
    with pytest.raises(SourceError) as err:
        sources.resolve(f"{plain}#{fragment}")
    assert str(err.value) == f"{plain}#{fragment}: subdirectory '{fragment}' points outside the project"
    assert err.value.exit_code == 2


def test_missing_subdirectory(plain: Path) -> None:
    with pytest.raises(SourceError) as err:
        sources.resolve(f"{plain}#nope")
    assert str(err.value) == f"{plain}#nope: no subdirectory 'nope' in {plain}"
    (plain / "afile").write_text("x")
    with pytest.raises(SourceError, match="no subdirectory 'afile'"):
        sources.resolve(f"{plain}#afile")


def test_a_file_is_not_a_project(plain: Path) -> None:
    with pytest.raises(SourceError) as err:
        sources.resolve(str(plain / "MLproject"))
    assert str(err.value) == (f"{plain / 'MLproject'}: not a directory; give the folder that "
                              f"holds the MLproject file")


@pytest.mark.parametrize("uri", ["NOPE", "s3://bucket/project", "nope://x"])
def test_neither_a_directory_nor_a_git_url(tmp_path: Path, uri: str) -> None:
    uri = str(tmp_path / "missing") if uri == "NOPE" else uri
    with pytest.raises(SourceError) as err:
        sources.resolve(uri)
    assert str(err.value) == (f"{uri}: no such directory, and not a git URL (https://, ssh://, "
                              f"git@host:, file://)")
    assert err.value.exit_code == 2


def test_an_unparseable_uri_is_one_line() -> None:
    with pytest.raises(SourceError) as err:
        sources.resolve("http://[")
    assert str(err.value) == ("http://[: not a valid path or URL (Invalid IPv6 URL); check the "
                              "brackets and quoting")


def test_a_version_needs_git(plain: Path) -> None:
    with pytest.raises(SourceError) as err:
        sources.resolve(str(plain), "v1.0")
    assert str(err.value) == f"-v v1.0: {plain} is not a git repository; a version needs git"


@pytest.fixture
def work_tree(tmp_path: Path) -> tuple[Path, str]:
    """A git work tree with a project in sub/proj and a remote whose URL holds a token."""
    work = tmp_path / "repo"
    git("init", "-q", str(work))
    sha = commit(work, {"sub/proj/MLproject": "entry_points: {}\n", "sub/proj/VERSION": "one\n"},
                 "one")
    git("tag", "v1", cwd=work)
    git("remote", "add", "origin", "https://user:s3cret@example.invalid/org/repo.git", cwd=work)
    return work, sha


def test_inside_a_work_tree_the_tags_are_mlflows_plus_dirty(work_tree: tuple[Path, str]) -> None:
    work, sha = work_tree
    source = sources.resolve(str(work / "sub" / "proj"))
    assert source.kind == "local" and source.directory == work / "sub" / "proj"
    assert source.name == f"file://{work}#sub/proj"  # mlflow.source.name, as MLflow writes it
    assert source.git_tags == {
        "mlflow.source.git.commit": sha,
        "mlflow.source.git.dirty": "false",
        "mlflow.source.git.repoURL": "https://example.invalid/org/repo.git",  # no token
    }
    assert sources.resolve(str(work)).name == f"file://{work}"
    (work / "sub" / "proj" / "VERSION").write_text("edited\n")
    assert sources.resolve(str(work / "sub" / "proj")).git_tags["mlflow.source.git.dirty"] == "true"


def test_a_version_of_a_local_repository_is_checked_out_apart(
        work_tree: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow checks the version out in the user's working copy; projectrun leaves it alone."""
    monkeypatch.setenv("PROJECTRUN_HOME", str(tmp_path / "home"))
    work, first = work_tree
    second = commit(work, {"sub/proj/VERSION": "two\n"}, "two")
    (work / "sub" / "proj" / "VERSION").write_text("uncommitted\n")
    source = sources.resolve(str(work / "sub" / "proj"), "v1")
    try:
        assert source.kind == "git"
        assert (source.directory / "VERSION").read_text() == "one\n"
        assert work not in source.directory.parents
        assert source.root is not None and source.directory == (source.root / "sub" / "proj").resolve()
        assert source.git_tags["mlflow.source.git.commit"] == first
        assert source.name == f"{work.as_uri()}#sub/proj"
    finally:
        source.close()
    assert not source.directory.exists()  # the per-launch checkout is removed
    assert (work / "sub" / "proj" / "VERSION").read_text() == "uncommitted\n"
    assert git("rev-parse", "HEAD", cwd=work) == second
