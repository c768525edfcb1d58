"""yamlfile: every YAML file projectrun reads (MLproject, env files, sweep files) goes through
load_yaml, so its values, its line numbers and its refusals are what users see in errors.

In-process and fast; the same limits through the real CLI (50 MB, 100k values, /dev/zero) are
in test_fuzz.py.
"""
from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from projectrun import yamlfile
from projectrun.errors import SpecError

DOC = textwrap.dedent("""\
    name: demo
    entry_points:
      main:
        parameters:
          alpha: {type: float, default: 0.1}
          epochs: int
        command: python train.py {alpha} {epochs}
    steps:
      - prepare
      - train: {gpus: 1}
    """)


def problem(path: Path, text: str | bytes) -> str:
    """The one problem load_yaml reports for this content, with the path shortened to ``F``."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(SpecError) as err:
        yamlfile.load_yaml(path)
    assert len(err.value.problems) == 1, err.value.problems
    return err.value.problems[0].replace(str(path), "F")


def test_values_are_safe_loads_and_every_key_and_item_has_its_line(tmp_path: Path) -> None:
    path = tmp_path / "MLproject"
    path.write_text(DOC)
    doc = yamlfile.load_yaml(path)
    assert doc.data == yaml.safe_load(DOC)  # MLflow's loader: 0.1 is a float, int a str
    assert doc.line(("name",)) == 1
    assert doc.line(("entry_points", "main", "parameters", "epochs")) == 6
    assert doc.line(("entry_points", "main", "command")) == 7
    assert doc.line(("steps", 0)) == 9
    assert doc.line(("steps", 1, "train", "gpus")) == 10
    assert doc.where(("entry_points", "main")) == f"{path}:3"


def test_a_path_that_is_not_in_the_file_points_at_its_nearest_ancestor(tmp_path: Path) -> None:
    """Schema errors about a missing key name the mapping that lacks it."""
    path = tmp_path / "MLproject"
    path.write_text(DOC)
    doc = yamlfile.load_yaml(path)
    assert doc.line(("entry_points", "main", "parameters", "missing", "type")) == 4
    assert doc.line(("steps", 7)) == 8
    assert doc.where(("no", "such", "key")) == f"{path}:1"


def test_merge_keys_are_expanded_as_safe_load_does(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 5\n")
    doc = yamlfile.load_yaml(path)
    assert doc.data["other"] == {"x": 1, "y": 5}
    assert doc.line(("other", "y")) == 4


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_document_is_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert yamlfile.load_yaml(path).data is None


@pytest.mark.parametrize(("text", "expected"), [
    ("name: x\nentry_points:\n\tmain: {command: echo}\n",
     ("F:3: invalid YAML: found character '\\t' that cannot start any token; indent with spaces, "
     "not tabs")),
    # PyYAML reports the end of the file; the quote was opened on line 4
    ("name: x\nentry_points:\n  main:\n    command: \"echo hi\n\n\n",
     ("F:4: invalid YAML: found unexpected end of stream; the quote opened on this line is never "
     "closed")),
    ("name: {{ cookiecutter.name }}\nentry_points: {}\n",
     ("F:1: invalid YAML: found unhashable key; this looks like a Jinja/cookiecutter template: "
     "render it first")),
    ('entry_points:\n  main:\n    command: """echo\n    hi"""\n',
     ("F:3: invalid YAML: expected <block end>, but found '<scalar>'; YAML has no triple quotes: "
     "write a block instead, 'command: |' or '>'")),
    ("entry_points:\n  main:\n    command: echo a: b\n",
     ("F:3: invalid YAML: mapping values are not allowed here; a plain value may not contain ': ', "
     "so quote the whole value")),
    # corpus 153079019shariq: a comment ends the plain value, PyYAML points at the culprit
    (("entry_points:\n  main:\n    parameters:\n      kind:\n        description:clean ## TODO\n"
     "        type: string\n    command: echo\n"),
     ("F:5: invalid YAML: expected <block end>, but found '<block mapping start>'; put a space "
     "after 'description:'")),
    # without the comment, PyYAML reads lines 5-6 as one plain value and reports line 6
    (("entry_points:\n  main:\n    parameters:\n      kind:\n        description:clean\n"
     "        type: string\n    command: echo\n"),
     "F:5: invalid YAML: mapping values are not allowed here; put a space after 'description:'"),
    ("name:demo\nentry_points:\n  main: {command: echo}\n",
     "F:1: invalid YAML: mapping values are not allowed here; put a space after 'name:'"),
    # corpus ChrisB831: a comment wrapped onto a line without '#'
    (("entry_points:\n  main:\n    parameters:\n      steps: {type: str, default: all}\n\n"
     "    # mlflow run . -P steps=a \\\n                   -P hydra_options=x\n"
     "    # Effectively runs\n    command: echo\n"),
     ("F:7: invalid YAML: expected <block end>, but found '<scalar>'; this line follows a comment: "
     "if it continues the comment, start it with '#'")),
    ("entry_points:\n  main:\n    # a long comment that\n      wraps here\n    command: echo\n",
     ("F:4: invalid YAML: mapping values are not allowed here; this line follows a comment: if it "
     "continues the comment, start it with '#'")),
    ("a: &x 1\nb: &x 2\n",
     "F:2: invalid YAML: found duplicate anchor 'x'; first occurrence (line 1), second occurrence"),
    ("a: 1\n---\nb: 2\n",
     ("F:2: invalid YAML: expected a single document in the stream (line 1), but found another "
     "document")),
    ("name: x\nwhen: 2001-02-30\n",
     "F:2: invalid YAML value '2001-02-30': day is out of range for month"),
    ("name: x\nn: !!int abc\n",
     "F:2: invalid YAML value 'abc': invalid literal for int() with base 10: 'abc'"),
])
def test_syntax_and_value_errors_name_the_line_and_the_likely_fix(tmp_path: Path, text: str,
                                                                  expected: str) -> None:
    assert problem(tmp_path / "MLproject", text) == expected


def test_an_error_deep_in_a_large_file_keeps_its_line(tmp_path: Path) -> None:
    """Files over PURE_PYTHON_BYTES are parsed by libyaml: same values, same line numbers."""
    body = "".join(f"key{i}: value {i}\n" for i in range(3000))
    assert len(body) > yamlfile.PURE_PYTHON_BYTES
    path = tmp_path / "big.yaml"
    path.write_text(body)
    doc = yamlfile.load_yaml(path)
    assert doc.data["key2999"] == "value 2999" and doc.line(("key2999",)) == 3000
    assert problem(path, body + "bad: [\n") == "F:3002: invalid YAML: did not find expected node content"


def test_not_utf8_names_line_column_and_byte(tmp_path: Path) -> None:
    assert problem(tmp_path / "x.yaml", b"name: ok\nlabel: caf\xe9\n") == (
        "F:2: not UTF-8 text: byte 0xe9 at offset 19 (column 11); save the file as UTF-8")


def test_a_control_character_is_refused_at_its_line(tmp_path: Path) -> None:
    assert problem(tmp_path / "x.yaml", "a: 1\nb: \"x\x07y\"\n") == (
        "F:2: invalid YAML: control character U+0007 is not allowed in YAML; remove it")


def test_nesting_is_limited_to_max_depth(tmp_path: Path) -> None:
    """PyYAML itself recurses until RecursionError; 100 levels still load, 101 are refused."""
    depth = yamlfile.MAX_DEPTH
    path = tmp_path / "x.yaml"
    path.write_text("[" * depth + "]" * depth + "\n")
    assert yamlfile.load_yaml(path).data is not None
    assert problem(path, "ok: 1\nx: " + "[" * depth + "]" * depth + "\n") == (
        "F:2: nested more than 100 levels deep; flatten the file")


def test_aliases_may_not_multiply_past_the_limit(tmp_path: Path) -> None:
    """Ten aliases per level: by the fifth level they repeat over 100,000 values (the
    billion-laughs bomb)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    assert problem(tmp_path / "x.yaml", "\n".join(lines) + "\n") == (
        "F:5: YAML aliases here repeat more than 100000 values (aliases of aliases multiply: an "
        "alias bomb?); write the values out or use fewer aliases")
    # a few aliases, as real files use them, are fine
    path = tmp_path / "ok.yaml"
    path.write_text("\n".join(lines[:3]) + "\n")
    assert len(yamlfile.load_yaml(path).data["a2"]) == 10


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert problem(tmp_path / "x.yaml", "top: &t\n  child: *t\n") == (
        "F:2: alias '*t' is used inside the node it names; a recursive structure cannot be an "
        "MLflow value")


