"""The scheduler keeps healthy drivers running whatever their neighbours do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.driver_api import ConfigError, Manifest
from gateway.scheduler import Backoff, InstanceRunner, NodeTracker
from gateway.sinks import RecordingSink
from gateway.testing import make_instance, run_driver

FIXTURES = Path(__file__).parents[1] / "fixtures" / "sgtestdrivers"


@pytest.fixture
def td(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(FIXTURES))
    import sgtestdrivers

    sgtestdrivers.Flaky.attempts.clear()
    return sgtestdrivers


@contextlib.asynccontextmanager
async def running(
    *specs: tuple[Manifest, dict[str, object]],
) -> AsyncIterator[tuple[RecordingSink, list[InstanceRunner]]]:
    sink = RecordingSink()
    nodes = NodeTracker()
    runners = []
    for manifest, opts in specs:
        runner = InstanceRunner(make_instance(manifest, **opts), "gw-t", sink, nodes, backoff=(0.05, 0.2))
        runner.start()
        runners.append(runner)
    try:
        yield sink, runners
    finally:
        await asyncio.gather(*(r.stop() for r in runners))


FAST = {"interval": 0.05, "timeout": 0.2, "jitter": 0}


async def test_hanging_driver_does_not_stall_others(td, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    async with running((td.HANG, {"name": "hang", **FAST}), (td.TICK, {"name": "tick", **FAST})) as (
        sink,
        (hang, tick),
    ):
        await sink.wait_for(15, point="n")
        await asyncio.sleep(0.5)
    assert hang.stats.timeouts >= 2
    assert hang.stats.readings == 0
    assert tick.stats.errors == 0
    assert [r.value for r in sink.points("n")][:15] == list(range(1, 16))
    unavailable = [r for r in caplog.records if "hang unavailable" in r.getMessage()]
    assert len(unavailable) == 1, "an unavailable driver is logged once, not per failed poll"


async def test_raising_driver_counted_and_others_run(td, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    async with running((td.BOOM, {"name": "boom", **FAST}), (td.TICK, {"name": "tick", **FAST})) as (sink, (boom, _)):
        await sink.wait_for(10, point="n")
        await asyncio.sleep(0.4)
    assert boom.stats.errors >= 3
    assert boom.stats.restarts >= 1, "after repeated failures the driver is closed and set up again"
    assert "division by zero" in boom.stats.last_error
    assert sum("boom unavailable" in r.getMessage() for r in caplog.records) == 1


async def test_setup_crash_retried_with_backoff(td) -> None:  # type: ignore[no-untyped-def]
    async with running((td.BADSETUP, {"name": "bad", **FAST}), (td.TICK, {"name": "tick", **FAST})) as (sink, (bad, _)):
        await sink.wait_for(10, point="n")
        await asyncio.sleep(0.5)
    assert bad.stats.restarts >= 2
    assert bad.stats.state == "stopped"
    assert "/dev/ttyNOPE" in bad.stats.last_error


async def test_config_error_in_setup_is_fatal_not_retried(td, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    async with running((td.FATAL, {"name": "fatal", **FAST}), (td.TICK, {"name": "tick", **FAST})) as (
        sink,
        (fatal, _),
    ):
        await sink.wait_for(5, point="n")
        assert fatal.stats.state == "failed"
        assert fatal.stats.restarts == 0
    assert any("fatal stopped: register map" in r.getMessage() for r in caplog.records)


async def test_flaky_device_logs_one_outage_and_one_recovery(td, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    opts = {"name": "fl", "setup_failures": 2, "fail_polls": 2, **FAST}
    async with running((td.FLAKY, opts)) as (sink, (fl,)):
        got = await sink.wait_for(3, point="ok")
    assert [r.value for r in got[:3]] == [3, 4, 5]
    msgs = [r.getMessage() for r in caplog.records if r.name == "sensegate.driver.flaky.fl"]
    assert sum("unavailable" in m for m in msgs) == 1
    assert sum("recovered" in m for m in msgs) == 1
    assert fl.stats.errors == 4


async def test_missing_hardware_library_names_the_extra(td) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    needs = replace(td.TICK, requires=("surely_not_installed_lib",), extra="widgets")
    async with running((needs, {"name": "w", **FAST})) as (_, (w,)):
        for _ in range(50):
            if w.stats.state == "failed":
                break
            await asyncio.sleep(0.01)
    assert w.stats.state == "stopped"
    assert "pip install 'sensegate[widgets]'" in w.stats.last_error


async def test_bad_values_are_refused_at_emit(td) -> None:  # type: ignore[no-untyped-def]
    async with run_driver(td.TICK, name="t", **FAST) as h:
        with pytest.raises(ValueError, match="not finite"):
            h.runner.emit("x", float("nan"))
        with pytest.raises(TypeError, match="unsupported value type"):
            h.runner.emit("x", [1, 2])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="point name"):
            h.runner.emit("temp erature", 1.0)  # would not be a valid SenML name
        with pytest.raises(ValueError, match="node id"):
            h.runner.emit("t", 1.0, node="rtu/7")
        with pytest.raises(ValueError, match="emit a Blob"):
            h.runner.emit("raw", b"x" * 70_000)
        h.runner.emit("relayed", 1.5, node="rtu-7")
        await h.sink.wait_for(1, point="relayed")
        ownlist = await h.sink.wait_for(1, point="n")
    r = h.sink.points("relayed")[0]
    assert (r.node, int(r.path), r.instance) == ("rtu-7", 3, "t")
    own = ownlist[0]
    assert (own.node, int(own.path)) == ("gw-test", 2)


async def test_write_goes_through_the_driver_in_turn_with_polls() -> None:
    from drivers.example import MANIFEST
    from hil.devices.example_device import ExampleDevice

    dev = ExampleDevice(temperature=19.25)
    port = await dev.start()
    try:
        async with run_driver(MANIFEST, name="boiler", port=port, interval=0.05, timeout=1) as h:
            got = await h.sink.wait_for(2, point="temperature")
            assert got[0].value == 19.25 and got[0].unit == "Cel"
            await h.runner.write("setpoint", 22)
            assert dev.setpoint == 22.0
            with pytest.raises(ConfigError, match="outside"):
                await h.runner.write("setpoint", 99)
            with pytest.raises(ConfigError, match="unknown writable point"):
                await h.runner.write("valve", 1)
    finally:
        await dev.stop()


async def test_poll_now_triggers_an_extra_poll(td) -> None:  # type: ignore[no-untyped-def]
    async with run_driver(td.TICK, name="slow", interval=3600, timeout=1) as h:
        await h.sink.wait_for(1, point="n")
        h.runner.poll_now()
        got = await h.sink.wait_for(2, point="n", within=2)
    assert [r.value for r in got] == [1, 2]


def test_node_tracker_logs_transitions_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    nodes = NodeTracker()
    seen: list[tuple[str, bool]] = []
    nodes.listeners.append(lambda n, ok, why: seen.append((n, ok)))
    for ok in (True, True, False, False, False, True, True):
        nodes.set("rtu-1", ok, "timeout")
    assert seen == [("rtu-1", True), ("rtu-1", False), ("rtu-1", True)]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["node rtu-1 is offline: timeout", "node rtu-1 is back online"]


def test_node_tracker_publishes_a_new_reason_while_online(caplog: pytest.LogCaptureFixture) -> None:
    """A driver's news about an online node (a frame-counter gap) reaches the status topic once."""
    caplog.set_level(logging.INFO)
    nodes = NodeTracker()
    seen: list[tuple[str, bool, str]] = []
    nodes.listeners.append(lambda n, ok, why: seen.append((n, ok, why)))
    nodes.set("lora-1", True)
    nodes.set("lora-1", True, "frame counter gap: 3 uplink(s) lost (10 -> 14)")
    nodes.set("lora-1", True, "frame counter gap: 3 uplink(s) lost (10 -> 14)")
    nodes.set("lora-1", False, "no uplink for 7200s")
    nodes.set("lora-1", False, "still nothing")  # offline stays offline: no second line
    assert seen == [("lora-1", True, ""), ("lora-1", True, "frame counter gap: 3 uplink(s) lost (10 -> 14)"),
                    ("lora-1", False, "no uplink for 7200s")]
    assert [r.getMessage() for r in caplog.records] == [
        "node lora-1: frame counter gap: 3 uplink(s) lost (10 -> 14)", "node lora-1 is offline: no uplink for 7200s"]


