"""The receiver under hostile and heavy input (issue 16, defects 4 and 7): numbers a trusted signer
puts in a batch header, state that must not grow with every batch, replays older than the hash
window, messages too large to read, and a run in which nothing arrives."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption
from hypothesis import given
from hypothesis import strategies as st

from gateway.coap import COSE_SIGN1
from gateway.driver_api import Reading
from gateway.keys import Ed25519PrivateKey, init_key, load_private_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.receiver import KeyBindings, Receiver, blobs
from gateway.testing.batches import T0, Chain, sign_batch
from gateway.testing.procs import peak_rss_mib
from gateway.wire import MAX_UINT
from hil.mosquitto import Mosquitto
from tests.gateway.coaputil import CoapReceiver, coap_url
from tests.gateway.helpers import until

KEY = Ed25519PrivateKey(bytes(range(32)))
GW = "gw-test"


def receiver(window: int = 1024, **kw: Any) -> Receiver:
    return Receiver(KeyBindings({GW: [KEY.public_key()]}), window=window, **kw)


# -- defect 4: every number in a batch header is an integer within its range ----------------------

HOSTILE = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=MAX_UINT + 1, max_value=2**300)
           | st.integers(max_value=-1) | st.booleans())


def _override(field: str, v: Any) -> dict[str, Any]:
    return {"bs": {"bs": v}, "st": {"st": v}, "bo": {"bo": v}, "sg": {"sg": v}, "sq0": {"sq": [v, 3]},
            "sq1": {"sq": [3, v]}, "dr0": {"dr": [[v, 10, "buffer_full"]]}, "dr1": {"dr": [[1, v, "buffer_full"]]},
            "ct": {3: v}}[field]


@given(st.sampled_from(["bs", "st", "bo", "sg", "sq0", "sq1", "dr0", "dr1", "ct"]), HOSTILE)
def test_no_number_slips_past_the_header_check(field: str, value: Any) -> None:
    """NaN, infinities, floats, booleans, negatives and bignums, signed by a trusted key: refused."""
    chain = Chain(KEY, GW)
    rx = receiver()
    assert rx.feed(chain.next(2)).status == "ok"
    res = rx.feed(chain.next(1, _override(field, value)))
    assert res.status == "malformed", (field, value, res)
    s = rx.summary()
    assert (s.batches, s.readings, s.gaps, s.dropped, s.malformed) == (1, 2, 0, 0, 1)


def test_a_bignum_sequence_number_is_refused_not_reported_as_gaps() -> None:
    chain = Chain(KEY, GW)
    rx = receiver()
    rx.feed(chain.next(1))
    res = rx.feed(chain.next(1, sq=[2**200, 2**200]))
    assert res.status == "malformed" and "sequence range" in res.reason
    res = rx.feed(chain.next(0, sq=[2, 1], dr=[[2, 2**200, "buffer_full"]]))
    assert res.status == "malformed" and "drop list" in res.reason
    s = rx.summary()
    assert s.gaps == 0 and s.dropped == 0 and s.readings == 1


# -- defect 7: bounded state ----------------------------------------------------------------------

def test_memory_does_not_grow_with_batches() -> None:
    """4,000 more batches of one stream leave the receiver's memory where it was (it grew by
    about 200 bytes a batch when every hash was kept)."""
    chain = Chain(KEY, GW)
    batches = [chain.next(1) for _ in range(6000)]
    rx = receiver()
    for b in batches[:2000]:
        assert rx.feed(b).status == "ok"
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for b in batches[2000:]:
            rx.feed(b, topic_gateway=GW)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    s = rx.summary()
    assert (s.batches, s.readings, s.gaps, s.chain_breaks) == (6000, 6000, 0, 0)
    assert grown < 32 * 1024, f"receiver state grew by {grown} bytes over 4000 batches"


def test_window_duplicates_conflicts_and_chain() -> None:
    """Within the window: duplicate vs conflict and both chain links; older: a duplicate whose
    content is no longer compared; a late batch never seen is still accepted."""
    chain = Chain(KEY, GW)
    batches = [chain.next(1) for _ in range(40)]
    rx = receiver(window=16)
    for i, b in enumerate(batches):
        if i != 2:  # batch 3 is late
            assert rx.feed(b).status == "ok"
    assert rx.summary().gaps == 1
    assert rx.feed(batches[2]).status == "ok"  # 37 numbers behind: accepted, its gap closed
    assert rx.summary().gaps == 0
    assert rx.feed(batches[34]).status == "duplicate"
    other35 = sign_batch(KEY, {"sg": 1, "gw": GW, "st": 7, "bo": 1, "bs": 35, "pv": bytes(32), "sq": [35, 35]},
                         [Reading(GW, "n", T0, -1)])
    assert rx.feed(other35).status == "conflict"
    old = rx.feed(batches[4])
    assert old.status == "duplicate" and "content not compared" in old.reason
    other5 = sign_batch(KEY, {"sg": 1, "gw": GW, "st": 7, "bo": 1, "bs": 5, "pv": bytes(32), "sq": [5, 5]},
                        [Reading(GW, "n", T0, -1)])
    assert rx.feed(other5).status == "duplicate"  # older than the window: cannot tell it from a replay
    nxt = [chain.next(1) for _ in range(3)]  # 41, 42, 43
    bad = sign_batch(KEY, {"sg": 1, "gw": GW, "st": 7, "bo": 1, "bs": 44, "pv": bytes(32), "sq": [44, 44]},
                     [Reading(GW, "n", T0, 44)])
    for b in (nxt[0], nxt[2], nxt[1], bad):  # out of order, then a broken link
        assert rx.feed(b).status == "ok"
    s = rx.summary()
    assert (s.chain_breaks, s.reordered, s.duplicates, s.gaps) == (2, 2, 3, 0)  # the conflict and the bad link


async def _publish(url: str, topic: str, payloads: list[bytes]) -> None:
    s = MqttSession(MqttSettings.from_url(url, client_id="junk-publisher"))
    await s.connect()
    try:
        infos = [s.client.publish(topic, p, qos=1) for p in payloads]
        await until(lambda: all(i.is_published() for i in infos), within=60)
    finally:
        await s.close()


async def test_a_huge_message_is_never_read_whole(tmp_path: Path, broker: Mosquitto) -> None:
    """100 MB of junk on a batch topic: the broker is told the receiver's maximum packet size and
    keeps it; the receiver's peak memory stays far below the message, and the next batch arrives."""
    init_key(tmp_path / "k")
    key = load_private_key(tmp_path / "k" / "device.key")
    out = tmp_path / "readings.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "receive", "--url", broker.url, "--trust", f"{GW}={tmp_path}/k/device.pub.pem",
        "--client-id", "big-rx", "--timeout", "60", "--json", "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        await asyncio.wait_for(proc.stderr.readline(), 20)  # "trusting ..."
        await asyncio.sleep(1.0)  # subscribed (its persistent session would queue what it missed anyway)
        await _publish(broker.url, f"sensegate/{GW}/batch", [b"\x00" * (100 * 1024 * 1024), Chain(key, GW).next(3)])
        await until(lambda: out.exists() and len(out.read_text().splitlines()) == 3, within=30)
        peak_mib = peak_rss_mib(proc.pid)
        proc.terminate()
        stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    s = json.loads(stdout.decode().strip().splitlines()[-1])
    assert s["batches"] == 1 and s["readings"] == 3 and s["ok"], s
    assert peak_mib < 80, f"receiver peaked at {peak_mib:.0f} MiB for a 100 MiB message"


