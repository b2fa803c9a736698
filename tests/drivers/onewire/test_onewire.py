"""The onewire driver in the real scheduler against a fake sysfs tree, and its parsers against hostile input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.onewire import MANIFEST
from drivers.onewire.w1 import CrcError, W1Error, parse_temperature_file, parse_w1_slave
from gateway.driver_api import Path as IP
from gateway.driver_api import Quality
from gateway.testing import run_driver
from hil.devices.onewire_sysfs import FakeW1Bus, w1_slave_text

A, B, C = "28-0316a2791aff", "28-0416b0c3e2ff", "28-000005e2fdc3"
FAST = {"interval": 0.05, "timeout": 2, "jitter": 0}


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition (no timed assertions): fail only after a generous overall timeout."""
    async with asyncio.timeout(within):
        while True:
            if cond():
                return
            await asyncio.sleep(0.02)


async def test_named_sensors_as_nodes_with_crc_error_unplug_and_reset(tmp_path: Path) -> None:
    bus = FakeW1Bus(tmp_path / "w1")
    bus.add(A, 23125)
    bus.add(B, -10125)
    sensors = [{"id": A, "name": "boiler_in"}, {"id": B, "name": "boiler_out"}]
    async with run_driver(MANIFEST, name="probes", base_path=bus.path, sensors=sensors, **FAST) as h:
        got = await h.sink.wait_for(1, node="boiler_out")
        r = got[0]
        assert (r.point, r.value, r.unit, r.quality, r.path) == ("temperature", -10.125, "Cel", Quality.GOOD, IP.IP3)
        assert h.sink.points(node="boiler_in")[0].value == 23.125
        assert h.nodes.state == {"boiler_in": True, "boiler_out": True}
        driver = h.runner._driver
        assert driver is not None

        bus.crc_error(A)  # noise on the line: reading skipped, counted, node offline; B goes on
        await until(lambda: h.nodes.state["boiler_in"] is False)
        assert h.nodes.reason["boiler_in"] == "CRC check failed"
        n_b = len(h.sink.points(node="boiler_out"))
        await h.sink.wait_for(n_b + 2, node="boiler_out")
        assert driver.failures["boiler_in"] >= 1
        assert h.runner.stats.state == "running"  # one bad sensor is not a failed poll

        bus.crc_error(A, on=False)
        bus.set(A, 24000)
        await until(lambda: h.nodes.state["boiler_in"] is True)
        await until(lambda: h.sink.points(node="boiler_in")[-1].value == 24.0)

        bus.power_on_reset(B)  # 85 C reset value: emitted, but BAD
        await until(lambda: h.sink.points(node="boiler_out")[-1].quality == Quality.BAD)
        assert h.sink.points(node="boiler_out")[-1].value == 85.0
        assert driver.bad["boiler_out"] >= 1

        bus.remove(B)
        await until(lambda: h.nodes.state["boiler_out"] is False)
        assert h.nodes.reason["boiler_out"] == "unplugged"

        bus.remove(A)  # nothing left: the poll itself fails, the instance shows unavailable
        await until(lambda: h.runner.stats.state == "unavailable")
        assert "none of 2 sensor(s)" in h.runner.stats.last_error
        bus.add(A, 1000)
        await until(lambda: h.runner.stats.state == "running")
        await until(lambda: h.sink.points(node="boiler_in")[-1].value == 1.0)


async def test_auto_discovery_as_points_and_temperature_file(tmp_path: Path) -> None:
    bus = FakeW1Bus(tmp_path / "w1")
    bus.add(A, 21500)
    bus.add(C, 0, temperature_file=True, w1_slave=False)  # newer kernels: only `temperature`
    (tmp_path / "w1" / "10-000802b4a8b2").mkdir()  # a DS18S20: not in the default families
    async with run_driver(MANIFEST, name="room", base_path=bus.path, layout="points", **FAST) as h:
        await h.sink.wait_for(1, point=C)
        await h.sink.wait_for(1, point=A)
        assert [(r.node, r.value, r.unit, r.path) for r in h.sink.points(point=A)][:1] == [
            ("gw-test", 21.5, "Cel", IP.IP2)
        ]
        assert h.sink.points(point=C)[0].value == 0.0
        assert {r.point for r in h.sink.readings} == {A, C}
        assert h.nodes.state == {}  # points of the gateway's node: no capillary node status

        bus.add(B, 30062)  # plugged in later: discovered at the next poll
        await h.sink.wait_for(1, point=B)
        assert h.sink.points(point=B)[0].value == 30.062