# -- stopping is bounded whatever the driver does (issue 16) ------------------------------------

HOLD = {"interval": 3600, "timeout": 3600, "jitter": 0}


async def test_stop_honours_a_swallowed_cancellation(td) -> None:  # type: ignore[no-untyped-def]
    """pymodbus under asyncio.wait_for swallows a cancellation that meets its reply: the poll
    returns as if nothing happened, and the stop must still end (it hung for ever before)."""
    sink = RecordingSink()
    runner = InstanceRunner(make_instance(td.STUBBORN, name="mb", swallow=1, **HOLD), "gw-t", sink, NodeTracker())
    runner.start()
    await sink.wait_for(1, point="n")  # inside its poll now, waiting on its "device"
    async with asyncio.timeout(30):  # a hang guard, not a timing assertion
        assert await runner.stop() is True
    assert runner.stats.state == "stopped"
    assert [r.value for r in sink.points("n")] == [1], "no further poll after the stop"


async def test_stop_gives_up_on_a_driver_that_never_stops(td, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                         caplog: pytest.LogCaptureFixture) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    sink = RecordingSink()
    nodes = NodeTracker()
    inst = make_instance(td.STUBBORN, name="stuck", hold_file=str(hold), **HOLD)
    runner = InstanceRunner(inst, "gw-t", sink, nodes, stop_waits=(0.2, 0.2))
    runner.start()
    await sink.wait_for(1, point="n")
    async with asyncio.timeout(30):
        assert await runner.stop() is False
    left = [t for t in asyncio.all_tasks() if t.get_name() == "driver:stuck"]
    assert len(left) == 1 and not left[0].done(), "it really would not stop"
    assert runner.stats.state == "stopped" and runner.stats.last_error == "would not stop"
    said = [r for r in caplog.records if "would not stop" in r.getMessage()]
    assert len(said) == 1, "logged once"
    assert said[0].name == "sensegate.driver.stubborn.stuck"
    assert "cancelled 2 times" in said[0].getMessage() and "sgtestdrivers" in said[0].getMessage(), \
        "the log says where it is stuck"
    # left behind: its node reports no longer count
    runner._ctx.node_status("rtu-9", False, "late")
    assert "rtu-9" not in nodes.state
    # released, it ends on its own (the cancellation it swallowed is honoured); nothing more arrived
    hold.unlink()
    async with asyncio.timeout(30):
        await asyncio.wait(left)
    assert [r.value for r in sink.points("n")] == [1]


