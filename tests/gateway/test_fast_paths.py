"""The hot-path shortcuts give exactly what the plain code gave: the record encoder writes the
bytes cbor2 would, the buffer's kept counters match a recount, folded acknowledgements delete
what they should, and the receiver's counting path reaches the verdicts of the full decoder."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import senml
from gateway.batcher import Batcher
from gateway.driver_api import Blob, Location, Quality, Reading
from gateway.driver_api import Path as IPath
from gateway.store import Store, backlog
from tests.gateway.helpers import batcher_for, make_config

T0 = 1_795_000_000_000_000_000


def _reference(readings: list[Reading]) -> bytes:
    """The encoder as it was: one map per reading, cbor2 for the lot, array head cut off."""
    records: list[dict[Any, Any]] = []
    bt_ns = 0
    for r in readings:
        rec = senml._record(r)
        delta = r.ts_ns - bt_ns
        if not records or not -senml._EXACT_LIMIT < delta < senml._EXACT_LIMIT:
            bt = r.ts_ns // senml.NS
            bt_ns = bt * senml.NS
            delta = r.ts_ns - bt_ns
            rec[senml.BT] = bt
        rec[senml.T] = delta / senml.NS
        records.append(rec)
    body = cbor2.dumps(records)
    return body[len(senml.array_header(len(records))):] if records else b""


values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(), st.text(max_size=20), st.binary(max_size=20),
    st.builds(Location, st.floats(-90, 90), st.floats(-180, 180), alt=st.none() | st.floats(-100, 9000)),
    st.builds(Blob, st.binary(max_size=50), st.sampled_from(["image/jpeg", "image/png"])),
)
readings = st.builds(
    Reading, st.sampled_from(["gw", "rtu-7", "n\u00e9"]), st.sampled_from(["t", "energy", "p" * 30]),
    st.integers(min_value=0, max_value=2**63), values, st.sampled_from([None, "", "Cel", "kWh", "%RH"]),
    st.sampled_from(list(Quality)), st.sampled_from(list(IPath)),
)


@settings(max_examples=300)
@given(st.lists(readings, max_size=30), st.booleans())
def test_record_encoder_writes_what_cbor2_wrote(batch: list[Reading], sorted_ts: bool) -> None:
    if sorted_ts:  # the usual case: timestamps close together, one base time
        batch = [Reading(r.node, r.point, T0 + i * 1_000_003, r.value, r.unit, r.quality, r.path)
                 for i, r in enumerate(batch)]
    enc = senml.RecordEncoder()
    for _ in range(2):  # cold and warm prefix cache
        assert enc.encode(batch) == (_reference(batch), len(batch))


def _buffer(state: Path) -> tuple[Store, Batcher]:
    cfg = make_config(state, batch={"max_readings": 100})
    c = cfg.config
    return Store(state / "buffer.db", c.gateway.id, c.buffer, c.batch), batcher_for(cfg)


async def test_kept_counters_match_a_recount_and_acks_delete_exactly_their_rows(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    rng = random.Random(5)
    made = []
    seq = 0
    for _ in range(40):
        for _ in range(rng.randint(1, 150)):
            buf.put(Reading("gw-test", "n", T0 + seq, seq if seq % 3 else "x" * (seq % 50)))
            seq += 1
        await buf.commit()
        b = await buf.make_batch(batcher)
        if b is not None:
            made.append(b)
        rng.shuffle(made)  # acknowledgements out of order, some left outstanding
        while len(made) > 3:
            await buf.ack(made.pop())
        if len(made) == 3:
            once = made.pop(0)
            assert await buf.ack(once) is True
            assert await buf.ack(once) is False, "a second acknowledgement releases nothing"
    kept = (buf.stats.readings, buf.stats.bytes)
    outstanding = sorted(b.bseq for b in made)
    await buf.close()
    assert backlog(state / "buffer.db")[0] == kept[0], "closing deleted exactly the released rows"
    buf, batcher = _buffer(state)
    await buf.open()  # counts from scratch
    try:
        assert (buf.stats.readings, buf.stats.bytes) == kept
        assert [bseq for bseq, _ in await buf.outbox()] == outstanding
        for bseq in outstanding:
            b = await buf.load_batch(bseq)
            assert b is not None
            await buf.ack(b)
        while (b := await buf.make_batch(batcher)) is not None:
            await buf.ack(b)
        assert (buf.stats.readings, buf.stats.bytes, buf.stats.oldest_ns) == (0, 0, 0)
    finally:
        await buf.close()
    assert backlog(state / "buffer.db") == (0, None)


record_values = st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4) | st.binary(
    max_size=3) | st.sampled_from(["gw/t", "a/b", "bad name", "ni:///sha-256;AAAA"])
records = st.dictionaries(
    st.sampled_from([senml.BT, senml.N, senml.U, senml.V, senml.VS, senml.VB, senml.VD, senml.T, "q", "p", "loc",
                     "ct", "sz"]),
    record_values | st.dictionaries(st.text(max_size=2), record_values, max_size=2), max_size=7)


@settings(max_examples=500)
@given(st.lists(st.fixed_dictionaries({senml.BT: st.integers(0, 2**40), senml.N: st.just("gw/t"),
                                       senml.V: st.floats(allow_nan=False)}) | records, max_size=6))
def test_counting_checker_agrees_with_the_decoder(pack: list[Any]) -> None:
    try:
        decoded = senml.decode_pack(pack, 7)
    except senml.SenmlError:
        decoded = None
    stamps: list[int] = []
    blobs: list[tuple[int, Any]] = []
    try:
        n = senml.check_pack(pack, 7, stamps, blobs)
    except senml.SenmlError:
        n = -1
    if decoded is None:
        assert n == -1, "the checker accepted a pack the decoder refuses"
    else:
        assert n == len(decoded)
        assert stamps == [r.ts_ns for r in decoded]
        assert blobs == [(r.seq, r.value) for r in decoded if r.kind == "blob"]


async def test_counting_receiver_reaches_the_same_verdicts(tmp_path: Path) -> None:
    from gateway.keys import load_public_key
    from gateway.receiver import KeyBindings, Receiver

    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    batches = []
    try:
        for i in range(6):
            for j in range(30):
                value: Any = Blob(b"img%d" % i, "image/png") if j == 3 else float(j)
                buf.put(Reading("gw-test", "n", T0 + i * 100 + j, value, "W"))
            await buf.commit()
            b = await buf.make_batch(batcher)
            assert b is not None
            batches.append(b.data)
    finally:
        await buf.close()
    tampered = batches[0][:-1] + bytes([batches[0][-1] ^ 1])
    order = [batches[0], batches[2], batches[1], batches[2], batches[4], tampered, batches[5]]
    pub = load_public_key(state / "keys/device.pub.pem")
    trust = KeyBindings({"gw-test": [pub]})
    full, fast = Receiver(trust), Receiver(trust, keep_readings=False, latency=True)
    for data in order:
        a, b = full.feed(data), fast.feed(data)
        assert (a.status, a.bseq) == (b.status, b.bseq) and b.readings == []
    sa, sb = full.summary().to_json(), fast.summary().to_json()
    lat = sb.pop("latency_ms")
    assert sa == sb and sa["gaps"] == 30 and sa["duplicates"] == 1 and sa["bad_signatures"] == 1
    assert sa["blobs_missing"] == 5  # both paths saw the same five images named
    assert lat["n"] == 5 * 30 and lat["p50"] <= lat["p99"] <= lat["max"]


async def test_a_batch_commits_waiting_readings_in_its_own_transaction(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    try:
        for i in range(30):
            buf.put(Reading("gw-test", "n", T0 + i, i))
        b = await buf.make_batch(batcher)
        assert b is not None and (b.bseq, b.first_seq, b.last_seq) == (1, 1, 30)
        assert (buf.stats.commits, buf.stats.committed, buf.stats.readings) == (1, 30, 30)
        buf.put(Reading("gw-test", "n", T0 + 30, 30))
        b2 = await buf.make_batch(batcher)
        assert b2 is not None and (b2.bseq, b2.first_seq, b2.last_seq) == (2, 31, 31)
    finally:
        await buf.close()
    buf, batcher = _buffer(state)
    await buf.open()
    try:  # both were durable before they were returned (to be sent)
        assert await buf.outbox() == [(1, set()), (2, set())]
        again = await buf.load_batch(1)
        assert again is not None and again.data == b.data
    finally:
        await buf.close()
