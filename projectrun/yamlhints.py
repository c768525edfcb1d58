"""The one-line messages for YAML that does not parse, with a hint at the likely cause.

PyYAML's own messages name what the parser saw, often a line or more after the real culprit;
the hints cover the mistakes seen in real MLproject files, each a rule tried in order.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

_NO_SPACE_AFTER_COLON = re.compile(r"^\s*(?:- )?([A-Za-z_][\w.-]*):(?=[^\s/:])")
_AFTER_COMMENT = "; this line follows a comment: if it continues the comment, start it with '#'"

Hint = tuple[int, str]


def value_message(path: Path, node: yaml.Node | None, exc: Exception) -> str:
    line = node.start_mark.line + 1 if node is not None else 1
    value = f" '{node.value[:40]}'" if node is not None and isinstance(node.value, str) else ""
    return f"{path}:{line}: invalid YAML value{value}: {' '.join(str(exc).split())}"


def syntax_message(path: Path, text: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else 1
    problem = exc.problem or exc.context or "invalid YAML"
    start = exc.context_mark.line + 1 if exc.context_mark else line
    if isinstance(exc, yaml.composer.ComposerError) and exc.context and exc.context_mark:
        problem = f"{exc.context} (line {start}), {problem}"  # duplicate anchor, two documents
    line, hint = yaml_hint(text.splitlines(), start, line, problem, exc.context or "")
    return f"{path}:{line}: invalid YAML: {problem}{hint}"


@dataclass
class _Failure:
    """A PyYAML error as the hint rules see it: the context's first line and the reported one."""

    lines: list[str]
    start: int
    line: int
    problem: str
    context: str

    @cached_property
    def text(self) -> str:
        """The reported line ('' past the end)."""
        return self.lines[self.line - 1] if 0 < self.line <= len(self.lines) else ""

    @cached_property
    def continued(self) -> bool:
        """PyYAML read the lines above as one plain value that this ': ' cannot end."""
        return "mapping values are not allowed" in self.problem

    @cached_property
    def first(self) -> int:
        """Where the culprit may start: for a continued value, the first line of that value."""
        return min(self.start, _plain_value_start(self.lines, self.line)) if self.continued else self.start


def _previous(lines: list[str], line: int) -> str:
    """The last non-blank line above ``line``, stripped ('' if none)."""
    return next((lines[n].strip() for n in range(line - 2, -1, -1) if lines[n].strip()), "")


def _unclosed_quote(f: _Failure) -> Hint | None:
    if "quoted scalar" in f.context and "end of stream" in f.problem:
        return f.start, "; the quote opened on this line is never closed"
    return None


def _template(f: _Failure) -> Hint | None:
    if "{%" in f.text or "{{" in f.text or "'%'" in f.problem:
        return f.line, "; this looks like a Jinja/cookiecutter template: render it first"
    return None


def _triple_quotes(f: _Failure) -> Hint | None:
    if '"""' in f.text or "'''" in f.text:
        return f.line, "; YAML has no triple quotes: write a block instead, 'command: |' or '>'"
    return None


def _no_space_after_colon(f: _Failure) -> Hint | None:
    for n in range(max(f.first, 1), min(f.line, len(f.lines)) + 1):
        body = f.lines[n - 1].split(" #", 1)[0]
        if not body.lstrip().startswith("#") and (m := _NO_SPACE_AFTER_COLON.match(body)):
            return n, f"; put a space after '{m.group(1)}:'"
    return None


def _continued_value(f: _Failure) -> Hint | None:
    if not f.continued:
        return None
    before = _previous(f.lines, f.first)
    if f.first < f.line and before.startswith("#"):
        return f.first, _AFTER_COMMENT
    return f.line, "; a plain value may not contain ': ', so quote the whole value"


def _after_comment(f: _Failure) -> Hint | None:
    if _previous(f.lines, f.line).startswith("#") and not f.text.lstrip().startswith("#"):
        return f.line, _AFTER_COMMENT
    return None


def _tabs(f: _Failure) -> Hint | None:
    if "\t" in f.problem or "\t" in f.text:
        return f.line, "; indent with spaces, not tabs"
    return None


#: tried in this order; the first that matches gives the hint
_RULES: tuple[Callable[[_Failure], Hint | None], ...] = (
    _unclosed_quote, _template, _triple_quotes, _no_space_after_colon, _continued_value,
    _after_comment, _tabs)


def yaml_hint(lines: list[str], start: int, line: int, problem: str, context: str) -> Hint:
    """The likely cause of a PyYAML error, as (line, '; hint'), for the mistakes seen in real
    MLproject files; PyYAML often points a line or more after the real culprit."""
    failure = _Failure(lines, start, line, problem, context)
    return next((hint for rule in _RULES if (hint := rule(failure)) is not None), (line, ""))


def _plain_value_start(lines: list[str], line: int) -> int:
    """The first line of the multi-line plain value that ends at ``line``: the lines just above
    it that are neither blank, comments, list items nor keys (``key: x`` or ``key:``).
    ``name:demo`` followed by ``entry_points:`` is one value to YAML, so PyYAML reports the
    second line; the typo is on the first."""
    first = line
    for n in range(min(line, len(lines) + 1) - 1, 0, -1):
        body = lines[n - 1].split(" #", 1)[0].strip()
        if (not body or body.startswith(("#", "- ")) or body == "-" or ": " in body
                or body.endswith(":")):
            break
        first = n
    return first