async def test_a_driver_left_behind_cannot_emit_into_the_pipeline(td, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    sink = RecordingSink()
    inst = make_instance(td.STUBBORN, name="chatty", hold_file=str(hold), chatter=True, **HOLD)
    runner = InstanceRunner(inst, "gw-t", sink, NodeTracker(), stop_waits=(0.2, 0.2))
    runner.start()
    await sink.wait_for(2, point="held")
    async with asyncio.timeout(30):
        assert await runner.stop() is False
    before = len(sink.points("held"))
    left = [t for t in asyncio.all_tasks() if t.get_name() == "driver:chatty"]
    async with asyncio.timeout(30):  # its next emit is refused with a cancellation it does not catch
        await asyncio.wait(left)
    assert left[0].cancelled()
    assert len(sink.points("held")) == before, "no reading got through after it was left behind"
    assert any("refused a reading emitted after the instance was stopped" in r.getMessage() for r in caplog.records)
    hold.unlink()


def test_backoff_doubles_up_to_its_maximum_with_jitter_and_resets() -> None:
    b = Backoff(0.5, 10.0)
    for n in range(1, 200):
        wait = b.next()
        floor = min(0.5 * 2 ** (n - 1), 10.0)
        assert floor <= wait <= floor + 0.5, (n, wait)
    waits = {round(Backoff(1.0, 60.0).next(), 6) for _ in range(50)}
    assert len(waits) > 40, "jittered: gateways cut off together come back apart"
    b.reset()
    assert 0.5 <= b.next() <= 1.0


async def test_a_slow_driver_import_does_not_stall_the_loop(td) -> None:  # type: ignore[no-untyped-def]
    """A driver whose libraries take seconds to import is imported off the loop: the others poll meanwhile."""
    import sys

    td.IMPORT_GATE.clear()
    sys.modules.pop("sgtestdrivers.slowimport", None)
    try:
        async with running((td.SLOWIMPORT, {"name": "slow", **FAST}), (td.TICK, {"name": "tick", **FAST})) as (
            sink,
            (slow, _tick),
        ):
            await sink.wait_for(5, point="n")  # the neighbour ran while the import waited
            assert slow.stats.readings == 0
            td.IMPORT_GATE.set()
            async with asyncio.timeout(10):
                while not any(r.instance == "slow" for r in sink.points("n")):
                    await sink.wait_for(len(sink.readings) + 1)
            assert slow.stats.state != "failed", slow.stats.last_error
    finally:
        td.IMPORT_GATE.set()
        sys.modules.pop("sgtestdrivers.slowimport", None)
