"""Store-and-forward over a real mosquitto: exact delivery, outages, TLS, bad credentials."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.driver_api import Reading
from gateway.pipeline import BufferedPipeline
from gateway.scheduler import NodeTracker
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver, make_config, pipeline, until
from tests.gateway.test_batches import READINGS
from tests.gateway.tlsutil import make_pki


async def test_every_reading_arrives_exactly_as_produced(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = make_config(tmp_path / "s", broker.url)
    rx = MqttReceiver(broker.url, tmp_path / "s/keys/device.pub.pem")
    async with rx.running():
        await asyncio.sleep(0.3)
        async with pipeline(cfg) as p:
            for r in READINGS:
                p.put(r)
            got = await rx.wait_readings(len(READINGS))
    assert [(r.node, r.point, r.ts_ns, r.unit) for r in got] == [(r.node, r.point, r.ts_ns, r.unit) for r in READINGS]
    assert got[0].value == 21.5 and got[5].value == b"\x00\xff\x10"
    s = rx.rx.summary()
    assert s.ok and s.gaps == 0 and s.bad_signatures == 0


async def _produce(p: BufferedPipeline, n: int, every: float) -> None:
    for i in range(n):
        p.put(Reading("gw-test", "n", 1_795_000_000_000_000_000 + i, i))
        await asyncio.sleep(every)


async def test_broker_outage_loses_nothing_and_keeps_order(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = make_config(tmp_path / "s", broker.url, batch={"max_readings": 50})
    rx = MqttReceiver(broker.url, tmp_path / "s/keys/device.pub.pem")
    async with rx.running():
        await asyncio.sleep(0.3)
        async with pipeline(cfg) as p:
            producer = asyncio.create_task(_produce(p, 600, 0.005))
            await rx.wait_readings(50)
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(1.5)
            assert not p.uplink.connected
            await asyncio.to_thread(broker.start)
            await producer
            got = await rx.wait_readings(600, within=30)
    assert [r.value for r in got] == list(range(600)), "nothing lost, order kept"
    assert [r.seq for r in got] == list(range(1, 601))
    s = rx.rx.summary()
    assert s.gaps == 0 and s.chain_breaks == 0 and s.bad_signatures == 0


async def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    tls = {"cafile": pki["ca"], "certfile": pki["server_cert"], "keyfile": pki["server_key"],
           "require_certificate": "true"}
    with Mosquitto(tmp_path / "m", tls=tls) as m:
        cfg = make_config(tmp_path / "s", uplinks=[{
            "type": "mqtt", "url": m.url, "reconnect_max": 1,
            "tls": {"ca_file": pki["ca"], "cert_file": pki["client_cert"], "key_file": pki["client_key"]}}])
        rx = MqttReceiver(m.url, tmp_path / "s/keys/device.pub.pem")
        rx.settings = rx.settings.__class__(**{**rx.settings.__dict__, "ca_file": pki["ca"],
                                              "cert_file": pki["client_cert"], "key_file": pki["client_key"]})
        async with rx.running(), pipeline(cfg) as p:
            p.put(READINGS[0])
            got = await rx.wait_readings(1)
    assert got[0].value == 21.5


async def test_untrusted_broker_certificate_is_a_clear_error_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="otherca")
    tls = {"cafile": pki["ca"], "certfile": pki["server_cert"], "keyfile": pki["server_key"]}
    with Mosquitto(tmp_path / "m", tls=tls) as m:
        cfg = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": m.url, "reconnect_max": 1,
                                                    "tls": {"ca_file": other["ca"]}}])
        async with pipeline(cfg) as p:
            p.put(READINGS[0])
            await until(lambda: p.uplink.errors >= 2)  # type: ignore[attr-defined]
            assert not p.uplink.connected
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("certificate" in m and "not trusted" in m for m in msgs), msgs
    assert sum("not trusted" in m for m in msgs) == 1, "an outage is logged once, not per retry"


async def test_insecure_transport_is_warned_once_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """tls.insecure and plain mqtt:// to another machine each get one warning per start, not per reconnect."""
    pki = make_pki(tmp_path / "pki")
    tls = {"cafile": pki["ca"], "certfile": pki["server_cert"], "keyfile": pki["server_key"]}
    with Mosquitto(tmp_path / "m", tls=tls) as m:
        cfg = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": m.url, "reconnect_max": 1,
                                                    "tls": {"ca_file": pki["ca"], "insecure": True}}])
        async with pipeline(cfg) as p:
            await until(lambda: p.uplink.connected)
            await asyncio.to_thread(m.restart, 0.5)
            await until(lambda: p.uplink.errors >= 1 and p.uplink.connected, within=20)  # type: ignore[attr-defined]
    cfg = make_config(tmp_path / "s2", uplinks=[{"type": "mqtt", "url": "mqtt://no-such-host.invalid:1883",
                                                 "reconnect_max": 1}])
    async with pipeline(cfg) as p:
        await until(lambda: p.uplink.errors >= 2)  # type: ignore[attr-defined]
    async with pipeline(make_config(tmp_path / "s3", uplinks=[{"type": "mqtt", "url": m.url.replace(
            "mqtts", "mqtt"), "reconnect_max": 1}])):
        pass  # plain to this machine (a local broker or bridge): nothing to warn about
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("tls.insecure is set for 127.0.0.1" in x for x in msgs) == 1, msgs
    assert sum("plain mqtt:// to no-such-host.invalid:1883, which is not this machine" in x for x in msgs) == 1, msgs
    assert not any("plain mqtt:// to 127.0.0.1" in x for x in msgs), msgs


