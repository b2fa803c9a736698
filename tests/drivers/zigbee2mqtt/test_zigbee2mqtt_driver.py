"""The zigbee2mqtt driver end to end: the real scheduler, a real mosquitto, and the simulated
bridge (hil/devices/zigbee2mqtt_bridge.py) publishing Zigbee2MQTT's documented payloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.zigbee2mqtt import MANIFEST
from gateway.driver_api import ConfigError, Path, Quality
from gateway.testing import DriverHarness, run_driver
from hil.devices.zigbee2mqtt_bridge import SimulatedZigbee2Mqtt
from hil.mosquitto import Mosquitto

WITHIN = 15.0
PLUG, BULB, CLIMATE = "zb-00158d00018255df", "zb-90fd9ffffe6494fc", "zb-00158d0001d8e1d2"


async def until(cond: Callable[[], Any], within: float = WITHIN) -> Any:
    async with asyncio.timeout(within):
        while not (result := cond()):  # noqa: ASYNC110 (state kept by callbacks)
            await asyncio.sleep(0.02)
    return result


def latest(h: DriverHarness, node: str) -> dict[str, Any]:
    return {r.point: r.value for r in h.sink.points(node=node)}


@contextlib.asynccontextmanager
async def bridge(broker: Mosquitto, legacy: bool = True) -> AsyncIterator[SimulatedZigbee2Mqtt]:
    z = SimulatedZigbee2Mqtt(broker.url, legacy_availability=legacy)
    await z.start()
    try:
        yield z
    finally:
        await z.stop()


def opts(broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {"name": "zigbee", "broker": {"url": broker.url}, **extra}


async def ready(h: DriverHarness, z: SimulatedZigbee2Mqtt) -> None:
    """Subscribed, and bridge/devices read: a report from the plug arrives."""
    await until(lambda: h.runner.stats.state == "running")
    while not h.sink.points(node=PLUG):
        z.report("my_plug")
        with contextlib.suppress(TimeoutError):
            await h.sink.wait_for(1, node=PLUG, within=0.5)


@pytest.mark.parametrize("legacy", [True, False])
async def test_states_become_node_readings_and_availability_node_status(broker: Mosquitto, legacy: bool) -> None:
    async with bridge(broker, legacy) as z, run_driver(MANIFEST, **opts(broker)) as h:
        await ready(h, z)
        z.report("garden/climate", temperature=27.34, humidity=44.72)  # a friendly name with a /
        z.report("my_bulb")
        await h.sink.wait_for(1, node=CLIMATE, point="temperature", within=WITHIN)
        await h.sink.wait_for(1, node=BULB, point="brightness", within=WITHIN)
        climate = {r.point: (r.value, r.unit) for r in h.sink.points(node=CLIMATE)}
        assert climate == {
            "temperature": (27.34, "Cel"),
            "humidity": (44.72, "%RH"),
            "pressure": (101320.0, "Pa"),
            "battery": (91, "%EL"),
            "linkquality": (42, None),
        }
        assert latest(h, BULB) == {
            "state": "ON",
            "brightness": 215,
            "color_temp": 325,
            "color.x": 0.4573,
            "color.y": 0.41,
            "linkquality": 90,
        }
        assert latest(h, PLUG)["energy"] == 1230.0  # kWh -> Wh
        assert all(r.path == Path.IP3 for r in h.sink.readings)
        assert h.nodes.state[CLIMATE] is True
        z.availability("garden/climate", False)
        await until(lambda: h.nodes.state[CLIMATE] is False)
        assert h.nodes.reason[CLIMATE] == "Zigbee2MQTT reports it offline"
        z.availability("garden/climate", True)
        await until(lambda: h.nodes.state[CLIMATE] is True)
        assert "zb-00124b00120144ae" not in h.nodes.state  # the coordinator is not a node


async def test_bridge_offline_leave_and_removal(broker: Mosquitto) -> None:
    async with bridge(broker) as z, run_driver(MANIFEST, **opts(broker)) as h:
        await ready(h, z)
        z.report("my_bulb")
        await until(lambda: h.nodes.state.get(BULB) is True)
        z.leave("my_bulb")
        await until(lambda: h.nodes.state[BULB] is False)
        assert h.nodes.reason[BULB] == "left the Zigbee network"
        await z.stop()  # Zigbee2MQTT stopping publishes bridge/state offline
        await until(lambda: h.nodes.state[PLUG] is False)
        assert h.nodes.reason[PLUG] == "the Zigbee2MQTT bridge is offline"
        await z.start()


async def test_retained_states_are_marked_uncertain(broker: Mosquitto) -> None:
    async with bridge(broker) as z:
        z.publish("garden/climate", z.states["garden/climate"], retain=True)  # an old retained state
        async with run_driver(MANIFEST, **opts(broker)) as h:
            await h.sink.wait_for(1, node=CLIMATE, point="temperature", within=WITHIN)
            assert {r.quality for r in h.sink.points(node=CLIMATE)} == {Quality.UNCERTAIN}
            z.report("garden/climate", temperature=20.5)
            await until(lambda: any(r.value == 20.5 for r in h.sink.points("temperature", CLIMATE)))
            assert h.sink.points("temperature", CLIMATE)[-1].quality == Quality.GOOD


async def test_set_commands_are_bounded_by_config_and_exposes(broker: Mosquitto) -> None:
    options = opts(broker, writable=[f"{BULB}/*", f"{PLUG}/state"], node_names={"my_sensor": "hall-motion"})
    async with bridge(broker) as z, run_driver(MANIFEST, **options) as h:
        await ready(h, z)
        await h.runner.write(f"{BULB}/brightness", 100)
        await h.runner.write(f"{PLUG}/state", False)
        await until(lambda: len(z.commands) == 2)
        assert z.commands == [("my_bulb", {"brightness": 100}), ("my_plug", {"state": "OFF"})]
        # Zigbee2MQTT applies it and publishes the new state, which comes back as a reading
        await until(lambda: any(r.value == 100 for r in h.sink.points("brightness", BULB)))
        for point, value, words in [
            (f"{BULB}/brightness", 300, "outside"),
            (f"{BULB}/linkquality", 5, "not settable"),
            (f"{PLUG}/power", 5, "not writable"),
            (f"{CLIMATE}/temperature", 5, "not writable"),
            ("zb-nobody/state", "ON", "no Zigbee device"),
        ]:
            with pytest.raises(ConfigError, match=words):
                await h.runner.write(point, value)
        assert len(z.commands) == 2


async def test_allow_list_node_names_and_hostile_messages(broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    options = opts(
        broker, devices=["my_*", "garden/*"], node_names={"my_sensor": "hall-motion"}, exclude=["linkquality"]
    )
    async with bridge(broker) as z, run_driver(MANIFEST, **options) as h:
        await ready(h, z)
        z.report("my_sensor")
        for junk in (b"not json", b"[1,2]", b"{" * 5000):
            z.publish("my_bulb", junk)
            z.publish("my_bulb", junk)
        z.publish("stranger", {"temperature": 1})
        z.publish("bridge/devices", b"garbage")
        z.report("garden/climate")
        await h.sink.wait_for(1, node=CLIMATE, point="temperature", within=WITHIN)
        await h.sink.wait_for(1, node="hall-motion", point="occupancy", within=WITHIN)
        assert "linkquality" not in latest(h, CLIMATE)
        events = h.runner.stats.extra
        assert events["bad_messages"] == 7 and events["unknown_device"] == 1
        lines = [r.getMessage() for r in caplog.records if "my_bulb" in r.getMessage()]
        assert len(lines) == 1, lines  # once per device and problem
        assert h.runner.stats.state == "running" and h.runner.stats.errors == 0


async def test_broker_restart_is_survived(broker: Mosquitto) -> None:
    async with bridge(broker) as z, run_driver(MANIFEST, **opts(broker)) as h:
        await ready(h, z)
        await z.stop()
        broker.stop()
        await until(lambda: h.runner.stats.state == "unavailable")
        broker.start()
        await z.start()
        await until(lambda: h.runner.stats.state == "running")
        z.report("my_plug", power=99.5)
        await until(lambda: any(r.value == 99.5 for r in h.sink.points("power", PLUG)))