async def test_nothing_received_is_said_and_a_missed_count_fails(tmp_path: Path, broker: Mosquitto) -> None:
    init_key(tmp_path / "k")
    trust = f"{GW}={tmp_path}/k/device.pub.pem"

    async def receive(*extra: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "receive", "--url", broker.url, "--trust", trust, "--timeout", "1",
            "--out", "", *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    rc, out = await receive()
    assert rc == 0 and "verdict:        NOTHING RECEIVED: no batch arrived" in out, out
    rc, out = await receive("--count", "5")
    assert rc == 1 and "verdict:        INCOMPLETE: 0 of 5 readings arrived" in out, out
    rc, out = await receive("--batches", "2", "--json")
    s = json.loads(out)
    assert rc == 1 and s["verdict"] == "INCOMPLETE: 0 of 2 batches arrived" and not s["received"], s


async def _blocks(ctx: Any, url: str, data: bytes, numbers: range) -> Any:
    """POST blocks ``numbers`` of ``data`` (1 KiB each) by hand, as a client without Size1 would."""
    res = None
    for n in numbers:
        chunk = data[n * 1024 : (n + 1) * 1024]
        more = (n + 1) * 1024 < len(data)
        msg = aiocoap.Message(code=aiocoap.POST, uri=url + "/sensegate/batch", payload=chunk,
                              content_format=COSE_SIGN1, block1=BlockOption.BlockwiseTuple(n, more, 6))
        res = await ctx.request(msg, handle_blockwise=False).response
        if res.code != Code.CONTINUE:
            return res
    return res


async def test_coap_block_wise_transfers_are_bounded(tmp_path: Path) -> None:
    """A block-wise POST over the limit is refused (4.13, Size1 = the limit) as soon as it is
    announced or grows past it; unfinished transfers together stay within the limit (the oldest is
    forgotten: its sender gets 4.08 and starts again)."""
    limit = 64 * 1024
    init_key(tmp_path / "k")
    key = load_private_key(tmp_path / "k" / "device.key")
    url = coap_url()
    rx = CoapReceiver(url, tmp_path / "k" / "device.pub.pem", max_batch=limit)
    big = Chain(key, GW).next(1, sq=[1, 1]) + b"\x00" * (100 * 1024)
    chain = Chain(key, GW)
    good = chain.next(1600)  # about 40 KiB, a real batch
    assert 36 * 1024 < len(good) < limit
    blocks = -(-len(good) // 1024)
    a = await aiocoap.Context.create_client_context(transports=["udp6"])
    b = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        async with rx.running():
            msg = aiocoap.Message(code=aiocoap.POST, uri=url + "/sensegate/batch", payload=big,
                                  content_format=COSE_SIGN1)
            announced = await a.request(msg).response  # aiocoap sends Size1 with the first block
            grown = await _blocks(a, url, big, range(100))
            first_part = await _blocks(a, url, good, range(30))  # 30 KiB held for client a
            other = await _blocks(b, url, good, range(blocks))  # b: 30 + 40 KiB > 64 KiB: a's is forgotten
            resumed = await _blocks(a, url, good, range(30, blocks))
    finally:
        await a.shutdown()
        await b.shutdown()
    assert announced.code == Code.REQUEST_ENTITY_TOO_LARGE and announced.opt.size1 == limit
    assert grown.code == Code.REQUEST_ENTITY_TOO_LARGE and grown.opt.size1 == limit
    assert first_part.code == Code.CONTINUE
    assert other.code == Code.CHANGED  # b's whole batch: verified
    assert resumed.code == Code.REQUEST_ENTITY_INCOMPLETE
    assert rx.statuses == ["ok"]


async def test_coap_answers_forbidden_for_a_key_of_another_gateway(tmp_path: Path) -> None:
    """Over CoAP there is no topic: the header's gateway must be the one the key is bound to."""
    a, b = init_key(tmp_path / "a"), init_key(tmp_path / "b")
    url = coap_url()
    rx = CoapReceiver(url, a.public_path, gateway="gw-A")
    rx.rx.trust.bind("gw-B", load_private_key(b.private_path).public_key())  # type: ignore[attr-defined]
    forged = Chain(load_private_key(a.private_path), "gw-B").next(2)
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        async with rx.running():
            res = await ctx.request(aiocoap.Message(code=aiocoap.POST, uri=url + "/sensegate/batch", payload=forged,
                                                    content_format=COSE_SIGN1)).response
    finally:
        await ctx.shutdown()
    assert res.code == Code.FORBIDDEN and b"signed by the key of gateway 'gw-A'" in res.payload
    assert rx.statuses == ["forged"] and rx.rx.summary().forged == 1


def test_blob_state_is_bounded() -> None:
    """Verified blobs' bytes, incomplete uploads and unmatched hashes stay within their bounds
    (every verified blob's bytes used to be kept for ever)."""
    rx = receiver()
    mib = 1024 * 1024
    for i in range(70):  # 70 MiB of verified images, none named by a batch yet
        data = i.to_bytes(4, "big") * (mib // 4)
        assert rx.feed_blob(hashlib.sha256(data).hexdigest(), cbor2.dumps([0, 1, "image/jpeg", data])) == "verified"
    t = rx.blob_tracker
    assert sum(len(d) for _, d in rx.blobs.values()) <= blobs.MAX_KEPT_BYTES < 70 * mib
    for i in range(70):  # 70 uploads left half done (1 MiB of 2 each)
        sha = hashlib.sha256(b"never %d" % i).hexdigest()
        assert rx.feed_blob(sha, cbor2.dumps([0, 2, "image/jpeg", bytes(mib)])) == "partial"
    assert t._partial_bytes <= blobs.MAX_PARTIAL_BYTES and len(t._parts) < 70
    s = rx.summary()
    assert (s.blobs_unreferenced, s.blobs_verified, s.blobs_bad, s.malformed) == (70, 0, 0, 0)
