"""Remote config and commands through a real mosquitto and the real daemon (in this loop).

One gateway takes a good push, then a bad driver section, a config that loses the uplink, a
document signed by an unknown key, an older revision and a truncated document: each ends in
the right retained status while the data keeps flowing, verified and without a gap.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
import yaml

from gateway.daemon import Daemon
from gateway.keys import init_key, load_private_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.remote import topics
from gateway.remote.envelope import encode_command, sign
from gateway.remote.ops import Broker, gateway_status, push_config, send_command
from gateway.testing.procs import peak_rss_mib
from hil.devices.modbus_slave import ModbusSim, Slave
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import TESTDRIVERS, MqttReceiver, install_test_driver, running_daemon
from tests.gateway.helpers import until as poll_until

SIM = {"driver": "sim", "name": "counter", "interval": "20ms", "jitter": 0,
       "points": [{"name": "n", "pattern": "counter"}]}


def gateway_doc(tmp: Path, gw: str, url: str, drivers: list[dict[str, Any]] | None = None,
                **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": gw, "state_dir": str(tmp / gw)},
        "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
        "drivers": drivers if drivers is not None else [dict(SIM)],  # a copy: callers change it
        **extra,
    }


def bootstrap(tmp: Path, gw: str, url: str, ops_pub: Path, remote_groups: list[str] | None = None,
              driver_timeout: str = "5s", **extra: Any) -> Path:
    init_key(tmp / gw / "keys")
    doc = gateway_doc(tmp, gw, url, **extra)
    groups = ["fleet"] if remote_groups is None else remote_groups
    doc["remote"] = {"ops_keys": [str(ops_pub)], "groups": groups, "uplink_timeout": "3s",
                     "driver_timeout": driver_timeout}
    path = tmp / f"{gw}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


daemon = running_daemon


async def until(cond: Any, within: float = 20.0) -> None:
    await poll_until(cond, within)


def ops_key(tmp: Path, name: str = "ops") -> tuple[Any, Path]:
    info = init_key(tmp / "ops", name=name)
    return load_private_key(info.private_path), info.public_path


async def connected(d: Daemon) -> None:
    await until(lambda: d.pipeline is not None and d.pipeline.uplink.connected)  # type: ignore[attr-defined]


async def test_pushes_applied_refused_rolled_back_while_data_keeps_flowing(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    stranger, _ = ops_key(tmp_path, "stranger")
    path = bootstrap(tmp_path, "gw-r1", broker.url, pub)
    b = Broker.from_url(broker.url)
    rx = MqttReceiver(broker.url, tmp_path / "gw-r1/keys/device.pub.pem", gateway="gw-r1")

    async def push(doc: dict[str, Any] | bytes, rev: int, k: Any = key) -> dict[str, Any]:
        """Sign and push a config, or push a document (bytes) exactly as given."""
        raw = doc if isinstance(doc, bytes) else None
        _, answers = await push_config(b, k, yaml.safe_dump(doc).encode() if raw is None else b"", to="gw-r1",
                                       revision=rev, within=30, raw=raw)
        assert not answers.timed_out, "no final status"
        before = len(rx.readings)
        await rx.wait_readings(before + 5)  # data still flows after every push
        return answers.by_gateway["gw-r1"]

    async with rx.running(), daemon(path) as d:
        await connected(d)
        await rx.wait_readings(5)

        # 1. a good push that changes a driver and the batch section (the pipeline restarts)
        good = gateway_doc(tmp_path, "gw-r1", broker.url, [SIM, {**SIM, "name": "second"}],
                           batch={"max_readings": 50})
        st = await push(good, 10)
        assert st["state"] == "applied", st
        assert st["running_revision"] == 10 and st["revision"] == 10 and len(st["config_sha256"]) == 64
        assert "pipeline" in st["reason"]
        assert set(d.supervisor.runners) == {"counter", "second"}  # type: ignore[union-attr]
        applied_hash = st["config_sha256"]

        # 2. a bad driver section: refused before anything is touched
        bad = gateway_doc(tmp_path, "gw-r1", broker.url, [{**SIM, "intervall": "1s"}])
        st = await push(bad, 11)
        assert st["state"] == "rejected" and "unknown key 'intervall'" in st["reason"], st
        assert st["running_revision"] == 10 and st["config_sha256"] == applied_hash

        # 3. a config whose uplink cannot connect: applied, fails the health gate, rolled back
        lost = gateway_doc(tmp_path, "gw-r1", "mqtt://127.0.0.1:1")
        st = await push(lost, 12)
        assert st["state"] == "rolled_back" and "uplink did not connect" in st["reason"], st
        assert st["running_revision"] == 10 and st["config_sha256"] == applied_hash
        assert set(d.supervisor.runners) == {"counter", "second"}  # type: ignore[union-attr]

        # 4. signed by a key this gateway does not trust
        st = await push(good, 13, stranger)
        assert st["state"] == "rejected" and "unknown key" in st["reason"], st

        # 5. an older revision (anti-rollback)
        st = await push(good, 9)
        assert st["state"] == "rejected" and "not newer" in st["reason"] and "anti-rollback" in st["reason"], st

        # 6. a truncated document
        whole = sign(key, "config", "gw-r1", yaml.safe_dump(good).encode(), revision=14)
        st = await push(whole[: len(whole) // 2], 14)
        assert st["state"] == "rejected" and "truncated" in st["reason"], st

        # 7. unsigned YAML
        st = await push(yaml.safe_dump(good).encode(), 15)
        assert st["state"] == "rejected" and "not a signed document" in st["reason"], st

        # 8. a document for another gateway, replayed to this one
        other = sign(key, "config", "gw-other", yaml.safe_dump(good).encode(), revision=16)
        st = await push(other, 16)
        assert st["state"] == "rejected" and "addressed to 'gw-other'" in st["reason"], st

        # the retained status is what `sensegate status` shows
        seen = await gateway_status(b, ["gw-r1"], within=5)
        assert seen["gw-r1"]["online"]["state"] == "online"
        assert seen["gw-r1"]["config"]["running_revision"] == 10

    # a clean stop delivered everything committed: no gap, no break, each reading once
    db = sqlite3.connect(tmp_path / "gw-r1/buffer.db")
    next_seq = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
    db.close()
    async with rx.running():
        await rx.wait_readings(next_seq - 1)
    s = rx.rx.summary()
    assert s.gaps == 0 and s.chain_breaks == 0 and s.bad_signatures == 0 and s.malformed == 0
    assert sorted(r.seq for r in rx.readings) == list(range(1, next_seq)), "nothing lost, nothing twice"

    # the next boot runs the pushed config, kept with its history
    async with daemon(path) as d:
        assert set(d.supervisor.runners) == {"counter", "second"}  # type: ignore[union-attr]
        assert d.remote is not None and d.remote.revision == 10
        # SIGHUP re-reads the local file (the trust anchor) and keeps the pushed config running
        assert await d.reload()
        assert set(d.supervisor.runners) == {"counter", "second"}  # type: ignore[union-attr]
        assert d.remote.revision == 10


async def test_group_push_reaches_every_gateway_of_the_group(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    paths = [bootstrap(tmp_path, "gw-a", broker.url, pub), bootstrap(tmp_path, "gw-b", broker.url, pub),
             bootstrap(tmp_path, "gw-c", broker.url, pub, remote_groups=[])]
    b = Broker.from_url(broker.url)
    async with daemon(paths[0]) as a, daemon(paths[1]) as bb, daemon(paths[2]) as c:
        for d in (a, bb, c):
            await connected(d)
        # one document for the whole group: no identity in it, each gateway keeps its own
        doc = {"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
               "drivers": [SIM, {**SIM, "name": "extra"}]}
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), group="fleet", expect=2, within=30)
        assert {gw: st["state"] for gw, st in answers.by_gateway.items()} == {"gw-a": "applied", "gw-b": "applied"}
        for d, gw in ((a, "gw-a"), (bb, "gw-b")):
            assert set(d.supervisor.runners) == {"counter", "extra"}  # type: ignore[union-attr]
            assert d.cfg is not None and d.cfg.config.gateway.id == gw
            assert d.cfg.config.gateway.state_dir == str(tmp_path / gw)
        assert set(c.supervisor.runners) == {"counter"}, "gw-c is not in the group"  # type: ignore[union-attr]
        # a document naming another gateway's identity is refused
        _, answers = await push_config(b, key, yaml.safe_dump({**doc, "gateway": {"id": "gw-x"}}).encode(),
                                       to="gw-c", within=30)
        st = answers.by_gateway["gw-c"]
        assert st["state"] == "rejected" and "gateway.id cannot be changed remotely" in st["reason"], st


async def test_modbus_write_command_reaches_the_device_and_a_replay_is_refused(
        tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    slave = Slave(1)
    sim = ModbusSim([slave], transport="tcp")
    await sim.start()
    try:
        modbus = {"driver": "modbus", "name": "bus", "transport": "tcp", "host": "127.0.0.1", "port": sim.port,
                  "interval": "200ms", "timeout": "2s", "request_timeout": "500ms",
                  "nodes": [{"id": "meter", "slave": 1, "points": [
                      {"name": "setpoint", "function": "holding", "address": 5, "type": "u16", "scale": 0.1,
                       "writable": True, "min": 0, "max": 100},
                      {"name": "relay", "function": "coils", "address": 0, "writable": True},
                      {"name": "locked", "function": "holding", "address": 6}]}]}
        path = bootstrap(tmp_path, "gw-mb", broker.url, pub, drivers=[modbus])
        b = Broker.from_url(broker.url)
        async with daemon(path) as d:
            await connected(d)
            await until(lambda: d.supervisor.runners["bus"].stats.state == "running")  # type: ignore[union-attr]

            cid, raw, ans = await send_command(b, key, "write", {"instance": "bus", "point": "meter/setpoint",
                                                                 "value": 21.5}, to="gw-mb")
            res = ans.by_gateway["gw-mb"]
            assert res["status"] == "done" and res["result"]["written"] is True, res
            assert slave.holding[5] == 215

            _, _, ans = await send_command(b, key, "write", {"instance": "bus", "point": "meter/relay",
                                                             "value": True}, to="gw-mb")
            assert ans.by_gateway["gw-mb"]["status"] == "done"
            assert slave.coils[0] is True

            # the very same signed bytes again: a replay
            slave.holding[5] = 0
            _, _, ans = await send_command(b, key, "write", {}, to="gw-mb", cmd_id=cid, raw=raw)
            res = ans.by_gateway["gw-mb"]
            assert res["status"] == "refused" and "replayed" in res["reason"], res
            assert slave.holding[5] == 0, "a replay must not reach the device"

            # bounded by the config: above max, and a point not marked writable
            for args, why in (({"point": "meter/setpoint", "value": 500}, "outside [0.0, 100.0]"),
                              ({"point": "meter/locked", "value": 1}, "writable")):
                _, _, ans = await send_command(b, key, "write", {"instance": "bus", **args}, to="gw-mb")
                res = ans.by_gateway["gw-mb"]
                assert res["status"] == "refused" and why in res["reason"], res

            # expired, and signed by nobody we trust
            expired = sign(key, "command", "gw-mb", encode_command("old-1", "ping", {}, time.time() - 5))
            _, _, ans = await send_command(b, key, "ping", {}, to="gw-mb", cmd_id="old-1", raw=expired)
            assert ans.by_gateway["gw-mb"]["status"] == "refused" and "expired" in ans.by_gateway["gw-mb"]["reason"]
            forged = bytearray(sign(key, "command", "gw-mb", encode_command("f-1", "ping", {}, time.time() + 60)))
            forged[-1] ^= 1
            _, _, ans = await send_command(b, key, "ping", {}, to="gw-mb", cmd_id="f-1", raw=bytes(forged))
            assert ans.by_gateway["gw-mb"]["status"] == "refused" and "signature" in ans.by_gateway["gw-mb"]["reason"]

            # ping, re-read, restart, log level
            _, _, ans = await send_command(b, key, "ping", {}, to="gw-mb")
            assert ans.by_gateway["gw-mb"]["result"]["pong"] is True
            polls = d.supervisor.runners["bus"].stats.polls  # type: ignore[union-attr]
            _, _, ans = await send_command(b, key, "poll", {"instance": "bus"}, to="gw-mb")
            assert ans.by_gateway["gw-mb"]["status"] == "done"
            await until(lambda: d.supervisor.runners["bus"].stats.polls > polls)  # type: ignore[union-attr]
            old_runner = d.supervisor.runners["bus"]  # type: ignore[union-attr]
            _, _, ans = await send_command(b, key, "restart", {"instance": "bus"}, to="gw-mb")
            assert ans.by_gateway["gw-mb"]["status"] == "done"
            assert d.supervisor.runners["bus"] is not old_runner  # type: ignore[union-attr]
            _, _, ans = await send_command(b, key, "log_level", {"level": "debug"}, to="gw-mb")
            assert ans.by_gateway["gw-mb"]["result"] == {"log_level": "debug"}
            _, _, ans = await send_command(b, key, "log_level", {"level": "info"}, to="gw-mb")
            _, _, ans = await send_command(b, key, "write", {"instance": "nope", "point": "x", "value": 1},
                                           to="gw-mb")
            assert ans.by_gateway["gw-mb"]["status"] == "refused"
        # the replay protection survives a restart
        async with daemon(path) as d:
            await connected(d)
            _, _, ans = await send_command(b, key, "write", {}, to="gw-mb", cmd_id=cid, raw=raw)
            assert ans.by_gateway["gw-mb"]["status"] == "refused"
            assert slave.holding[5] == 0
    finally:
        await sim.stop()


async def test_a_command_with_a_nan_expiry_is_refused_every_time(tmp_path: Path, broker: Mosquitto) -> None:
    """exp = NaN passed the expiry and TTL checks and was forgotten at once: the same signed
    bytes ran each time they were sent. Now the gateway refuses them, every time."""
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-nan", broker.url, pub)
    b = Broker.from_url(broker.url)
    body = cbor2.dumps({"id": "nan-1", "op": "ping", "args": {}, "exp": float("nan")}, canonical=True)
    raw = sign(key, "command", "gw-nan", body)
    async with daemon(path) as d:
        await connected(d)
        for _ in range(2):
            _, _, ans = await send_command(b, key, "ping", {}, to="gw-nan", cmd_id="nan-1", raw=raw)
            res = ans.by_gateway["gw-nan"]
            assert res["status"] == "refused" and "finite time" in res["reason"], res


async def test_a_huge_message_on_a_downlink_topic_is_never_read(tmp_path: Path, broker: Mosquitto) -> None:
    """100 MB on the gateway's command topic: the uplink tells the broker its Maximum Packet Size
    (MQTT 5), so the daemon never holds it; the next command is answered."""
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-big", broker.url, pub)
    b = Broker.from_url(broker.url)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                stderr=asyncio.subprocess.DEVNULL)
    try:
        await gateway_status(b, ["gw-big"], within=30)  # online
        _, _, ans = await send_command(b, key, "ping", {}, to="gw-big")  # subscribed and answering
        assert ans.by_gateway["gw-big"]["status"] == "done"
        junk = MqttSession(MqttSettings.from_url(broker.url, client_id="junk"))
        await junk.connect()
        try:
            info = junk.client.publish(topics.command_request("sensegate", "gw-big"), b"\0" * (100 << 20), qos=1)
            await until(info.is_published, within=60)
        finally:
            await junk.close()
        _, _, ans = await send_command(b, key, "ping", {}, to="gw-big")
        assert ans.by_gateway["gw-big"]["status"] == "done"
        peak = peak_rss_mib(proc.pid)
        assert peak < 90, f"the daemon peaked at {peak:.0f} MiB"
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_driver_that_does_not_come_up_is_rolled_back(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-d", broker.url, pub, driver_timeout="1500ms")
    b = Broker.from_url(broker.url)
    dead = {"driver": "modbus", "name": "meter", "transport": "tcp", "host": "127.0.0.1", "port": 1,
            "interval": "200ms", "timeout": "1s", "request_timeout": "300ms",
            "nodes": [{"id": "m", "slave": 1, "points": [{"name": "v", "address": 0}]}]}
    async with daemon(path) as d:
        await connected(d)
        doc = {"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}], "drivers": [SIM, dead]}
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-d", within=30)
        st = answers.by_gateway["gw-d"]
        assert st["state"] == "rolled_back" and "meter (unavailable" in st["reason"], st
        assert set(d.supervisor.runners) == {"counter"}  # type: ignore[union-attr]
        assert d.supervisor.runners["counter"].stats.state == "running"  # type: ignore[union-attr]


def test_topics_are_single_levels() -> None:
    assert topics.command_result("p", "gw", "abc") == "p/gw/cmd/res/abc"
    assert cbor2.loads(encode_command("a", "ping", {}, 5)) == {"id": "a", "op": "ping", "args": {}, "exp": 5}


async def test_a_driver_that_will_not_stop_cannot_hang_an_apply_or_a_rollback(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16: an instance that swallows every cancellation is removed by a push (applied),
    and another is stopped by a rollback (rolled back): both end in their status."""
    site = tmp_path / "site"
    install_test_driver(site, "sgtestdrivers", {"stubborn": "sgtestdrivers:STUBBORN"})
    monkeypatch.syspath_prepend(str(TESTDRIVERS))
    monkeypatch.syspath_prepend(str(site))
    hold = tmp_path / "hold"
    hold.touch()
    stuck = {"driver": "stubborn", "name": "stuck", "interval": "1h", "timeout": "1h", "hold_file": str(hold)}
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-st", broker.url, pub, drivers=[SIM, stuck])
    b = Broker.from_url(broker.url)
    rx = MqttReceiver(broker.url, tmp_path / "gw-st/keys/device.pub.pem", gateway="gw-st")
    up = [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}]
    async with rx.running(), daemon(path) as d:
        await connected(d)
        await until(lambda: (tmp_path / "hold.stuck").exists())  # in its poll, swallowing
        _, answers = await push_config(b, key, yaml.safe_dump({"uplinks": up, "drivers": [SIM]}).encode(),
                                       to="gw-st", within=30)
        assert not answers.timed_out, "the apply hung on the driver that would not stop"
        st = answers.by_gateway["gw-st"]
        assert st["state"] == "applied" and "stopped stuck" in st["reason"], st
        assert set(d.supervisor.runners) == {"counter"}  # type: ignore[union-attr]
        # a push whose uplink cannot connect, with a stuck instance: the rollback must stop it
        lost = [{"type": "mqtt", "url": "mqtt://127.0.0.1:1", "reconnect_max": 1}]
        doc = {"uplinks": lost, "drivers": [SIM, {**stuck, "name": "stuck2"}]}
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-st", within=40)
        assert not answers.timed_out, "the rollback hung on the driver that would not stop"
        st = answers.by_gateway["gw-st"]
        assert st["state"] == "rolled_back" and "uplink did not connect" in st["reason"], st
        assert set(d.supervisor.runners) == {"counter"}  # type: ignore[union-attr]
        n = len(rx.readings)
        await rx.wait_readings(n + 5)  # data flows on the old config
    left = [t for t in asyncio.all_tasks() if t.get_name() in ("driver:stuck", "driver:stuck2")]
    assert len(left) == 2, "both really would not stop"
    hold.unlink()  # released, they end: the cancellation they swallowed is honoured
    async with asyncio.timeout(10):
        await asyncio.wait(left)
