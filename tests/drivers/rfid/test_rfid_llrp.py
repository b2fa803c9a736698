"""The rfid driver's LLRP source in the real scheduler against the LLRP reader emulator."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.rfid import MANIFEST, llrp
from drivers.rfid.llrp import TagRead
from gateway.testing import free_port, run_driver
from hil.devices.llrp_reader import LlrpReader

EPC1 = "E2801160600002054A1B0C01"
EPC2 = "3034257BF7194E4000001A85"


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (conditions span sink, runner stats and device)
            await asyncio.sleep(0.01)


def _opts(port: int, **kw: object) -> dict[str, object]:
    return {"name": "dock", "source": "llrp", "host": "127.0.0.1", "llrp_port": port, "timeout": 2, **kw}


async def test_handshake_then_epc_antenna_rssi_exactly() -> None:
    dev = LlrpReader()
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port, dedup_window=0)) as h:
            await _until(lambda: dev.inventorying == 1)
            assert dev.received == [
                llrp.SET_READER_CONFIG, llrp.DELETE_ROSPEC, llrp.ADD_ROSPEC, llrp.ENABLE_ROSPEC, llrp.START_ROSPEC,
            ]  # fmt: skip
            assert h.runner.stats.state == "running"
            dev.read(TagRead(EPC1, antenna=1, rssi=-52, first_seen_us=1_700_000_000_000_000, seen_count=3))
            dev.read(TagRead("ABCD", antenna=2, rssi=-71))  # a 16-bit EPC arrives as EPCData, not EPC-96
            await h.sink.wait_for(6)
            got = [(r.point, r.value, r.unit) for r in h.sink.readings]
            assert got == [
                ("tag", EPC1, None), ("antenna", 1, None), ("rssi", -52, "dBm"),
                ("tag", "ABCD", None), ("antenna", 2, None), ("rssi", -71, "dBm"),
            ]  # fmt: skip
            ts = [r.ts_ns for r in h.sink.readings]
            assert ts[0] == ts[1] == ts[2] < ts[3] == ts[4] == ts[5]  # one read, one timestamp
    finally:
        await dev.stop()


async def test_duplicates_within_the_window_are_suppressed() -> None:
    dev = LlrpReader()
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port, dedup_window=30)) as h:
            await _until(lambda: dev.inventorying == 1)
            for _ in range(5):
                dev.read(TagRead(EPC1, 1, -50), TagRead(EPC2, 2, -60))
            dev.read(TagRead(EPC2, 1, -40))
            await h.sink.wait_for(2, point="tag")
            await _until(lambda: h.runner._driver.counters["duplicates"] == 9)  # type: ignore[union-attr]
            assert [r.value for r in h.sink.points("tag")] == [EPC1, EPC2]
    finally:
        await dev.stop()


async def test_keepalives_are_acked_and_their_absence_reconnects() -> None:
    dev = LlrpReader()
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port, keepalive=0.05)) as h:
            await _until(lambda: dev.keepalive_acks >= 3)
            dev.silent = True  # reader hangs: no keepalives
            await _until(lambda: h.runner.stats.restarts >= 1)
            assert "no KEEPALIVE from the reader for 0.15s" in h.runner.stats.last_error
            dev.silent = False
            await _until(lambda: h.runner.stats.state == "running" and dev.inventorying == 1)
            dev.read(TagRead(EPC1, 1, -50))
            await h.sink.wait_for(1, point="tag")
    finally:
        await dev.stop()


async def test_garbage_and_disconnects_reconnect() -> None:
    dev = LlrpReader()
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port, dedup_window=0)) as h:
            await _until(lambda: dev.inventorying == 1)
            dev.garbage()
            await _until(lambda: h.runner.stats.restarts >= 1)
            assert "LLRP stream broken" in h.runner.stats.last_error
            await _until(lambda: dev.inventorying == 1 and h.runner.stats.state == "running")
            dev.disconnect()
            await _until(lambda: h.runner.stats.restarts >= 2)
            assert "reader closed the connection" in h.runner.stats.last_error
            await _until(lambda: dev.inventorying == 1 and h.runner.stats.state == "running")
            dev.read(TagRead(EPC2, 4, -33))
            await h.sink.wait_for(1, point="tag")
            assert dev.connections == 3
    finally:
        await dev.stop()


async def test_malformed_report_is_dropped_and_counted() -> None:
    dev = LlrpReader()
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port, dedup_window=0)) as h:
            await _until(lambda: dev.inventorying == 1)
            bad = llrp.tlv(llrp.P_TAG_REPORT_DATA, bytes([0x80 | 99, 0, 0]))  # unknown TV type
            dev.send_raw(llrp.encode_message(llrp.RO_ACCESS_REPORT, 7, bad))
            dev.read(TagRead(EPC1, 1, -50))
            await h.sink.wait_for(1, point="tag")
            assert h.runner._driver.counters["bad_reports"] == 1  # type: ignore[union-attr]
            assert h.runner.stats.errors == 0
    finally:
        await dev.stop()


async def test_refused_connection_and_rejected_rospec_are_retried() -> None:
    dev = LlrpReader()
    dev.refuse = True
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, **_opts(port)) as h:
            await _until(lambda: h.runner.stats.restarts >= 1)
            assert "a client-initiated connection already exists" in h.runner.stats.last_error
            dev.refuse, dev.reject_rospec = False, True
            await _until(lambda: "ADD_ROSPEC" in h.runner.stats.last_error)
            assert "status 100 ROSpec not supported" in h.runner.stats.last_error
            dev.reject_rospec = False
            await _until(lambda: dev.inventorying == 1 and h.runner.stats.state == "running")
    finally:
        await dev.stop()


async def test_no_reader_listening() -> None:
    port = free_port()
    async with run_driver(MANIFEST, **_opts(port)) as h:
        await _until(lambda: h.runner.stats.restarts >= 1)
        assert f"cannot connect to LLRP reader 127.0.0.1:{port}" in h.runner.stats.last_error
