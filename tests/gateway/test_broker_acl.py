"""The broker ACL of docs/topics.md on a real mosquitto (issue 16, defect 8): a gateway cannot
publish or subscribe as another, while the real daemon, the receiver and the ops commands work."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key, load_private_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.remote.ops import Broker, gateway_status, push_config, send_command
from gateway.testing.batches import Chain
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver, running_daemon, until
from tests.gateway.tlsutil import make_pki

DOC = Path(__file__).resolve().parents[2] / "docs" / "topics.md"
USERS = {"gw-0042": "pw-42", "gw-0043": "pw-43", "ops-alice": "pw-ops", "ingest": "pw-in"}
SIM = {"driver": "sim", "name": "counter", "interval": "100ms", "points": [{"name": "n", "pattern": "counter"}]}


def documented_acl() -> str:
    """The acl_file exactly as docs/topics.md gives it (so the page cannot drift from this test)."""
    section = DOC.read_text().split("## Broker ACL", 1)[1]
    block = re.search(r"```\n(# sensegate broker ACL.*?)```", section, re.S)
    assert block is not None, "docs/topics.md: no ACL block under '## Broker ACL'"
    return block.group(1)


class Client:
    """A plain MQTT client under one user name, recording every message it is delivered."""

    def __init__(self, url: str, user: str, **tls: Any) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        cred = tls or {"username": user, "password": USERS[user]}
        self.session = MqttSession(MqttSettings.from_url(url, client_id=f"c-{user}", **cred),
                                   on_message=lambda m: self.got.append((m.topic, bytes(m.payload), bool(m.retain))))

    async def __aenter__(self) -> Client:
        await self.session.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.session.client.publish(topic, payload, qos=1, retain=retain)
        await until(info.is_published)  # the broker has judged it (allowed or dropped)

    def subscribe(self, *filters: str) -> None:
        for f in filters:
            self.session.client.subscribe(f, qos=1)


def _gateway_config(tmp: Path, url: str, ops_pub: Path, uplink: dict[str, Any]) -> Path:
    init_key(tmp / "gw-0042" / "keys")
    doc = {"gateway": {"id": "gw-0042", "state_dir": str(tmp / "gw-0042")},
           "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1, **uplink}], "drivers": [SIM],
           "remote": {"ops_keys": [str(ops_pub)], "groups": ["district-7"], "uplink_timeout": "5s"}}
    path = tmp / "gw-0042.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_a_gateway_cannot_publish_or_subscribe_as_another(tmp_path: Path) -> None:
    ops = init_key(tmp_path / "ops", name="ops-alice")
    ops_key = load_private_key(ops.private_path)
    with Mosquitto(tmp_path / "m", passwords=USERS, acl=documented_acl()) as m:
        path = _gateway_config(tmp_path, m.url, ops.public_path, {"username": "gw-0042", "password": "pw-42"})
        b = Broker.from_url(m.url, username="ops-alice", password=USERS["ops-alice"])
        rx = MqttReceiver(m.url, tmp_path / "gw-0042/keys/device.pub.pem", client_id="ingest-rx", gateway="gw-0042")
        rx.settings = rx.settings.__class__(**{**rx.settings.__dict__, "username": "ingest", "password": "pw-in"})
        async with rx.running(), running_daemon(path) as d, Client(m.url, "gw-0043") as rogue:
            await until(lambda: d.pipeline is not None and d.pipeline.uplink.connected)
            rogue.subscribe("sensegate/#", "sensegate/gw-0042/cmd/req", "sensegate/gw-0042/config/set",
                            "sensegate/+/status", "sensegate/gw-0043/cmd/req")
            await rx.wait_readings(3)

            # the real daemon and ops work under the ACL: a push applied, a command answered
            doc = yaml.safe_load(path.read_text())
            doc["drivers"] = [{**SIM, "interval": "200ms"}]
            rev, answers = await push_config(b, ops_key, yaml.safe_dump(doc).encode(), to="gw-0042", within=30)
            assert answers.by_gateway["gw-0042"]["state"] == "applied", answers
            _, _, ans = await send_command(b, ops_key, "ping", {}, to="gw-0042")
            assert ans.by_gateway["gw-0042"]["status"] == "done"

            # gw-0043 tries to speak for gw-0042: overwrite its retained statuses, publish a batch
            # (signed with gw-0043's own key, claiming gw-0042), push to it and answer for it
            fake = json.dumps({"gateway": "gw-0042", "state": "applied", "revision": rev + 1}).encode()
            await rogue.publish("sensegate/gw-0042/config/status", fake, retain=True)
            await rogue.publish("sensegate/gw-0042/status", b'{"state": "offline"}', retain=True)
            rogue_key = load_private_key(init_key(tmp_path / "rogue").private_path)
            await rogue.publish("sensegate/gw-0042/batch", Chain(rogue_key, "gw-0042").next(2))
            await rogue.publish("sensegate/gw-0042/cmd/req", b"x")
            await rogue.publish("sensegate/gw-0042/cmd/res/c-1", b'{"gateway": "gw-0042", "id": "c-1"}')
            # its own topics it may use (the ACL is no blanket refusal)
            await rogue.publish("sensegate/gw-0043/status", b'{"state": "online", "gateway": "gw-0043"}', retain=True)
            await send_command(b, ops_key, "ping", {}, to="gw-0043", within=2)  # delivered to it; no daemon answers
            await rx.wait_readings(len(rx.readings) + 3)

        seen = await gateway_status(b, ["gw-0042", "gw-0043"], within=3)
    assert seen["gw-0042"]["config"]["revision"] == rev and seen["gw-0042"]["config"]["state"] == "applied"
    assert seen["gw-0042"]["online"]["state"] == "offline"  # the daemon's own clean stop, after the test
    assert seen["gw-0043"]["online"]["state"] == "online"  # its own retained status stands
    topics = {t for t, _, _ in rogue.got}
    assert topics == {"sensegate/gw-0043/cmd/req"}, topics  # nothing of gw-0042's (nor statuses: it only writes them)
    assert "forged" not in rx.statuses and rx.statuses.count("ok") >= 3  # the batch never reached it
    s = rx.rx.summary()
    assert s.ok and s.gaps == 0 and s.forged == 0 and s.bad_signatures == 0


async def test_client_certificates_name_the_gateway(tmp_path: Path) -> None:
    """Mutual TLS with use_identity_as_username: the certificate's CN is the user the ACL confines."""
    pki = make_pki(tmp_path / "pki", clients=["gw-0042", "gw-0043", "ops-alice"])
    tls = {"cafile": pki["ca"], "certfile": pki["server_cert"], "keyfile": pki["server_key"],
           "require_certificate": "true", "use_identity_as_username": "true"}

    def cert(cn: str) -> dict[str, str]:
        return {"ca_file": pki["ca"], "cert_file": pki[f"{cn}_cert"], "key_file": pki[f"{cn}_key"]}

    with Mosquitto(tmp_path / "m", tls=tls, acl=documented_acl()) as m:
        ops = init_key(tmp_path / "ops", name="ops-alice")
        path = _gateway_config(tmp_path, m.url, ops.public_path, {"tls": cert("gw-0042")})
        async with running_daemon(path) as d, Client(m.url, "gw-0043", **cert("gw-0043")) as rogue:
            await until(lambda: d.pipeline is not None and d.pipeline.uplink.connected)
            rogue.subscribe("sensegate/#")
            await rogue.publish("sensegate/gw-0042/status", b'{"state": "offline"}', retain=True)
            await rogue.publish("sensegate/gw-0043/status", b'{"state": "online"}', retain=True)
            async with Client(m.url, "ops-alice", **cert("ops-alice")) as operator:
                operator.subscribe("sensegate/+/status")
                await until(lambda: len(operator.got) == 2)
                await operator.publish("sensegate/gw-0043/cmd/req", b"for gw-0043")  # reaches it
                await operator.publish("sensegate/gw-0042/cmd/req", b"for gw-0042")  # does not
                await until(lambda: bool(rogue.got))
            assert d.pipeline is not None and d.pipeline.uplink.connected
    assert [t for t, _, _ in rogue.got] == ["sensegate/gw-0043/cmd/req"]  # nothing of gw-0042's
    status = {t.split("/")[1]: json.loads(p)["state"] for t, p, _ in operator.got}
    assert status == {"gw-0042": "online", "gw-0043": "online"}  # gw-0042's is the daemon's own
