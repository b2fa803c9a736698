"""Interop: libcoap's coap-client (not our code) POSTs our signed batch files to our receiver."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from gateway.driver_api import Reading
from tests.gateway.coaputil import coap_url
from tests.gateway.test_batches import READINGS, _batch

COAP_CLIENT = shutil.which("coap-client-notls") or shutil.which("coap-client")
pytestmark = pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client is not installed "
                                "(Debian libcoap3-bin; hil/system-deps.sh installs it)")


async def _run(*argv: str, within: float = 30) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_coap_client_posts_batch_files_to_our_receiver(tmp_path: Path) -> None:
    small, pub = await _batch(tmp_path / "a", READINGS)
    big_readings = [Reading("gw-test", "p", 1_795_000_000_000_000_000 + i, "x" * 100) for i in range(900)]
    big, _ = await _batch(tmp_path / "b", big_readings)
    assert len(big) > 64 * 1024
    (tmp_path / "small.cose").write_bytes(small)
    (tmp_path / "big.cose").write_bytes(big)
    url = coap_url()
    receiver = asyncio.create_task(_run(
        sys.executable, "-m", "gateway", "receive", "--url", url, "--trust", f"gw-test={pub}",
        "--trust", f"gw-test={tmp_path / 'b/state/keys/device.pub.pem'}", "--batches", "2", "--json", "--out", "",
        "--timeout", "60", within=90))
    try:
        for name in ("small.cose", "big.cose"):
            for _ in range(100):  # until the receiver listens (its socket is ours to poll, not a timer)
                rc, out, err = await _run(COAP_CLIENT, "-m", "post", "-t", "18", "-b", "1024", "-B", "5",
                                          "-f", str(tmp_path / name), url + "/sensegate/batch")
                if rc == 0 and b"4." not in out + err:
                    break
                await asyncio.sleep(0.1)
            assert rc == 0, err
        rc, out, err = await receiver
    finally:
        if not receiver.done():
            receiver.cancel()
    assert rc == 0, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["batches"] == 2 and summary["readings"] == len(READINGS) + 900
    assert summary["ok"] and summary["bad_signatures"] == 0 and summary["malformed"] == 0


async def test_coap_client_sees_a_tampered_batch_refused(tmp_path: Path) -> None:
    data, pub = await _batch(tmp_path, READINGS)
    (tmp_path / "bad.cose").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    url = coap_url()
    receiver = asyncio.create_task(_run(
        sys.executable, "-m", "gateway", "receive", "--url", url, "--trust", f"gw-test={pub}", "--json", "--out", "",
        "--timeout", "4", within=60))
    try:
        for _ in range(100):
            rc, out, err = await _run(COAP_CLIENT, "-m", "post", "-t", "18", "-B", "5", "-f",
                                      str(tmp_path / "bad.cose"), url + "/sensegate/batch")
            if b"4.00" in out + err:
                break
            await asyncio.sleep(0.1)
        assert b"4.00" in out + err and b"signature" in out + err, (out, err)
        rc, out, _ = await receiver
    finally:
        if not receiver.done():
            receiver.cancel()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert rc == 1 and summary["bad_signatures"] >= 1 and not summary["ok"]
