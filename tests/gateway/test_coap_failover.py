"""MQTT and CoAP in one config: failover (broker down -> CoAP carries -> broker back -> MQTT
resumes) and fan-out ('all': a CoAP outage holds batches until CoAP has them too)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hil.mosquitto import Mosquitto
from tests.gateway.coaputil import CoapReceiver, coap_url
from tests.gateway.helpers import MqttReceiver, make_config, until
from tests.gateway.test_multi_uplink import _produce, running


def _uplinks(mqtt_url: str, coap: str) -> list[dict[str, object]]:
    return [{"type": "mqtt", "name": "mqtt", "url": mqtt_url, "reconnect_max": 1},
            {"type": "coap", "name": "coap", "url": coap, "reconnect_max": 1, "timeout": 3}]


def _seqs(*rxs: object) -> list[int]:
    return sorted({r.seq for rx in rxs for r in rx.readings})  # type: ignore[attr-defined]


async def test_mqtt_down_coap_carries_mqtt_back(tmp_path: Path, broker: Mosquitto) -> None:
    url = coap_url()
    cfg = make_config(tmp_path / "s", uplinks=_uplinks(broker.url, url), uplink_mode="failover",
                      batch={"max_readings": 20})
    pub = tmp_path / "s/keys/device.pub.pem"
    mq, co = MqttReceiver(broker.url, pub, "rx-mqtt"), CoapReceiver(url, pub)
    async with mq.running(), co.running():
        await asyncio.sleep(0.3)
        async with running(cfg) as p:
            await until(lambda: all(u.connected for u in p.uplinks))
            await _produce(p, 0, 100)
            await mq.wait_readings(100)
            assert co.readings == [], "CoAP carries nothing while MQTT is up"
            await asyncio.to_thread(broker.stop)
            await until(lambda: not p.uplinks[0].connected)
            await _produce(p, 100, 100)
            await co.wait_readings(1)
            await until(lambda: len(_seqs(mq, co)) >= 200, within=20)
            await asyncio.to_thread(broker.start)
            await until(lambda: p.uplinks[0].connected, within=20)
            coap_before = len(co.readings)
            await _produce(p, 200, 100)
            await until(lambda: len(_seqs(mq, co)) >= 300, within=20)
    assert _seqs(mq, co) == list(range(1, 301)), "no gap across the switch to CoAP and back"
    assert max(r.seq for r in mq.readings) == 300, "new batches return to MQTT"
    assert len(co.readings) == coap_before, "CoAP carries nothing once MQTT is back"
    assert any(101 <= r.seq <= 200 for r in co.readings), "CoAP carried data during the outage"
    for rx in (mq, co):  # every reading once per uplink that delivered it
        s = rx.rx.summary()
        assert s.bad_signatures == 0 and s.duplicate_readings == 0 and s.malformed == 0
        assert len({r.seq for r in rx.readings}) == len(rx.readings)


async def test_all_mode_holds_batches_through_a_coap_outage(tmp_path: Path, broker: Mosquitto) -> None:
    url = coap_url()
    cfg = make_config(tmp_path / "s", uplinks=_uplinks(broker.url, url), uplink_mode="all",
                      batch={"max_readings": 20})
    pub = tmp_path / "s/keys/device.pub.pem"
    mq, co = MqttReceiver(broker.url, pub, "rx-mqtt"), CoapReceiver(url, pub)
    async with mq.running():
        await co.start()
        try:
            await asyncio.sleep(0.3)
            async with running(cfg) as p:
                await until(lambda: all(u.connected for u in p.uplinks))
                await _produce(p, 0, 60)
                await co.wait_readings(60)
                await co.stop()
                await _produce(p, 60, 60)
                await mq.wait_readings(120)
                await until(lambda: not p.uplinks[1].connected)
                assert p.store.stats.readings >= 60, "kept until CoAP has them too"
                await co.start()
                await co.wait_readings(120, within=30)
                await until(lambda: p.store.stats.readings == 0, within=20)
        finally:
            await co.stop()
    assert _seqs(mq) == _seqs(co) == list(range(1, 121))
    assert mq.rx.summary().duplicate_readings == 0 and co.rx.summary().ok
