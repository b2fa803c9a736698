"""The health summary is published, retained, on the gateway's MQTT status topic, signed with
the device key: the heartbeat, whose ``issued`` says how far the buffer has numbered; a clean
stop's last one says offline, with the final numbers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import yaml

from gateway import signedjson
from gateway.clock import kernel_clock
from gateway.daemon import Daemon
from gateway.heartbeat import KIND, Issued
from gateway.keys import init_key, load_public_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.receiver.trust import KeyBindings
from hil.mosquitto import Mosquitto


async def test_health_summary_on_the_status_topic(tmp_path: Path, broker: Mosquitto) -> None:
    info = init_key(tmp_path / "s" / "keys")
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
            # a reading counted by its driver, and numbered by the buffer (committed a little later)
            while not healths or not healths[-1]["health"]["drivers"]["w"]["readings"] \
                    or not healths[-1]["health"].get("issued", {}).get("last_seq"):  # type: ignore[attr-defined]
                got.clear()
                await got.wait()
        d.request_stop()
        await task
        async with asyncio.timeout(10):  # the last heartbeat of the clean stop
            while healths[-1]["state"] != "offline":
                got.clear()
                await got.wait()
    finally:
        d.request_stop()
        await task
        await s.close()
    online = [b for b in healths if b["state"] == "online"]
    body = online[-1]
    assert body["gateway"] == "gw-health"
    h = body["health"]
    assert h["drivers"]["w"]["state"] == "running"  # type: ignore[index]
    assert "buffer" in json.dumps(h)
    clock = h["clock"]  # type: ignore[index]
    assert clock["synchronised"] is kernel_clock().synchronised and clock["steps"] == 0  # type: ignore[index]
    trust = KeyBindings({"gw-health": [load_public_key(info.public_path)]})
    for b in (body, healths[-1]):
        checked = signedjson.check(b, trust, "gw-health", KIND)
        assert checked.verified, checked.reason
    forged = {**body, "state": "offline"}
    assert not signedjson.check(forged, trust, "gw-health", KIND).verified
    seen = Issued.from_json(h["issued"])  # type: ignore[index]
    last = Issued.from_json(healths[-1]["health"]["issued"])  # type: ignore[index]
    assert seen.stream == last.stream and 0 < seen.last_seq <= last.last_seq
    assert last.held_from == last.last_seq + 1, last  # a clean stop delivered everything
