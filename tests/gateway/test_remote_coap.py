"""Config push over CoAP: PUT the signed document to the gateway's own resource; the status is
readable (and observable) over CoAP, and the outcome is the same as for an MQTT push."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
from pathlib import Path

import aiocoap
import pytest
import yaml

from gateway.keys import init_key
from gateway.remote.envelope import sign
from gateway.remote.ops import Broker, push_config
from gateway.testing import free_port
from hil.mosquitto import Mosquitto
from tests.gateway.coaputil import CoapReceiver, coap_url
from tests.gateway.test_remote_mqtt import SIM, bootstrap, connected, daemon, gateway_doc, ops_key, until


async def _status(port: int) -> dict[str, object]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        resp = await ctx.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/sensegate/config/status")
        ).response
        return json.loads(resp.payload) if resp.payload else {}
    finally:
        await ctx.shutdown()


async def _final_status(port: int, rev: int) -> dict[str, object]:
    """Read the status resource until it gives revision ``rev``'s outcome."""
    async with asyncio.timeout(30):
        while True:
            status = await _status(port)
            if status.get("revision") == rev and status["state"] in ("applied", "rejected", "rolled_back"):
                return status
            await asyncio.sleep(0.1)


async def _put(port: int, doc: bytes) -> aiocoap.Message:
    ctx = await aiocoap.Context.create_client_context()
    try:
        return await ctx.request(
            aiocoap.Message(
                code=aiocoap.PUT, payload=doc, content_format=18, uri=f"coap://127.0.0.1:{port}/sensegate/config"
            )
        ).response
    finally:
        await ctx.shutdown()


