"""conda.yaml loading: what conda accepts loads, everything else is a `file:line: message`.

Why: a conda env is slow to build and its failures are cryptic, so a typo in conda.yaml must be
caught before any solve, pointing at the line; and the cache key must change exactly when what
gets installed changes (a -r file's content) and not when only comments or the name do.
"""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from projectrun.envs.condaspec import LOCK_NAME, _spec_reason, check_match_spec, load_conda_env
from projectrun.errors import SpecError

CORPUS = (Path(__file__).resolve().parents[2] / "shared" / "corpus").resolve()  # ../shared may be a link
REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_conda_env(path)
    return info.value.problems


# --- loading ---------------------------------------------------------------------------------


def test_loads_channels_specs_pip_and_nested_files_relative_to_the_yaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = write(tmp_path / "proj" / "envs" / "conda.yaml", """\
        name: demo   # ignored for the key
        channels:
          - conda-forge
          - defaults
        dependencies:
          - python=3.11
          - numpy   >=1.26,<2    # spaces are not significant
          - conda-forge::scipy 1.11.*
          - pip
          - pip:
              - six==1.16.0
              - "# a commented-out line"
              - -r requirements.txt
        prefix: /home/someone/miniconda3/envs/demo
        variables:
          MODE: fast
          WORKERS: 4
        """)
    write(env.parent / "requirements.txt", "requests\n-c sub/constraints.txt\n")
    write(env.parent / "sub" / "constraints.txt", "urllib3<3\n")
    monkeypatch.chdir(tmp_path)  # conda resolves -r from the yaml's directory, not the cwd

    spec = load_conda_env(env)

    assert spec.path == env and spec.name == "demo"
    assert spec.channels == ("conda-forge", "defaults")
    assert spec.specs == ("python=3.11", "numpy >=1.26,<2", "conda-forge::scipy 1.11.*", "pip")
    assert spec.pip == ("six==1.16.0", "-r requirements.txt")
    assert [(f.path, f.written) for f in spec.files] == [
        ((env.parent / "requirements.txt").resolve(), "requirements.txt"),
        ((env.parent / "sub" / "constraints.txt").resolve(), "sub/constraints.txt")]
    assert spec.lock is None
    assert spec.variables == {"MODE": "fast", "WORKERS": "4"}
    assert spec.warnings == ()