async def test_missing_bus_is_not_ready(tmp_path: Path) -> None:
    async with run_driver(MANIFEST, name="nobus", base_path=str(tmp_path / "absent"), **FAST) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "no 1-Wire bus at" in h.runner.stats.last_error
        assert h.runner.stats.state == "unavailable"
        FakeW1Bus(tmp_path / "absent").add(A, 5000)  # the overlay gets enabled: it recovers
        await h.sink.wait_for(1)


async def test_garbage_in_one_file_skips_only_that_sensor(tmp_path: Path) -> None:
    bus = FakeW1Bus(tmp_path / "w1")
    bus.add(A, 1000)
    bus.add(B, 2000)
    bus.write_raw(A, "w1_slave", "\x00\xff garbage\n" * 50)
    async with run_driver(MANIFEST, name="g", base_path=bus.path, **FAST) as h:
        await h.sink.wait_for(3, node=B)
        assert h.sink.points(node=A) == []
        assert h.nodes.state[A] is False
        assert h.runner._driver is not None and h.runner._driver.failures[A] >= 1


@pytest.mark.parametrize(
    ("mc", "ok"), [(23125, True), (-10125, True), (0, True), (85000, True), (-55000, True), (125000, True)]
)
def test_w1_slave_round_trip(mc: int, ok: bool) -> None:
    assert parse_w1_slave(w1_slave_text(mc).encode()) == mc


def test_w1_slave_known_hardware_output() -> None:
    raw = b"50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
    assert parse_w1_slave(raw) == 85000
    with pytest.raises(CrcError):
        parse_w1_slave(raw.replace(b"YES", b"NO"))


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"72 01 4b 46 7f ff 0c 10 c6 : crc=c6 YES\n",
        b"72 01 4b 46 7f ff 0c 10 c6 : crc=c6 YES\n72 01 4b 46 7f ff 0c 10 c6 t=\n",
        b"72 01 4b 46 7f ff 0c 10 c6 : crc=c6 MAYBE\n72 01 4b 46 7f ff 0c 10 c6 t=1\n",
        b"72 01 4b 46 7f ff 0c 10 c6 : crc=c6 YES\n72 01 4b 46 7f ff 0c 10 c6 t=999999\n",
        b"72 01 4b 46 7f ff 0c 10 c6 : crc=c6 YES\n72 01 4b 46 7f ff 0c 10 c6 t=\xd9\xa3\n",
    ],
)
def test_w1_slave_rejects(raw: bytes) -> None:
    with pytest.raises(W1Error):
        parse_w1_slave(raw)


def test_temperature_file() -> None:
    assert parse_temperature_file(b"23125\n") == 23125
    assert parse_temperature_file(b"-125\n") == -125
    for bad in (b"", b"x", b"1.5", b"200000", "٣".encode()):
        with pytest.raises(W1Error):
            parse_temperature_file(bad)


@given(st.binary(max_size=300))
def test_parsers_only_raise_w1_error(raw: bytes) -> None:
    for fn in (parse_w1_slave, parse_temperature_file):
        try:
            mc = fn(raw)
        except W1Error:
            continue
        assert -55000 <= mc <= 125000


@given(st.integers(-55000, 125000), st.booleans(), st.integers(0, 80), st.integers(0, 255))
def test_w1_slave_mutations(mc: int, crc_ok: bool, pos: int, byte: int) -> None:
    text = bytearray(w1_slave_text(mc, crc_ok).encode())
    text[pos % len(text)] = byte
    try:
        parse_w1_slave(bytes(text))
    except W1Error:
        pass
