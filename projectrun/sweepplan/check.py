"""Checking a plan against the MLproject entry point it will run.

MLflow itself passes an undeclared name on as ``--name value`` and checks types only at launch,
one run at a time; checking the whole plan first turns a typo into one error before any run.
"""
from __future__ import annotations

from collections.abc import Sequence

from projectrun.errors import ParameterError
from projectrun.spec import EntryPoint
from projectrun.sweepplan.expansion import expand
from projectrun.sweepplan.load import suggest
from projectrun.sweepplan.plan import SweepPlan, SweepSpec


def check_against_entry_point(plan_or_spec: SweepPlan | SweepSpec, entry_point: EntryPoint) -> None:
    """Catch what MLflow would not: a typo'd name (appended as ``--typo value``), a required
    parameter no trial sets, a value of the wrong declared type. Every problem in one error."""
    plan = plan_or_spec if isinstance(plan_or_spec, SweepPlan) else expand(plan_or_spec)
    names = list(dict.fromkeys(k for t in plan.trials for k in t.params))
    if isinstance(plan_or_spec, SweepSpec):
        names = list(dict.fromkeys([*plan_or_spec.names(), *names]))
    problems = _unknown_names(names, entry_point) if entry_point.declared else []
    problems += _unset_required(plan, entry_point) + _type_problems(plan, entry_point)
    if problems:
        raise ParameterError("\n".join(problems))


def _unset_required(plan: SweepPlan, entry_point: EntryPoint) -> list[str]:
    problems = []
    for param in entry_point.parameters.values():
        lacking = sum(1 for t in plan.trials if param.name not in t.params)
        if param.required and lacking:
            problems.append(f"required parameter '{param.name}' of entry point "
                            f"'{entry_point.name}' is not set by {lacking} of "
                            f"{len(plan.trials)} trials; add it under parameters")
    return problems


def _type_problems(plan: SweepPlan, entry_point: EntryPoint) -> list[str]:
    """Each distinct (name, value) once: a grid repeats every value in many trials."""
    from projectrun.params import type_problem

    declared = entry_point.parameters
    problems = []
    seen: set[tuple[str, str]] = set()
    for trial in plan.trials:
        for name, value in trial.params.items():
            if name in declared and (name, value) not in seen:
                seen.add((name, value))
                if (message := type_problem(declared[name], value)) is not None:
                    problems.append(f"{name}={value}: {message}")
    return problems


def _unknown_names(names: Sequence[str], entry_point: EntryPoint) -> list[str]:
    declared = list(entry_point.parameters)
    unknown = [n for n in names if n not in entry_point.parameters]
    if not unknown:
        return []
    listed = "; ".join(f"'{n}'{suggest(n, declared)}" for n in unknown)
    message = (f"entry point '{entry_point.name}' does not declare {listed}; MLflow would pass "
               f"{'it' if len(unknown) == 1 else 'them'} as extra --name value arguments. "
               f"Declared: {', '.join(declared) or 'none'}")
    return [message]