def test_finds_the_lock_file_beside_the_yaml(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yaml", "dependencies: [python=3.11]\n")
    (tmp_path / LOCK_NAME).write_text("version: 1\n")
    assert load_conda_env(env).lock == tmp_path / LOCK_NAME


def test_minimal_files_conda_accepts(tmp_path: Path) -> None:
    only_name = load_conda_env(write(tmp_path / "a.yaml", "name: x\n"))
    assert (only_name.channels, only_name.specs, only_name.pip) == ((), (), ())
    nulls = load_conda_env(write(tmp_path / "b.yaml", "channels:\ndependencies:\n"))
    assert (nulls.name, nulls.channels, nulls.specs) == (None, (), ())


# --- the cache key ---------------------------------------------------------------------------


def test_key_ignores_comments_whitespace_name_and_prefix_but_not_file_contents(
        tmp_path: Path) -> None:
    plain = write(tmp_path / "a" / "conda.yaml", """\
        name: one
        channels: [conda-forge]
        dependencies:
          - numpy >=1.26
          - pip:
            - -r requirements.txt
        """)
    styled = write(tmp_path / "b" / "conda.yaml", """\
        # the same environment, written differently
        name: two
        prefix: /opt/envs/two
        channels:
          - conda-forge      # primary
        dependencies:
            - "numpy   >=1.26"
            - pip:
                -   "-r requirements.txt"
                - ""
        """)
    for directory in (plain.parent, styled.parent):
        write(directory / "requirements.txt", "six==1.16.0\n")
    before = load_conda_env(plain).key_inputs()
    assert before == load_conda_env(styled).key_inputs()
    assert "one" not in repr(before) and str(tmp_path) not in repr(before)

    write(plain.parent / "requirements.txt", "six==1.17.0\n")
    after = load_conda_env(plain).key_inputs()
    assert after != before
    assert after["files"] != before["files"]
    assert after["specs"] == before["specs"] and after["pip"] == before["pip"]


def test_key_changes_with_channel_order_and_specs(tmp_path: Path) -> None:
    def key(text: str) -> object:
        return load_conda_env(write(tmp_path / "conda.yaml", text)).key_inputs()

    base = key("channels: [conda-forge, defaults]\ndependencies: [numpy]\n")
    assert key("channels: [defaults, conda-forge]\ndependencies: [numpy]\n") != base
    assert key("channels: [conda-forge, defaults]\ndependencies: [numpy=1.26]\n") != base


# --- problems, all of them, each at its line -------------------------------------------------


def test_every_problem_is_reported_at_its_line(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yaml", """\
        name: demo
        channels: conda-forge
        dependencies:
          - python>>=3.11
          - numpy
          - foo bar baz qux
          - 3.8
          - {python: 3.8}
          - pip:
              - six
              - 1.5
              - -r missing.txt
        variables: [A]
        platforms: [linux-64]
        """)
    assert problems(env) == [
        f"{env}:2: 'channels' must be a list or empty, got a string",
        (f"{env}:4: invalid conda package spec 'python>>=3.11': '>>=' is not a version operator "
         f"(use ==, !=, <, <=, >, >=, ~= or =)"),
        (f"{env}:6: invalid conda package spec 'foo bar baz qux': 4 space-separated parts, but a "
         f"spec is 'name [version [build]]'; put separate packages on separate '- ' lines"),
        (f"{env}:7: a dependency must be a package spec string (e.g. 'numpy=1.26') or a 'pip:' "
         f"list, got a number (3.8)"),
        (f"{env}:8: a dependency must be a package spec string, got the mapping {{python: 3.8}}; "
         f"write '- python=3.8'"),
        (f"{env}:11: a pip entry must be a requirement string (e.g. 'numpy==1.26'), got a number "
         f"(1.5); quote it"),
        (f"{env}:12: requirements file 'missing.txt' cannot be read (No such file or directory); "
         f"it is looked for relative to {tmp_path}"),
        f"{env}:13: 'variables' must be a mapping or empty, got a list",
    ]


def test_channel_items(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yaml", """\
        channels:
          - conda forge
          - ""
          - 5
        """)
    assert problems(env) == [
        f"{env}:2: channel 'conda forge' contains a space; put each channel on its own '- ' line",
        f"{env}:3: empty channel name; remove the line",
        f"{env}:4: 'channels.2' must be a string, got a number",
    ]


def test_pip_section_shapes(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yaml", """\
        dependencies:
          - pip: six
          - pip:
              - six
              -
          - {pip: [a], extra: 1}
        """)
    assert problems(env) == [
        (f"{env}:2: 'pip:' must be a list of requirement lines (e.g. '- numpy==1.26'), got a "
         f"string"),
        (f"{env}:3: a second '- pip:' list (conda uses only the last); merge it with the one on "
         f"line 2"),
        (f"{env}:6: a dependency must be a package spec string (e.g. 'numpy=1.26') or a 'pip:' "
         f"list, got a mapping with key(s) 'pip', 'extra'"),
    ]


def test_empty_item_and_pip_requirement_in_the_conda_section(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yaml", """\
        dependencies:
          -
          - dvc[s3]
          - git+https://github.com/org/repo.git
        """)
    assert problems(env) == [
        f"{env}:2: empty dependency item; remove the '-' line or write a package spec",
        (f"{env}:3: invalid conda package spec 'dvc[s3]': '[s3]' is not conda's [key=value, ...] "
         f"form (pip extras like 'pkg[extra]' do not exist in conda); pip requirements go under "
         f"'- pip:'"),
        (f"{env}:4: invalid conda package spec 'git+https://github.com/org/repo.git': a URL is "
         f"not a package spec (a package file URL ends in .conda or .tar.bz2); pip requirements "
         f"go under '- pip:'"),
    ]


def test_unknown_keys_warn_as_conda_does_but_a_misspelt_known_key_is_an_error(
        tmp_path: Path) -> None:
    ignored = write(tmp_path / "a.yaml", "dependencies: [numpy]\nplatforms: [linux-64]\n")
    assert load_conda_env(ignored).warnings == (
        (f"{ignored}:2: unknown key 'platforms' is ignored (conda reads only name, channels, "
         f"dependencies, prefix, variables)"),)
    typo = write(tmp_path / "b.yaml", "channels: [conda-forge]\ndependancies:\n  - numpy\n")
    assert problems(typo) == [
        (f"{typo}:2: unknown key 'dependancies'; did you mean 'dependencies'? (conda would "
         f"ignore it)")]


def test_empty_file_and_non_mapping(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.yaml", "# nothing yet\n")
    assert problems(empty) == [
        (f"{empty}:1: the file is empty; a conda environment file needs 'dependencies:' (and "
         f"usually 'channels:')")]
    listed = write(tmp_path / "list.yaml", "- numpy\n- scipy\n")
    assert problems(listed) == [
        f"{listed}:1: expected a mapping with name, channels and dependencies, got a list"]
    symlink = write(tmp_path / "link.yaml", "../envs/conda.yaml")
    assert problems(symlink) == [
        (f"{symlink}:1: expected a mapping with name, channels and dependencies, got a string "
         f"('../envs/conda.yaml': a git symlink checked out as a plain file?)")]


def test_invalid_yaml_is_reported_by_the_shared_loader(tmp_path: Path) -> None:
    env = write(tmp_path / "conda.yml", "name: {{cookiecutter.step_name}}\ndependencies: []\n")
    assert problems(env) == [
        (f"{env}:1: invalid YAML: found unhashable key; this looks like a Jinja/cookiecutter "
         f"template: render it first")]


# --- match specs -----------------------------------------------------------------------------

ACCEPTED = [
    "name", "name=1.2", "name=1.2.*", "name==1.2.3", "name>=1.2,<2", "name 1.2.*",
    "name 1.2 build_0", "name=1.2=py39_0", "name[version='>=1.0']", 'name[version=">=1", build=b]',
    "conda-forge::name >=1.0", "conda-forge/linux-64::numpy", "name>=1.0|<0.5", "python=3.11",
    "python>=3.8", "pip", "name ~=1.2", "name !=1.2", "scikit-learn", "r-base", "_libgcc_mutex",
    "ca-certificates", "python_abi", "*", "Scikit-Learn", "python.app", "numpy >= 1.0",
    "numpy >= 1.0 py_0", "numpy==1.2.3=py_0", "numpy *", "numpy >=1.0, <2",
    "x264=1!157.20191217=h7b6447c_0", "ucx=1.8.0+gf6ec8d4=cuda10.2_20", "jpeg=9b=h024ee3a_2",
    "pytorch=1.8.2=py3.6_cuda11.1_cudnn8.0.5_0", "openssl=1.1.1q", "tzdata=2023c",
    "https://conda.anaconda.org/conda-forge/noarch/six-1.16.0-pyh6c4a22f_0.tar.bz2",
]


@pytest.mark.parametrize("spec", ACCEPTED)
def test_accepts_the_conda_forms_seen_in_practice(spec: str) -> None:
    assert check_match_spec(spec) is None


REJECTED = {
    "foo bar baz qux": "4 space-separated parts, but a spec is 'name [version [build]]'; put "
                       "separate packages on separate '- ' lines",
    "python>>=3.11": "'>>=' is not a version operator (use ==, !=, <, <=, >, >=, ~= or =)",
    "name=>1": "'=>' is not a version operator; did you mean '>='?",
    "=>1": "no package name before '=>1'",
    ">=1.0": "no package name before '>=1.0'",
    "numpy>=": "'>=' has no version after it",
    "numpy=": "'=' has no version after it",
    "num@py": "'@' is not allowed in a package name (letters, digits, '_', '-' and '.')",
    "conda-forge:numpy": "'conda-forge:numpy': write '::' between channel and package name",
    "::numpy": "nothing before '::'; write 'channel::name'",
    "numpy=1.2=": "nothing after the last '='; remove it or add a build string",
    "numpy=1=2=3": "too many '=' (the form is 'name=version=build')",
    "numpy>=1,,<2": "empty constraint in version '>=1,,<2' (a stray ',' or '|')",
    "numpy >=1.0 <2": "'<2' looks like a second version constraint; join them with ',' "
                      "('>=1,<2')",
    "numpy 1..2": "version '1..2' has an empty part between dots",
    "numpy[foo=1]": "unknown key 'foo' in '[...]' (conda knows version, build, build_number, "
                    "channel, subdir, md5, ...)",
    "-r requirements.txt": "'-r' is an option, not a package name; pip requirements go under "
                           "'- pip:'",
}


@pytest.mark.parametrize("spec", list(REJECTED))
def test_rejects_malformed_specs_with_a_reason(spec: str) -> None:
    assert check_match_spec(spec) == REJECTED[spec]
    assert _spec_reason(spec) == REJECTED[spec]  # the checks stand without rattler


def test_rattler_is_optional_and_not_imported_with_the_module() -> None:
    code = textwrap.dedent("""\
        import sys
        import projectrun.envs.condaspec as condaspec
        assert "rattler" not in sys.modules, "imported at module import time"
        sys.modules["rattler"] = None  # as on a machine without py-rattler: import fails
        print(condaspec.check_match_spec("foo bar baz qux"))
        print(condaspec.check_match_spec("numpy >=1.26,<2"))
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [REJECTED["foo bar baz qux"], "None"]


# --- real files ------------------------------------------------------------------------------


def _corpus_conda_files() -> list[Path]:
    """conda files the corpus' MLproject files name (conda_env: X), and default conda.y[a]ml."""
    found: set[Path] = set()
    for directory in sorted(p for p in CORPUS.iterdir() if p.is_dir()):
        found.update(_named_conda_files(directory))
        found.update(directory / name for name in ("conda.yaml", "conda.yml"))
    return sorted(p for p in found if p.is_file())


def _named_conda_files(directory: Path) -> list[Path]:
    mlprojects = [p for p in directory.iterdir() if p.name.lower().startswith("mlproj")]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in mlprojects]
    return [(directory / match[1]).resolve() for text in texts
            for match in re.finditer(r"(?m)^conda_env:\s*(\S+)", text)]


#: genuinely broken in the corpus (MANIFEST marks them): a template, and a shell command pasted
#: at the top of the file
BROKEN = {
    "1ayham1__ML-Pipeline-for-Short-Term-Rental-Prices-in-NYC__cookie-mlflow-step_cookiecutter."
    "step_name": ":1: invalid YAML: found unhashable key; this looks like a Jinja/cookiecutter "
                 "template: render it first",
    "mlflow__mlflow-example": ":2: invalid YAML: mapping values are not allowed here",
}


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")
def test_every_corpus_conda_file_loads_unless_genuinely_broken() -> None:
    files = _corpus_conda_files()
    assert len(files) >= 50
    failures = {}
    for path in files:
        try:
            spec = load_conda_env(path)
        except SpecError as exc:
            failures[path.relative_to(CORPUS).parts[0]] = exc.problems
            continue
        assert spec.warnings == (), path
        assert spec.specs or spec.pip, path
    assert sorted(failures) == sorted(BROKEN)
    for directory, lines in failures.items():
        assert len(lines) == 1 and BROKEN[directory] in lines[0], lines
