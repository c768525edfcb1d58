"""A sweep's data: the validated file (SweepSpec), its materialised trials (SweepPlan), their
identities (fingerprint, trial key) and the plan's stored JSON form.

Identities hash normalised values, not the text written, so a resume still recognises a trial
whose file now says ``3e6`` instead of ``3000000``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from projectrun.errors import SpecError
from projectrun.sweepplan.domains import Domain, Fixed, IntUniform, Values, normalize_value

#: Bumped when the planner's output for the same file changes; part of every fingerprint.
PLAN_FORMAT = 1
KEY_LENGTH = 12


def trial_key(params: Mapping[str, str]) -> str:
    """Stable identity of a trial across resumes: sha256 of the sorted, normalised values."""
    canonical = json.dumps(sorted((k, normalize_value(v)) for k, v in params.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


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
    """How the scheduler runs the trials: carried into the plan, never part of its identity, so
    a resume may change them."""

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
        """Hash of everything that decides the trials (not execution, experiment or name)."""
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
            message = (f"plan format {data.get('format')!r} is not {PLAN_FORMAT}; this plan "
                       f"was written by another projectrun version")
            raise SpecError([message])
        objective = data.get("objective")
        return cls(
            trials=[Trial(int(t["index"]), str(t["key"]),
                          {str(k): str(v) for k, v in t["params"].items()})
                    for t in data["trials"]],
            fingerprint=data["fingerprint"], project=data["project"],
            entry_point=data["entry_point"], method=data["method"], seed=data["seed"],
            version=data["version"], experiment=data["experiment"],
            env_manager=data["env_manager"], name=data["name"],
            execution=Execution.from_dict(data["execution"]),
            objective=None if objective is None else Objective(**objective),
            notes=list(data["notes"]),
        )


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