async def test_config_push_by_coap_put(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    port = free_port(socket.SOCK_DGRAM)
    path = bootstrap(tmp_path, "gw-coap", broker.url, pub)
    doc = yaml.safe_load(path.read_text())
    doc["remote"]["coap_listen"] = f"127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(doc))
    async with daemon(path) as d:
        await connected(d)
        new = gateway_doc(tmp_path, "gw-coap", broker.url)
        new["drivers"][0]["interval"] = "30ms"
        rev = int(time.time() * 1000)
        signed = sign(key, "config", "gw-coap", yaml.safe_dump(new).encode(), revision=rev)
        resp = await _put(port, signed)
        assert resp.code == aiocoap.CHANGED, resp
        await until(lambda: d.remote is not None and d.remote.revision == rev)
        status = await _final_status(port, rev)  # made after the revision moves ("received" first)
        assert status["state"] == "applied", status
        # an older revision sent by libcoap's coap-client is refused, with the reason in the status
        client = shutil.which("coap-client-notls") or shutil.which("coap-client")
        if client is None:
            pytest.fail("libcoap3-bin is not installed (hil/system-deps.sh installs it)")
        old = tmp_path / "old.cose"
        old.write_bytes(sign(key, "config", "gw-coap", yaml.safe_dump(new).encode(), revision=rev - 1))
        proc = await asyncio.create_subprocess_exec(
            client,
            "-m",
            "put",
            "-t",
            "18",
            "-f",
            str(old),
            f"coap://127.0.0.1:{port}/sensegate/config",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err
        assert b"queued" in out
        async with asyncio.timeout(10):
            while (await _status(port)).get("state") != "rejected":  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        status = await _status(port)
        assert "anti-rollback" in str(status["reason"])
        assert d.remote.revision == rev  # type: ignore[union-attr]
        big = await _put(port, b"x" * (2 * 1024 * 1024))
        assert big.code == aiocoap.REQUEST_ENTITY_TOO_LARGE


async def test_the_health_gate_covers_every_uplink(tmp_path: Path, broker: Mosquitto) -> None:
    """Issue 16: a dead CoAP uplink in `uplink_mode: all` used to pass the gate (its `connected`
    is optimistic over UDP) and then held every batch; now each uplink must answer."""
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-all", broker.url, pub)
    b = Broker.from_url(broker.url)
    mqtt = {"type": "mqtt", "url": broker.url, "reconnect_max": 1}
    dead = {"type": "coap", "name": "coap", "url": coap_url(), "timeout": "1s", "reconnect_max": 1}
    rx = CoapReceiver(coap_url(), tmp_path / "gw-all/keys/device.pub.pem", gateway="gw-all")

    async def push(doc: dict[str, object]) -> dict[str, object]:
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-all", within=30)
        assert not answers.timed_out
        return answers.by_gateway["gw-all"]

    async with rx.running(), daemon(path) as d:
        await connected(d)
        st = await push({"uplinks": [mqtt, dead], "uplink_mode": "all", "drivers": [SIM]})
        assert st["state"] == "rolled_back", st
        assert "uplink(s) coap did not connect" in str(st["reason"]) and "uplink_mode all" in str(st["reason"]), st
        assert d.cfg is not None and len(d.cfg.config.uplinks) == 1
        # failover: the MQTT uplink answers and carries the downlink; a dead backup does not fail the gate
        st = await push({"uplinks": [mqtt, dead], "drivers": [SIM]})
        assert st["state"] == "applied", st
        # all, with a CoAP server that answers (a GET probe when nothing was sent yet): applied, and it gets data
        live = {**dead, "url": rx.url}
        st = await push({"uplinks": [mqtt, live], "uplink_mode": "all", "drivers": [SIM]})
        assert st["state"] == "applied", st
        await rx.wait_readings(5)
        # no MQTT uplink and no remote.coap_listen here: refused, the gateway would lock itself out
        st = await push({"uplinks": [live], "drivers": [SIM]})
        assert st["state"] == "rejected" and "lock itself out" in str(st["reason"]), st


async def test_a_coap_only_gateway_takes_pushes_over_coap(tmp_path: Path) -> None:
    """No broker anywhere: CoAP uplink to a real receiver, pushes by CoAP PUT to its own resource."""
    key, pub = ops_key(tmp_path)
    init_key(tmp_path / "gw-c" / "keys")
    rx = CoapReceiver(coap_url(), tmp_path / "gw-c/keys/device.pub.pem", gateway="gw-c")
    port = free_port(socket.SOCK_DGRAM)
    up = {"type": "coap", "url": rx.url, "timeout": "2s", "reconnect_max": 1}
    local = {"gateway": {"id": "gw-c", "state_dir": str(tmp_path / "gw-c")}, "uplinks": [up], "drivers": [SIM],
             "remote": {"ops_keys": [str(pub)], "uplink_timeout": "5s", "driver_timeout": "5s",
                        "coap_listen": f"127.0.0.1:{port}"}}
    path = tmp_path / "gw-c.yaml"
    path.write_text(yaml.safe_dump(local))
    async with rx.running(), daemon(path) as d:
        await rx.wait_readings(3)
        doc = {"uplinks": [up], "drivers": [SIM, {**SIM, "name": "second"}]}
        rev = int(time.time() * 1000)
        resp = await _put(port, sign(key, "config", "gw-c", yaml.safe_dump(doc).encode(), revision=rev))
        assert resp.code == aiocoap.CHANGED, resp
        status = await _final_status(port, rev)
        assert status["state"] == "applied", status
        assert set(d.supervisor.runners) == {"counter", "second"}  # type: ignore[union-attr]
        n = len(rx.readings)
        await rx.wait_readings(n + 5)
        # a CoAP uplink that does not answer: the gate rolls it back (failover: one uplink must answer)
        dead = {**up, "url": coap_url()}
        rev += 1
        await _put(port, sign(key, "config", "gw-c", yaml.safe_dump({"uplinks": [dead], "drivers": [SIM]}).encode(),
                              revision=rev))
        status = await _final_status(port, rev)
        assert status["state"] == "rolled_back" and "no uplink connected" in str(status["reason"]), status
        assert d.cfg is not None and d.cfg.config.uplinks[0].url == rx.url  # type: ignore[union-attr]
