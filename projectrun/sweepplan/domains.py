"""Parameter domains: what one parameter may take, and the exact ``-P`` text of each value.

The text is fixed here, once, because the trial key, the fingerprint and the command line all
read it; a generator yields real values with inclusive ends, rounded so accumulated float error
never reaches the text (``0.1 + 2*0.1`` is ``0.3``).
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

#: Generated floats are rounded to this many significant digits (0.1 + 2*0.1 -> 0.3).
SIG_DIGITS = 12
#: Most values one generator may yield.
MAX_GENERATED = 100_000
#: A decimal number as YAML or ``-P`` may write it.
NUMBER = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


def render_value(value: Any) -> str:
    """The ``-P`` text for a YAML scalar: ints as ints, floats by ``repr`` (shortest round trip,
    what MLflow's ``str()`` gives), booleans as YAML writes them (true/false), strings verbatim."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def normalize_value(text: str) -> str:
    """Numbers compare by exact decimal value (``3e6 == 3000000 == 3000000.0``), other text as
    is: the trial key and include/exclude matching must not depend on how a number was written."""
    if NUMBER.match(text):
        try:
            number = Decimal(text.strip())
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            return "s:" + text
        if number == 0:
            number = Decimal(0)
        return "n:" + format(number.normalize(), "f" if abs(number.adjusted()) < 30 else "E")
    return "s:" + text


def _round(x: float) -> float:
    """Generated floats: 12 significant digits hides float accumulation; ``+ 0.0`` drops -0.0."""
    return float(f"{x:.{SIG_DIGITS}g}") + 0.0


@dataclass(frozen=True)
class Fixed:
    """One value for every trial (a scalar in the file)."""

    value: str


@dataclass(frozen=True)
class Values:
    """A finite, ordered set of values: a list, ``choice``, or an expanded from/lin/geom."""

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


Domain = Fixed | Values | IntUniform | Uniform


def make_domain(kind: str, raw: dict[str, Any]) -> Domain:
    """The domain of a generator mapping the schema has passed; ValueError says why not."""
    if kind == "choice":
        return Values(tuple(render_value(v) for v in raw["choice"]))
    if kind == "int_uniform":
        return _int_uniform(raw["int_uniform"])
    if kind in ("uniform", "log_uniform"):
        return _uniform(kind, raw[kind])
    return Values(tuple(render_value(v) for v in _generate(kind, raw)))


def _int_uniform(bounds: list[Any]) -> IntUniform:
    low, high = (int(x) for x in bounds)
    if low > high:
        raise ValueError(f"int_uniform [{low}, {high}]: low is above high")
    return IntUniform(low, high)


def _uniform(kind: str, bounds: list[Any]) -> Uniform:
    low, high = (float(x) for x in bounds)
    if low > high:
        raise ValueError(f"{kind} [{low}, {high}]: low is above high")
    return Uniform(low, high, log=kind == "log_uniform")


def _generate(kind: str, raw: dict[str, Any]) -> list[int | float]:
    """from/to/step, lin or geom; the schema guarantees the pair has two ends."""
    if kind == "from":
        return _arange(raw["from"], raw["to"], raw["step"])
    low, high = raw[kind]
    if kind == "lin":
        return _linspace(low, high, int(raw["num"]))
    return _geomspace(low, high, int(raw["num"]))


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


def draw(domain: Values | IntUniform | Uniform, rng: random.Random) -> str:
    """One random value: a continuous domain draws, a discrete one picks uniformly."""
    if isinstance(domain, Uniform):
        return domain.draw(rng)
    return domain.at(rng.randrange(len(domain)))
