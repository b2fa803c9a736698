"""The bacnet driver through the real scheduler against real bacpypes3 BACnet/IP devices on
loopback (hil/devices/bacnet_device.py): Who-Is discovery, ReadPropertyMultiple, COV, writes
with priority, devices that go away, and hostile datagrams."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers.bacnet import MANIFEST
from drivers.bacnet.driver import BacnetDriver
from gateway.driver_api import ConfigError, Path, Quality
from gateway.testing import DriverHarness, run_driver, wait_until
from hil.devices.bacnet_device import BacnetNetwork
from hil.devices.snmp_agent import free_udp_port

POINTS: list[dict[str, Any]] = [
    {"name": "supply_temp", "object": "analog-input:1", "unit": "Cel"},
    {
        "name": "setpoint",
        "object": "analog-value:2",
        "unit": "Cel",
        "writable": True,
        "priority": 8,
        "min": 14,
        "max": 26,
    },
    {"name": "fan", "object": "binary-output:3", "writable": True, "priority": 8},
    {"name": "mode", "object": "multi-state-value:4", "writable": True},
    {
        "name": "setpoint_f",
        "object": "analog-value:2",
        "property": "present-value",
        "scale": 1.8,
        "offset": 32,
        "precision": 1,
        "unit": "degF",
    },
    {"name": "absent", "object": "analog-input:99"},
]


@asynccontextmanager
async def network(*instances: int) -> AsyncIterator[BacnetNetwork]:
    net = BacnetNetwork(list(instances or (1001,)))
    await net.start(free_udp_port())
    try:
        yield net
    finally:
        await net.stop()


@asynccontextmanager
async def gateway(net: BacnetNetwork, devices: list[dict[str, Any]], **options: Any) -> AsyncIterator[DriverHarness]:
    options = {
        "interval": 0.1,
        "jitter": 0,
        "timeout": 3,
        "apdu_timeout": 0.3,
        "retries": 0,
        "name": "plant",
        "address": "127.0.0.1/8",
        "port": free_udp_port(),
        "broadcast": net.broadcast,
        "devices": devices,
        **options,
    }
    async with run_driver(MANIFEST, **options) as h:
        await until(lambda: h.runner._driver is not None)
        yield h


def ahu(instance: int = 1001, points: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"id": f"ahu-{instance}", "instance": instance, "points": points or POINTS, **kw}


until = functools.partial(wait_until, within=15.0)  # generous: real stacks on a shared CI machine


def latest(h: DriverHarness, point: str, node: str | None = None) -> Any:
    got = h.sink.points(point, node)
    return got[-1].value if got else None


def driver_of(h: DriverHarness) -> BacnetDriver:
    d = h.runner._driver
    assert isinstance(d, BacnetDriver)
    return d


async def test_who_is_finds_devices_and_rpm_reads_every_type() -> None:
    async with network(1001, 1002) as net, gateway(net, [ahu(1001), ahu(1002, POINTS[:1])]) as h:
        await until(lambda: all(h.sink.points(p, "ahu-1001") for p in ("supply_temp", "fan", "mode", "setpoint_f")))
        expect = {
            "supply_temp": (21.5, "Cel"),
            "setpoint": (20.0, "Cel"),
            "fan": (False, None),
            "mode": (2, None),
            "setpoint_f": (68.0, "degF"),
        }
        for point, (value, unit) in expect.items():
            r = h.sink.points(point, "ahu-1001")[0]
            assert (r.value, type(r.value), r.unit, r.path, r.quality) == (
                value,
                type(value),
                unit,
                Path.IP3,
                Quality.GOOD,
            )
        await until(lambda: latest(h, "supply_temp", "ahu-1002") == 21.5)
        assert not h.sink.points("absent") and driver_of(h).bad_values >= 1  # unknown-object: counted, not emitted
        assert h.nodes.state == {"ahu-1001": True, "ahu-1002": True}
        assert driver_of(h).devices["ahu-1002"].address == "127.0.0.3:" + str(net.port)
        assert h.runner.stats.errors == 0


async def test_values_and_fault_flag_follow_the_device() -> None:
    async with network() as net, gateway(net, [ahu(points=POINTS[:1])]) as h:
        await until(lambda: latest(h, "supply_temp") == 21.5)
        net.devices[0].set("supply_temp", 25.25)
        await until(lambda: latest(h, "supply_temp") == 25.25)
        net.devices[0].set_fault("supply_temp")
        await until(lambda: h.sink.points("supply_temp")[-1].quality is Quality.BAD)


async def test_cov_subscription_delivers_changes_with_arrival_time() -> None:
    points = [{"name": "supply_temp", "object": "analog-input:1", "unit": "Cel", "cov": True}]
    async with network() as net, gateway(net, [ahu(points=points)], interval=0.2) as h:
        d = driver_of(h)
        await until(
            lambda: ("analog-input", 1) in d.devices["ahu-1001"].subscribed and latest(h, "supply_temp") == 21.5
        )
        polls = h.runner.stats.polls
        for v in (22.0, 22.5, 23.0):
            net.devices[0].set("supply_temp", v)
            await asyncio.sleep(0.05)
        await until(lambda: [r.value for r in h.sink.points("supply_temp")][-3:] == [22.0, 22.5, 23.0])
        # every change arrived, each once, even if several came between two polls; none was polled
        assert [r.value for r in h.sink.points("supply_temp")].count(22.5) == 1
        assert h.runner.stats.polls > polls


async def test_cov_refused_falls_back_to_polling(caplog: pytest.LogCaptureFixture) -> None:
    points = [{"name": "mode", "object": "multi-state-value:4", "cov": True}]  # bacpypes3 refuses COV here
    caplog.set_level(logging.INFO, logger="sensegate.driver.bacnet")
    async with network() as net, gateway(net, [ahu(points=points)]) as h:
        d = driver_of(h).devices["ahu-1001"]
        await until(lambda: bool(d.no_cov) and len(h.sink.points("mode")) >= 3)
        assert d.no_cov == {("multi-state-value", 4)} and not d.subscribed
        assert [r.value for r in h.sink.points("mode")][:3] == [2, 2, 2]  # polled instead, every interval
        assert sum("refused COV on multi-state-value:4" in r.getMessage() for r in caplog.records) == 1
        assert net.devices[0].get("mode") == 2


async def test_writes_with_priority_and_relinquish() -> None:
    async with network() as net, gateway(net, [ahu()]) as h:
        await until(lambda: h.nodes.state.get("ahu-1001") is True)
        dev = net.devices[0]
        await h.runner.write("ahu-1001/setpoint", 23.5)
        assert dev.get("setpoint") == 23.5
        assert dev.get("setpoint", "priorityArray")[7].real == 23.5  # slot 8 (manual operator)
        await h.runner.write("ahu-1001/fan", True)
        assert str(dev.get("fan")) == "active"
        await h.runner.write("ahu-1001/mode", 3)
        assert dev.get("mode") == 3
        await h.runner.write("ahu-1001/setpoint", "relinquish")
        assert dev.get("setpoint") == 20.0  # back to the relinquish default
        for point, value, why in [
            ("ahu-1001/setpoint", 30, "above max"),
            ("ahu-1001/fan", 1, "true or false"),
            ("ahu-1001/supply_temp", 1.0, "not writable"),
            ("ahu-1001/nothing", 1.0, "no point"),
            ("ahu-9/fan", True, "unknown device"),
        ]:
            with pytest.raises(ConfigError, match=why):
                await h.runner.write(point, value)
        assert dev.get("setpoint") == 20.0 and str(dev.get("fan")) == "active"


async def test_silent_device_offline_others_keep_going_and_unavailable_when_all_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sensegate.driver.bacnet")
    async with network(1001, 1002) as net, gateway(net, [ahu(1001, POINTS[:1]), ahu(1002, POINTS[:1])]) as h:
        await until(lambda: h.nodes.state == {"ahu-1001": True, "ahu-1002": True})
        await net.devices[1].stop()
        await until(lambda: h.nodes.state["ahu-1002"] is False)
        mark = len(h.sink.points("supply_temp", "ahu-1001"))
        await until(lambda: len(h.sink.points("supply_temp", "ahu-1001")) > mark + 2)
        assert h.runner.stats.state == "running"
        await net.devices[0].stop()
        await until(lambda: h.runner.stats.state == "unavailable" and h.runner.stats.restarts >= 1)
        assert "no BACnet device answered" in h.runner.stats.last_error
        for dev in net.devices:
            await dev.start(net.port)
        await until(lambda: h.runner.stats.state == "running" and h.nodes.state == {"ahu-1001": True, "ahu-1002": True})
    lines = [r.getMessage() for r in caplog.records if r.name == "sensegate.driver.bacnet.plant"]
    assert sum("unavailable" in m for m in lines) == 1, lines


async def test_fixed_address_needs_no_discovery_and_unknown_devices_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sensegate.driver.bacnet")
    async with network(1001, 1077) as net:
        dev = ahu(1001, POINTS[:1], address=net.devices[0].address)
        async with gateway(net, [dev], broadcast=f"127.255.255.255:{net.port}") as h:
            await until(lambda: latest(h, "supply_temp") == 21.5)
            driver_of(h)._client.who_is(net.broadcast)  # type: ignore[union-attr]  # a technician's discovery
            await until(
                lambda: any("1077" in r.getMessage() and "not configured" in r.getMessage() for r in caplog.records)
            )


async def test_two_instances_side_by_side() -> None:
    async with (
        network() as net,
        gateway(net, [ahu(points=POINTS[:1])], name="a") as h1,
        gateway(net, [ahu(points=POINTS[:1])], name="b", device_instance=4194301) as h2,
    ):
        net.devices[0].set("supply_temp", 19.0)
        await until(lambda: latest(h1, "supply_temp") == 19.0 and latest(h2, "supply_temp") == 19.0)


async def test_hostile_datagrams_do_not_stop_it() -> None:
    rnd = random.Random(47808)
    hostile = [
        b"",
        b"\x81",
        b"\x81\x0a\x00\x04",
        b"\x81\x0a\xff\xff" + b"\x01" * 20,
        b"\x81\x0b\x00\x0c\x01\x20\xff\xff\x00\xff\x10\x00",  # global broadcast NPDU, truncated I-Am
        b"\x81\x0a\x00\x0a\x01\x00\x10\x00\xc4\x02",  # I-Am cut inside the object identifier
        b"\x81\x0a\x00\x11\x01\x00\x10\x02\x0f\x1c\x00\x00\x00\x01",  # COV notification, truncated
        bytes(rnd.randrange(256) for _ in range(1400)),
    ]
    hostile += [b"\x81\x0a" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 300))) for _ in range(150)]
    async with network() as net, gateway(net, [ahu(points=POINTS[:1])]) as h:
        await until(lambda: latest(h, "supply_temp") == 21.5)
        port = driver_of(h).config.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in hostile:
                s.sendto(d, ("127.0.0.1", port))
        net.devices[0].set("supply_temp", 30.0)
        await until(lambda: latest(h, "supply_temp") == 30.0)
        assert h.runner.stats.state == "running" and h.nodes.state["ahu-1001"] is True
