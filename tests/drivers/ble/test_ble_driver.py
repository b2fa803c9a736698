"""The ble driver end to end: the real scheduler, the real bleak BlueZ backend, and
python-dbusmock's BlueZ on a private D-Bus (hil/devices/ble_bluez.py) publishing the formats'
published test vectors as advertisements."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.ble import MANIFEST
from drivers.sim import MANIFEST as SIM_MANIFEST
from gateway import metrics
from gateway.driver_api import Path
from gateway.testing import DriverHarness, run_driver
from hil.devices.ble_bluez import SimulatedBlueZ

RUUVI = "C4:7C:8D:6A:00:01"
BTHOME = "A4:C1:38:00:00:02"
OTHER = "11:22:33:44:55:66"
RUUVI_VALID = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
RUUVI_MAX = bytes.fromhex("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F")
BTHOME_EXAMPLE = bytes.fromhex("4002C40903BF13")  # bthome.io/format: 25.00 Cel, 50.55 %RH
BTHOME_OTHER = bytes.fromhex("4002CA0903BF13")  # 25.06 Cel
WITHIN = 15.0  # generous upper bound for anything to happen; never a timing assertion


@contextlib.asynccontextmanager
async def simulated_bluez(
    monkeypatch: pytest.MonkeyPatch, adapter: str | None = "hci0"
) -> AsyncIterator[SimulatedBlueZ]:
    """A private bus with the mock bluetoothd; bleak (and the driver) pointed at it."""
    sim = SimulatedBlueZ()
    await sim.start()
    try:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", sim.address)
        if adapter:
            await sim.add_adapter(adapter)
        yield sim
    finally:
        await sim.stop()
        # bleak keeps one BlueZ connection per event loop; with the bus gone its watcher ends.
        await until(lambda: not [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()])


async def until(cond: Callable[[], Any], within: float = WITHIN) -> Any:
    """Poll ``cond`` until it is truthy (and return it); fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not (result := cond()):  # noqa: ASYNC110 (state kept by others, no event to wait on)
            await asyncio.sleep(0.02)
    return result


def values(h: DriverHarness, node: str) -> dict[str, tuple[Any, str | None]]:
    """Latest value and unit per point of one node."""
    return {r.point: (r.value, r.unit) for r in h.sink.points(node=node)}


async def test_ruuvi_and_bthome_adverts_become_ip3_node_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(RUUVI, "Ruuvi 0001")
        await sim.add_device(BTHOME, "DIY-sensor")
        async with run_driver(MANIFEST, name="ble", node_names={RUUVI: "greenhouse-1"}) as h:
            await until(lambda: h.runner.stats.state == "running")
            await sim.advertise(RUUVI, rssi=-61, manufacturer_data={0x0499: RUUVI_VALID})
            await sim.advertise(BTHOME, rssi=-75, service_data={0xFCD2: BTHOME_EXAMPLE})
            await h.sink.wait_for(1, node="ble-a4c138000002", point="rssi", within=WITHIN)
            await h.sink.wait_for(1, node="greenhouse-1", point="rssi", within=WITHIN)
            assert values(h, "greenhouse-1") == {
                "temperature": (24.3, "Cel"),
                "humidity": (53.49, "%RH"),
                "pressure": (100044, "Pa"),
                "acceleration_x": (0.03923, "m/s2"),
                "acceleration_y": (-0.03923, "m/s2"),
                "acceleration_z": (10.15969, "m/s2"),
                "battery_voltage": (2.977, "V"),
                "tx_power": (4, "dBm"),
                "movement_counter": (66, "count"),
                "measurement_sequence": (205, None),
                "rssi": (-61, "dBm"),
            }
            assert values(h, "ble-a4c138000002") == {
                "temperature": (25.0, "Cel"),
                "humidity": (50.55, "%RH"),
                "rssi": (-75, "dBm"),
            }
            assert all(r.path == Path.IP3 and r.instance == "ble" for r in h.sink.readings)
            assert h.nodes.state == {"greenhouse-1": True, "ble-a4c138000002": True}
            # auto mode used passive scanning: a BlueZ advertisement monitor, no discovery
            assert h.runner._driver.mode == "passive"  # type: ignore[union-attr]
            assert await sim.method_calls("/org/bluez/hci0", "RegisterMonitor")
            assert not await sim.method_calls("/org/bluez/hci0", "StartDiscovery")


