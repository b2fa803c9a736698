"""Linear scaling of numeric readings, shared by the protocol modules of several drivers.

Pure (never imports ``gateway``), so a driver's protocol module may use it.
"""

from __future__ import annotations

import math


def scaled(value: int | float, scale: float, offset: float, precision: int | None) -> int | float | None:
    """``value * scale + offset`` rounded to ``precision`` decimals; the value itself when the
    scaling is the identity (integers stay integers); None when the input or the result is not a
    finite number (NaN, infinity, overflow): the caller reports that as a bad value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if scale == 1.0 and offset == 0.0 and precision is None:
        return value
    try:
        v = value * float(scale) + float(offset)
    except OverflowError:
        return None
    if not math.isfinite(v):
        return None
    return round(v, precision) if precision is not None else v
