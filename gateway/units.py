"""Human-friendly config scalars: durations ("500ms", "10s", "2h") and sizes ("64MiB")."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from gateway.schema import BeforeValidator, JsonSchema

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '250ms', '10s', '5m', '1h', '7d'."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 10s, 500ms, 5m")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("a duration must be finite")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r} (use e.g. 10s, 500ms, 5m, 1h)")


def parse_size(value: Any) -> int:
    """Bytes from a number or a string like '512KiB', '64MiB', '1GB'."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like 64MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"invalid size {value!r} (use e.g. 512KiB, 64MiB, 1GiB)")


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    JsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION_RE.pattern},
            ],
            "description": "seconds, or a string such as 500ms, 10s, 5m, 1h",
        }
    ),
]

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    JsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": _SIZE_RE.pattern},
            ],
            "description": "bytes, or a string such as 512KiB, 64MiB",
        }
    ),
]
