"""Rig scenario for the capillary networks (issue 23): the real daemon with the ChirpStack,
Zigbee2MQTT and push simulators next to every other device; what their networks report reaches
the uplink's node status topic, hostile pushes are refused, and nothing is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest

from gateway.mqtt import MqttSettings, subscribe_forever
from hil.devices.push_device import post_raw
from hil.report import RigReport, ScenarioResult
from hil.rig import RigRun, RigSpec
from tests.rig.helpers import finish, note_skipped, wait_delivering

pytestmark = pytest.mark.slow

NEEDED = ("lorawan", "zigbee", "push")


async def test_capillary_network_events(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                        tmp_path: Any) -> None:
    """Capillary networks: frame-counter gap, Zigbee device offline, hostile pushes."""
    names = [d.name for d in rig_spec.devices if d.name in NEEDED or d.driver == "sim"]
    if not all(n in names for n in NEEDED) or rig_spec.broker != "local":
        pytest.skip("the rig has no simulated ChirpStack, Zigbee2MQTT and push devices")
    async with RigRun(rig_spec, tmp_path, devices=names) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        if any(n not in rig.devices for n in NEEDED):
            pytest.skip(f"left out here: {rig.skipped}")
        statuses: dict[str, dict[str, Any]] = {}
        changed = asyncio.Event()

        def on_status(msg: Any) -> None:
            with contextlib.suppress(ValueError):
                statuses[str(msg.topic).split("/")[-2]] = json.loads(msg.payload)
                changed.set()

        assert rig.broker is not None
        watch = asyncio.create_task(subscribe_forever(
            MqttSettings.from_url(rig.broker.url, client_id="rig-node-watch"),
            [f"sensegate/{rig_spec.gateway_id}/nodes/+/status"], on_status))
        try:
            daemon = await rig.start_daemon()
            await wait_delivering(rig, list(NEEDED), n=3)

            async def status_of(node: str, want: Any) -> dict[str, Any]:
                async with asyncio.timeout(30):
                    while not (node in statuses and want(statuses[node])):
                        changed.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.5):
                                await changed.wait()
                return statuses[node]

            # six uplinks of the parking sensor never reach the network server
            chirpstack = rig.devices["lorawan"].dev  # type: ignore[attr-defined]
            chirpstack.uplink("0101010101010101", bytes.fromhex("03670110"), skip=6)
            got = await status_of("parking-7", lambda s: "gap" in s["reason"])
            assert got["state"] == "online" and "6 uplink(s) lost" in got["reason"]
            # Zigbee2MQTT says the climate sensor stopped answering
            bridge = rig.devices["zigbee"].dev  # type: ignore[attr-defined]
            bridge.availability("garden/climate", False)
            got = await status_of("garden-climate", lambda s: s["state"] == "offline")
            assert got["reason"] == "Zigbee2MQTT reports it offline"
            bridge.availability("garden/climate", True)
            await status_of("garden-climate", lambda s: s["state"] == "online")
            # hostile pushes: clear refusals, and the daemon and the box go on
            port = rig.devices["push"].env["port"]
            for request, status in [
                (b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n[]", 415),
                (b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: application/senml+json\r\n"
                 b"Content-Length: 99999999\r\n\r\n", 413),
                (b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: application/senml+json\r\nContent-Length: 14"
                 b"\r\n\r\n[{\"n\":\"x\"}]   ", 400),
                (b"\x00\x01garbage\r\n\r\n", 400),
            ]:
                assert (await post_raw("127.0.0.1", port, request)).status == status
            result.note("frame-counter gap and Zigbee availability reached the node status topic; "
                        "hostile pushes got 415, 413, 400, 400")
            await wait_delivering(rig, list(NEEDED), n=6)
            assert daemon.alive
            await finish(rig, result)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
