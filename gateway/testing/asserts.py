"""Assertions about readings, with failure messages that show what did arrive."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from gateway.driver_api import Path, Quality, Reading
from gateway.sinks import RecordingSink

ANY: Any = object()
"""Matches any value (the default for every field ``assert_reading`` is not told)."""


def _readings(source: RecordingSink | Iterable[Reading]) -> list[Reading]:
    return list(source.readings if isinstance(source, RecordingSink) else source)


def _same(got: object, want: object, rel: float) -> bool:
    if want is ANY:
        return True
    if isinstance(want, bool) or isinstance(got, bool):  # True must not match 1
        return type(got) is type(want) and got == want
    if isinstance(want, float) and isinstance(got, int | float):
        return math.isclose(float(got), want, rel_tol=rel, abs_tol=rel)
    return got == want


def _show(r: Reading) -> str:
    unit = f" {r.unit}" if r.unit else ""
    extra = "" if r.quality == Quality.GOOD else f" quality={r.quality.name}"
    return f"{r.node}/{r.point} = {r.value!r}{unit} (ip{int(r.path)}{extra})"


def find_readings(
    source: RecordingSink | Iterable[Reading],
    point: str,
    value: object = ANY,
    unit: object = ANY,
    *,
    node: object = ANY,
    path: object = ANY,
    quality: object = ANY,
    rel: float = 0.0,
) -> list[Reading]:
    """Readings of ``point`` that match every field given (floats compared with ``rel``)."""
    return [
        r
        for r in _readings(source)
        if r.point == point
        and _same(r.value, value, rel)
        and _same(r.unit, unit, 0.0)
        and _same(r.node, node, 0.0)
        and _same(r.path, Path(path) if isinstance(path, int) else path, 0.0)
        and _same(r.quality, quality, 0.0)
    ]


def assert_reading(
    source: RecordingSink | Iterable[Reading],
    point: str,
    value: object = ANY,
    unit: object = ANY,
    *,
    node: object = ANY,
    path: object = ANY,
    quality: object = ANY,
    rel: float = 0.0,
) -> Reading:
    """The last reading of ``point`` matching the fields given; AssertionError listing the
    readings of that point (or all points) otherwise. ``unit=None`` asserts "no unit"."""
    found = find_readings(source, point, value, unit, node=node, path=path, quality=quality, rel=rel)
    if found:
        return found[-1]
    readings = _readings(source)
    same_point = [r for r in readings if r.point == point]
    want = {"value": value, "unit": unit, "node": node, "path": path, "quality": quality}
    wanted = ", ".join(f"{k}={v!r}" for k, v in want.items() if v is not ANY)
    shown = same_point or readings
    listing = "\n  ".join(_show(r) for r in shown[-20:]) or "(no readings at all)"
    label = f"readings of {point!r}" if same_point else "no reading of that point; all readings"
    raise AssertionError(f"no reading {point!r} with {wanted or 'any value'}; {label}:\n  {listing}")


async def wait_reading(
    sink: RecordingSink,
    point: str,
    value: object = ANY,
    unit: object = ANY,
    *,
    node: object = ANY,
    path: object = ANY,
    quality: object = ANY,
    rel: float = 0.0,
    within: float = 10.0,
) -> Reading:
    """Wait (at most ``within`` s) for a matching reading; fail like ``assert_reading``."""
    try:
        await wait_until(
            lambda: bool(find_readings(sink, point, value, unit, node=node, path=path, quality=quality, rel=rel)),
            within=within,
        )
    except TimeoutError:
        pass
    return assert_reading(sink, point, value, unit, node=node, path=path, quality=quality, rel=rel)


async def wait_until(condition: Callable[[], bool | Awaitable[bool]], within: float = 10.0, step: float = 0.02) -> None:
    """Poll ``condition`` until true; TimeoutError after ``within`` seconds (no timed asserts)."""
    async with asyncio.timeout(within):
        while True:
            ok = condition()
            if inspect.isawaitable(ok):
                ok = await ok
            if ok:
                return
            await asyncio.sleep(step)
