"""The CoAP receiver: its answers to good, repeated, tampered, untrusted and unprotected
batches, blobs, and `sensegate receive --url coap://...` end to end with the daemon's pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from gateway.coap import COSE_SIGN1, write_oscore_pair
from gateway.driver_api import Reading
from gateway.keys import init_key
from gateway.uplinks.coap import CoapUplink
from tests.gateway.coaputil import CoapReceiver, coap_url
from tests.gateway.helpers import make_config, pipeline
from tests.gateway.test_batches import READINGS, _batch

PATH = "/sensegate/batch"


async def _post(url: str, payload: bytes, content_format: int = COSE_SIGN1) -> Any:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        msg = aiocoap.Message(code=aiocoap.POST, uri=url + PATH, payload=payload, content_format=content_format)
        return await ctx.request(msg).response
    finally:
        await ctx.shutdown()


async def test_answers_say_what_the_gateway_should_do(tmp_path: Path) -> None:
    data, pub = await _batch(tmp_path, READINGS)
    url = coap_url()
    rx = CoapReceiver(url, pub)
    async with rx.running():
        first = await _post(url, data)
        again = await _post(url, data)
        tampered = await _post(url, data[:-1] + bytes([data[-1] ^ 1]))
        garbage = await _post(url, b"\xa1not a batch")
        wrong_type = await _post(url, data, content_format=60)
        other, _ = await _batch(tmp_path / "other", READINGS)
        untrusted = await _post(url, other)
    assert first.code == Code.CHANGED and again.code == Code.CHANGED
    assert rx.statuses[:2] == ["ok", "duplicate"]
    assert tampered.code == Code.BAD_REQUEST and b"signature" in tampered.payload
    assert garbage.code == Code.BAD_REQUEST and garbage.payload.startswith(b"malformed")
    assert wrong_type.code == Code.UNSUPPORTED_CONTENT_FORMAT
    assert untrusted.code == Code.FORBIDDEN and b"not trusted" in untrusted.payload
    s = rx.rx.summary()
    assert (s.batches, s.readings, s.duplicates, s.bad_signatures, s.malformed) == (1, len(READINGS), 1, 2, 1)


async def test_oscore_receiver_refuses_unprotected_requests(tmp_path: Path) -> None:
    data, pub = await _batch(tmp_path, READINGS)
    write_oscore_pair(tmp_path / "gw", tmp_path / "rx")
    url = coap_url()
    rx = CoapReceiver(url, pub, oscore=str(tmp_path / "rx"))
    async with rx.running():
        plain = await _post(url, data)
    assert plain.code == Code.UNAUTHORIZED and not rx.statuses


async def test_blob_put_block_wise_is_verified(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "s", uplinks=[{"type": "coap", "url": coap_url(), "timeout": 5}])
    up_cfg = cfg.config.uplinks[0]
    image = bytes(range(256)) * 400  # 100 KiB: block-wise
    sha = hashlib.sha256(image).digest()
    rx = CoapReceiver(up_cfg.url, tmp_path / "s/keys/device.pub.pem")  # type: ignore[union-attr]
    up = CoapUplink(up_cfg, "gw-test")  # type: ignore[arg-type]
    async with rx.running():
        await up.start()
        try:
            await up.send_blob(sha, "image/jpeg", image)
            with pytest.raises(ConnectionError, match=r"4\.00"):  # bytes that do not match their name
                await up.send_blob(hashlib.sha256(b"other").digest(), "image/jpeg", image)
        finally:
            await up.close()
    assert rx.rx.blobs[sha.hex()] == ("image/jpeg", image)
    assert rx.server.blocks >= 100


async def test_receive_command_over_coap_end_to_end(tmp_path: Path) -> None:
    """`sensegate receive --url coap://...` verifies what the gateway pipeline POSTs to it."""
    url = coap_url()
    cfg = make_config(tmp_path / "s", uplinks=[{"type": "coap", "url": url, "reconnect_max": 1, "timeout": 3}],
                      batch={"max_readings": 40})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "receive", "--url", url,
        "--trust", f"gw-test={tmp_path / 's/keys/device.pub.pem'}",
        "--count", "200", "--json", "--out", str(tmp_path / "readings.jsonl"), "--timeout", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert line == b"receive: trusting 1 gateway(s): gw-test\n", line
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        assert b"listening on coap://127.0.0.1" in line, line
        async with pipeline(cfg) as p:
            for i in range(200):
                p.put(Reading("gw-test", "n", 1_795_000_000_000_000_000 + i, i))
            out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["ok"] and summary["readings"] == 200 and summary["gaps"] == 0
    values = [json.loads(x)["v"] for x in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert sorted(values) == list(range(200))


async def test_receive_command_says_when_it_cannot_listen(tmp_path: Path) -> None:
    init_key(tmp_path / "k")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "receive", "--url", "coap://127.0.0.1:1/x", "--oscore",
        str(tmp_path / "missing"), "--trust", f"gw-test={tmp_path / 'k/device.pub.pem'}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"OSCORE context" in err and b"settings.json" in err, err
