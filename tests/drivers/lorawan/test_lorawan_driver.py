"""The lorawan driver end to end: the real scheduler, a real mosquitto, and the simulated
ChirpStack (hil/devices/chirpstack_ns.py) publishing ChirpStack's documented event payloads,
JSON and Protobuf, and taking downlinks on command/down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from drivers.lorawan import MANIFEST
from gateway.driver_api import Location, Path
from gateway.testing import DriverHarness, run_driver
from hil.devices.chirpstack_ns import APPLICATION_ID, SimulatedChirpStack
from hil.mosquitto import Mosquitto

PARKING = "0101010101010101"
LAMP = "0202020202020202"
WITHIN = 15.0


async def until(cond: Callable[[], Any], within: float = WITHIN) -> Any:
    async with asyncio.timeout(within):
        while not (result := cond()):  # noqa: ASYNC110 (state kept by callbacks, no event to wait on)
            await asyncio.sleep(0.02)
    return result


def values(h: DriverHarness, node: str) -> dict[str, Any]:
    return {r.point: r.value for r in h.sink.points(node=node)}


def options(broker: Mosquitto, **extra: Any) -> dict[str, Any]:
    return {
        "name": "lora",
        "broker": {"url": broker.url},
        "devices": [
            {"eui": PARKING, "node": "parking-7", "codec": "cayenne_lpp"},
            {
                "eui": LAMP,
                "node": "lamp-12",
                "downlink": True,
                "fields": {
                    "temperature": {"unit": "Cel"},
                    "battery.voltage": {"point": "battery_voltage", "unit": "V"},
                },
                "commands": {
                    "dim": {"f_port": 10, "field": "level", "min": 0, "max": 100, "confirmed": True},
                    "reboot": {"f_port": 11, "data": "ff"},
                },
            },
        ],
        **extra,
    }


@contextlib.asynccontextmanager
async def network(broker: Mosquitto, encoding: str = "json") -> AsyncIterator[SimulatedChirpStack]:
    ns = SimulatedChirpStack(broker.url, encoding=encoding)
    await ns.start()
    ns.add_device(PARKING, "parking sensor")
    ns.add_device(LAMP, "street lamp")
    try:
        yield ns
    finally:
        await ns.stop()


async def subscribed(h: DriverHarness, ns: SimulatedChirpStack) -> None:
    """Running and subscribed: a probe uplink from an unlisted device arrives."""
    await until(lambda: h.runner.stats.state == "running")
    probe = "0909090909090909"
    ns.add_device(probe, "probe")
    while not h.sink.points(node=f"lora-{probe}"):
        ns.uplink(probe, b"", f_port=0)
        with contextlib.suppress(TimeoutError):
            await h.sink.wait_for(1, node=f"lora-{probe}", within=0.5)


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
async def test_uplinks_become_node_readings_with_radio_metadata(broker: Mosquitto, encoding: str) -> None:
    async with network(broker, encoding) as ns, run_driver(MANIFEST, **options(broker, encoding=encoding)) as h:
        await subscribed(h, ns)
        # Cayenne LPP (myDevices' example: two temperatures) from the parking sensor
        ns.uplink(PARKING, bytes.fromhex("03670110056700FF"), rssi=-97, snr=-3.5)
        # ChirpStack's decoded object from the lamp (its device profile has a codec)
        ns.uplink(LAMP, b"\x01", f_port=2, obj={"temperature": 31.5, "battery": {"voltage": 3.61}, "state": "on"})
        await h.sink.wait_for(1, node="lamp-12", point="frame_counter", within=WITHIN)
        await h.sink.wait_for(1, node="parking-7", point="frame_counter", within=WITHIN)
        assert values(h, "parking-7") == {
            "temperature_3": 27.2,
            "temperature_5": 25.5,
            "rssi": -97,
            "snr": -3.5,
            "frame_counter": 0,
        }
        assert values(h, "lamp-12") == {
            "temperature": 31.5,
            "battery_voltage": 3.61,
            "state": "on",
            "rssi": -36,
            "snr": 10.5,
            "frame_counter": 0,
        }
        units = {(r.node, r.point): r.unit for r in h.sink.readings}
        assert units[("lamp-12", "temperature")] == "Cel" and units[("lamp-12", "battery_voltage")] == "V"
        assert units[("parking-7", "temperature_3")] == "Cel" and units[("parking-7", "rssi")] == "dBm"
        assert all(r.path == Path.IP3 for r in h.sink.readings)
        assert h.nodes.state["parking-7"] is True and h.nodes.state["lamp-12"] is True
        # the reading's time is ChirpStack's reception time, to the nanosecond
        ts = {r.ts_ns for r in h.sink.points(node="parking-7")}
        assert len(ts) == 1


async def test_frame_counter_gap_is_counted_and_reported(broker: Mosquitto) -> None:
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker)) as h:
        await subscribed(h, ns)
        for _ in range(3):
            ns.uplink(PARKING, bytes.fromhex("01670110"))
        ns.uplink(PARKING, bytes.fromhex("01670111"), skip=4)  # 4 uplinks lost on the air: 2 -> 7
        await until(lambda: any(r.value == 27.3 for r in h.sink.points("temperature_1", "parking-7")))
        assert [r.value for r in h.sink.points("frame_counter", "parking-7")] == [0, 1, 2, 7]
        assert h.runner.stats.extra["frames_lost"] == 4
        assert h.nodes.state["parking-7"] is True
        assert h.nodes.reason["parking-7"] == "frame counter gap: 4 uplink(s) lost (2 -> 7)"
        # a rejoin starts counting again: no gap, no reset reported
        ns.join(PARKING)
        await until(lambda: h.nodes.reason["parking-7"].startswith("joined"))
        ns.uplink(PARKING, bytes.fromhex("01670112"))
        await until(lambda: any(r.value == 27.4 for r in h.sink.points("temperature_1", "parking-7")))
        assert h.runner.stats.extra["frames_lost"] == 4 and "frame_counter_resets" not in h.runner.stats.extra
        # a device that restarts its counter without a join (ABP): a reset, reported
        ns.uplink(PARKING, bytes.fromhex("01670113"))  # FCnt 1
        ns.uplink(PARKING, bytes.fromhex("01670114"), f_cnt=0)
        await until(lambda: h.runner.stats.extra.get("frame_counter_resets") == 1)
        assert h.nodes.reason["parking-7"] == "frame counter reset (1 -> 0)"


async def test_join_and_status_events_go_into_node_status(broker: Mosquitto) -> None:
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker)) as h:
        await subscribed(h, ns)
        ns.join(LAMP)
        await until(lambda: h.nodes.state.get("lamp-12") is True)
        assert h.nodes.reason["lamp-12"] == "joined (DevAddr 00189440)"
        ns.status(LAMP, battery=88.3, margin=10)  # ChirpStack's documented status example
        await h.sink.wait_for(1, node="lamp-12", point="margin", within=WITHIN)
        assert values(h, "lamp-12") == {"battery": 88.3, "margin": 10, "external_power": False}
        assert h.nodes.reason["lamp-12"] == "status: battery 88.3 %, link margin 10 dB"
        ns.location(LAMP, 37.344214, -8.839375)
        await h.sink.wait_for(1, node="lamp-12", point="location", within=WITHIN)
        assert values(h, "lamp-12")["location"] == Location(lat=37.344214, lon=-8.839375, alt=2.0)


async def test_node_goes_offline_without_uplinks(broker: Mosquitto) -> None:
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker, offline_after=0.3)) as h:
        await subscribed(h, ns)
        ns.uplink(PARKING, bytes.fromhex("01670110"))
        await until(lambda: h.nodes.state.get("parking-7") is True)
        await until(lambda: h.nodes.state.get("parking-7") is False)
        assert h.nodes.reason["parking-7"].startswith("no uplink for")
        ns.uplink(PARKING, bytes.fromhex("01670110"))
        await until(lambda: h.nodes.state.get("parking-7") is True)


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
async def test_downlinks_are_enqueued_through_command_down(broker: Mosquitto, encoding: str) -> None:
    async with network(broker, encoding) as ns, run_driver(MANIFEST, **options(broker, encoding=encoding)) as h:
        await subscribed(h, ns)
        ns.uplink(LAMP, b"\x01", obj={"temperature": 20})  # the driver learns the lamp's application
        await h.sink.wait_for(1, node="lamp-12", point="temperature", within=WITHIN)
        await h.runner.write("lamp-12/downlink", "0a0b")
        await h.runner.write("lamp-12/dim", 40)
        await h.runner.write("lamp-12/reboot", True)
        await until(lambda: len(ns.downlinks) == 3)
        raw, dim, reboot = ns.downlinks
        assert raw.topic == f"application/{APPLICATION_ID}/device/{LAMP}/command/down"
        assert (raw.data, raw.command["fPort"], raw.command.get("confirmed", False)) == (b"\x0a\x0b", 1, False)
        assert (dim.command["object"], dim.command["fPort"], dim.command["confirmed"]) == ({"level": 40}, 10, True)
        assert (reboot.data, reboot.command["fPort"]) == (b"\xff", 11)
        # ChirpStack's answers: txack per downlink, and the device acknowledged the confirmed one
        await until(lambda: h.runner.stats.extra.get("downlinks_sent") == 3)
        await until(lambda: h.runner.stats.extra.get("downlinks_acknowledged") == 1)
        assert h.runner.stats.extra["downlinks_enqueued"] == 3
        ns.ack_confirmed = False
        await h.runner.write("lamp-12/dim", 0)
        await until(lambda: h.runner.stats.extra.get("downlinks_not_acknowledged") == 1)
        assert "not acknowledged" in h.nodes.reason["lamp-12"]


@pytest.mark.parametrize(
    ("point", "value", "words"),
    [
        ("lamp-12/dim", 101, "outside"),
        ("lamp-12/dim", "high", "number"),
        ("lamp-12/reboot", False, "true"),
        ("lamp-12/unknown", 1, "no command"),
        ("lamp-12/downlink", "xyz", "hex"),
        ("lamp-12/downlink", "00" * 243, "at most 242"),
        ("parking-7/downlink", "00", "not allowed"),
        ("somebody/downlink", "00", "listed in devices"),
    ],
)
async def test_writes_are_bounded_by_config(broker: Mosquitto, point: str, value: Any, words: str) -> None:
    from gateway.driver_api import ConfigError

    async with network(broker) as ns, run_driver(MANIFEST, **options(broker, application=APPLICATION_ID)) as h:
        await subscribed(h, ns)
        with pytest.raises(ConfigError, match=words):
            await h.runner.write(point, value)
        assert ns.downlinks == []


async def test_hostile_events_are_counted_logged_once_and_not_fatal(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker)) as h:
        await subscribed(h, ns)
        for junk in (b"not json", b"[" * 50_000, json.dumps({"fCnt": "many"}).encode(), b"\xff" * 10):
            ns.publish_doc("up", PARKING, junk)
        ns.publish_doc("up", "nothex", b"{}")
        ns.uplink(PARKING, bytes.fromhex("03670110" + "05FF00"))  # LPP with an unknown type after one value
        ns.uplink(PARKING, bytes.fromhex("03670111"))
        await until(lambda: any(r.value == 27.3 for r in h.sink.points("temperature_3", "parking-7")))
        events = h.runner.stats.extra
        assert events["bad_event"] == 4 and events["bad_topic"] == 1 and events["partly_decoded_payloads"] == 1
        assert [r.value for r in h.sink.points("temperature_3", "parking-7")] == [27.2, 27.3]
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("sensegate.driver.lorawan")]
        assert sum("up event not read" in m for m in lines) == 1  # once per device and problem
        assert h.runner.stats.state == "running" and h.runner.stats.errors == 0


async def test_unlisted_devices_can_be_refused(broker: Mosquitto) -> None:
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker, accept_unknown=False)) as h:
        await until(lambda: h.runner.stats.state == "running")
        stranger = "0303030303030303"
        ns.add_device(stranger)
        async with asyncio.timeout(WITHIN):  # until subscribed and both kinds of uplink were handled
            while not (h.sink.points(node="parking-7") and h.runner.stats.extra.get("unlisted_device")):
                ns.uplink(stranger, bytes.fromhex("01670110"))
                ns.uplink(PARKING, bytes.fromhex("01670110"))
                await asyncio.sleep(0.1)
        await until(lambda: h.runner.stats.extra.get("unlisted_device", 0) >= 1)
        assert {r.node for r in h.sink.readings} == {"parking-7"}


async def test_broker_restart_is_survived(broker: Mosquitto) -> None:
    async with network(broker) as ns, run_driver(MANIFEST, **options(broker)) as h:
        await subscribed(h, ns)
        broker.stop()
        await until(lambda: h.runner.stats.state == "unavailable")
        assert "broker" in h.runner.stats.last_error
        await ns.stop()
        broker.start()
        await until(lambda: h.runner.stats.state == "running")
        await ns.start()
        await subscribed(h, ns)
        ns.uplink(PARKING, bytes.fromhex("01670110"))
        await h.sink.wait_for(1, node="parking-7", point="temperature_1", within=WITHIN)


async def test_broker_missing_is_not_ready_naming_it(tmp_path: Any) -> None:
    from gateway.testing import free_port

    port = free_port()
    async with run_driver(MANIFEST, name="lora", broker={"url": f"mqtt://127.0.0.1:{port}"}) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert h.runner.stats.state == "unavailable"
        assert f"127.0.0.1:{port}" in h.runner.stats.last_error


async def test_protobuf_without_chirpstack_api_names_the_extra(
    broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    for name in [m for m in sys.modules if m == "chirpstack_api" or m.startswith("chirpstack_api.")] or [
        "chirpstack_api"
    ]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    async with run_driver(MANIFEST, **options(broker, encoding="protobuf")) as h:
        await until(lambda: h.runner.stats.state == "failed")
        assert "pip install 'sensegate[lorawan]'" in h.runner.stats.last_error
