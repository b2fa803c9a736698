"""The gps driver's gpsd source against a real gpsd fed by gpsfake; the JSON parser against junk."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.gps import MANIFEST
from drivers.gps.gpsd import MAX_LINE, GpsdError, GpsdFramer, GpsdTracker
from drivers.gps.nmea import Fix
from gateway.driver_api import Location, Quality
from gateway.testing import free_port, run_driver
from hil.devices.gpsd_fake import GpsFake, parked_then_lost
from hil.devices.nmea_gps import DEFAULT_ROUTE

pytestmark = pytest.mark.skipif(not GpsFake.available(), reason="gpsd/gpsfake missing: run hil/system-deps.sh")


async def test_gpsd_absent_then_fix_then_lost_fix_then_gone() -> None:
    port = free_port()
    lat, lon, alt = DEFAULT_ROUTE[1]
    fake = GpsFake(parked_then_lost(DEFAULT_ROUTE[1]), cycle=0.01)
    async with run_driver(
        MANIFEST, name="g", source="gpsd", gpsd_port=port, interval=0.05, timeout=2, silence_timeout=5
    ) as h:
        async with asyncio.timeout(10):
            while h.runner.stats.restarts < 1:  # noqa: ASYNC110 (runner stats are plain attributes)
                await asyncio.sleep(0.02)
        assert f"cannot connect to gpsd at 127.0.0.1:{port}" in h.runner.stats.last_error
        await fake.start(port)
        try:
            # gpsd replays the log in a loop and merges fields as they come: wait for a TPV that
            # followed a whole fix epoch (its SKY says hdop 0.9, and the RMC speed is in)
            async with asyncio.timeout(20):
                while not (good := [r for r in h.sink.readings if _settled(r.value)]):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            good = good[0]
            assert good.quality == Quality.GOOD
            # gpsd counts the 4 satellites of the log's GSV as used (uSat); GGA's 8 is not relayed
            # parked: speed 0; gpsd reports a track of 0 or leaves it out (no course when not moving)
            v = good.value
            assert isinstance(v, Location) and v.course in (None, 0.0)
            assert v == Location(lat=lat, lon=lon, alt=alt, speed=0.0, course=v.course, fix=1, sats=4, hdop=0.9)
            async with asyncio.timeout(20):
                while not any(r.quality == Quality.UNCERTAIN for r in h.sink.readings):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            lost = next(r for r in h.sink.readings if r.quality == Quality.UNCERTAIN)
            assert isinstance(lost.value, Location)
            assert (lost.value.lat, lost.value.lon, lost.value.fix, lost.value.speed) == (lat, lon, 0, None)
            restarts = h.runner.stats.restarts
        finally:
            await fake.stop()
        async with asyncio.timeout(10):
            while h.runner.stats.restarts == restarts:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert "gpsd" in h.runner.stats.last_error


def _settled(v: object) -> bool:
    # a 3D fix (altitude in), after a SKY of the fix epochs (hdop 0.9), with the RMC speed merged
    return isinstance(v, Location) and v.fix > 0 and v.alt is not None and v.hdop == 0.9 and v.speed is not None


def test_tracker_reads_tpv_and_sky() -> None:
    t = GpsdTracker()
    assert (
        t.update({"class": "SKY", "hdop": 1.1, "satellites": [{"used": True}, {"used": False}, {"used": True}]}) is None
    )
    fix = t.update(
        {"class": "TPV", "mode": 3, "status": 2, "lat": -33.5, "lon": 151.25, "altMSL": 40.0, "speed": 1.5, "track": 90}
    )
    assert fix == Fix(True, -33.5, 151.25, 40.0, 1.5, 90.0, 2, 2, 1.1)
    lost = t.update({"class": "TPV", "mode": 1})
    assert lost == Fix(False, -33.5, 151.25, 40.0, None, None, 0, 2, 1.1)


@pytest.mark.parametrize(
    "report",
    [
        {"class": "TPV", "mode": 3, "lat": 91.0, "lon": 0.0},
        {"class": "TPV", "mode": 3, "lat": "1", "lon": 0.0},
        {"class": "TPV", "mode": True, "lat": 1.0, "lon": 0.0},
        {"class": "TPV", "mode": 3, "lat": 1.0, "lon": 0.0, "speed": -1},
        {"class": "SKY", "hdop": [1]},
    ],
)
def test_tracker_rejects_nonsense(report: dict[str, object]) -> None:
    t = GpsdTracker()
    with pytest.raises(GpsdError):
        t.update(report)
    assert t.fix() is None


def test_framer_counts_and_bounds() -> None:
    f = GpsdFramer()
    tpv = json.dumps({"class": "TPV", "mode": 2, "lat": 1.0, "lon": 2.0}).encode()
    out = f.feed(b'{"class":"VERSION"}\nnot json\n[1,2]\n' + b"x" * (MAX_LINE + 10) + b"\n" + tpv + b"\n")
    assert out == [{"class": "TPV", "mode": 2, "lat": 1.0, "lon": 2.0}]
    c = f.counters
    assert (c.reports, c.ignored, c.garbage, c.overlong) == (1, 1, 2, 1)


@given(st.lists(st.binary(max_size=2000), max_size=10))
def test_framer_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    f = GpsdFramer()
    for chunk in chunks:
        f.feed(chunk)
        assert len(f._buf) <= MAX_LINE


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(st.sampled_from(["TPV", "SKY", "X"]), st.dictionaries(
    st.sampled_from(["mode", "lat", "lon", "alt", "altMSL", "speed", "track", "status", "hdop", "uSat", "satellites"]),
    _json,
))  # fmt: skip
def test_tracker_only_raises_gpsd_error(cls: str, fields: dict[str, object]) -> None:
    t = GpsdTracker()
    try:
        fix = t.update({"class": cls, **fields})
    except GpsdError:
        return
    if fix is not None and fix.valid:
        assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180