async def test_allow_list_and_deduplication(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(RUUVI, "Ruuvi 0001")
        await sim.add_device(BTHOME, "DIY-sensor")
        await sim.add_device(OTHER, "stranger")
        async with run_driver(
            MANIFEST, name="ble", addresses=["C4:7C:8D:*"], names=["diy-*"], dedup_window="1h", scan_mode="active"
        ) as h:
            await until(lambda: h.runner.stats.state == "running")
            ruuvi_node, bthome_node = "ble-c47c8d6a0001", "ble-a4c138000002"
            # the stranger advertises a perfectly good Ruuvi frame but is not on the allow-list
            await sim.advertise(OTHER, manufacturer_data={0x0499: RUUVI_VALID})
            await sim.advertise(RUUVI, rssi=-60, manufacturer_data={0x0499: RUUVI_VALID})
            # repeated adverts (RSSI changes only) within the window are dropped ...
            await sim.advertise(RUUVI, rssi=-65, manufacturer_data={0x0499: RUUVI_VALID})
            await sim.advertise(RUUVI, rssi=-66, manufacturer_data={0x0499: RUUVI_VALID})
            # ... a new payload is not; D-Bus keeps one sender's signals in order, so once the
            # BTHome reading is here every earlier advertisement has been handled
            await sim.advertise(RUUVI, rssi=-67, manufacturer_data={0x0499: RUUVI_MAX})
            await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})
            await h.sink.wait_for(1, node=bthome_node, point="temperature", within=WITHIN)
            assert [r.value for r in h.sink.points("temperature", ruuvi_node)] == [24.3, 163.835]
            assert [r.value for r in h.sink.points("rssi", ruuvi_node)] == [-60, -67]
            assert {r.node for r in h.sink.readings} == {ruuvi_node, bthome_node}
            assert h.runner.stats.extra["duplicates"] == 2
            # active mode: discovery with an LE filter instead of a monitor
            assert await sim.method_calls("/org/bluez/hci0", "StartDiscovery")
            assert await sim.method_calls("/org/bluez/hci0", "SetDiscoveryFilter")


async def test_node_goes_offline_when_silent_and_back_when_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(BTHOME, "DIY-sensor")
        async with run_driver(MANIFEST, name="ble", offline_after=0.3, dedup_window=0) as h:
            await until(lambda: h.runner.stats.state == "running")
            node = "ble-a4c138000002"
            await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})
            await until(lambda: h.nodes.state.get(node) is True)
            await until(lambda: h.nodes.state.get(node) is False)
            assert h.nodes.reason[node].startswith("no advertisement for")
            await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_OTHER})
            await until(lambda: h.nodes.state.get(node) is True)
            assert h.runner.stats.state == "running"


async def test_hostile_and_encrypted_adverts_are_counted_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(RUUVI, "Ruuvi 0001")
        await sim.add_device(BTHOME, "DIY-sensor")
        async with run_driver(MANIFEST, name="ble", addresses=[RUUVI, BTHOME]) as h:
            await until(lambda: h.runner.stats.state == "running")
            await sim.advertise(RUUVI, manufacturer_data={0x0499: RUUVI_VALID[:10]})  # truncated
            await sim.advertise(BTHOME, service_data={0xFCD2: bytes.fromhex("41A4720C")})  # encrypted flag
            await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})
            await h.sink.wait_for(1, node="ble-a4c138000002", point="temperature", within=WITHIN)
            events = h.runner.stats.extra
            assert events["decode_errors"] >= 1 and events["unsupported"] >= 1
            assert h.runner.stats.state == "running" and h.runner.stats.errors == 0


