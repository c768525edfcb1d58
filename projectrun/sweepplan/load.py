"""Loading a sweep file (or ``--grid`` flags) into a validated SweepSpec.

Every problem is collected and reported at once as ``file:line: message``, each on the line of
the key at fault: unknown keys and durations are checked here rather than by the schema because
jsonschema points at the parent mapping and says less.
"""
from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from projectrun.durations import parse_duration
from projectrun.errors import SpecError, UsageError
from projectrun.sweepplan.domains import NUMBER, Domain, Fixed, Values, make_domain, render_value
from projectrun.sweepplan.expansion import MAX_GRID, grid_size
from projectrun.sweepplan.plan import Backend, Execution, Objective, SweepSpec
from projectrun.yamlfile import YamlDoc, load_schema, load_yaml, schema_problems

SCHEMA = "sweep.schema.json"
_KINDS = ("from", "lin", "geom", "uniform", "log_uniform", "int_uniform", "choice")
_COMPANIONS = {"from": {"to", "step"}, "lin": {"num"}, "geom": {"num"}}

#: ``problem(path in the file, message)``: collects one problem, reported with the path's line
Problem = Callable[[tuple[Any, ...], str], None]


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep file; raise SpecError listing every problem as
    ``file:line: msg``, sorted by line, so one run of the command shows all of them."""
    path = Path(path)
    doc = load_yaml(path)
    if doc.data is None:
        empty = (f"{path}:1: the sweep file is empty; it needs at least 'project:' and "
                 f"'parameters:'")
        raise SpecError([empty])
    data = _coerce_numbers(doc.data)
    problems: list[tuple[int, str]] = []
    if isinstance(data, dict):
        problems += _unknown_keys(doc, data) + _timeout_problems(doc, data)
        data = _without_unknown(data)
    checked = YamlDoc(path=doc.path, data=data, lines=doc.lines)
    problems += [(_line_of(msg), msg) for msg in schema_problems(checked, SCHEMA)]
    if problems:
        raise SpecError([msg for _, msg in sorted(problems)])
    return _build(checked)


def _line_of(message: str) -> int:
    match = re.search(r":(\d+): ", message)
    return int(match.group(1)) if match else 0


def _known(*schema_path: str) -> set[str]:
    node = load_schema(SCHEMA)
    for part in schema_path:
        node = node[part]
    return set(node["properties"])


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_keys(doc: YamlDoc, data: dict[Any, Any]) -> list[tuple[int, str]]:
    """Checked here, not by the schema, so the line is the key's own (jsonschema gives the
    parent's)."""
    found: list[tuple[int, str]] = []

    def check(mapping: Any, path: tuple[str, ...], known: set[str], what: str) -> None:
        if not isinstance(mapping, dict):
            return
        for key in mapping:
            if str(key) not in known:
                line = doc.line(path + (str(key),))
                message = (f"{doc.path}:{line}: unknown key '{key}' in {what}"
                           f"{suggest(str(key), known)}; known keys: {', '.join(sorted(known))}")
                found.append((line, message))

    check(data, (), _known(), "the sweep file")
    check(data.get("objective"), ("objective",), _known("properties", "objective"), "objective")
    check(data.get("ray"), ("ray",), _known("properties", "ray"), "ray")
    params = data.get("parameters")
    if isinstance(params, dict):
        generator = _known("$defs", "generator")
        for name, spec in params.items():
            check(spec, ("parameters", str(name)), generator, f"parameter '{name}'")
    return found


def _timeout_problems(doc: YamlDoc, data: dict[Any, Any]) -> list[tuple[int, str]]:
    """Checked here for a readable message; the schema only says number or string."""
    if not isinstance(data.get("timeout"), (str, int, float)) or isinstance(data["timeout"], bool):
        return []
    try:
        parse_duration(data["timeout"])
    except ValueError as exc:
        return [(doc.line(("timeout",)), f"{doc.where(('timeout',))}: {exc}")]
    return []


def _without_unknown(data: dict[Any, Any]) -> dict[Any, Any]:
    """Drop keys already reported as unknown so the schema does not report them a second time."""
    out = _only(data, _known())
    for section in ("objective", "ray"):
        if isinstance(out.get(section), dict):
            out[section] = _only(out[section], _known("properties", section))
    if isinstance(out.get("parameters"), dict):
        keep = _known("$defs", "generator")
        out["parameters"] = {n: _only(s, keep) if isinstance(s, dict) else s
                             for n, s in out["parameters"].items()}
    return out


def _only(mapping: dict[Any, Any], keep: set[str]) -> dict[Any, Any]:
    return {k: v for k, v in mapping.items() if str(k) in keep}