async def test_wrong_password_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Mosquitto(tmp_path / "m", passwords={"gw": "right"}) as m:
        cfg = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": m.url, "reconnect_max": 1,
                                                    "username": "gw", "password": "wrong"}])
        async with pipeline(cfg) as p:
            await until(lambda: p.uplink.errors >= 2)  # type: ignore[attr-defined]
        msgs = [r.getMessage() for r in caplog.records]
        assert any("refused" in m for m in msgs), msgs
        cfg2 = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": m.url, "reconnect_max": 1,
                                                     "username": "gw", "password": "right"}])
        async with pipeline(cfg2) as p:
            await until(lambda: p.uplink.connected)


async def test_mqtt_311_and_retained_status_and_node_states(tmp_path: Path, broker: Mosquitto) -> None:
    import json

    from gateway.mqtt import MqttSession, MqttSettings

    cfg = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": broker.url, "protocol": "3.1.1"}])
    nodes = NodeTracker()
    p = BufferedPipeline(cfg, nodes)
    await p.start()
    try:
        await until(lambda: p.uplink.connected)
        nodes.set("rtu-1", True)
        nodes.set("rtu-2", False, "timeout")
        p.put(READINGS[0])
        await until(lambda: p.store.stats.acked_batches >= 1)
    finally:
        await p.close()
    seen: dict[str, dict[str, object]] = {}
    got = asyncio.Event()

    def on(msg):  # type: ignore[no-untyped-def]
        seen[msg.topic] = json.loads(msg.payload)
        if len(seen) >= 3:
            got.set()

    s = MqttSession(MqttSettings.from_url(broker.url, protocol="3.1.1"), on_message=on)
    await s.connect()
    s.client.subscribe("sensegate/gw-test/#", qos=1)
    try:
        async with asyncio.timeout(5):
            await got.wait()
    finally:
        await s.close()
    assert seen["sensegate/gw-test/status"]["state"] == "offline", "a clean stop leaves a retained offline"
    assert seen["sensegate/gw-test/nodes/rtu-1/status"]["state"] == "online"
    rtu2 = seen["sensegate/gw-test/nodes/rtu-2/status"]
    assert (rtu2["state"], rtu2["reason"]) == ("offline", "timeout")


async def test_last_will_marks_a_vanished_gateway_offline(tmp_path: Path, broker: Mosquitto) -> None:
    import json
    import signal
    import sys

    import yaml

    from gateway.mqtt import MqttSession, MqttSettings

    make_config(tmp_path / "s")
    conf = tmp_path / "gw.yaml"
    conf.write_text(yaml.safe_dump({"gateway": {"id": "gw-will", "state_dir": str(tmp_path / "s")},
                                    "uplinks": [{"type": "mqtt", "url": broker.url, "keepalive": 5}]}))
    states: list[str] = []
    changed = asyncio.Event()

    def on(msg):  # type: ignore[no-untyped-def]
        states.append(json.loads(msg.payload)["state"])
        changed.set()

    s = MqttSession(MqttSettings.from_url(broker.url), on_message=on)
    await s.connect()
    s.client.subscribe("sensegate/gw-will/status", qos=1)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(conf),
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(10):
            while "online" not in states:
                changed.clear()
                await changed.wait()
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        async with asyncio.timeout(20):  # the broker notices the dead socket and publishes the will
            while states[-1] != "offline":
                changed.clear()
                await changed.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await s.close()
    assert states[-1] == "offline"