async def test_unreadable_adverts_are_counted_in_metrics_and_logged_once_per_device(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16 defect 6: an advert with the MAC flag decodes; one the decoder cannot read
    (in part or at all) is counted where ops see it and logged once per device."""
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(BTHOME, "DIY-sensor")
        await sim.add_device(RUUVI, "DIY-other")
        async with run_driver(MANIFEST, name="ble", names=["DIY-*"], dedup_window=0) as h:
            await until(lambda: h.runner.stats.state == "running")
            node = "ble-a4c138000002"
            # bthome-ble's test vector: device info 0x42 (v2, MAC included), the MAC, 1008.83 hPa
            await sim.advertise(BTHOME, service_data={0xFCD2: bytes.fromhex("42b2188d38c1a404138a01")})
            await h.sink.wait_for(1, node=node, point="pressure", within=WITHIN)
            assert values(h, node)["pressure"] == (100883, "Pa")
            # battery, then an object id this version does not know: battery kept, the rest reported
            for _ in range(3):
                await sim.advertise(BTHOME, service_data={0xFCD2: bytes.fromhex("40015dfe5d0903b718")})
                await sim.advertise(RUUVI, service_data={0xFCD2: bytes.fromhex("40feca09")})
            await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})  # D-Bus keeps order
            await h.sink.wait_for(1, node=node, point="temperature", within=WITHIN)
            assert [r.value for r in h.sink.points("battery", node)] == [93, 93, 93]
            assert h.runner.stats.extra["partly_decoded"] == 6
            summary = metrics.summary(SimpleNamespace(cfg=None, nodes=h.nodes, pipeline=None, remote=None,
                                                   config_path="gw.yaml",
                                                   supervisor=SimpleNamespace(runners={"ble": h.runner})))
            assert summary["drivers"]["ble"]["events"]["partly_decoded"] == 6
            text = metrics.render(summary)
            assert 'sensegate_driver_events_total{instance="ble",driver="ble",event="partly_decoded"} 6' in text
            warned = [r.getMessage() for r in caplog.records if "unknown object id" in r.getMessage()]
            assert len(warned) == 2, warned  # once per device, not once per advert
            assert any(m.startswith(BTHOME) and "0xFE at byte 3" in m for m in warned)
            assert any(m.startswith(RUUVI) and "0xFE at byte 1" in m for m in warned)


async def test_adapter_missing_then_plugged_in(monkeypatch: pytest.MonkeyPatch) -> None:
    async with (
        simulated_bluez(monkeypatch, adapter=None) as sim,
        run_driver(MANIFEST, name="ble") as h,
        run_driver(SIM_MANIFEST, name="other", interval=0.05, points=[{"name": "x", "value": 1}]) as other,
    ):
        await until(lambda: h.runner.stats.restarts >= 2)
        assert h.runner.stats.state == "unavailable"
        assert "Bluetooth adapter hci0 not found" in h.runner.stats.last_error
        # the other driver is not held up
        await other.sink.wait_for(3, within=WITHIN)
        assert other.runner.stats.state == "running"
        await sim.add_adapter("hci0")
        await sim.add_device(RUUVI, "Ruuvi 0001")
        await until(lambda: h.runner.stats.state == "running")
        await sim.advertise(RUUVI, manufacturer_data={0x0499: RUUVI_VALID})
        await h.sink.wait_for(1, point="temperature", within=WITHIN)


async def test_adapter_removed_mid_scan_recovers_when_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        await sim.add_device(RUUVI, "Ruuvi 0001")
        async with run_driver(MANIFEST, name="ble") as h:
            await until(lambda: h.runner.stats.state == "running")
            await sim.advertise(RUUVI, manufacturer_data={0x0499: RUUVI_VALID})
            await h.sink.wait_for(1, point="temperature", within=WITHIN)
            await sim.remove_adapter("hci0")
            await until(lambda: h.runner.stats.state == "unavailable")
            assert "Bluetooth adapter hci0 was removed" in h.runner.stats.last_error
            await until(lambda: h.nodes.state["ble-c47c8d6a0001"] is False)  # closing marks nodes offline
            assert "hci0 was removed" in h.nodes.reason["ble-c47c8d6a0001"]
            await until(lambda: "not found" in h.runner.stats.last_error)  # retried, still missing
            await sim.add_adapter("hci0")
            await sim.add_device(RUUVI, "Ruuvi 0001")
            await until(lambda: h.runner.stats.state == "running")
            await sim.advertise(RUUVI, manufacturer_data={0x0499: RUUVI_MAX})
            await until(lambda: any(r.value == 163.835 for r in h.sink.points("temperature")))
            assert h.nodes.state["ble-c47c8d6a0001"] is True


async def test_adapter_powered_off_then_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim, run_driver(MANIFEST, name="ble") as h:
        await sim.add_device(BTHOME, "DIY-sensor")
        await until(lambda: h.runner.stats.state == "running")
        await sim.set_powered(False)
        await until(lambda: "Bluetooth adapter hci0 is powered off" in h.runner.stats.last_error)
        assert h.runner.stats.state == "unavailable"
        await sim.set_powered(True)
        await until(lambda: h.runner.stats.state == "running")
        await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})
        await h.sink.wait_for(1, point="humidity", within=WITHIN)


async def test_bluetoothd_restart_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim, run_driver(MANIFEST, name="ble") as h:
        await until(lambda: h.runner.stats.state == "running")
        await sim.stop_bluez()
        await until(lambda: h.runner.stats.state == "unavailable")
        assert "BlueZ (bluetoothd)" in h.runner.stats.last_error and "hci0" in h.runner.stats.last_error
        await sim.start_bluez()
        await sim.add_adapter("hci0")
        await sim.add_device(BTHOME, "DIY-sensor")
        await until(lambda: h.runner.stats.state == "running")
        await sim.advertise(BTHOME, service_data={0xFCD2: BTHOME_EXAMPLE})
        await h.sink.wait_for(1, point="humidity", within=WITHIN)


async def test_gatt_poll_reads_a_characteristic_through_bleak(monkeypatch: pytest.MonkeyPatch) -> None:
    async with simulated_bluez(monkeypatch) as sim:
        addr = "E0:00:00:00:00:07"
        await sim.add_device(addr, "thermo")
        # Environmental Sensing service, Temperature characteristic: sint16 in 0.01 degC
        char = await sim.add_characteristic(addr, 0x181A, 0x2A6E, (2506).to_bytes(2, "little", signed=True))
        gatt = [
            {
                "address": addr,
                "characteristic": "2a6e",
                "point": "temperature",
                "format": "<h",
                "scale": 0.01,
                "unit": "Cel",
                "interval": 1,
            }
        ]
        async with run_driver(MANIFEST, name="ble", gatt=gatt, formats=["ruuvi"]) as h:
            await until(lambda: h.runner.stats.state == "running")
            # a GATT-only sensor: it advertises nothing the driver decodes, but once seen the
            # driver can reach it; its status follows the reads
            await sim.advertise(addr, rssi=-50, service_data={0xFCD2: BTHOME_EXAMPLE})
            first = await h.sink.wait_for(1, point="temperature", within=WITHIN)
            assert (first[0].node, first[0].value, first[0].unit) == ("ble-e00000000007", 25.06, "Cel")
            assert h.nodes.state == {"ble-e00000000007": True}
            await sim.set_characteristic(char, (-1234).to_bytes(2, "little", signed=True))
            await until(lambda: any(r.value == -12.34 for r in h.sink.points("temperature")))
            assert [r.point for r in h.sink.readings] == ["temperature"] * len(h.sink.readings)  # no advert readings
            # each read connects and disconnects again
            assert len(await sim.method_calls(f"/org/bluez/hci0/dev_{addr.replace(':', '_')}", "Disconnect")) >= 2
            await sim.set_connectable(addr, False)  # out of range
            await until(lambda: h.nodes.state["ble-e00000000007"] is False)
            assert h.nodes.reason["ble-e00000000007"].startswith("GATT read of temperature (2a6e) failed: ")
            assert h.runner.stats.state == "running"  # a failed read is the node's problem, not the scan's
            await sim.set_connectable(addr, True)
            await until(lambda: h.nodes.state["ble-e00000000007"] is True)
            await sim.set_characteristic(char, (0).to_bytes(2, "little"))
            await until(lambda: any(r.value == 0 for r in h.sink.points("temperature")))
