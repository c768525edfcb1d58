"""Sweep planner: expand a sweep file into the concrete, ordered list of trials to run.

Pure: no MLflow, no processes. The plan is materialised once (random draws included) and stored
by the scheduler, so a resume reads the same trials instead of regenerating them (Guild's seeds
are only stable "on the same version of Python"; W&B has no seed at all).

Rules (see /work/shared/research/sweeps.md, section 3):

* A scalar is fixed, a YAML list is swept, a mapping is a generator or a distribution. Generators
  take real values with inclusive ends, never exponents (W&B's ``log_uniform`` footgun).
* ``method: grid`` is the cartesian product of the swept parameters (file order, last varying
  fastest) times ``cases``; ``method: random`` draws exactly ``samples`` combinations, without
  replacement when the space is discrete.
* ``exclude`` then ``include`` follow GitHub Actions ``strategy.matrix``. Fixed parameters are
  not matrix axes: they are defaults of every trial, so an ``include`` may override them for the
  combinations it matches, and a new combination added by ``include`` inherits them. With
  ``method: random`` the cases are one more discrete dimension, ``exclude`` rejects draws and
  ``include`` applies to the drawn combinations.
* Every value becomes the exact ``-P`` string (:func:`render_value`); the trial key hashes the
  values normalised so that numerically equal texts (``3e6``, ``3000000``, ``3000000.0``) agree.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import random
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Union

from projectrun.durations import parse_duration
from projectrun.errors import ParameterError, SpecError, UsageError
from projectrun.spec import EntryPoint
from projectrun.yamlfile import YamlDoc, load_schema, load_yaml, schema_problems

SCHEMA = "sweep.schema.json"
#: Bumped when the planner's output for the same file changes; part of every fingerprint.
PLAN_FORMAT = 1
KEY_LENGTH = 12
#: Generated floats are rounded to this many significant digits (0.1 + 2*0.1 -> 0.3).
SIG_DIGITS = 12
#: Most values one generator may yield, and most combinations a grid may enumerate.
MAX_GENERATED = 100_000
MAX_GRID = 1_000_000
#: Discrete random spaces up to this size are enumerated; larger ones are sampled by index.
ENUMERATE_LIMIT = 200_000
_KINDS = ("from", "lin", "geom", "uniform", "log_uniform", "int_uniform", "choice")
_COMPANIONS = {"from": {"to", "step"}, "lin": {"num"}, "geom": {"num"}}
_NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


# ---------------------------------------------------------------------------------------------
# Values: rendering, normalisation, keys


def render_value(value: Any) -> str:
    """The ``-P`` text for a YAML scalar: ints as ints, floats by ``repr`` (shortest round trip,
    what MLflow's ``str()`` gives), booleans as YAML writes them (true/false), strings verbatim."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def normalize_value(text: str) -> str:
    """Numbers compare by exact decimal value (``3e6 == 3000000 == 3000000.0``); other text as is."""
    if _NUMBER.match(text):
        try:
            number = Decimal(text.strip())
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            return "s:" + text
        if number == 0:
            number = Decimal(0)
        return "n:" + format(number.normalize(), "f" if abs(number.adjusted()) < 30 else "E")
    return "s:" + text


def trial_key(params: Mapping[str, str]) -> str:
    """Stable identity of a trial across resumes: sha256 of the sorted, normalised values."""
    canonical = json.dumps(sorted((k, normalize_value(v)) for k, v in params.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


def _round(x: float) -> float:
    """Generated floats: 12 significant digits hides float accumulation; ``+ 0.0`` drops -0.0."""
    return float(f"{x:.{SIG_DIGITS}g}") + 0.0


# ---------------------------------------------------------------------------------------------
# Domains: what one parameter may take


@dataclass(frozen=True)
class Fixed:
    """One value for every trial (a scalar in the file)."""

    value: str


@dataclass(frozen=True)
class Values:
    """A finite, ordered set of values: a list, ``choice``, or an expanded from/lin/geom generator."""

    values: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.values)

    def at(self, i: int) -> str:
        return self.values[i]


@dataclass(frozen=True)
class IntUniform:
    """Integers low..high inclusive; kept lazy because the range may be huge."""

    low: int
    high: int

    def __len__(self) -> int:
        return self.high - self.low + 1

    def at(self, i: int) -> str:
        return str(self.low + i)


@dataclass(frozen=True)
class Uniform:
    """A continuous distribution over real bounds (``log`` draws uniformly in log space)."""

    low: float
    high: float
    log: bool = False

    def draw(self, rng: random.Random) -> str:
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return repr(min(max(_round(x), self.low), self.high))


Domain = Union[Fixed, Values, IntUniform, Uniform]


@dataclass(frozen=True)
class Backend:
    """Where trials run (the sweep file's ``backend:`` and ``ray:`` keys, or --backend/--address).

    ``resources`` are custom Ray resources as sorted (name, amount) pairs, so the value stays
    hashable and compares equal after a JSON round trip.
    """

    name: str = "local"
    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus, "resources": dict(self.resources)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Backend:
        return cls(name=str(data.get("name", "local")), address=data.get("address"),
                   num_cpus=data.get("num_cpus"), num_gpus=data.get("num_gpus"),
                   resources=tuple(sorted((str(k), float(v))
                                          for k, v in (data.get("resources") or {}).items())))


@dataclass(frozen=True)
class Execution:
    """How the scheduler runs the trials; carried verbatim into the plan, never part of its identity."""

    parallel: int = 1
    on_failure: str = "continue"
    max_failures: int | None = None
    retries: int = 0
    #: seconds
    timeout: float | None = None
    backend: Backend = Backend()

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "backend": self.backend.as_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Execution:
        """Plans stored before backends existed have no ``backend``: they ran locally."""
        rest = {k: v for k, v in data.items() if k != "backend"}
        return cls(**rest, backend=Backend.from_dict(data.get("backend") or {}))


@dataclass(frozen=True)
class Objective:
    metric: str
    goal: str


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. ``project`` is resolved (absolute path or URL)."""

    project: str
    parameters: dict[str, Domain] = field(default_factory=dict)
    entry_point: str = "main"
    version: str | None = None
    experiment: str | None = None
    env_manager: str | None = None
    #: name of the parent run
    name: str | None = None
    method: str = "grid"
    samples: int | None = None
    seed: int | None = None
    max_runs: int | None = None
    include: tuple[dict[str, str], ...] = ()
    exclude: tuple[dict[str, str], ...] = ()
    cases: tuple[dict[str, str], ...] = ()
    execution: Execution = Execution()
    objective: Objective | None = None
    #: the sweep file, when loaded from one
    path: Path | None = None
    #: ``project`` as the file wrote it; the fingerprint uses this so moving the tree keeps it
    project_as_written: str | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of everything that decides the trials (not execution options, experiment or name)."""
        return _fingerprint(self)

    def names(self) -> list[str]:
        """Every parameter name the sweep mentions, in first-mention order."""
        found = dict.fromkeys(self.parameters)
        for entry in (*self.cases, *self.include, *self.exclude):
            found.update(dict.fromkeys(entry))
        return list(found)


@dataclass(frozen=True)
class Trial:
    index: int
    key: str
    #: exactly the ``-P`` values of this run, in file order
    params: dict[str, str]


@dataclass(frozen=True)
class SweepPlan:
    """The materialised sweep; stored with the parent run and read back on resume."""

    trials: list[Trial]
    fingerprint: str
    project: str
    entry_point: str = "main"
    method: str = "grid"
    #: the seed used (given or picked); None when nothing was random
    seed: int | None = None
    version: str | None = None
    experiment: str | None = None
    env_manager: str | None = None
    name: str | None = None
    execution: Execution = Execution()
    objective: Objective | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = {
            "format": PLAN_FORMAT, "fingerprint": self.fingerprint, "project": self.project,
            "entry_point": self.entry_point, "method": self.method, "seed": self.seed,
            "version": self.version, "experiment": self.experiment,
            "env_manager": self.env_manager, "name": self.name,
            "execution": self.execution.as_dict(),
            "objective": None if self.objective is None else vars(self.objective),
            "notes": list(self.notes),
            "trials": [{"index": t.index, "key": t.key, "params": t.params} for t in self.trials],
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SweepPlan:
        data = json.loads(text)
        if data.get("format") != PLAN_FORMAT:
            raise SpecError([f"plan format {data.get('format')!r} is not {PLAN_FORMAT}; this plan "
                             f"was written by another projectrun version"])
        objective = data.get("objective")
        return cls(
            trials=[Trial(int(t["index"]), str(t["key"]), {str(k): str(v) for k, v in t["params"].items()})
                    for t in data["trials"]],
            fingerprint=data["fingerprint"], project=data["project"],
            entry_point=data["entry_point"], method=data["method"], seed=data["seed"],
            version=data["version"], experiment=data["experiment"],
            env_manager=data["env_manager"], name=data["name"],
            execution=Execution.from_dict(data["execution"]),
            objective=None if objective is None else Objective(**objective),
            notes=list(data["notes"]),
        )


# ---------------------------------------------------------------------------------------------
# Loading and validating a sweep file


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep file; raise SpecError listing every problem as ``file:line: msg``."""
    path = Path(path)
    doc = load_yaml(path)
    if doc.data is None:
        raise SpecError([f"{path}:1: the sweep file is empty; it needs at least 'project:' and "
                         f"'parameters:'"])
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


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_keys(doc: YamlDoc, data: dict[Any, Any]) -> list[tuple[int, str]]:
    """Checked here, not by the schema, so the line is the key's own (jsonschema gives the parent's)."""
    found = []

    def check(mapping: Any, path: tuple[str, ...], known: set[str], what: str) -> None:
        if not isinstance(mapping, dict):
            return
        for key in mapping:
            if str(key) not in known:
                line = doc.line(path + (str(key),))
                found.append((line, f"{doc.path}:{line}: unknown key '{key}' in {what}"
                                    f"{_suggest(str(key), known)}; "
                                    f"known keys: {', '.join(sorted(known))}"))

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
    out = {k: v for k, v in data.items() if str(k) in _known()}
    if isinstance(out.get("objective"), dict):
        keep = _known("properties", "objective")
        out["objective"] = {k: v for k, v in out["objective"].items() if str(k) in keep}
    if isinstance(out.get("ray"), dict):
        keep = _known("properties", "ray")
        out["ray"] = {k: v for k, v in out["ray"].items() if str(k) in keep}
    if isinstance(out.get("parameters"), dict):
        keep = _known("$defs", "generator")
        out["parameters"] = {
            n: {k: v for k, v in s.items() if str(k) in keep} if isinstance(s, dict) else s
            for n, s in out["parameters"].items()}
    return out


def _number(value: Any) -> Any:
    """PyYAML reads ``1e-3`` (no dot) as a string; generator bounds accept it as the number meant."""
    if isinstance(value, str) and _NUMBER.match(value):
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
            spec = {k: ([_number(x) for x in v] if isinstance(v, list) and k != "choice" else _number(v))
                    for k, v in spec.items()}
        params[name] = spec
    return {**data, "parameters": params}


def _is_url(uri: str) -> bool:
    try:
        scheme = urllib.parse.urlparse(uri).scheme
    except ValueError:  # 'http://[': meant as a URL; resolving the source says what is wrong
        return True
    return len(scheme) > 1 or bool(re.match(r"^[\w.-]+@[\w.-]+:", uri))


def resolve_project(project: str, base_dir: Path) -> str:
    """A local project is taken relative to the sweep file's directory; URLs are kept as written."""
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
    parameters: dict[str, Domain] = {}
    for name, raw in (data.get("parameters") or {}).items():
        def at(sub: tuple[Any, ...], msg: str, n: str = str(name)) -> None:
            problem(("parameters", n, *sub), msg)

        domain = _domain(str(name), raw, method, at)
        if domain is not None:
            parameters[str(name)] = domain
    names = [str(n) for n in data.get("parameters") or {}]
    cases = _combinations(data.get("cases"))
    _check_method(data, problem)
    _check_cases(cases, names, problem)
    _check_exclude(_combinations(data.get("exclude")), names, cases, problem)
    spec = _spec_from_data(doc, data, parameters, cases, parse_duration(data["timeout"])
                           if "timeout" in data else None)
    if not problems and (size := _grid_size(spec)) > MAX_GRID and method == "grid":
        problem(("parameters",), f"the grid has {size} combinations, more than {MAX_GRID}; "
                                 f"use method: random with samples, or fewer values")
    if problems:
        raise SpecError([msg for _, msg in sorted(problems)])
    return spec


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
                            max_failures=data.get("max_failures"), retries=int(data.get("retries", 0)),
                            timeout=timeout, backend=_backend(data)),
        objective=None if objective is None else Objective(str(objective["metric"]), objective["goal"]),
        path=doc.path,
    )


