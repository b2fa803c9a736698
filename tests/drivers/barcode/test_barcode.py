"""The barcode driver in the real scheduler against a simulated scanner on a pty; the framer vs junk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gateway.schema
from drivers.barcode import MANIFEST
from drivers.barcode.protocol import CodeFramer, parse_terminator
from gateway.testing import DriverHarness, make_instance, run_driver
from hil.devices.barcode_scanner import BarcodeScanner

QR_TEXT = "Hà Nội ✓ https://example.org/?a=1&b=2"
GS1 = "\x1d0104006381333931\x1d1524050110ABC123"


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (conditions span sink, runner stats and device)
            await asyncio.sleep(0.01)


def _codes(h: DriverHarness) -> list[object]:
    return [r.value for r in h.sink.points("code")]


@pytest.mark.parametrize(
    ("setting", "wire"), [("CRLF", b"\r\n"), ("CR", b"\r"), ("LF", b"\n"), ("0x03", b"\x03"), ("|", b"|")]
)
async def test_codes_arrive_exactly_with_each_terminator(setting: str, wire: bytes) -> None:
    sim = BarcodeScanner(terminator=wire)
    await sim.start()
    try:
        async with run_driver(MANIFEST, name="till", port=sim.path, terminator=setting, timeout=1) as h:
            await _until(lambda: h.runner.stats.state == "running")
            for code in ("4006381333931", QR_TEXT, GS1):
                sim.scan(code)
            got = await h.sink.wait_for(3, point="code")
            assert [r.value for r in got] == ["4006381333931", QR_TEXT, GS1]
            assert all(r.unit is None and r.node == "gw-test" for r in got)
    finally:
        await sim.stop()


async def test_prefix_suffix_and_max_length() -> None:
    sim = BarcodeScanner(prefix=b"]E0", suffix=b"\x1e")  # AIM id for EAN-13, RS as suffix
    await sim.start()
    try:
        async with run_driver(
            MANIFEST, name="till", port=sim.path, prefix="]E0", suffix="\x1e", max_length=20, timeout=1
        ) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.scan("4006381333931")
            sim.scan("X" * 100)  # longer than max_length: dropped, the stream goes on
            sim.scan("96385074")
            await h.sink.wait_for(2, point="code")
            assert _codes(h) == ["4006381333931", "96385074"]
            assert h.runner._driver.counters["too_long"] == 1  # type: ignore[union-attr]
    finally:
        await sim.stop()


@pytest.mark.parametrize(("mode", "expected"), [("replace", "caf\ufffd-\ufffd"), ("latin-1", "café-ÿ")])
async def test_non_utf8_bytes(mode: str, expected: str) -> None:
    sim = BarcodeScanner()
    await sim.start()
    try:
        async with run_driver(MANIFEST, name="till", port=sim.path, invalid_utf8=mode, timeout=1) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.scan(b"caf\xe9-\xff")  # latin-1 bytes, not UTF-8
            got = await h.sink.wait_for(1, point="code")
            assert got[0].value == expected
            assert h.runner._driver.counters["invalid_utf8"] == 1  # type: ignore[union-attr]
    finally:
        await sim.stop()


async def test_noise_silence_and_unplug() -> None:
    sim = BarcodeScanner()
    await sim.start()
    try:
        async with run_driver(MANIFEST, name="till", port=sim.path, timeout=1) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.send_garbage()
            sim.silent = True
            sim.scan("lost")
            sim.silent = False
            sim.scan("after-noise")
            await h.sink.wait_for(1, point="code")
            assert _codes(h) == ["after-noise"]
            assert h.runner._driver.counters["noise"] == 1  # type: ignore[union-attr]
            sim.unplug()
            await _until(lambda: h.runner.stats.restarts >= 2)
            assert f"serial port {sim.path} not found" in h.runner.stats.last_error
            sim.plug()
            await _until(lambda: h.runner.stats.state == "running")
            await asyncio.sleep(0.05)  # pyserial flushes pending input when it opens the port
            sim.scan("back")
            await h.sink.wait_for(2, point="code")
            assert _codes(h) == ["after-noise", "back"]
            assert h.runner.stats.errors >= 1
    finally:
        await sim.stop()


def test_config_rejects_a_bad_terminator() -> None:
    with pytest.raises(gateway.schema.ValidationError, match="terminator"):
        make_instance(MANIFEST, port="/dev/ttyACM0", terminator="CRCR")


@pytest.mark.parametrize(
    ("spec", "wire"), [("cr", b"\r"), ("CRLF", b"\r\n"), ("0x1D", b"\x1d"), ("ETX", b"\x03"), (";", b";")]
)
def test_terminator_forms(spec: str, wire: bytes) -> None:
    assert parse_terminator(spec) == wire


def test_framer_drop_mode_and_split_terminator() -> None:
    f = CodeFramer(b"\r\n", invalid_utf8="drop")
    assert f.feed(b"\xff\xfe\r\nabc\r") == []
    assert f.feed(b"\n") == ["abc"]
    assert (f.counters.invalid_utf8, f.counters.codes) == (1, 1)


def test_over_long_line_across_reads_is_dropped_whole() -> None:
    f = CodeFramer(b"\n", max_length=8)
    out = f.feed(b"0123456789") + f.feed(b"abcdef") + f.feed(b"tail\nok\n")
    assert out == ["ok"] and f.counters.too_long == 1
    assert len(f._buf) == 0


@given(
    st.sampled_from([b"\r\n", b"\r", b"\n", b"\x03", b"||"]),
    st.sampled_from(["replace", "latin-1", "drop"]),
    st.binary(max_size=4),
    st.lists(st.binary(max_size=80), max_size=20),
)
def test_framer_never_raises_and_stays_bounded(term: bytes, mode: str, prefix: bytes, chunks: list[bytes]) -> None:
    f = CodeFramer(term, max_length=32, prefix=prefix, invalid_utf8=mode)  # type: ignore[arg-type]
    for chunk in chunks:
        for code in f.feed(chunk):
            assert isinstance(code, str) and code and len(code.encode("utf-8")) <= 2 * 32
        assert len(f._buf) <= 32 + len(term) - 1