def _number(value: Any) -> Any:
    """PyYAML reads ``1e-3`` (no dot) as a string; generator bounds take it as the number meant."""
    if isinstance(value, str) and NUMBER.match(value):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def _coerce_numbers(data: Any) -> Any:
    """Copy of ``data`` with numeric strings made numbers inside generator mappings only."""
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        return data
    params = {}
    for name, spec in data["parameters"].items():
        if isinstance(spec, dict):
            spec = {k: _numbers(k, v) for k, v in spec.items()}
        params[name] = spec
    return {**data, "parameters": params}


def _numbers(key: Any, value: Any) -> Any:
    """A generator key's value with numeric strings made numbers; ``choice`` values stay text."""
    if isinstance(value, list) and key != "choice":
        return [_number(x) for x in value]
    return _number(value)


def _is_url(uri: str) -> bool:
    try:
        scheme = urllib.parse.urlparse(uri).scheme
    except ValueError:  # 'http://[': meant as a URL; resolving the source says what is wrong
        return True
    return len(scheme) > 1 or bool(re.match(r"^[\w.-]+@[\w.-]+:", uri))


def resolve_project(project: str, base_dir: Path) -> str:
    """A local project is taken relative to the sweep file's directory (not the current one, so
    the file runs from anywhere); URLs are kept as written."""
    if _is_url(project):
        return project
    base, sep, sub = project.partition("#")
    return str((base_dir / base).resolve()) + sep + sub


def _build(doc: YamlDoc) -> SweepSpec:
    """Semantic checks the schema cannot express, all collected, then the typed spec."""
    data: dict[str, Any] = doc.data
    problems: list[tuple[int, str]] = []

    def problem(path: tuple[Any, ...], message: str) -> None:
        problems.append((doc.line(path), f"{doc.where(path)}: {message}"))

    method = data.get("method", "grid")
    parameters = _parameters(data, method, problem)
    names = [str(n) for n in data.get("parameters") or {}]
    cases = _combinations(data.get("cases"))
    _check_method(data, problem)
    _check_cases(cases, names, problem)
    _check_exclude(_combinations(data.get("exclude")), names, cases, problem)
    timeout = parse_duration(data["timeout"]) if "timeout" in data else None
    spec = _spec_from_data(doc, data, parameters, cases, timeout)
    if not problems and (size := grid_size(spec)) > MAX_GRID and method == "grid":
        problem(("parameters",), f"the grid has {size} combinations, more than {MAX_GRID}; "
                                 f"use method: random with samples, or fewer values")
    if problems:
        raise SpecError([msg for _, msg in sorted(problems)])
    return spec


def _parameters(data: dict[str, Any], method: str, problem: Problem) -> dict[str, Domain]:
    """The domains that could be built; the others are reported under their own key."""
    parameters: dict[str, Domain] = {}
    for name, raw in (data.get("parameters") or {}).items():
        def at(sub: tuple[Any, ...], msg: str, n: str = str(name)) -> None:
            problem(("parameters", n, *sub), msg)

        domain = _domain(str(name), raw, method, at)
        if domain is not None:
            parameters[str(name)] = domain
    return parameters


def _spec_from_data(doc: YamlDoc, data: dict[str, Any], parameters: dict[str, Domain],
                    cases: tuple[dict[str, str], ...], timeout: float | None) -> SweepSpec:
    objective = data.get("objective")
    project = str(data["project"])
    return SweepSpec(
        project=resolve_project(project, doc.path.parent), project_as_written=project,
        parameters=parameters, entry_point=str(data.get("entry_point", "main")),
        version=None if data.get("version") is None else str(data["version"]),
        experiment=data.get("experiment"), env_manager=data.get("env_manager"),
        name=data.get("name"), method=data.get("method", "grid"), samples=data.get("samples"),
        seed=data.get("seed"), max_runs=data.get("max_runs"),
        include=_combinations(data.get("include")), exclude=_combinations(data.get("exclude")),
        cases=cases,
        execution=Execution(parallel=int(data.get("parallel", 1)),
                            on_failure=data.get("on_failure", "continue"),
                            max_failures=data.get("max_failures"),
                            retries=int(data.get("retries", 0)),
                            timeout=timeout, backend=_backend(data)),
        objective=(None if objective is None
                   else Objective(str(objective["metric"]), objective["goal"])),
        path=doc.path,
    )


def _backend(data: dict[str, Any]) -> Backend:
    """``backend: ray`` plus the ``ray:`` mapping; ``ray:`` alone does not switch the backend."""
    ray = data.get("ray") or {}
    return Backend.from_dict({"name": data.get("backend", "local"), **ray})


def _combinations(raw: list[dict[Any, Any]] | None) -> tuple[dict[str, str], ...]:
    return tuple({str(k): render_value(v) for k, v in entry.items()} for entry in raw or ())


def _domain(name: str, raw: Any, method: str, problem: Problem) -> Domain | None:
    """One parameter's domain; problems go to ``problem(subpath, message)``."""
    if isinstance(raw, list):
        return Values(tuple(render_value(v) for v in raw))
    if not isinstance(raw, dict):
        return Fixed(render_value(raw))
    kind = _generator_kind(name, raw, method, problem)
    if kind is None:
        return None
    try:
        return make_domain(kind, raw)
    except ValueError as exc:
        problem((kind,), f"parameter '{name}': {exc}")
        return None