def _backend(data: dict[str, Any]) -> Backend:
    """``backend: ray`` plus the ``ray:`` mapping; ``ray:`` alone does not switch the backend."""
    ray = data.get("ray") or {}
    return Backend.from_dict({"name": data.get("backend", "local"), **ray})


def _combinations(raw: list[dict[Any, Any]] | None) -> tuple[dict[str, str], ...]:
    return tuple({str(k): render_value(v) for k, v in entry.items()} for entry in raw or ())


def _domain(name: str, raw: Any, method: str, problem: Any) -> Domain | None:
    """One parameter's domain; problems go to ``problem(subpath, message)``."""
    if isinstance(raw, list):
        return Values(tuple(render_value(v) for v in raw))
    if not isinstance(raw, dict):
        return Fixed(render_value(raw))
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
    try:
        return _make_domain(kind, raw)
    except ValueError as exc:
        problem((kind,), f"parameter '{name}': {exc}")
        return None


def _make_domain(kind: str, raw: dict[str, Any]) -> Domain:
    if kind == "choice":
        return Values(tuple(render_value(v) for v in raw["choice"]))
    if kind == "int_uniform":
        low, high = (int(x) for x in raw["int_uniform"])
        if low > high:
            raise ValueError(f"int_uniform [{low}, {high}]: low is above high")
        return IntUniform(low, high)
    if kind in ("uniform", "log_uniform"):
        low, high = (float(x) for x in raw[kind])
        if low > high:
            raise ValueError(f"{kind} [{low}, {high}]: low is above high")
        return Uniform(low, high, log=kind == "log_uniform")
    if kind == "from":
        values = _arange(raw["from"], raw["to"], raw["step"])
    elif kind == "lin":
        values = _linspace(*raw["lin"], int(raw["num"]))
    else:
        values = _geomspace(*raw["geom"], int(raw["num"]))
    return Values(tuple(render_value(v) for v in values))