@pytest.mark.parametrize("min_interval", [0.0, 0.4])
async def test_min_interval_spaces_the_batches_of_a_trickle(tmp_path: Path, broker: Mosquitto,
                                                           min_interval: float) -> None:
    """An idle uplink takes a batch at once, but not more often than batch.min_interval (one
    fsync each): a 2 s trickle of 200 readings makes at most 2/0.4 + 2 batches at 0.4 s, many
    more at 0."""
    cfg = make_config(tmp_path / "s", broker.url, batch={"min_interval": min_interval})
    rx = MqttReceiver(broker.url, tmp_path / "s/keys/device.pub.pem")
    async with rx.running():
        await asyncio.sleep(0.3)
        async with pipeline(cfg) as p:
            await _produce(p, 200, 0.01)
            got = await rx.wait_readings(200)
    assert [r.value for r in got] == list(range(200))
    s = rx.rx.summary()
    assert s.ok and s.gaps == 0
    if min_interval:
        assert s.batches <= 2.0 / min_interval + 2 + 1, f"{s.batches} batches in a 2 s trickle"
    else:
        assert s.batches > 12, f"only {s.batches} batches: an idle uplink should take them at once"



async def test_a_missing_ca_file_is_named_with_its_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ssl says only "No such file or directory"; the uplink says which file, and how to install it."""
    pki = make_pki(tmp_path / "pki")
    tls = {"cafile": pki["ca"], "certfile": pki["server_cert"], "keyfile": pki["server_key"]}
    missing = tmp_path / "etc" / "broker-ca.pem"
    with Mosquitto(tmp_path / "m", tls=tls) as m:
        cfg = make_config(tmp_path / "s", uplinks=[{"type": "mqtt", "url": m.url, "reconnect_max": 1,
                                                    "tls": {"ca_file": str(missing)}}])
        async with pipeline(cfg) as p:
            p.put(READINGS[0])
            await until(lambda: p.uplink.errors >= 1)  # type: ignore[attr-defined]
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    said = [msg for msg in msgs if str(missing) in msg]
    assert said and f"the broker's CA file {missing} does not exist" in said[0], msgs
    assert "sudo sensegate provision --ca BROKER-CA.pem" in said[0]
    assert not any("MQTT port" in msg or "cannot connect to" in msg for msg in msgs), msgs


@pytest.mark.parametrize("graceful", [True, False])
async def test_a_closed_session_leaves_no_registration_on_the_loop(broker: Mosquitto, graceful: bool) -> None:
    """Closing a session removes its socket from the loop before the socket is closed. Removed
    after, the closed socket's number (-1) found nothing, the registrations stayed under the old
    number, and the next session's socket, given that number, had the dead session's writer: its
    paho raised in on_socket_unregister_write and the new session never learnt it had closed."""
    from gateway.mqtt import MqttSession, MqttSettings

    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    first = MqttSession(MqttSettings.from_url(broker.url))
    await first.connect()
    fd = first.client.socket().fileno()
    assert fd in selector.get_map()
    await first.close(graceful=graceful)
    assert fd not in selector.get_map(), "the closed session's socket is still registered on the loop"
    second = MqttSession(MqttSettings.from_url(broker.url))
    await second.connect()
    try:
        assert second.client.socket().fileno() == fd  # the number came back (lowest free)
        assert selector.get_map()[fd].data[1] is None or selector.get_map()[fd].data[1]._callback.__self__ is second
        assert await second.subscribe_each(["x/y"], qos=1)  # it still works
    finally:
        await second.close()



async def _retained(url: str, topic: str) -> bytes:
    """The message the broker retains on ``topic``, as a new subscriber gets it."""
    from gateway.mqtt import MqttSession, MqttSettings

    got: list[bytes] = []
    reader = MqttSession(MqttSettings.from_url(url), on_message=lambda m: got.append(bytes(m.payload)))
    await reader.connect()
    try:
        assert await reader.subscribe_each([topic], qos=1)
        await until(lambda: bool(got))
    finally:
        await reader.close()
    return got[-1]


async def test_a_clean_close_right_after_publishing_is_not_taken_for_a_lost_connection(broker: Mosquitto) -> None:
    """The last publishes go out just before the DISCONNECT (the farewell heartbeat); the broker
    still answers them with PUBACKs. A socket closed at once is reset by the kernel when those
    arrive, and mosquitto, failing to write a PUBACK, drops the client before it reads the
    DISCONNECT already received ("disconnected due to out of memory") and publishes the last
    will over the final status. The close keeps reading until the broker has closed."""
    from gateway.mqtt import MqttSession, MqttSettings

    topic, will = "t/gw-close/status", b"offline (last will)"
    for attempt in range(3):
        session = MqttSession(MqttSettings.from_url(broker.url, client_id="gw-close"), will=(topic, will))
        await session.connect()
        last = b""
        for i in range(20):  # paho's in-flight window: PUBACKs still coming when the DISCONNECT is written
            last = b"%d:%d:" % (attempt, i) + b"x" * 2000
            session.client.publish(topic, last, qos=1, retain=True)
        await session.close()
        got = await _retained(broker.url, topic)
        assert got == last, f"attempt {attempt}: the retained status is {got[:24]!r}, not the last published"
