"""Expansion: a SweepSpec becomes the ordered, de-duplicated trials of a SweepPlan.

Grid order is the file's (last parameter fastest, cases fastest of all) so a plan reads like the
file; random draws come from ``random.Random(seed)`` and are made once, here, because the plan
is stored and a resume reads it back rather than drawing again.
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator, Mapping, Sequence

from projectrun.errors import SpecError
from projectrun.sweepplan.domains import (
    Fixed,
    IntUniform,
    Uniform,
    Values,
    draw,
    normalize_value,
)
from projectrun.sweepplan.plan import SweepPlan, SweepSpec, Trial, trial_key

#: Most combinations a grid may enumerate.
MAX_GRID = 1_000_000
#: Discrete random spaces up to this size are enumerated; larger ones are sampled by index.
ENUMERATE_LIMIT = 200_000


def expand(spec: SweepSpec) -> SweepPlan:
    """The ordered, de-duplicated list of trials; random draws use ``random.Random(seed)``."""
    notes: list[str] = []
    seed = _seed(spec, notes)
    fixed = {k: d.value for k, d in spec.parameters.items() if isinstance(d, Fixed)}
    params = [_ordered(spec, fixed, row) for row in _rows(spec, fixed, seed, notes)]
    params = _dedupe(params, notes)
    if spec.max_runs is not None:
        params = _subsample(params, spec.max_runs, seed, notes)
    if not params:
        notes.append("the plan is empty: every combination was excluded")
    trials = [Trial(i, trial_key(p), p) for i, p in enumerate(params)]
    return SweepPlan(trials=trials, fingerprint=spec.fingerprint, project=spec.project,
                     entry_point=spec.entry_point, method=spec.method, seed=seed,
                     version=spec.version, experiment=spec.experiment,
                     env_manager=spec.env_manager, name=spec.name, execution=spec.execution,
                     objective=spec.objective, notes=notes)


def _seed(spec: SweepSpec, notes: list[str]) -> int | None:
    """A plan that draws needs a seed; one picked here is noted so the plan can be reproduced."""
    if spec.seed is not None or (spec.method != "random" and spec.max_runs is None):
        return spec.seed
    seed = random.SystemRandom().randrange(2**31)
    notes.append(f"no seed given; picked seed {seed} "
                 f"(add 'seed: {seed}' to reproduce this plan)")
    return seed


def _rows(spec: SweepSpec, fixed: Mapping[str, str], seed: int | None,
          notes: list[str]) -> list[dict[str, str]]:
    """The combinations, before fixed values are laid under them."""
    if spec.method == "random":
        combos = _sample(spec, fixed, random.Random(seed), notes)
    else:
        combos = [c for c in _product(spec) if not _excluded(c, fixed, spec.exclude)]
    rows = _apply_include(combos, spec.include)
    if not _axes(spec) and not spec.cases and not spec.include:
        return [{}]  # only fixed values: one run, as a plain launch would be
    return rows


def _axes(spec: SweepSpec) -> list[tuple[str, Values | IntUniform | Uniform]]:
    return [(k, d) for k, d in spec.parameters.items() if not isinstance(d, Fixed)]


def grid_size(spec: SweepSpec) -> int:
    """Combinations of the full grid (a continuous axis counts once); 0 when nothing varies."""
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
    discrete = _grid_axes(spec, axes)
    names = [k for k, _ in discrete]
    columns = [[d.at(i) for i in range(len(d))] for _, d in discrete]
    for values in itertools.product(*columns):
        for case in spec.cases or ({},):
            yield {**dict(zip(names, values)), **case}


def _grid_axes(spec: SweepSpec, axes: list[tuple[str, Values | IntUniform | Uniform]]
               ) -> list[tuple[str, Values | IntUniform]]:
    """The axes, refused if the grid is too large or one is continuous (a file's loader has
    already said so; a SweepSpec built in code has not)."""
    if grid_size(spec) > MAX_GRID:
        message = (f"{spec.path or 'sweep'}: the grid has {grid_size(spec)} combinations, "
                   f"more than {MAX_GRID}")
        raise SpecError([message])
    out: list[tuple[str, Values | IntUniform]] = []
    for name, d in axes:
        if isinstance(d, Uniform):
            message = (f"{spec.path or 'sweep'}: a continuous distribution cannot be "
                       f"enumerated by method: grid")
            raise SpecError([message])
        out.append((name, d))
    return out


def _matches(row: Mapping[str, str], entry: Mapping[str, str]) -> bool:
    return all(k in row and normalize_value(row[k]) == normalize_value(v)
               for k, v in entry.items())


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
        if not _extend(rows, entry):
            added.append(dict(entry))
    return [row for row, _ in rows] + added


def _extend(rows: list[tuple[dict[str, str], frozenset[str]]],
            entry: Mapping[str, str]) -> bool:
    """Add ``entry``'s new keys to every row it matches on the row's original keys."""
    matched = False
    for row, original in rows:
        if _matches(row, {k: v for k, v in entry.items() if k in original}):
            row.update({k: v for k, v in entry.items() if k not in original})
            matched = True
    return matched


def _ordered(spec: SweepSpec, fixed: Mapping[str, str], row: Mapping[str, str]) -> dict[str, str]:
    """Fixed values under the row; keys in file order, then case / include keys as they came."""
    merged = {**fixed, **row}
    out = {k: merged[k] for k in spec.parameters if k in merged}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


def _dedupe(params: list[dict[str, str]], notes: list[str]) -> list[dict[str, str]]:
    """Resume finds runs by trial key, so trials sharing a key would be one run: keep the first."""
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
    discrete = [(k, d) for k, d in axes if not isinstance(d, Uniform)]
    if len(discrete) == len(axes):
        return _sample_discrete(spec, discrete, fixed, rng, samples, notes)
    return _sample_continuous(spec, axes, fixed, rng, samples, notes)


def _decode(spec: SweepSpec, axes: list[tuple[str, Values | IntUniform]],
            index: int) -> dict[str, str]:
    """Combination number ``index`` of the grid, in grid order (mixed radix, cases fastest)."""
    cases = spec.cases or ({},)
    index, case_i = divmod(index, len(cases))
    combo: dict[str, str] = {}
    for name, d in reversed(axes):
        index, i = divmod(index, len(d))
        combo[name] = d.at(i)
    combo = {k: combo[k] for k, _ in axes}
    combo.update(cases[case_i])
    return combo


def _sample_discrete(spec: SweepSpec, axes: list[tuple[str, Values | IntUniform]],
                     fixed: Mapping[str, str], rng: random.Random, samples: int,
                     notes: list[str]) -> list[dict[str, str]]:
    """A small space is enumerated and sampled; a large one is sampled by combination number."""
    size = grid_size(spec)
    if size > ENUMERATE_LIMIT:
        out = _sample_by_index(spec, axes, fixed, rng, samples, size)
        _note_shortfall(out, samples, notes)
        return out
    space = [c for c in _product(spec) if not _excluded(c, fixed, spec.exclude)]
    if samples > len(space):
        notes.append(f"samples {samples} is more than the {len(space)} distinct combinations; "
                     f"running each once")
    return rng.sample(space, min(samples, len(space)))


def _sample_by_index(spec: SweepSpec, axes: list[tuple[str, Values | IntUniform]],
                     fixed: Mapping[str, str], rng: random.Random, samples: int,
                     size: int) -> list[dict[str, str]]:
    """Distinct combination numbers, bounded so a mostly-excluded space still ends."""
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
    return out


def _sample_continuous(spec: SweepSpec, axes: list[tuple[str, Values | IntUniform | Uniform]],
                       fixed: Mapping[str, str], rng: random.Random, samples: int,
                       notes: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for _ in range(samples * 100 + 1000):
        if len(out) == samples:
            break
        combo = {name: draw(d, rng) for name, d in axes}
        if spec.cases:
            combo.update(spec.cases[rng.randrange(len(spec.cases))])
        if not _excluded(combo, fixed, spec.exclude):
            out.append(combo)
    _note_shortfall(out, samples, notes)
    return out


def _note_shortfall(found: list[dict[str, str]], samples: int, notes: list[str]) -> None:
    if len(found) < samples:
        notes.append(f"only {len(found)} of {samples} samples found outside the excluded "
                     f"combinations")
