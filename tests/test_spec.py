"""spec: MLproject files load into the entry points, parameters and environment MLflow sees, and
every file MLflow would crash on is refused as ``file:line: message``.

In-process and fast. test_corpus.py compares the same loader with MLflow's over real files;
these tests pin down each rule on its own.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from projectrun import spec
from projectrun.errors import ParameterError, SpecError


def project(root: Path, mlproject: str | None, **files: str) -> Path:
    """A project directory with this MLproject text (None: no MLproject) and other files."""
    root.mkdir(parents=True, exist_ok=True)
    if mlproject is not None:
        (root / "MLproject").write_text(textwrap.dedent(mlproject))
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def problems(root: Path) -> list[str]:
    """What load_project refuses the project with, the directory written as D."""
    with pytest.raises(SpecError) as err:
        spec.load_project(root)
    return [p.replace(str(root.resolve()), "D") for p in err.value.problems]


def test_entry_points_parameters_and_their_lines(tmp_path: Path) -> None:
    root = project(tmp_path / "p", """\
        name: demo
        entry_points:
          main:
            parameters:
              data: path
              alpha: {type: float, default: 0.1}
              label: {default: plain}
            command: python train.py {data} {alpha} {label}
          validate:
            command: python validate.py
        """)
    loaded = spec.load_project(root)
    assert loaded.name == "demo" and loaded.file == root / "MLproject"
    assert list(loaded.entry_points) == ["main", "validate"]
    main = loaded.entry_point("main")
    assert main.command == "python train.py {data} {alpha} {label}" and main.line == 3
    assert list(main.parameters) == ["data", "alpha", "label"]  # declaration order
    assert main.parameters["data"] == spec.Parameter("data", "path", None, 5)
    assert main.parameters["alpha"] == spec.Parameter("alpha", "float", 0.1, 6)
    assert main.parameters["label"] == spec.Parameter("label", "string", "plain", 7)
    assert loaded.warnings == () and loaded.env_type is None


@pytest.mark.parametrize(("written", "required"), [
    ("float", True),                        # short form: no default
    ("{type: int, default: null}", True),   # MLflow: required iff the default is None
    ("{type: int, default: 0}", False),
    ("{type: string, default: ''}", False),
    ("{type: string, default: false}", False),
])
def test_a_parameter_is_required_exactly_when_it_has_no_default(tmp_path: Path, written: str,
                                                                 required: bool) -> None:
    root = project(tmp_path / "p", f"""\
        entry_points:
          main:
            parameters:
              x: {written}
            command: echo {{x}}
        """)
    assert spec.load_project(root).entry_point("main").parameters["x"].required is required


def test_yaml_typed_defaults_are_kept_as_mlflow_substitutes_them(tmp_path: Path) -> None:
    """MLflow renders str(default): YAML's 0.10 is 0.1, false is False, 1e-3 stays text. A date
    (JSON has none) is kept as the text str() gives, so the command is the same."""
    root = project(tmp_path / "p", """\
        entry_points:
          main:
            parameters:
              a: {type: float, default: 0.10}
              b: {type: string, default: false}
              c: {type: float, default: 1e-3}
              d: {type: string, default: 2024-01-02}
            command: echo {a} {b} {c} {d}
        """)
    params = spec.load_project(root).entry_point("main").parameters
    assert [str(params[k].default) for k in "abcd"] == ["0.1", "False", "1e-3", "2024-01-02"]


def test_unknown_parameter_type_warns_with_its_line_and_is_a_string(tmp_path: Path) -> None:
    root = project(tmp_path / "p", """\
        entry_points:
          main:
            parameters:
              flag: bool
            command: echo {flag}
        """)
    loaded = spec.load_project(root)
    assert loaded.entry_point("main").parameters["flag"].type == "bool"
    assert loaded.warnings == ((f"{root / 'MLproject'}:4: parameter 'flag' has unknown type 'bool'; "
                               f"treated as string (known: string, float, int, path, uri)"),)


def test_a_misspelt_top_level_key_warns_and_leaves_no_entry_points(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "name: x\nentry_point:\n  main: {command: echo}\n")
    loaded = spec.load_project(root)
    assert loaded.entry_points == {}
    assert len(loaded.warnings) == 1
    assert loaded.warnings[0].startswith(f"{root / 'MLproject'}:2: unknown top-level key "
                                         f"'entry_point' is ignored (known: conda_env, ")
    with pytest.raises(ParameterError, match="valid entry points: none declared"):
        loaded.entry_point("main")


def test_unknown_entry_point_lists_the_valid_ones(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "entry_points:\n  main: {command: a}\n  train: {command: b}\n")
    with pytest.raises(ParameterError) as err:
        spec.load_project(root).entry_point("tarin")
    assert str(err.value) == (f"unknown entry point 'tarin' in {root / 'MLproject'}; valid entry "
                              f"points: main, train (or a script path ending in .py or .sh)")
    assert err.value.exit_code == 2


def test_scripts_run_as_mlflow_runs_undeclared_entry_points(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = spec.load_project(project(tmp_path / "p", "entry_points:\n  main: {command: a}\n"))
    py = loaded.entry_point("my script.py")
    assert (py.command, py.parameters, py.declared) == ("python 'my script.py'", {}, False)
    monkeypatch.setenv("SHELL", "/bin/zsh")
    assert loaded.entry_point("run.sh").command == "/bin/zsh run.sh"
    monkeypatch.delenv("SHELL")
    assert loaded.entry_point("run.sh").command == "bash run.sh"
    assert loaded.entry_point("fit.R").command == (
        "Rscript -e \"mlflow::mlflow_source('fit.R')\" --args")


def test_mlproject_file_name_any_case_and_yaml_suffix(tmp_path: Path) -> None:
    """MLflow matches any case of 'mlproject'; projectrun also reads MLproject.yaml."""
    for i, name in enumerate(["mlproject", "MLProject", "MLproject.yaml", "mlproject.yml"]):
        root = tmp_path / str(i)
        root.mkdir()
        (root / name).write_text("entry_points:\n  main: {command: echo ok}\n")
        assert spec.find_mlproject(root) == root / name
        assert spec.load_project(root).entry_point("main").command == "echo ok"
    both = tmp_path / "both"
    both.mkdir()
    (both / "MLproject.yaml").write_text("entry_points: {}\n")
    (both / "MLproject").write_text("entry_points: {}\n")
    assert spec.find_mlproject(both) == both / "MLproject"  # the name MLflow reads wins


def test_without_mlproject_env_files_are_found_as_mlflow_finds_them(tmp_path: Path) -> None:
    """python_env.yaml first, then conda.yaml; no file at all means no env (runs local)."""
    bare = spec.load_project(project(tmp_path / "bare", None))
    assert (bare.file, bare.entry_points, bare.env_type, bare.env_file) == (None, {}, None, None)
    both = spec.load_project(project(tmp_path / "both", None, **{
        "python_env.yaml": "python: '3.11'\n", "conda.yaml": "dependencies: [python=3.11]\n"}))
    assert (both.env_type, both.env_file) == ("python_env", both.directory / "python_env.yaml")
    conda = spec.load_project(project(tmp_path / "conda", "entry_points: {}\n",
                                      **{"conda.yaml": "dependencies: [python=3.11]\n"}))
    assert (conda.env_type, conda.env_file) == ("conda_env", conda.directory / "conda.yaml")


def test_env_file_named_in_the_mlproject(tmp_path: Path) -> None:
    root = project(tmp_path / "p", "python_env: envs/py.yaml\nentry_points: {}\n",
                   **{"envs/py.yaml": "python: '3.11'\n"})
    loaded = spec.load_project(root)
    assert (loaded.env_type, loaded.env_file) == ("python_env", loaded.directory / "envs/py.yaml")


@pytest.mark.parametrize(("mlproject", "files", "expected"), [
    ("python_env: nope.yaml\nentry_points: {}\n", {},
     "D/MLproject:1: python_env file 'nope.yaml' was not found in D; create it or fix the path"),
    ("name: x\nconda_env: ../shared.yaml\nentry_points: {}\n", {},
     ("D/MLproject:2: conda_env file '../shared.yaml' is outside the project D (it resolves to "
     "SHARED); keep it in the project, or write its absolute path if you mean that file")),
    ("name: x\npython_env: py.yaml\nconda_env: conda.yaml\nentry_points: {}\n",
     {"py.yaml": "python: '3.11'\n", "conda.yaml": "dependencies: []\n"},
     ("D/MLproject:3: only one environment may be given, found python_env, conda_env; keep one "
     "of them")),
    ("docker_env: {volumes: [/data:/data]}\nentry_points: {}\n", {},
     "D/MLproject:1: docker_env needs an 'image' (e.g. image: python:3.11-slim)"),
    ("docker_env: {image: python:3.11, dockerfile: Dockerfile}\nentry_points: {}\n",
     {"Dockerfile": "FROM python:3.11\n"},
     "D/MLproject:1: give docker_env either 'image' or 'dockerfile', not both"),
    ("docker_env: {dockerfile: ../Dockerfile}\nentry_points: {}\n", {},
     "D/MLproject:1: dockerfile '../Dockerfile' is not a file inside the project D"),
    ("databricks_spark_job: {python_file: job.py}\nentry_points:\n  main: {command: echo}\n", {},
     "D/MLproject:1: databricks_spark_job cannot have both 'python_file' and entry_points"),
    ("", {}, ("D/MLproject:1: the MLproject file is empty; it needs at least 'entry_points:' (see "
             "MLflow's MLproject format)")),
    ("entry_points:\n  main: python x.py\n", {},
     ("D/MLproject:2: 'entry_points.main' must be a mapping, got a string; write "
     "'main: {command: ...}'")),
    ("entry_points:\n  main:\n    parameters:\n      alpha:\n    command: echo\n", {},
     ("D/MLproject:4: 'entry_points.main.parameters.alpha' must be a string or a mapping, got "
     "nothing; write 'alpha: float' or 'alpha: {type: float, default: 0.5}'")),
])
def test_files_mlflow_would_crash_on_are_one_line_each(tmp_path: Path, mlproject: str,
                                                       files: dict[str, str], expected: str) -> None:
    root = project(tmp_path / "p", mlproject, **files)
    shared = tmp_path / "shared.yaml"
    shared.write_text("dependencies: []\n")
    assert problems(root) == [expected.replace("SHARED", str(shared))]


def test_the_docker_env_as_written(tmp_path: Path) -> None:
    root = project(tmp_path / "p", """\
        name: boxed
        docker_env:
          image: python:3.11-slim
          volumes: ["/data:/data"]
          environment: [HOME_VAR, [SET_VAR, "a b"]]
        entry_points: {main: {command: echo}}
        """)
    loaded = spec.load_project(root)
    assert loaded.env_type == "docker_env" and loaded.env_file is None
    assert loaded.docker_env == spec.DockerEnv("python:3.11-slim", ("/data:/data",),
                                               ("HOME_VAR", ("SET_VAR", "a b")))
    built = spec.load_project(project(tmp_path / "q", "docker_env: {dockerfile: d/Dockerfile}\n"
                                      "entry_points: {}\n", **{"d/Dockerfile": "FROM scratch\n"}))
    assert built.docker_env is not None and built.docker_env.image == ""
    assert built.docker_env.dockerfile == built.directory / "d" / "Dockerfile"


def test_a_broken_command_stops_only_its_entry_point(tmp_path: Path) -> None:
    """MLflow fails such an entry point with a KeyError only when it runs it; the others run."""
    root = project(tmp_path / "p", """\
        entry_points:
          main:
            parameters: {a: float}
            command: echo {a} {b} ${HOME}
          positional:
            command: echo {}
          conversion:
            parameters: {x: string}
            command: echo {x!z}
          listed:
            command: [echo, hi]
          empty: {}
          fine:
            command: echo {{literal}} $HOME
        """)
    loaded = spec.load_project(root)
    file = root / "MLproject"
    assert loaded.entry_point("fine").command == "echo {{literal}} $HOME"
    expected = {
        "main": [(f"{file}:4: entry point 'main': command uses '{{b}}' but no parameter 'b' is "
                 f"declared (declared: a); declare it, or write shell variables as $VAR, not "
                 f"${{VAR}}"),
                 (f"{file}:4: entry point 'main': command uses '{{HOME}}' but no parameter 'HOME' "
                 f"is declared (declared: a); declare it, or write shell variables as $VAR, not "
                 f"${{VAR}}")],
        "positional": [(f"{file}:6: entry point 'positional': '{{}}' in the command is positional; "
                       f"name a declared parameter, or write literal braces as {{{{ }}}}")],
        "conversion": [(f"{file}:9: entry point 'conversion': command cannot be filled in "
                       f"(ValueError: Unknown conversion specifier z); write literal braces as "
                       f"{{{{ and }}}}")],
        "listed": [(f"{file}:11: entry point 'listed': command must be a string, got a list; "
                   f"quote it or use a block scalar (command: |)")],
        "empty": [f"{file}:12: entry point 'empty' has no 'command'; add one"],
    }
    for name, wanted in expected.items():
        with pytest.raises(SpecError) as err:
            loaded.entry_point(name)
        assert err.value.problems == wanted


def test_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpecError) as err:
        spec.load_project(tmp_path / "file")
    assert err.value.problems == [f"{tmp_path / 'file'}: not a directory"]