def _generator_kind(name: str, raw: dict[str, Any], method: str, problem: Problem) -> str | None:
    """The one generator key of ``raw``, or None when the mapping cannot make a domain."""
    kinds = [k for k in _KINDS if k in raw]
    if len(kinds) != 1:
        problem((), f"parameter '{name}' needs exactly one of {', '.join(_KINDS)}; "
                    f"found {', '.join(kinds) or 'none'}")
        return None
    kind = kinds[0]
    allowed = {kind} | _COMPANIONS.get(kind, set())
    for key in raw:
        if key not in allowed:
            problem((key,), f"parameter '{name}': '{key}' does not go with '{kind}'")
    missing = sorted(_COMPANIONS.get(kind, set()) - set(raw))
    if missing:
        problem((), f"parameter '{name}': '{kind}' needs {', '.join(missing)}")
        return None
    if kind in ("uniform", "log_uniform") and method == "grid":
        problem((kind,), f"parameter '{name}': {kind} is a continuous distribution and cannot be "
                         f"enumerated by method: grid; use method: random, or lin/geom with num")
        return None
    return kind


def _check_method(data: dict[str, Any], problem: Problem) -> None:
    method = data.get("method", "grid")
    if method == "grid" and "samples" in data:
        problem(("samples",), "samples is for method: random; a grid runs every combination "
                              "(use max_runs for a seeded subsample)")
    if method == "random":
        if "samples" not in data:
            problem(("method",), "method: random needs samples (how many runs to draw)")
        if "max_runs" in data:
            problem(("max_runs",), "max_runs is for method: grid; with method: random, samples "
                                   "is the number of runs")


def _check_cases(cases: tuple[dict[str, str], ...], parameters: Sequence[str],
                 problem: Problem) -> None:
    for i, case in enumerate(cases):
        for key in case:
            if key in parameters:
                problem(("cases", i, key), f"'{key}' is set both under parameters and in cases; "
                                           f"keep it in one place")


def _check_exclude(exclude: tuple[dict[str, str], ...], parameters: Sequence[str],
                   cases: tuple[dict[str, str], ...], problem: Problem) -> None:
    """As GitHub does: an exclude key that no combination has can never match, so it is a typo."""
    known = set(parameters).union(*cases) if cases else set(parameters)
    for i, entry in enumerate(exclude):
        for key in entry:
            if key not in known:
                problem(("exclude", i, key), f"exclude key '{key}' is not a parameter or case key"
                                             f"{suggest(key, known)}, so it can never match")


def _split_escaped(text: str) -> list[str]:
    r"""Split on commas; ``\,`` is a literal comma and ``\\`` a literal backslash."""
    items: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            current.append(nxt if nxt in (",", "\\") else ch + nxt)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def parse_grid_flags(items: Iterable[str], flag: str = "--grid") -> dict[str, list[str]]:
    r"""``--grid alpha=0.1,0.2`` -> ``{"alpha": ["0.1", "0.2"]}``; a literal comma is ``\,``."""
    from projectrun.params import parse_assignments

    out = {name: _split_escaped(rest) for name, rest in parse_assignments(items, flag).items()}
    for name, values in out.items():
        if any(v == "" for v in values):
            raise UsageError(f"{flag} {name}: empty value; remove the stray comma "
                             f"(a literal comma is written \\,)")
    return out


def spec_from_grid(project: str, entry_point: str = "main", fixed: Mapping[str, str] | None = None,
                   grid: Mapping[str, Sequence[str]] | None = None, **options: Any) -> SweepSpec:
    """A grid SweepSpec from ``-P`` values and ``--grid`` lists; ``options`` are SweepSpec fields.

    ``project`` is kept as given (the CLI resolves it from the current directory).
    """
    fixed, grid = dict(fixed or {}), dict(grid or {})
    _check_grid_flags(fixed, grid)
    parameters: dict[str, Domain] = {k: Fixed(str(v)) for k, v in fixed.items()}
    parameters.update({k: Values(tuple(str(x) for x in v)) for k, v in grid.items()})
    spec = SweepSpec(project=project, project_as_written=project, parameters=parameters,
                     entry_point=entry_point, **options)
    if spec.method == "grid" and grid_size(spec) > MAX_GRID:
        raise UsageError(f"the grid has {grid_size(spec)} combinations, more than {MAX_GRID}")
    return spec


def _check_grid_flags(fixed: Mapping[str, str], grid: Mapping[str, Sequence[str]]) -> None:
    both = sorted(set(fixed) & set(grid))
    if both:
        raise UsageError(f"{', '.join(both)} given both as -P and --grid; give each once")
    empty = sorted(k for k, v in grid.items() if not v)
    if empty:
        raise UsageError(f"--grid {', '.join(empty)}: no values")
