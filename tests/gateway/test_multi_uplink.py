"""Several uplinks: failover and fan-out over two real brokers; blobs (camera images) end to end."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from gateway.driver_api import Reading
from gateway.pipeline import BufferedPipeline
from gateway.scheduler import InstanceRunner, NodeTracker
from gateway.store import Store
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver, batcher_for, make_config, until
from tests.gateway.helpers import pipeline as running

T0 = 1_795_000_000_000_000_000


def _two(url_a: str, url_b: str) -> list[dict[str, object]]:
    return [{"type": "mqtt", "name": "primary", "url": url_a, "reconnect_max": 1},
            {"type": "mqtt", "name": "backup", "url": url_b, "reconnect_max": 1}]


async def _produce(p: BufferedPipeline, start: int, n: int) -> None:
    for i in range(start, start + n):
        p.put(Reading("gw-test", "n", T0 + i, i))
        await asyncio.sleep(0.004)


async def test_failover_to_the_backup_and_back(tmp_path: Path, broker: Mosquitto) -> None:
    with Mosquitto(tmp_path / "b2") as backup:
        cfg = make_config(tmp_path / "s", uplinks=_two(broker.url, backup.url), batch={"max_readings": 20})
        pub = tmp_path / "s/keys/device.pub.pem"
        ra, rb = MqttReceiver(broker.url, pub, "rx-a"), MqttReceiver(backup.url, pub, "rx-b")
        async with ra.running(), rb.running():
            await asyncio.sleep(0.3)
            async with running(cfg) as p:
                await until(lambda: all(u.connected for u in p.uplinks))
                await _produce(p, 0, 100)
                await ra.wait_readings(100)
                assert rb.readings == [], "the backup carries nothing while the primary is up"
                await asyncio.to_thread(broker.stop)
                await _produce(p, 100, 100)
                await rb.wait_readings(1)
                await asyncio.to_thread(broker.start)
                await until(lambda: p.uplinks[0].connected)
                await _produce(p, 200, 100)
                await until(lambda: len({r.seq for r in ra.readings + rb.readings}) >= 300, within=20)
        seqs = sorted({r.seq for r in ra.readings + rb.readings})
        assert seqs == list(range(1, 301)), "no gap across the switch-over and back"
        assert max(r.seq for r in ra.readings) == 300, "new batches return to the primary"
        assert rb.readings, "the backup carried data during the outage"
        for rx in (ra, rb):
            s = rx.rx.summary()
            assert s.bad_signatures == 0 and s.duplicate_readings == 0


async def test_all_mode_every_uplink_gets_everything(tmp_path: Path, broker: Mosquitto) -> None:
    with Mosquitto(tmp_path / "b2") as second:
        cfg = make_config(tmp_path / "s", uplinks=_two(broker.url, second.url), uplink_mode="all",
                          batch={"max_readings": 20})
        pub = tmp_path / "s/keys/device.pub.pem"
        ra, rb = MqttReceiver(broker.url, pub, "rx-a"), MqttReceiver(second.url, pub, "rx-b")
        async with ra.running(), rb.running():
            await asyncio.sleep(0.3)
            async with running(cfg) as p:
                await until(lambda: all(u.connected for u in p.uplinks))
                await _produce(p, 0, 60)
                await asyncio.to_thread(second.stop)
                await _produce(p, 60, 60)
                await ra.wait_readings(120)  # the healthy uplink is not held up
                await asyncio.to_thread(second.start)
                await rb.wait_readings(120)
                await until(lambda: p.store.stats.readings == 0)  # released only when both acked
        for rx in (ra, rb):
            assert sorted(r.seq for r in rx.readings) == list(range(1, 121))
            assert rx.rx.summary().gaps == 0


async def test_all_mode_acks_survive_a_restart(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "s", uplinks=_two("mqtt://127.0.0.1:1", "mqtt://127.0.0.1:2"), uplink_mode="all")
    c = cfg.config
    batcher = batcher_for(cfg)
    buf = Store(tmp_path / "s/buffer.db", c.gateway.id, c.buffer, c.batch)
    await buf.open()
    buf.put(Reading("gw-test", "n", T0, 1))
    await buf.commit()
    batch = await buf.make_batch(batcher)
    assert batch is not None
    both = frozenset({"primary", "backup"})
    assert await buf.ack(batch, "primary", both) is False
    await buf.close()
    buf = Store(tmp_path / "s/buffer.db", c.gateway.id, c.buffer, c.batch)
    await buf.open()
    assert await buf.outbox() == [(1, {"primary"})], "only the backup still needs it"
    assert await buf.ack(batch, "backup", both) is True
    assert await buf.outbox() == []
    await buf.dead_letter(batch, "backup", "4.00 Bad Request")
    assert await buf.dead_letters() == [(1, "backup", "4.00 Bad Request")]
    await buf.close()


async def test_camera_image_arrives_with_a_verified_hash(tmp_path: Path, broker: Mosquitto) -> None:
    from drivers.camera import MANIFEST
    from gateway.testing import make_instance
    from hil.devices.camera_http import CameraServer

    cam = CameraServer()
    await cam.start()
    cfg = make_config(tmp_path / "s", broker.url)
    rx = MqttReceiver(broker.url, tmp_path / "s/keys/device.pub.pem", blobs=True)
    try:
        async with rx.running():
            await asyncio.sleep(0.3)
            async with running(cfg) as p:
                inst = make_instance(MANIFEST, name="gate_cam", source="http", url=cam.url(), interval=3600)
                runner = InstanceRunner(inst, "gw-test", p, NodeTracker())
                runner.start()
                try:
                    await rx.wait_readings(1)
                    await until(lambda: "verified" in rx.blob_states.values(), within=15)
                finally:
                    await runner.stop()
                await until(lambda: p.store.stats.readings == 0)
    finally:
        await cam.stop()
    image = cam.served[0]
    sha = hashlib.sha256(image).hexdigest()
    assert rx.blob_states == {sha: "verified"}
    assert rx.rx.blobs[sha][1] == image
    s = rx.rx.summary()
    assert (s.blobs_verified, s.blobs_bad) == (1, 0), "the signed reading names the uploaded image"
