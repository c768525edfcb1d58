"""Every row of the README's bad-input table is run as written: one line, the right exit code."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import FIXTURES, REPO, CliRunner


def _rows() -> list[tuple[str, str, int, list[str]]]:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- errors-table:start -->")[1].split("<!-- errors-table:end -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        case, command, code, message = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((case, command.strip("`"), int(code), re.findall(r"`([^`]+)`", message)))
    return rows


ROWS = _rows()


def test_table_is_not_empty() -> None:
    assert len(ROWS) >= 20


@pytest.mark.parametrize("case,command,code,fragments", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(case: str, command: str, code: int, fragments: list[str], cli: CliRunner,
                   workdir: Path) -> None:
    (workdir / "fixtures").symlink_to(FIXTURES)
    words = shlex.split(command)
    env = {}
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    assert words.pop(0) == "projectrun"
    res = cli(*words, env=env)
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr
    ours = [ln for ln in res.stderr.splitlines() if ln.startswith("projectrun: error: ")]
    assert len(ours) == 1, res.stderr
    for fragment in fragments:
        assert fragment in ours[0], f"{fragment!r} not in {ours[0]!r}"
    if code == 2:  # usage and spec errors: at most progress lines besides, nothing is recorded
        assert all(ln.startswith("projectrun: ") for ln in res.stderr.splitlines()), res.stderr
        assert res.stderr.strip().splitlines()[-1] == ours[0]
        assert not (workdir / "mlflow.db").exists() or "experiment" in case
