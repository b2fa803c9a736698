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

from gateway.remote.envelope import sign
from gateway.testing import free_port
from hil.mosquitto import Mosquitto
from tests.gateway.test_remote_mqtt import bootstrap, connected, daemon, gateway_doc, ops_key, until


async def _status(port: int) -> dict[str, object]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        resp = await ctx.request(
            aiocoap.Message(code=aiocoap.GET, uri=f"coap://127.0.0.1:{port}/sensegate/config/status")
        ).response
        return json.loads(resp.payload) if resp.payload else {}
    finally:
        await ctx.shutdown()


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
        status = await _status(port)
        assert (status["state"], status["revision"]) == ("applied", rev)
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
