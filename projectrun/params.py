"""Parameters: parse ``-P name=value``, check types, fill defaults, render the command as MLflow does.

The command string must be byte-for-byte what ``EntryPoint.compute_command`` in MLflow gives:
declared values are ``shlex.quote(str(value))`` substituted with ``str.format``; undeclared ones are
appended as `` --<quoted key> <quoted value>`` in the order given. Unlike MLflow, float and int
values are checked before anything runs, and logged values are what the user typed, unquoted.
"""
from __future__ import annotations

import os
import re
import shlex
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from projectrun.errors import ParameterError, UsageError
from projectrun.spec import EntryPoint, Parameter

_INT = re.compile(r"^\s*[+-]?\d+\s*$")


def parse_assignments(items: Iterable[str], flag: str = "-P") -> dict[str, str]:
    """``name=value`` pairs split on the first ``=``; a repeated name is an error (as in MLflow)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"invalid {flag} value '{item}': use {flag} name=value")
        if name in out:
            raise UsageError(f"{flag} {name} given twice ('{out[name]}' and '{value}'); give it once")
        out[name] = value
    return out


@dataclass(frozen=True)
class ResolvedParams:
    """What one launch uses: values for the command, and values for the run record."""

    #: declared parameters in declaration order, as substituted (paths made absolute)
    values: dict[str, str]
    #: undeclared ``-P`` values in the order given; MLflow appends them as ``--name value``
    extras: dict[str, str]
    #: what is logged to the run: the user's own text, or str(default)
    logged: dict[str, str]


def type_problem(param: Parameter, value: str) -> str | None:
    if param.type == "float":
        try:
            float(value)
        except ValueError:
            return f"'{param.name}' is a float parameter; give a number like 0.5 or 1e-3"
    elif param.type == "int":
        if not _INT.match(value):
            return f"'{param.name}' is an int parameter; give a whole number like 10"
    elif param.type in ("uri", "path"):
        parsed = _urlparse(value)
        if parsed is None:
            return (f"'{param.name}' is a {param.type} parameter but {value!r} is not a valid URL "
                    f"(an unbalanced '[' or ']' in its host)")
        if param.type == "uri" and not parsed.scheme:
            return (f"'{param.name}' is a uri parameter and needs a scheme, "
                    f"e.g. s3://bucket/key or file:///abs/path (use type path for local files)")
    return None


def _urlparse(value: str) -> urllib.parse.ParseResult | None:
    """urlparse, or None where it raises (``http://[``: ValueError, an internal error otherwise)."""
    try:
        return urllib.parse.urlparse(value)
    except ValueError:
        return None


def local_path(value: str) -> str | None:
    """The local file a ``path`` value names, or None for remote URIs (s3://, runs:/, http://...)."""
    parsed = _urlparse(value)
    if parsed is None:  # not a URL MLflow could download either; taken as written
        return None
    if not parsed.scheme or len(parsed.scheme) == 1:  # len 1: a Windows drive letter
        # MLflow reads even a plain path through url2pathname (unquote on POSIX): 'a%20b' is 'a b'.
        return urllib.parse.unquote(value)
    if parsed.scheme == "file" and not parsed.netloc:
        return urllib.parse.unquote(parsed.path)
    return None


def resolve(entry_point: EntryPoint, given: dict[str, str], cwd: Path | None = None,
            project_dir: Path | None = None, root: Path | None = None) -> ResolvedParams:
    """Check every value and fill defaults; every problem is reported in one error.

    Local ``path`` values are made absolute from ``cwd`` as MLflow does; a default that does not
    exist there but does in ``project_dir`` is taken from the project (MLflow would fail instead).
    ``root`` (a git checkout) bounds that lookup: a default the project's author wrote cannot
    reach outside the checkout (``../../..`` past its top), while paths the user gives with -P are
    theirs, relative to ``cwd`` or absolute.
    """
    cwd = cwd or Path.cwd()
    problems = _missing_required(entry_point, given)
    values: dict[str, str] = {}
    logged: dict[str, str] = {}
    for name, param in entry_point.parameters.items():
        if name not in given and param.required:
            continue  # already reported as missing
        source, value, problem = _one_value(param, given)
        if problem is None:
            logged[name] = value
            if param.type == "path" and (local := local_path(value)) is not None:
                bases = [cwd] if name in given or project_dir is None else [cwd, project_dir]
                value, problem = _find_path(name, local, bases, root)
        if problem:
            problems.append(f"{source}: {problem}")
            continue
        values[name] = value
    if problems:
        raise ParameterError("\n".join(problems))
    extras = {k: v for k, v in given.items() if k not in entry_point.parameters}
    logged.update(extras)
    return ResolvedParams(values=values, extras=extras, logged=logged)


def _missing_required(entry_point: EntryPoint, given: dict[str, str]) -> list[str]:
    missing = [p.name for p in entry_point.parameters.values() if p.required and p.name not in given]
    if not missing:
        return []
    flags = " ".join(f"-P {m}=..." for m in missing)
    plural = "s" if len(missing) > 1 else ""
    return [f"entry point '{entry_point.name}' is missing required parameter{plural} "
            + f"{', '.join(missing)}; pass {flags}"]


def _one_value(param: Parameter, given: dict[str, str]) -> tuple[str, str, str | None]:
    """(where the value came from, the value, its problem or None): a given value or the default."""
    if param.name in given:
        value = given[param.name]
        source = f"-P {param.name}={value}"
        # The MLproject's own default, given explicitly (`type: int, default: None` is common in
        # real projects): MLflow takes it, so it is checked only as the default itself would be.
        as_default = param.default is not None and value == str(param.default)
        problem = type_problem(param, value) if not as_default or param.type == "uri" else None
    else:
        value = str(param.default)
        source = f"default {param.name}={value}"
        problem = type_problem(param, value) if param.type == "uri" else None
    if problem is None and "\0" in value:
        return repr(source), value, "contains a NUL character, which no command line can carry"
    return source, value, problem


def _find_path(name: str, local: str, bases: list[Path], root: Path | None) -> tuple[str, str | None]:
    """(absolute path, None), or ("", why not): the first base where ``local`` exists."""
    for base in bases:
        candidate = base / local
        if not os.path.exists(candidate):
            continue
        if root is not None and base is bases[-1] and len(bases) > 1 and not _inside(candidate, root):
            return "", (f"'{name}' is a path parameter whose default {local} points outside the "
                        f"project's checkout; pass -P {name}=PATH to use a file elsewhere")
        return os.path.abspath(candidate), None
    where = " or ".join(str(b) for b in bases)
    return "", (f"'{name}' is a path parameter but {local} does not exist (relative paths are "
                f"taken from {where})")


def _inside(path: Path, root: Path) -> bool:
    resolved, top = path.resolve(), root.resolve()
    return resolved == top or top in resolved.parents


def render_command(entry_point: EntryPoint, params: ResolvedParams) -> str:
    """The exact shell command MLflow would run for these values."""
    assert entry_point.command is not None
    quoted = {k: shlex.quote(v) for k, v in params.values.items()}
    try:
        command = entry_point.command.format(**quoted)
    except (KeyError, IndexError, ValueError) as exc:  # load_project reports these; belt and braces
        raise ParameterError(f"entry point '{entry_point.name}': cannot fill its command: {exc!r}") from None
    extra = [f"--{shlex.quote(k)} {shlex.quote(v)}" for k, v in params.extras.items()]
    return " ".join([command, *extra])
