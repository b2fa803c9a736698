"""The gps driver (serial NMEA) in the real scheduler against the simulated receiver on a pty."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from drivers.gps import MANIFEST
from gateway.driver_api import Location, Quality, Reading
from gateway.testing import DriverHarness, run_driver
from hil.devices.nmea_gps import DEFAULT_ROUTE, NmeaGps


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (conditions span sink, runner stats and device)
            await asyncio.sleep(0.01)


def _locs(h: DriverHarness) -> list[Reading]:
    return h.sink.points("location")


async def _new_reading(h: DriverHarness, pred: Callable[[Reading], bool] = lambda r: True) -> Reading:
    seen = len(h.sink.readings)
    await _until(lambda: any(pred(r) for r in h.sink.readings[seen:]))
    return next(r for r in h.sink.readings[seen:] if pred(r))


OPTS = {"name": "gps1", "interval": 0.05, "timeout": 1, "silence_timeout": 2}


async def test_parked_on_a_waypoint_reports_it_exactly() -> None:
    sim = NmeaGps(period=0.02)
    sim.hold_at(1)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            r = (await h.sink.wait_for(1, point="location"))[0]
            lat, lon, alt = DEFAULT_ROUTE[1]
            assert r.value == Location(lat=lat, lon=lon, alt=alt, speed=0.0, course=0.0, fix=1, sats=8, hdop=0.9)
            assert (r.quality, r.unit, r.node, r.instance) == (Quality.GOOD, None, "gw-test", "gps1")
            assert h.runner.stats.state == "running"
    finally:
        await sim.stop()


async def test_moving_reports_speed_and_course_in_si_units() -> None:
    sim = NmeaGps(period=0.02, knots=10.0)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            await h.sink.wait_for(3, point="location")
            r = await _new_reading(h)
            v = r.value
            assert isinstance(v, Location)
            assert v.speed == 5.144  # 10 kn = 5.1444 m/s, to the millimetre per second
            assert v.course == 36.6  # first leg's bearing, as the receiver rounds it
            assert 21.028 < v.lat < 21.031 and 105.804 < v.lon < 105.807
            assert len({x.value.lat for x in _locs(h)}) > 1  # type: ignore[union-attr]  # it moves
    finally:
        await sim.stop()


async def test_rate_is_at_most_one_reading_per_interval() -> None:
    sim = NmeaGps(period=0.01)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **{**OPTS, "interval": 0.25}) as h:
            await h.sink.wait_for(4, point="location")
            ts = [r.ts_ns for r in _locs(h)]
            gaps = [(b - a) / 1e9 for a, b in itertools.pairwise(ts)]
            assert min(gaps) >= 0.2, gaps  # wall clock vs loop clock: allow a little slack
            assert sim.epochs > 3 * len(ts)  # many more epochs than readings were received
    finally:
        await sim.stop()


async def test_losing_the_fix_reports_last_position_uncertain_then_recovers() -> None:
    sim = NmeaGps(period=0.02)
    sim.hold_at(2)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **{**OPTS, "interval": 5}) as h:
            await h.sink.wait_for(1, point="location")
            sim.no_fix = True
            lost = await _new_reading(h)  # emitted at once, not after the 5 s interval
            lat, lon, alt = DEFAULT_ROUTE[2]
            assert lost.quality == Quality.UNCERTAIN
            assert lost.value == Location(lat=lat, lon=lon, alt=alt, speed=None, course=None, fix=0, sats=0, hdop=99.99)
            sim.no_fix = False
            back = await _new_reading(h)
            assert back.quality == Quality.GOOD
            assert isinstance(back.value, Location) and back.value.fix == 1 and back.value.lat == lat
            assert h.runner.stats.errors == 0
    finally:
        await sim.stop()


async def test_no_fix_from_the_start_emits_nothing() -> None:
    sim = NmeaGps(period=0.02)
    sim.no_fix = True
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            await _until(lambda: sim.epochs > 20)
            assert _locs(h) == [] and h.runner.stats.state == "running"
    finally:
        await sim.stop()


async def test_garbage_on_the_line_is_counted_and_fixes_still_flow() -> None:
    sim = NmeaGps(period=0.02)
    sim.hold_at(0)
    sim.garbage = True
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            await h.sink.wait_for(5, point="location")
            driver = h.runner._driver
            assert driver is not None
            c = driver.counters  # type: ignore[attr-defined]
            assert c["garbage"] > 0 and c["checksum_errors"] > 0
            lat, lon, _ = DEFAULT_ROUTE[0]
            assert all(r.value.lat == lat and r.value.lon == lon for r in _locs(h))  # type: ignore[union-attr]
            assert h.runner.stats.errors == 0 and h.runner.stats.state == "running"
    finally:
        await sim.stop()


async def test_receiver_unplugged_and_plugged_back() -> None:
    sim = NmeaGps(period=0.02)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            await h.sink.wait_for(1, point="location")
            sim.unplug()
            await _until(lambda: h.runner.stats.restarts >= 2)
            assert h.runner.stats.state == "unavailable"
            assert f"serial port {sim.path} not found" in h.runner.stats.last_error
            sim.plug()
            await _new_reading(h)
            assert h.runner.stats.state == "running"
    finally:
        await sim.stop()


async def test_a_silent_receiver_is_reopened() -> None:
    sim = NmeaGps(period=0.02)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **{**OPTS, "silence_timeout": 0.2}) as h:
            await h.sink.wait_for(1, point="location")
            sim.silent = True
            await _until(lambda: h.runner.stats.restarts >= 1)
            assert "silent for" in h.runner.stats.last_error
            sim.silent = False
            await _new_reading(h)
            assert h.runner.stats.state == "running"
    finally:
        await sim.stop()


async def test_missing_port_at_start_is_retried() -> None:
    sim = NmeaGps(period=0.02)
    async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
        await _until(lambda: h.runner.stats.restarts >= 1)
        assert "not found" in h.runner.stats.last_error and sim.path in h.runner.stats.last_error
        await sim.start()
        try:
            await h.sink.wait_for(1, point="location")
        finally:
            await sim.stop()