def _all_ints(*xs: Any) -> bool:
    return all(isinstance(x, int) and not isinstance(x, bool) for x in xs)


def _arange(start: float, stop: float, step: float) -> list[int | float]:
    """Inclusive ``to`` (Guild's convention, not Hydra's); a + i*step, never accumulated."""
    if step == 0:
        raise ValueError("step must not be 0")
    q = (stop - start) / step
    if q < -1e-9:
        raise ValueError(f"step {step} moves away from 'to' ({start} -> {stop}); flip its sign")
    count = math.floor(q + 1e-9 * max(1.0, abs(q))) + 1
    if count > MAX_GENERATED:
        raise ValueError(f"from/to/step gives {count} values, more than {MAX_GENERATED}")
    if _all_ints(start, stop, step):
        return [start + i * step for i in range(count)]
    return [_round(start + i * step) for i in range(count)]


def _linspace(low: float, high: float, num: int) -> list[int | float]:
    if num > MAX_GENERATED:
        raise ValueError(f"num {num} is more than {MAX_GENERATED}")
    if _all_ints(low, high) and (high - low) % (num - 1) == 0:
        return [low + i * (high - low) // (num - 1) for i in range(num)]
    return [_round(low + (high - low) * i / (num - 1)) for i in range(num)]


def _geomspace(low: float, high: float, num: int) -> list[int | float]:
    if num > MAX_GENERATED:
        raise ValueError(f"num {num} is more than {MAX_GENERATED}")
    if low == 0 or high == 0 or (low < 0) != (high < 0):
        raise ValueError(f"geom [{low}, {high}]: both ends must be non-zero with the same sign "
                         f"(values, not exponents: geom: [1.0e-4, 1.0e-1])")
    values = [_round(low * (high / low) ** (i / (num - 1))) for i in range(num)]
    if _all_ints(low, high) and all(v.is_integer() for v in values):
        return [int(v) for v in values]
    return values


def _check_method(data: dict[str, Any], problem: Any) -> None:
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


def _check_cases(cases: tuple[dict[str, str], ...], parameters: Sequence[str], problem: Any) -> None:
    for i, case in enumerate(cases):
        for key in case:
            if key in parameters:
                problem(("cases", i, key), f"'{key}' is set both under parameters and in cases; "
                                           f"keep it in one place")


def _check_exclude(exclude: tuple[dict[str, str], ...], parameters: Sequence[str],
                   cases: tuple[dict[str, str], ...], problem: Any) -> None:
    """As GitHub does: an exclude key that no combination has can never match, so it is a typo."""
    known = set(parameters).union(*cases) if cases else set(parameters)
    for i, entry in enumerate(exclude):
        for key in entry:
            if key not in known:
                problem(("exclude", i, key), f"exclude key '{key}' is not a parameter or case key"
                                             f"{_suggest(key, known)}, so it can never match")


# ---------------------------------------------------------------------------------------------
# Building a spec from CLI flags


def _split_escaped(text: str) -> list[str]:
    r"""Split on commas; ``\,`` is a literal comma and ``\\`` a literal backslash."""
    items, current, chars = [], [], iter(text)
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
    r"""``--grid alpha=0.1,0.2`` -> ``{"alpha": ["0.1", "0.2"]}``; write a literal comma as ``\,``."""
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
    both = sorted(set(fixed) & set(grid))
    if both:
        raise UsageError(f"{', '.join(both)} given both as -P and --grid; give each once")
    empty = sorted(k for k, v in grid.items() if not v)
    if empty:
        raise UsageError(f"--grid {', '.join(empty)}: no values")
    parameters: dict[str, Domain] = {k: Fixed(str(v)) for k, v in fixed.items()}
    parameters.update({k: Values(tuple(str(x) for x in v)) for k, v in grid.items()})
    spec = SweepSpec(project=project, project_as_written=project, parameters=parameters,
                     entry_point=entry_point, **options)
    if spec.method == "grid" and _grid_size(spec) > MAX_GRID:
        raise UsageError(f"the grid has {_grid_size(spec)} combinations, more than {MAX_GRID}")
    return spec


# ---------------------------------------------------------------------------------------------
# Expansion


def expand(spec: SweepSpec) -> SweepPlan:
    """The ordered, de-duplicated list of trials; random draws use ``random.Random(seed)``."""
    notes: list[str] = []
    seed = spec.seed
    if seed is None and (spec.method == "random" or spec.max_runs is not None):
        seed = random.SystemRandom().randrange(2**31)
        notes.append(f"no seed given; picked seed {seed} (add 'seed: {seed}' to reproduce this plan)")
    fixed = {k: d.value for k, d in spec.parameters.items() if isinstance(d, Fixed)}
    if spec.method == "random":
        combos = _sample(spec, fixed, random.Random(seed), notes)
    else:
        combos = [c for c in _product(spec) if not _excluded(c, fixed, spec.exclude)]
    rows = _apply_include(combos, spec.include)
    if not _axes(spec) and not spec.cases and not spec.include:
        rows = [{}]  # only fixed values: one run, as a plain launch would be
    params = [_ordered(spec, fixed, row) for row in rows]
    params = _dedupe(params, notes)
    if spec.max_runs is not None:
        params = _subsample(params, spec.max_runs, seed, notes)
    if not params:
        notes.append("the plan is empty: every combination was excluded")
    trials = [Trial(i, trial_key(p), p) for i, p in enumerate(params)]
    return SweepPlan(trials=trials, fingerprint=spec.fingerprint, project=spec.project,
                entry_point=spec.entry_point, method=spec.method, seed=seed, version=spec.version,
                experiment=spec.experiment, env_manager=spec.env_manager, name=spec.name,
                execution=spec.execution, objective=spec.objective, notes=notes)


def _axes(spec: SweepSpec) -> list[tuple[str, Domain]]:
    return [(k, d) for k, d in spec.parameters.items() if not isinstance(d, Fixed)]


def _grid_size(spec: SweepSpec) -> int:
    axes = _axes(spec)
    if not axes and not spec.cases:
        return 0
    sizes = [len(d) if not isinstance(d, Uniform) else 1 for _, d in axes]
    return math.prod(sizes) * max(1, len(spec.cases))


def _product(spec: SweepSpec) -> Iterator[dict[str, str]]:
    """Grid order: parameters in file order, last fastest; cases vary fastest of all."""
    axes = _axes(spec)
    if not axes and not spec.cases:
        return
    if _grid_size(spec) > MAX_GRID:
        raise SpecError([f"{spec.path or 'sweep'}: the grid has {_grid_size(spec)} combinations, "
                         f"more than {MAX_GRID}"])
    for d in (d for _, d in axes):
        if isinstance(d, Uniform):
            raise SpecError([f"{spec.path or 'sweep'}: a continuous distribution cannot be "
                             f"enumerated by method: grid"])
    names = [k for k, _ in axes]
    columns = [[d.at(i) for i in range(len(d))] for _, d in axes]  # type: ignore[union-attr]
    for values in itertools.product(*columns):
        for case in spec.cases or ({},):
            yield {**dict(zip(names, values)), **case}


def _matches(row: Mapping[str, str], entry: Mapping[str, str]) -> bool:
    return all(k in row and normalize_value(row[k]) == normalize_value(v) for k, v in entry.items())


def _excluded(combo: Mapping[str, str], fixed: Mapping[str, str],
              exclude: Sequence[Mapping[str, str]]) -> bool:
    view = {**fixed, **combo}
    return any(_matches(view, entry) for entry in exclude)


def _apply_include(combos: list[dict[str, str]],
                   include: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """GitHub Actions semantics: an entry extends every original combination whose ORIGINAL keys it
    does not contradict (values it added earlier may be overwritten); if it extends none, it is a
    new combination, which later entries never extend."""
    rows = [(dict(c), frozenset(c)) for c in combos]
    added: list[dict[str, str]] = []
    for entry in include:
        matched = False
        for row, original in rows:
            if _matches(row, {k: v for k, v in entry.items() if k in original}):
                row.update({k: v for k, v in entry.items() if k not in original})
                matched = True
        if not matched:
            added.append(dict(entry))
    return [row for row, _ in rows] + added


def _ordered(spec: SweepSpec, fixed: Mapping[str, str], row: Mapping[str, str]) -> dict[str, str]:
    """Fixed values under the row; keys in file order, then case / include keys as they came."""
    merged = {**fixed, **row}
    out = {k: merged[k] for k in spec.parameters if k in merged}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


def _dedupe(params: list[dict[str, str]], notes: list[str]) -> list[dict[str, str]]:
    """Resume maps runs by trial key, so two trials with one key would be one run; keep the first."""
    seen: set[str] = set()
    out = []
    for p in params:
        key = trial_key(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    if len(out) < len(params):
        notes.append(f"{len(params) - len(out)} duplicate combination(s) dropped "
                     f"(numerically equal values give the same trial)")
    return out


def _subsample(params: list[dict[str, str]], max_runs: int, seed: int | None,
               notes: list[str]) -> list[dict[str, str]]:
    """Guild's --max-trials, but order-preserving so the plan still reads as a grid."""
    if max_runs >= len(params):
        notes.append(f"max_runs {max_runs} >= {len(params)} combinations; running all of them")
        return params
    keep = sorted(random.Random(seed).sample(range(len(params)), max_runs))
    notes.append(f"max_runs: running {max_runs} of {len(params)} combinations (seed {seed})")
    return [params[i] for i in keep]


def _sample(spec: SweepSpec, fixed: Mapping[str, str], rng: random.Random,
            notes: list[str]) -> list[dict[str, str]]:
    """Exactly ``samples`` draws; a discrete space is drawn without replacement (wandb#4682)."""
    axes = _axes(spec)
    if not axes and not spec.cases:
        notes.append("method: random with nothing to sample (no list, generator or cases); "
                     "one trial with the fixed values")
        return []
    samples = spec.samples or 1
    if all(not isinstance(d, Uniform) for _, d in axes):
        return _sample_discrete(spec, fixed, rng, samples, notes)
    return _sample_continuous(spec, fixed, rng, samples, notes)


def _decode(spec: SweepSpec, axes: list[tuple[str, Domain]], index: int) -> dict[str, str]:
    """Combination number ``index`` of the grid, in grid order (mixed radix, cases fastest)."""
    cases = spec.cases or ({},)
    index, case_i = divmod(index, len(cases))
    combo: dict[str, str] = {}
    for name, d in reversed(axes):
        index, i = divmod(index, len(d))  # type: ignore[arg-type]
        combo[name] = d.at(i)  # type: ignore[union-attr]
    combo = {k: combo[k] for k, _ in axes}
    combo.update(cases[case_i])
    return combo


def _sample_discrete(spec: SweepSpec, fixed: Mapping[str, str], rng: random.Random, samples: int,
                     notes: list[str]) -> list[dict[str, str]]:
    axes = _axes(spec)
    size = _grid_size(spec)
    if size <= ENUMERATE_LIMIT:
        space = [c for c in _product(spec) if not _excluded(c, fixed, spec.exclude)]
        if samples > len(space):
            notes.append(f"samples {samples} is more than the {len(space)} distinct combinations; "
                         f"running each once")
        return rng.sample(space, min(samples, len(space)))
    seen: set[int] = set()
    out: list[dict[str, str]] = []
    for _ in range(samples * 100 + 1000):
        if len(out) == samples or len(seen) == size:
            break
        i = rng.randrange(size)
        if i in seen:
            continue
        seen.add(i)
        combo = _decode(spec, axes, i)
        if not _excluded(combo, fixed, spec.exclude):
            out.append(combo)
    if len(out) < samples:
        notes.append(f"only {len(out)} of {samples} samples found outside the excluded combinations")
    return out


def _draw(domain: Domain, rng: random.Random) -> str:
    if isinstance(domain, Uniform):
        return domain.draw(rng)
    return domain.at(rng.randrange(len(domain)))  # type: ignore[union-attr,arg-type]


def _sample_continuous(spec: SweepSpec, fixed: Mapping[str, str], rng: random.Random, samples: int,
                       notes: list[str]) -> list[dict[str, str]]:
    axes = _axes(spec)
    out: list[dict[str, str]] = []
    for _ in range(samples * 100 + 1000):
        if len(out) == samples:
            break
        combo = {name: _draw(d, rng) for name, d in axes}
        if spec.cases:
            combo.update(spec.cases[rng.randrange(len(spec.cases))])
        if not _excluded(combo, fixed, spec.exclude):
            out.append(combo)
    if len(out) < samples:
        notes.append(f"only {len(out)} of {samples} samples found outside the excluded combinations")
    return out


# ---------------------------------------------------------------------------------------------
# Fingerprint


def _domain_canonical(domain: Domain) -> Any:
    if isinstance(domain, Fixed):
        return {"fixed": normalize_value(domain.value)}
    if isinstance(domain, Values):
        return {"values": [normalize_value(v) for v in domain.values]}
    if isinstance(domain, IntUniform):
        return {"int_uniform": [domain.low, domain.high]}
    return {"log_uniform" if domain.log else "uniform": [domain.low, domain.high]}


def _entries_canonical(entries: Sequence[Mapping[str, str]]) -> list[list[list[str]]]:
    return [sorted([k, normalize_value(v)] for k, v in e.items()) for e in entries]


def _fingerprint(spec: SweepSpec) -> str:
    canonical = {
        "format": PLAN_FORMAT,
        "project": spec.project_as_written or spec.project, "version": spec.version,
        "entry_point": spec.entry_point, "method": spec.method, "samples": spec.samples,
        "seed": spec.seed, "max_runs": spec.max_runs,
        "parameters": [[k, _domain_canonical(d)] for k, d in spec.parameters.items()],
        "cases": _entries_canonical(spec.cases), "include": _entries_canonical(spec.include),
        "exclude": _entries_canonical(spec.exclude),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Checking against the MLproject entry point


def check_against_entry_point(plan_or_spec: SweepPlan | SweepSpec, entry_point: EntryPoint) -> None:
    """Catch what MLflow would not: a typo'd name (appended as ``--typo value``), a required
    parameter no trial sets, a value of the wrong declared type. Every problem in one error."""
    from projectrun.params import type_problem

    plan = plan_or_spec if isinstance(plan_or_spec, SweepPlan) else expand(plan_or_spec)
    names = list(dict.fromkeys(k for t in plan.trials for k in t.params))
    if isinstance(plan_or_spec, SweepSpec):
        names = list(dict.fromkeys([*plan_or_spec.names(), *names]))
    declared = entry_point.parameters
    problems = _unknown_names(names, entry_point) if entry_point.declared else []
    for param in declared.values():
        lacking = sum(1 for t in plan.trials if param.name not in t.params)
        if param.required and lacking:
            problems.append(f"required parameter '{param.name}' of entry point '{entry_point.name}' "
                            f"is not set by {lacking} of {len(plan.trials)} trials; add it under "
                            f"parameters")
    seen: set[tuple[str, str]] = set()
    for trial in plan.trials:
        for name, value in trial.params.items():
            if name in declared and (name, value) not in seen:
                seen.add((name, value))
                if (message := type_problem(declared[name], value)) is not None:
                    problems.append(f"{name}={value}: {message}")
    if problems:
        raise ParameterError("\n".join(problems))


def _unknown_names(names: Sequence[str], entry_point: EntryPoint) -> list[str]:
    declared = list(entry_point.parameters)
    unknown = [n for n in names if n not in entry_point.parameters]
    if not unknown:
        return []
    listed = "; ".join(f"'{n}'{_suggest(n, declared)}" for n in unknown)
    return [f"entry point '{entry_point.name}' does not declare {listed}; MLflow would pass "
            f"{'it' if len(unknown) == 1 else 'them'} as extra --name value arguments. "
            f"Declared: {', '.join(declared) or 'none'}"]
