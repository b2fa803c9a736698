"""Edge processing per point (gateway/edge): properties of the filters and the windows, held by
hypothesis against the plain definitions, and the processor's rule matching, bounds and timer."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.driver_api import Path, Quality, Reading
from gateway.edge import processor as proc_mod
from gateway.edge.processor import EdgeProcessor
from gateway.edge.rules import ReportRule

S = 1_000_000_000
LOG = logging.getLogger("test.edge")


def rule(**kw: Any) -> ReportRule:
    return ReportRule.model_validate(kw)


def make(*rules: ReportRule, timer: bool = False) -> tuple[EdgeProcessor, list[Reading]]:
    out: list[Reading] = []
    return EdgeProcessor(list(rules), out.append, "gw", Path.IP2, "inst", LOG, timer=timer), out


def feed(p: EdgeProcessor, readings: list[tuple[int, Any]], point: str = "p", node: str | None = None,
         unit: str | None = "Cel", quality: Quality = Quality.GOOD) -> list[bool]:
    return [p.admit(node, point, ts, v, unit, quality) for ts, v in readings]


values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False) | \
    st.integers(min_value=-10**6, max_value=10**6)
steps = st.integers(min_value=1, max_value=3 * S)  # time between readings


@st.composite
def series(draw: Any, n: int = 60) -> list[tuple[int, Any]]:
    """Readings at increasing times, from a random walk (so bands matter) or arbitrary values."""
    size = draw(st.integers(min_value=1, max_value=n))
    ts = draw(st.integers(min_value=0, max_value=2_000_000_000 * S))
    walk = draw(st.booleans())
    v: float = draw(values)
    out = []
    for _ in range(size):
        ts += draw(steps)
        v = v + draw(st.floats(min_value=-2, max_value=2)) if walk else draw(values)
        out.append((ts, v))
    return out


def _slack(*xs: float) -> float:
    """The rounding of a band's edges (v - band, v + band): a few ulps of the largest magnitude."""
    return 4 * math.ulp(max(abs(x) for x in xs) + 1.0)


# -- deadbands ------------------------------------------------------------------------------------

@given(series(), st.floats(min_value=0, max_value=5))
def test_deadband_held_value_never_differs_from_the_input_by_more_than_the_band(
        xs: list[tuple[int, Any]], band: float) -> None:
    p, _ = make(rule(deadband=band))
    held: Any = None
    for (_, v), reported in zip(xs, feed(p, xs), strict=True):
        if held is None:
            assert reported, "the first reading of a point is always reported"
        elif reported:
            assert abs(v - held) > band - _slack(v, held, band), "reported only when outside the band"
        else:
            assert abs(v - held) <= band + _slack(v, held, band), "left out only when inside the band"
        if reported:
            held = v


@given(st.lists(st.sampled_from([0, 0.5, 0.99, 1, 1.01, 1.5, 2, 3]), min_size=2, max_size=30),
       st.lists(st.booleans(), min_size=30, max_size=30), st.sampled_from([0.25, 1.0, 8.0]),
       st.integers(-1000, 1000))
def test_deadband_at_its_edges(ks: list[float], signs: list[bool], band: float, base: int) -> None:
    """Values at (exactly: binary fractions), 1% inside and 1% outside the band."""
    vs = [base + (k if up else -k) * band for k, up in zip(ks, signs, strict=False)]
    p, _ = make(rule(deadband=band))
    held = vs[0]
    assert p.admit(None, "p", 0, held, None, Quality.GOOD)
    for i, v in enumerate(vs[1:], 1):
        assert p.admit(None, "p", i, v, None, Quality.GOOD) == (abs(v - held) > band), (v, held)
        if abs(v - held) > band:
            held = v


@given(series(), st.floats(min_value=0.01, max_value=50))
def test_percent_deadband_is_relative_to_the_last_reported_value(xs: list[tuple[int, Any]], pct: float) -> None:
    p, _ = make(rule(deadband_percent=pct))
    held: Any = None
    for (_, v), reported in zip(xs, feed(p, xs), strict=True):
        if held is not None:
            band = abs(held) * pct / 100
            if reported:
                assert abs(v - held) > band - _slack(v, held, band)
            else:
                assert abs(v - held) <= band + _slack(v, held, band)
        if reported:
            held = v


@given(series(), st.floats(min_value=0, max_value=5), st.integers(min_value=1, max_value=20 * S))
def test_max_interval_reports_at_least_that_often_while_readings_come(
        xs: list[tuple[int, Any]], band: float, every: int) -> None:
    p, _ = make(rule(deadband=band, max_interval=every / S))
    last_report: int | None = None
    for (ts, _), reported in zip(xs, feed(p, xs), strict=True):
        if last_report is not None and ts - last_report >= every:
            assert reported, "a reading this long after the last report is reported, changed or not"
        if reported:
            last_report = ts