def test_only_regular_files_are_read(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(SpecError) as err:
        yamlfile.load_yaml(fifo)
    assert str(err.value) == f"{fifo}:1: cannot read file: it is a named pipe (FIFO), not a regular file"
    with pytest.raises(SpecError, match=r":1: cannot read file: it is a directory, not a regular"):
        yamlfile.load_yaml(tmp_path)
    link = tmp_path / "link.yaml"
    link.symlink_to(tmp_path)
    with pytest.raises(SpecError, match=rf"it is a directory \(a symlink to {tmp_path}\)"):
        yamlfile.load_yaml(link)
    with pytest.raises(SpecError, match=r"missing.yaml:1: cannot read file: No such file"):
        yamlfile.load_yaml(tmp_path / "missing.yaml")


def test_read_regular_stops_at_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"x" * 2_000_001)
    assert len(yamlfile.read_regular(path, limit=2_000_001)) == 2_000_001
    with pytest.raises(OSError) as err:
        yamlfile.read_regular(path, limit=2_000_000)
    assert err.value.errno == errno.EFBIG
    assert err.value.strerror == ("it is 2.0 MB; projectrun reads files of at most 2 MB here "
                                  "(MLproject, env and sweep files are a few KB)")


def test_schema_problems_are_all_reported_in_file_order_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "MLproject"
    path.write_text(textwrap.dedent("""\
        name: demo
        docker_env: python:3.11
        entry_points:
          main:
            parameters:
              alpha:
            command: echo
          other: python x.py
        """))
    doc = yamlfile.load_yaml(path)
    found = [p.replace(str(path), "F") for p in yamlfile.schema_problems(doc, "mlproject.schema.json")]
    assert found == [
        ("F:2: 'docker_env' must be a mapping or empty, got a string; write "
        "'docker_env: {image: python:3.11}'"),
        ("F:6: 'entry_points.main.parameters.alpha' must be a string or a mapping, got nothing; "
        "write 'alpha: float' or 'alpha: {type: float, default: 0.5}'"),
        "F:8: 'entry_points.other' must be a mapping, got a string; write 'other: {command: ...}'",
    ]
    # an invalid file is never remembered as valid: the same problems the second time
    assert yamlfile.schema_problems(doc, "mlproject.schema.json") != []
