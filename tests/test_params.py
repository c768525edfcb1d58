"""params: ``-P`` parsing, type checks, defaults, path values and the command string.

The command must be byte for byte what MLflow's ``EntryPoint.compute_command`` builds (values
shlex-quoted, undeclared parameters appended as ``--key value`` with both quoted), so MLflow's
own class is the oracle here. In-process and fast.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES

from projectrun import params, spec
from projectrun.errors import ParameterError, UsageError

mlflow_spec = pytest.importorskip("mlflow.projects._project_spec")

HOSTILE = ["a b", "", "it's", 'say "hi"', "$HOME", "`id`", "; rm -rf /", "a\nb", "é ü", "--x",
           "{braces}", "*", "~", "-"]


def entry_point(command: str, **declared: object) -> spec.EntryPoint:
    """An entry point as spec builds it: ``name=type`` or ``name=(type, default)``."""
    parameters = {}
    for name, written in declared.items():
        ptype, default = written if isinstance(written, tuple) else (written, None)
        parameters[name] = spec.Parameter(name, str(ptype), default)
    return spec.EntryPoint("main", parameters, command)


def mlflow_command(ep: spec.EntryPoint, given: dict[str, str], storage: Path) -> str:
    """What MLflow 3 runs for these parameters (its own EntryPoint class)."""
    declared = {p.name: {"type": p.type, "default": p.default} for p in ep.parameters.values()}
    return mlflow_spec.EntryPoint(ep.name, declared, ep.command).compute_command(given, str(storage))


def render(ep: spec.EntryPoint, given: dict[str, str], cwd: Path) -> str:
    return params.render_command(ep, params.resolve(ep, given, cwd=cwd))


# --- -P name=value --------------------------------------------------------------------------

def test_assignments_split_on_the_first_equals_sign() -> None:
    assert params.parse_assignments(["a=1", "expr=x=y==z", " spaced =v", "empty="]) == {
        "a": "1", "expr": "x=y==z", "spaced": "v", "empty": ""}


@pytest.mark.parametrize(("items", "message"), [
    (["alpha"], "invalid -P value 'alpha': use -P name=value"),
    (["=x"], "invalid -P value '=x': use -P name=value"),
    (["a=1", "a=2"], "-P a given twice ('1' and '2'); give it once"),
])
def test_bad_assignments_are_usage_errors(items: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        params.parse_assignments(items)
    assert str(err.value) == message and err.value.exit_code == 2


def test_the_flag_name_is_the_one_the_user_typed() -> None:
    with pytest.raises(UsageError, match="invalid --grid value 'x': use --grid name=value"):
        params.parse_assignments(["x"], "--grid")


# --- types ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("ptype", "value"), [
    ("float", "0.5"), ("float", "1e-3"), ("float", "-2"), ("float", " 3 "), ("float", "inf"),
    ("int", "10"), ("int", "-3"), ("int", "+7"), ("int", " 7 "),
    ("uri", "s3://bucket/key"), ("uri", "file:///abs/path"), ("uri", "runs:/abc/model"),
    ("path", "relative/file.csv"), ("path", "s3://bucket/key"),
    ("string", "anything at all"), ("bool", "whatever"),  # unknown types are strings, as in MLflow
])
def test_values_of_the_right_type_pass(ptype: str, value: str) -> None:
    assert params.type_problem(spec.Parameter("p", ptype), value) is None


@pytest.mark.parametrize(("ptype", "value", "message"), [
    ("float", "abc", "'p' is a float parameter; give a number like 0.5 or 1e-3"),
    ("float", "", "'p' is a float parameter; give a number like 0.5 or 1e-3"),
    ("int", "1.5", "'p' is an int parameter; give a whole number like 10"),
    ("int", "1e3", "'p' is an int parameter; give a whole number like 10"),
    ("int", "ten", "'p' is an int parameter; give a whole number like 10"),
    ("uri", "data/x", ("'p' is a uri parameter and needs a scheme, e.g. s3://bucket/key or "
                      "file:///abs/path (use type path for local files)")),
    ("uri", "http://[", ("'p' is a uri parameter but 'http://[' is not a valid URL (an unbalanced "
                        "'[' or ']' in its host)")),
    ("path", "http://[", ("'p' is a path parameter but 'http://[' is not a valid URL (an "
                         "unbalanced '[' or ']' in its host)")),
])
def test_values_of_the_wrong_type_say_what_to_give(ptype: str, value: str, message: str) -> None:
    assert params.type_problem(spec.Parameter("p", ptype), value) == message


# --- resolve: defaults, missing values, extras, logged values --------------------------------

def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    ep = entry_point("echo", name="string", seed="int", alpha=("float", 0.1), epochs=("int", 1),
                     source="uri")
    with pytest.raises(ParameterError) as err:
        params.resolve(ep, {"alpha": "abc", "epochs": "1.5", "source": "x"}, cwd=tmp_path)
    assert str(err.value).splitlines() == [
        "entry point 'main' is missing required parameters name, seed; pass -P name=... -P seed=...",
        "-P alpha=abc: 'alpha' is a float parameter; give a number like 0.5 or 1e-3",
        "-P epochs=1.5: 'epochs' is an int parameter; give a whole number like 10",
        ("-P source=x: 'source' is a uri parameter and needs a scheme, e.g. s3://bucket/key or "
        "file:///abs/path (use type path for local files)"),
    ]
    assert err.value.exit_code == 2


def test_defaults_fill_in_and_are_rendered_as_mlflow_renders_them(tmp_path: Path) -> None:
    ep = entry_point("run {a} {b} {c} {d} {e}", a=("float", 0.1), b=("string", False),
                     c=("int", 0), d=("string", ""), e=("string", "x y"))
    resolved = params.resolve(ep, {}, cwd=tmp_path)
    assert resolved.values == {"a": "0.1", "b": "False", "c": "0", "d": "", "e": "x y"}
    assert resolved.logged == resolved.values and resolved.extras == {}
    command = params.render_command(ep, resolved)
    assert command == "run 0.1 False 0 '' 'x y'"
    assert command == mlflow_command(ep, {}, tmp_path)


def test_a_bad_uri_default_is_refused_too(tmp_path: Path) -> None:
    ep = entry_point("echo {u}", u=("uri", "data/x"))
    with pytest.raises(ParameterError, match=r"^default u=data/x: 'u' is a uri parameter"):
        params.resolve(ep, {}, cwd=tmp_path)


def test_undeclared_values_are_extras_in_the_order_given(tmp_path: Path) -> None:
    ep = entry_point("train {lr}", lr=("float", 0.1))
    given = {"zeta": "1", "lr": "0.5", "alpha": "two words", "weird key": "v"}
    resolved = params.resolve(ep, given, cwd=tmp_path)
    assert resolved.values == {"lr": "0.5"}
    assert list(resolved.extras.items()) == [("zeta", "1"), ("alpha", "two words"), ("weird key", "v")]
    # logged as given (MLflow logs the quoted text, "'two words'"); declared first
    assert list(resolved.logged.items()) == [("lr", "0.5"), ("zeta", "1"), ("alpha", "two words"),
                                             ("weird key", "v")]
    command = params.render_command(ep, resolved)
    assert command == "train 0.5 --zeta 1 --alpha 'two words' --'weird key' v"
    assert command == mlflow_command(ep, given, tmp_path)


def test_values_are_quoted_exactly_where_mlflow_quotes_them(tmp_path: Path) -> None:
    ep = entry_point("python x.py --a {a} --b={b} \"{c}\"", a="string", b="string", c="string")
    for value in HOSTILE:
        given = {"a": value, "b": value, "c": value, "extra": value, value or "e": value}
        command = render(ep, given, tmp_path)
        assert command == mlflow_command(ep, given, tmp_path), value
        assert f"--a {shlex.quote(value)} " in command


def test_each_value_reaches_the_program_as_one_argument(tmp_path: Path) -> None:
    """What the shell makes of the command: the value itself, whatever it holds."""
    names = [f"v{i}" for i in range(len(HOSTILE))]
    show = f"{shlex.quote(sys.executable)} -c 'import sys, json; print(json.dumps(sys.argv[1:]))'"
    ep = entry_point(" ".join([show, *(f"{{{n}}}" for n in names)]), **dict.fromkeys(names, "string"))
    command = render(ep, {**dict(zip(names, HOSTILE)), "x y": "$HOME"}, tmp_path)
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [*HOSTILE, "--x y", "$HOME"]


def test_a_nul_cannot_be_a_value(tmp_path: Path) -> None:
    ep = entry_point("echo {v}", v="string")
    with pytest.raises(ParameterError, match="contains a NUL character"):
        params.resolve(ep, {"v": "a\0b"}, cwd=tmp_path)


# --- path parameters ------------------------------------------------------------------------

def test_local_paths_are_made_absolute_from_the_working_directory(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in dir").mkdir()
    (tmp_path / "in dir" / "data.csv").write_text("x")
    monkeypatch.chdir(tmp_path)
    ep = entry_point("python x.py {data}", data="path")
    for written in ["in dir/data.csv", "./in dir/../in dir/data.csv", "in%20dir/data.csv",
                    (tmp_path / "in dir" / "data.csv").as_uri()]:
        resolved = params.resolve(ep, {"data": written}, cwd=tmp_path)
        assert resolved.values["data"] == os.path.abspath(tmp_path / "in dir" / "data.csv"), written
        assert resolved.logged["data"] == written  # the record keeps what the user typed
        command = params.render_command(ep, resolved)
        assert command == mlflow_command(ep, {"data": written}, tmp_path / "storage"), written


def test_a_missing_local_path_is_refused_before_anything_runs(tmp_path: Path) -> None:
    ep = entry_point("python x.py {data}", data="path")
    with pytest.raises(ParameterError) as err:
        params.resolve(ep, {"data": "nope.csv"}, cwd=tmp_path)
    assert str(err.value) == (f"-P data=nope.csv: 'data' is a path parameter but nope.csv does "
                              f"not exist (relative paths are taken from {tmp_path})")


def test_remote_paths_are_left_for_download(tmp_path: Path) -> None:
    ep = entry_point("python x.py {data}", data="path")
    for remote in ["s3://bucket/data.csv", "runs:/0123/model", "https://host/x.csv",
                   "file://otherhost/x.csv"]:
        assert params.local_path(remote) is None
        assert params.resolve(ep, {"data": remote}, cwd=tmp_path).values["data"] == remote


def test_a_path_default_is_found_in_the_project_when_not_in_the_cwd(tmp_path: Path) -> None:
    """MLflow looks only in the cwd, so its projects fail unless run from their directory."""
    ep = spec.load_project(FIXTURES / "params").entry_point("main")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resolved = params.resolve(ep, {"name": "x"}, cwd=elsewhere, project_dir=FIXTURES / "params")
    assert resolved.values["data"] == str(FIXTURES / "params" / "data.csv")
    assert resolved.logged["data"] == "data.csv"
    (elsewhere / "data.csv").write_text("mine")  # the cwd comes first, as in MLflow
    resolved = params.resolve(ep, {"name": "x"}, cwd=elsewhere, project_dir=FIXTURES / "params")
    assert resolved.values["data"] == str(elsewhere / "data.csv")


def test_a_given_path_is_only_looked_up_from_the_cwd(tmp_path: Path) -> None:
    """-P values are the user's: relative to where they typed the command, never the project."""
    ep = spec.load_project(FIXTURES / "params").entry_point("main")
    with pytest.raises(ParameterError, match=f"taken from {tmp_path}\\)$"):
        params.resolve(ep, {"name": "x", "data": "data.csv"}, cwd=tmp_path,
                       project_dir=FIXTURES / "params")


def test_a_path_default_may_not_leave_the_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("not the project's")
    (checkout / "inside.txt").write_text("ok")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ep = entry_point("cat {a} {b}", a=("path", "../inside.txt"), b=("path", "../../secret.txt"))
    with pytest.raises(ParameterError) as err:
        params.resolve(ep, {}, cwd=cwd, project_dir=checkout / "sub", root=checkout)
    assert str(err.value) == ("default b=../../secret.txt: 'b' is a path parameter whose default "
                              "../../secret.txt points outside the project's checkout; pass "
                              "-P b=PATH to use a file elsewhere")
    resolved = params.resolve(ep, {"b": str(tmp_path / "secret.txt")}, cwd=cwd,
                              project_dir=checkout / "sub", root=checkout)
    assert resolved.values == {"a": str(checkout / "inside.txt"), "b": str(tmp_path / "secret.txt")}