@given(series(), st.integers(min_value=1, max_value=10 * S), st.booleans())
def test_min_interval_reports_at_most_that_often(xs: list[tuple[int, Any]], gap: int, with_band: bool) -> None:
    extra = {"deadband": 0.5} if with_band else {}
    p, _ = make(rule(min_interval=gap / S, **extra))
    times = [ts for (ts, _), reported in zip(xs, feed(p, xs), strict=True) if reported]
    assert times and times[0] == xs[0][0]
    assert all(b - a >= gap for a, b in itertools.pairwise(times))
    if not with_band:  # a plain throttle: each reading at least `gap` after the last report is reported
        last = times[0]
        for ts, _ in xs[1:]:
            assert (ts in times) == (ts - last >= gap)
            if ts in times:
                last = ts


@given(st.lists(st.one_of(st.booleans(), st.sampled_from(["open", "closed"]), st.integers(0, 2)),
                min_size=1, max_size=40))
def test_on_change_compares_value_and_type(vs: list[Any]) -> None:
    p, _ = make(rule(on_change=True))
    got = feed(p, [(i * S, v) for i, v in enumerate(vs)])
    held: Any = object()
    for v, reported in zip(vs, got, strict=True):
        same = type(v) is type(held) and v == held
        assert reported == (not same), (v, held)  # True is not 1: a switch is not a number
        if reported:
            held = v


def test_a_change_of_quality_or_unit_is_reported_whatever_the_band() -> None:
    p, _ = make(rule(deadband=10))
    assert p.admit(None, "p", 1 * S, 20.0, "Cel", Quality.GOOD)
    assert not p.admit(None, "p", 2 * S, 20.5, "Cel", Quality.GOOD)
    assert p.admit(None, "p", 3 * S, 20.5, "Cel", Quality.UNCERTAIN)
    assert not p.admit(None, "p", 4 * S, 21.0, "Cel", Quality.UNCERTAIN)
    assert p.admit(None, "p", 5 * S, 21.0, "K", Quality.UNCERTAIN)
    assert p.admit(None, "p", 6 * S, "broken", "K", Quality.UNCERTAIN), "a number turning into text is a change"


def test_a_clock_set_back_is_reported_and_becomes_the_reference() -> None:
    p, _ = make(rule(deadband=1, min_interval=60))
    assert p.admit(None, "p", 1000 * S, 5.0, None, Quality.GOOD)
    assert not p.admit(None, "p", 1010 * S, 9.0, None, Quality.GOOD), "too soon"
    assert p.admit(None, "p", 500 * S, 5.0, None, Quality.GOOD), "the clock went back: not held for 500 s"
    assert not p.admit(None, "p", 501 * S, 9.0, None, Quality.GOOD)


# -- windows --------------------------------------------------------------------------------------

@given(series(n=120), st.sampled_from([0.1, 1.0, 7.0, 60.0]))
def test_window_records_are_the_aggregates_of_their_windows(xs: list[tuple[int, Any]], window: float) -> None:
    p, out = make(rule(window=window, aggregate=["min", "max", "mean", "count", "last"]))
    assert not any(feed(p, xs)), "every number of a windowed point is folded in"
    p.close()
    length = round(window * S)
    want: dict[int, list[Any]] = defaultdict(list)
    for ts, v in xs:
        want[ts - ts % length].append(v)
    got: dict[int, dict[str, Any]] = defaultdict(dict)
    for r in out:
        point, fn = r.point.split(":")
        assert point == "p" and r.node == "gw" and r.path is Path.IP2 and r.instance == "inst"
        assert fn not in got[r.ts_ns], "one record per function per window"
        got[r.ts_ns][fn] = r.value
        assert r.unit == (None if fn == "count" else "Cel")
    assert sorted(got) == sorted(want), "one set of records per window, stamped with its start"
    assert sum(g["count"] for g in got.values()) == len(xs), "the counts add up to the readings"
    for start, vs in want.items():
        g = got[start]
        assert (g["min"], g["max"], g["last"], g["count"]) == (min(vs), max(vs), vs[-1], len(vs))
        assert g["min"] - _slack(g["min"]) <= g["mean"] <= g["max"] + _slack(g["max"])
        assert math.isclose(g["mean"], sum(vs) / len(vs), rel_tol=1e-9, abs_tol=1e-6)


def test_window_quality_is_the_worst_and_bad_or_text_readings_pass_as_they_come() -> None:
    p, out = make(rule(window=10, aggregate=["count", "mean"]))
    assert not p.admit("n1", "p", 0, 1.0, "W", Quality.GOOD)
    assert not p.admit("n1", "p", 1 * S, 3.0, "W", Quality.UNCERTAIN)
    assert p.admit("n1", "p", 2 * S, -999.0, "W", Quality.BAD), "a fault is reported as it comes"
    assert p.admit("n1", "p", 3 * S, "overload", "W", Quality.GOOD), "text is never averaged"
    assert p.admit("n1", "p", 4 * S, True, "W", Quality.GOOD), "nor is a switch"
    assert not p.admit("n1", "p", 11 * S, 5.0, "W", Quality.GOOD)
    assert [(r.point, r.value, r.quality, r.path, r.ts_ns) for r in out] == [
        ("p:count", 2, Quality.UNCERTAIN, Path.IP3, 0), ("p:mean", 2.0, Quality.UNCERTAIN, Path.IP3, 0)]


