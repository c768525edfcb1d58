"""Durations written by people: ``90``, ``90s``, ``10m``, ``1h30m``, ``1.5h``, ``2d``."""
from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}


def parse_duration(value: float | str, *, allow_zero: bool = False) -> float:
    """Seconds from a number or from text such as ``90``, ``90s``, ``10m``, ``1h30m``, ``1.5h``, ``2d``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"duration must be positive, got {value}")
        return float(value)
    text = str(value).strip()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(_DURATION_PART.sub("", text).split()) or not parts:
        raise ValueError(f"duration '{value}' is not a duration; write seconds or e.g. 90s, 10m, 1h30m")
    if len(parts) > 1 and any(unit == "" for _, unit in parts):
        raise ValueError(f"duration '{value}': give a unit (s, m, h, d) for every part, e.g. 1h30m")
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"duration '{value}' must be longer than zero")
    return seconds
