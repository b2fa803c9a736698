"""The rfid driver (EM4100 over serial) in the real scheduler against the simulated RDM6300 on a pty."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from drivers.rfid import MANIFEST
from gateway.testing import DriverHarness, run_driver
from hil.devices.rfid_rdm6300 import Rdm6300

OPTS = {"name": "door", "timeout": 1}


async def _until(cond: Callable[[], bool], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (conditions span sink, runner stats and device)
            await asyncio.sleep(0.01)


def _tags(h: DriverHarness) -> list[object]:
    return [r.value for r in h.sink.points("tag")]


async def test_a_held_tag_is_reported_once_per_presentation() -> None:
    sim = Rdm6300(period=0.01)
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, dedup_window=0.3, **OPTS) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.present("0f00a3b2c1")
            await h.sink.wait_for(1, point="tag")
            driver = h.runner._driver
            assert driver is not None
            await _until(lambda: driver.counters["frames"] >= 20)  # type: ignore[attr-defined]  # it repeats...
            sim.remove()
            r = h.sink.points("tag")[0]
            assert (r.value, r.unit, r.node) == ("0F00A3B2C1", None, "gw-test")
            assert _tags(h) == ["0F00A3B2C1"]  # ...but it is one event
            assert driver.counters["duplicates"] >= 19  # type: ignore[attr-defined]
            await asyncio.sleep(0.4)  # out of the field longer than the window
            sim.send("0F00A3B2C1")
            sim.send("1122334455")
            await h.sink.wait_for(3, point="tag")
            assert _tags(h) == ["0F00A3B2C1", "0F00A3B2C1", "1122334455"]
    finally:
        await sim.stop()


async def test_without_dedup_every_frame_is_an_event() -> None:
    sim = Rdm6300()
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, dedup_window=0, **OPTS) as h:
            await _until(lambda: h.runner.stats.state == "running")
            for _ in range(5):
                sim.send("0102030405")
            await h.sink.wait_for(5, point="tag")
            assert _tags(h) == ["0102030405"] * 5
    finally:
        await sim.stop()


async def test_corrupt_frames_and_noise_are_counted_not_reported() -> None:
    sim = Rdm6300()
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, dedup_window=0, **OPTS) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.send_corrupt("0F00A3B2C1")
            sim.send_garbage()
            sim.send("AABBCCDDEE")
            await h.sink.wait_for(1, point="tag")
            assert _tags(h) == ["AABBCCDDEE"]
            c = h.runner._driver.counters  # type: ignore[union-attr]
            assert c["bad_frames"] == 3 and c["stray_bytes"] > 0 and c["frames"] == 1
            assert h.runner.stats.errors == 0
    finally:
        await sim.stop()


async def test_reader_unplugged_and_back() -> None:
    sim = Rdm6300()
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, dedup_window=0, **OPTS) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.unplug()
            await _until(lambda: h.runner.stats.restarts >= 2)
            assert h.runner.stats.state == "unavailable"
            assert f"serial port {sim.path} not found" in h.runner.stats.last_error
            sim.plug()
            await _until(lambda: h.runner.stats.state == "running")
            await asyncio.sleep(0.05)  # let the reopened port settle (pyserial flushes input on open)
            sim.present("0A0B0C0D0E")
            await h.sink.wait_for(1, point="tag")
    finally:
        await sim.stop()


async def test_silence_is_normal_for_a_reader() -> None:
    sim = Rdm6300()
    sim.silent = True
    await sim.start()
    try:
        async with run_driver(MANIFEST, port=sim.path, **OPTS) as h:
            await _until(lambda: h.runner.stats.state == "running")
            sim.send("0102030405")  # silent: nothing goes out
            await asyncio.sleep(0.3)
            assert _tags(h) == [] and h.runner.stats.errors == 0 and h.runner.stats.state == "running"
    finally:
        await sim.stop()