def test_a_late_reading_is_reported_as_it_comes_and_a_clock_set_back_opens_a_window() -> None:
    p, out = make(rule(window=10, aggregate=["count"]))
    assert not p.admit(None, "p", 100 * S, 1, None, Quality.GOOD)
    assert not p.admit(None, "p", 111 * S, 1, None, Quality.GOOD)  # closes [100, 110)
    assert p.admit(None, "p", 105 * S, 1, None, Quality.GOOD), "late for a window already reported"
    assert not p.admit(None, "p", 50 * S, 1, None, Quality.GOOD), "more than a window back: the clock moved"
    p.close()
    assert [(r.ts_ns // S, r.value) for r in out] == [(100, 1), (110, 1), (50, 1)]


def test_a_unit_change_closes_the_window() -> None:
    p, out = make(rule(window=10, aggregate=["last"]))
    feed(p, [(1 * S, 20.0)], unit="Cel")
    feed(p, [(2 * S, 293.0)], unit="K")
    p.close()
    assert [(r.value, r.unit) for r in out] == [(20.0, "Cel"), (293.0, "K")]


async def test_the_timer_closes_a_window_no_later_reading_closes() -> None:
    got = asyncio.Event()
    out: list[Reading] = []

    def put(r: Reading) -> None:
        out.append(r)
        got.set()

    p = EdgeProcessor([rule(window=0.1, aggregate=["count"])], put, "gw", Path.IP2, "i", LOG)
    import time
    assert not p.admit(None, "p", time.time_ns(), 1.0, None, Quality.GOOD)
    async with asyncio.timeout(5):
        await got.wait()
    assert [r.value for r in out] == [1]
    assert p.counts(1) == {"reported": 0, "aggregated": 1, "aggregates": 1, "suppressed": 0}
    p.close()  # nothing open: nothing more, and no timer left behind
    assert len(out) == 1 and p._timer is None


# -- rules and the processor ----------------------------------------------------------------------

def test_the_first_matching_rule_applies_and_unmatched_points_pass() -> None:
    p, _ = make(rule(points=["alarm*"]), rule(points=["*"], nodes=["rtu-*"], on_change=True))
    assert feed(p, [(1, 1), (2, 1)], point="alarm_1", node="rtu-1") == [True, True], "a rule with no strategy"
    assert feed(p, [(1, 1), (2, 1)], point="t", node="rtu-1") == [True, False]
    assert feed(p, [(1, 1), (2, 1)], point="t", node="plc-1") == [True, True], "no rule for this node"
    assert feed(p, [(1, 1), (2, 1)], point="t") == [True, True], "the instance's node is gw"


def test_counts_say_what_the_rules_did_to_every_reading() -> None:
    p, _ = make(rule(points=["w"], window=60, aggregate=["mean", "count"]), rule(points=["d"], deadband=1))
    feed(p, [(i * S, 5.0) for i in range(10)], point="d")
    feed(p, [(i * S, 5.0) for i in range(7)], point="w")
    assert p.counts(17) == {"reported": 1, "aggregated": 7, "aggregates": 0, "suppressed": 9}
    p.close()
    assert p.counts(17) == {"reported": 1, "aggregated": 7, "aggregates": 2, "suppressed": 9}


def test_points_past_the_bound_are_reported_unfiltered(monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(proc_mod, "MAX_POINTS", 3)
    p, _ = make(rule(on_change=True))
    for i in range(6):
        assert feed(p, [(1, 0), (2, 0)], point=f"p{i}") == ([True, False] if i < 3 else [True, True])
    assert sum("more than 3 points" in r.message for r in caplog.records) == 1


def test_retune_reports_open_windows_and_starts_every_point_afresh() -> None:
    p, out = make(rule(points=["w"], window=60, aggregate=["count"]), rule(points=["d"], on_change=True))
    feed(p, [(1, 5.0), (2, 5.0)], point="w")
    assert feed(p, [(1, 5.0), (2, 5.0)], point="d") == [True, False]
    p.retune([rule(points=["d"], deadband=100)])
    assert [r.value for r in out] == [2], "the open window was reported"
    assert feed(p, [(3, 5.0), (4, 50.0)], point="d") == [True, False], "a fresh start under the new rule"
    assert feed(p, [(3, 5.0)], point="w") == [True], "no rule for w any more"
