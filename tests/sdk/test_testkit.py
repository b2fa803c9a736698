"""The driver test kit (gateway.testing and its pytest plugin) as an author uses it: fixtures
injected by the plugin, fake time through the scheduler, pty pairs, the Modbus simulator,
and assertion helpers whose failures say what did arrive."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from drivers.example import MANIFEST as EXAMPLE
from drivers.sim import MANIFEST as SIM
from gateway.driver_api import Path, Quality, Reading
from gateway.sinks import RecordingSink
from gateway.testing import FakeClock, SerialPair, assert_reading, free_port, wait_reading, wait_until

COUNTER = {"points": [{"name": "n", "pattern": "counter"}], "jitter": 0}


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    """Out-of-tree suites get the fixtures through the pytest11 entry point, not a conftest."""
    assert pytestconfig.pluginmanager.has_plugin("sensegate")


async def test_fake_clock_drives_the_poll_schedule(run_driver: Any, fake_clock: FakeClock) -> None:
    async with run_driver(SIM, name="s", interval="1h", clock=fake_clock, **COUNTER) as h:
        await fake_clock.until_sleeping()
        assert [r.value for r in h.sink.points("n")] == [0], "the first poll runs at start"
        assert fake_clock.next_deadline == fake_clock.now + 3600
        await fake_clock.advance(1800)
        await fake_clock.until_sleeping()
        assert len(h.sink.points("n")) == 1, "half an interval later: no poll yet"
        await fake_clock.advance(1800)
        await fake_clock.until_sleeping()
        assert [r.value for r in h.sink.points("n")] == [0, 1]
        for _ in range(3):
            await fake_clock.tick()
            await fake_clock.until_sleeping()
        assert [r.value for r in h.sink.points("n")] == [0, 1, 2, 3, 4]
        assert h.runner.stats.polls == 5


async def test_advancing_fires_every_due_poll_in_order(run_driver: Any) -> None:
    """advance(300) over a 30 s interval: ten polls, each at its own time, as a real clock gives."""

    class Watched(FakeClock):
        """Notes the fake time of every wake-up."""

        woke: list[float] = []

        def _wake_due(self) -> None:
            self.woke.append(self.now)
            super()._wake_due()

    clock = Watched()
    async with run_driver(SIM, name="s", interval="30s", clock=clock, **COUNTER) as h:
        await clock.until_sleeping()
        start = clock.now
        await clock.advance(300)
        await clock.until_sleeping()
        assert [r.value for r in h.sink.points("n")] == list(range(11)), "the first poll, then one per 30 s"
        assert h.runner.stats.polls == 11
        assert clock.now == start + 300 and clock.next_deadline == start + 330
        await clock.advance(29)
        assert h.runner.stats.polls == 11, "not due yet"
    assert [t - start for t in clock.woke] == [30.0 * i for i in range(1, 11)], "each at its own time, in order"


async def test_fake_clock_drives_the_restart_backoff(run_driver: Any, fake_clock: FakeClock) -> None:
    port = free_port()  # nothing listens: setup raises NotReady, the host backs off and retries
    async with run_driver(EXAMPLE, name="e", port=port, clock=fake_clock, backoff=(30.0, 300.0)) as h:
        await fake_clock.until_sleeping()
        assert h.runner.stats.restarts == 1
        assert h.runner.stats.state == "unavailable"
        wait = fake_clock.next_deadline
        assert wait is not None and 30 <= wait - fake_clock.now <= 60, "first backoff: initial + jitter"
        await fake_clock.tick()
        await fake_clock.until_sleeping()
        assert h.runner.stats.restarts == 2


def test_fake_clock_refuses_going_backwards() -> None:
    with pytest.raises(ValueError):
        asyncio.run(FakeClock().advance(-1))


def test_pty_pair_is_a_serial_line(pty_pair: SerialPair) -> None:
    fd = os.open(pty_pair.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        assert pty_pair.write(b"$GPGGA,hello\r\n") == 14
        got = b""
        for _ in range(100):
            try:
                got += os.read(fd, 100)
            except BlockingIOError:
                pass
            if got.endswith(b"\r\n"):
                break
        assert got == b"$GPGGA,hello\r\n"
        os.write(fd, b"READ\n")
        echoed = b""
        for _ in range(100):
            echoed += pty_pair.read()
            if echoed:
                break
        assert echoed == b"READ\n"
    finally:
        os.close(fd)


async def test_modbus_sim_fixture_with_the_modbus_driver(run_driver: Any, modbus_sim: Any) -> None:
    from drivers.modbus import MANIFEST as MODBUS
    from hil.devices.modbus_slave import Slave

    slave = Slave(7)
    slave.holding[3] = 215
    points = [{"name": "temperature", "function": "holding", "address": 3, "type": "i16", "scale": 0.1, "unit": "Cel"}]
    async with modbus_sim([slave], "tcp") as sim:
        opts = {"transport": "tcp", "host": "127.0.0.1", "port": sim.port, "interval": 0.05, "jitter": 0}
        async with run_driver(MODBUS, name="bus", nodes=[{"id": "meter-7", "slave": 7, "points": points}], **opts) as h:
            r = await wait_reading(h.sink, "temperature", 21.5, "Cel", node="meter-7", path=Path.IP3, rel=1e-9)
            assert r.instance == "bus"
            slave.holding[3] = (-50) & 0xFFFF
            await wait_reading(h.sink, "temperature", -5.0, "Cel", node="meter-7", rel=1e-9)


def _r(point: str, value: Any, unit: str | None = None, node: str = "gw", **kw: Any) -> Reading:
    return Reading(node, point, 1, value, unit, **kw)


def test_assert_reading_matches_fields() -> None:
    readings = [_r("t", 20.0, "Cel"), _r("t", 21.0, "Cel", node="n1", path=Path.IP3), _r("on", True)]
    assert assert_reading(readings, "t", 21.0, "Cel").node == "n1", "the last match wins"
    assert assert_reading(readings, "t", node="gw").value == 20.0
    assert_reading(readings, "t", 20.000001, rel=1e-5)
    assert_reading(readings, "t", 21.0, path=3)
    assert_reading(readings, "on", True, None)
    with pytest.raises(AssertionError):
        assert_reading(readings, "on", 1)  # True is not 1: booleans are their own SenML type
    with pytest.raises(AssertionError):
        assert_reading(readings, "t", quality=Quality.BAD)


def test_assert_reading_failure_lists_what_arrived() -> None:
    readings = [_r("t", 20.0, "Cel"), _r("h", 40.0, "%RH")]
    with pytest.raises(AssertionError) as e:
        assert_reading(readings, "t", 25.0, "Cel")
    assert "no reading 't' with value=25.0, unit='Cel'" in str(e.value)
    assert "gw/t = 20.0 Cel (ip2)" in str(e.value)
    with pytest.raises(AssertionError) as e:
        assert_reading(readings, "pressure")
    assert "no reading of that point" in str(e.value) and "gw/h = 40.0 %RH" in str(e.value)


async def test_wait_reading_fails_with_the_listing(recording_sink: RecordingSink) -> None:
    recording_sink.put(_r("t", 1.0))
    with pytest.raises(AssertionError, match=r"gw/t = 1\.0"):
        await wait_reading(recording_sink, "t", 2.0, within=0.1)
    with pytest.raises(TimeoutError):
        await wait_until(lambda: False, within=0.05)
