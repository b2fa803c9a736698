"""The template driver against its simulated device, and its parser against hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.example import MANIFEST
from drivers.example.protocol import ProtocolError, parse_ack, parse_temperature
from gateway.testing import run_driver
from gateway.testing.asserts import wait_until
from hil.devices.example_device import ExampleDevice


async def test_reads_temperature_and_recovers_from_garbage() -> None:
    dev = ExampleDevice(temperature=-3.5)
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, name="t", port=port, interval=0.05, timeout=0.5, jitter=0) as h:
            first = await h.sink.wait_for(1)
            assert (first[0].point, first[0].value, first[0].unit) == ("temperature", -3.5, "Cel")
            dev.garbage = True
            await wait_until(lambda: h.runner.stats.errors > 0)
            assert h.runner.stats.state == "unavailable"
            assert "unexpected reply" in h.runner.stats.last_error
            dev.garbage = False
            dev.temperature = 4.0
            await h.sink.wait_for(1, point="temperature")
            await wait_until(lambda: any(r.value == 4.0 for r in h.sink.readings))
            assert h.runner.stats.state == "running"
    finally:
        await dev.stop()


async def test_device_absent_then_present() -> None:
    from gateway.testing import free_port

    port = free_port()
    async with run_driver(MANIFEST, name="t", port=port, interval=0.05, timeout=0.5) as h:
        await wait_until(lambda: h.runner.stats.restarts >= 1)
        assert "cannot connect" in h.runner.stats.last_error
        dev = ExampleDevice()
        await dev.start(port)
        try:
            await h.sink.wait_for(1, within=5)
        finally:
            await dev.stop()


@pytest.mark.parametrize(
    ("line", "value"), [(b"T=21.50\n", 21.5), (b"T=-40\r\n", -40.0), (b"T=0.0", 0.0)]
)
def test_parse_good(line: bytes, value: float) -> None:
    assert parse_temperature(line) == value


@pytest.mark.parametrize("line", [b"", b"T=", b"T=nan", b"T=inf", b"T=1e9", b"X=1", b"T=" + b"9" * 100])
def test_parse_bad(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_temperature(line)


@given(st.binary(max_size=200))
def test_parser_only_raises_protocol_error(raw: bytes) -> None:
    for fn in (parse_temperature, parse_ack):
        try:
            fn(raw)
        except ProtocolError:
            pass
