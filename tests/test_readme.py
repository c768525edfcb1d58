"""The README's two quick-start commands are the ones CI and users actually run."""
from __future__ import annotations

import re

from conftest import REPO


def _code_blocks_after(heading_text: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text.split(heading_text, 1)[1]
    return re.search(r"```\n(.+?)\n```", after, re.S).group(1).strip()  # type: ignore[union-attr]


def test_ci_runs_the_readme_test_command() -> None:
    command = _code_blocks_after("Run the test suite:")
    assert command.splitlines() == [command]  # one command
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci


def test_quick_start_runs_the_scip_demo() -> None:
    command = _code_blocks_after("## Quick start")
    assert "projectrun fixtures/scip -P l1_ratio=0.003 --experiment-name scip" in command


def test_cache_layout_lists_every_folder_prune_knows() -> None:
    """The README's table and ``projectrun cache list`` come from the same rows."""
    from projectrun.cachegc import LAYOUT

    section = (REPO / "README.md").read_text().split("### Cache layout", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == [f"| `{f.path}` | {f.holds} | {f.prune} |" for f in LAYOUT]
