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

Modules, each depending only on those above it: ``domains`` (parameter values and their text),
``plan`` (SweepSpec, SweepPlan, fingerprint, trial keys, stored JSON), ``expansion`` (spec ->
trials), ``load`` (sweep file or --grid flags -> spec), ``check`` (plan vs the entry point).
"""
from __future__ import annotations

from projectrun.sweepplan.check import check_against_entry_point
from projectrun.sweepplan.domains import (
    MAX_GENERATED,
    SIG_DIGITS,
    Domain,
    Fixed,
    IntUniform,
    Uniform,
    Values,
    normalize_value,
    render_value,
)
from projectrun.sweepplan.expansion import ENUMERATE_LIMIT, MAX_GRID, expand
from projectrun.sweepplan.load import (
    SCHEMA,
    load_sweep,
    parse_grid_flags,
    resolve_project,
    spec_from_grid,
)
from projectrun.sweepplan.plan import (
    KEY_LENGTH,
    PLAN_FORMAT,
    Backend,
    Execution,
    Objective,
    SweepPlan,
    SweepSpec,
    Trial,
    trial_key,
)

__all__ = [
    "ENUMERATE_LIMIT", "KEY_LENGTH", "MAX_GENERATED", "MAX_GRID", "PLAN_FORMAT", "SCHEMA",
    "SIG_DIGITS", "Backend", "Domain", "Execution", "Fixed", "IntUniform", "Objective",
    "SweepPlan", "SweepSpec", "Trial", "Uniform", "Values", "check_against_entry_point", "expand",
    "load_sweep", "normalize_value", "parse_grid_flags", "render_value", "resolve_project",
    "spec_from_grid", "trial_key",
]
