"""The health summary is published, retained, on the gateway's MQTT status topic."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from gateway.clock import kernel_clock
from gateway.daemon import Daemon
from gateway.keys import init_key
from gateway.mqtt import MqttSession, MqttSettings
from hil.mosquitto import Mosquitto


async def test_health_summary_on_the_status_topic(tmp_path: Path, broker: Mosquitto) -> None:
    init_key(tmp_path / "s" / "keys")
    conf = tmp_path / "gw.yaml"
    conf.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-health", "state_dir": str(tmp_path / "s")},
        "uplinks": [{"type": "mqtt", "url": broker.url}],
        "metrics": {"status_interval": 0.3},
        "drivers": [{"driver": "sim", "name": "w", "interval": "100ms", "points": [{"name": "t", "unit": "Cel"}]}],
    }))
    healths: list[dict[str, object]] = []
    got = asyncio.Event()

    def on(msg):  # type: ignore[no-untyped-def]
        body = json.loads(msg.payload)
        if "health" in body:
            healths.append(body)
            got.set()

    s = MqttSession(MqttSettings.from_url(broker.url), on_message=on)
    await s.connect()
    s.client.subscribe("sensegate/gw-health/status", qos=1)
    d = Daemon(conf)
    task = asyncio.create_task(d.run())
    try:
        async with asyncio.timeout(10):
            while not healths or not healths[-1]["health"]["drivers"]["w"]["readings"]:  # type: ignore[index]
                got.clear()
                await got.wait()
    finally:
        d.request_stop()
        await task
        await s.close()
    body = healths[-1]
    assert body["state"] == "online" and body["gateway"] == "gw-health"
    h = body["health"]
    assert h["drivers"]["w"]["state"] == "running"  # type: ignore[index]
    assert "buffer" in json.dumps(h)
    clock = h["clock"]  # type: ignore[index]
    assert clock["synchronised"] is kernel_clock().synchronised and clock["steps"] == 0  # type: ignore[index]
