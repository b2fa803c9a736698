"""The reference receiver and a gateway's clock: readings flagged, re-dated, in any order; the
clock keys refused when malformed; the command line's output."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cose, wire
from gateway.keys import Ed25519PrivateKey, key_id
from gateway.receiver import KeyBindings, Receiver
from gateway.receiver.cli import ReceiveRun, format_summary
from gateway.receiver.clock import MAX_EPOCHS, StreamClock, TimeTally
from gateway.testing import SteppedClock
from tests.gateway.helpers import clock_store, put_stamped

S = 10**9
DAY = 86_400 * S
T0 = 1_795_000_000 * S


async def _gateway_batches(state: Path, clock: SteppedClock, plan: list[Any]) -> list[bytes]:
    """Run a gateway through ``plan`` (("put", n) | ("step", ns, synced) | ("restart",)); one
    batch after each put."""
    store, batcher = clock_store(state, clock)
    await store.open()
    out = []
    try:
        for op in plan:
            if op[0] == "put":
                put_stamped(store, clock, op[1])
                b = await store.make_batch(batcher)
                assert b is not None
                await store.ack(b)
                out.append(b.data)
            elif op[0] == "step":
                clock.advance(S)
                clock.step(op[1], synced=op[2])
            else:
                await store.close()
                store, batcher = clock_store(state, clock)
                await store.open()
    finally:
        await store.close()
    return out


def _rx(state: Path) -> Receiver:
    return Receiver(KeyBindings.files("gw-test", state / "keys" / "device.pub.pem"))


def _fixed(rx_feeds: list[Any]) -> dict[int, tuple[int, int | None, bool]]:
    """seq -> (original time, corrected time, synced) from a run of Feeds, as a consumer keeps them."""
    got: dict[int, tuple[int, int | None, bool]] = {}
    for f in rx_feeds:
        for r in f.readings:
            span = next((s for s in f.time if s.first <= r.seq <= s.last), None)
            synced = span is None or span.synced
            fixed = r.ts_ns + span.shift_ns if span is not None and span.shift_ns is not None else None
            got[r.seq] = (r.ts_ns, fixed, synced)
        for x in f.redated:
            for seq in range(x.first, x.last + 1):
                if seq in got:
                    got[seq] = (got[seq][0], got[seq][0] + x.shift_ns, got[seq][2])
    return got


async def test_a_day_behind_then_ntp_every_earlier_reading_is_flagged_then_re_dated(tmp_path: Path) -> None:
    clock = SteppedClock(T0 - DAY, synced=False)  # a Pi after a long power cut: fake-hwclock's time
    data = await _gateway_batches(tmp_path, clock, [("put", 5), ("put", 5), ("step", DAY, True), ("put", 5)])
    rx = _rx(tmp_path)
    feeds = [rx.feed(d) for d in data]
    assert all(f.status == "ok" for f in feeds)
    assert [s.synced for s in feeds[0].time] == [False] and feeds[0].time[0].shift_ns is None
    assert feeds[1].redated == [] and rx.summary().time_uncertain == 10
    assert [(x.first, x.last, x.shift_ns) for x in feeds[2].redated] == [(1, 10, DAY)]
    assert [s.synced for s in feeds[2].time] == [True]
    got = _fixed(feeds)
    assert sorted(got) == list(range(1, 16))  # nothing lost or renumbered
    for seq, (ts, fixed, synced) in got.items():
        if seq <= 10:  # on the true clock: the one NTP set, a day ahead of fake-hwclock's
            assert not synced and fixed is not None and fixed - ts == DAY
        else:
            assert synced and fixed is None
    s = rx.summary()
    assert (s.time_uncertain, s.time_redated, s.clock_steps) == (10, 10, 1)


async def test_in_any_order_and_a_nearer_synchronised_epoch_wins(tmp_path: Path) -> None:
    clock = SteppedClock(T0 - DAY, synced=False)
    plan = [("put", 3), ("step", DAY - 60 * S, True), ("put", 3), ("step", 60 * S, True), ("put", 3)]
    data = await _gateway_batches(tmp_path, clock, plan)
    for order in ([2, 0, 1], [2, 1, 0], [0, 2, 1], [1, 2, 0]):
        rx = _rx(tmp_path)
        got = _fixed([rx.feed(data[i]) for i in order])
        # readings 1-3 belong to the day-behind clock; the nearest synchronised epoch (from 4 on,
        # a minute off from the later one) re-dates them whatever came first
        assert {seq: fixed - ts for seq, (ts, fixed, _) in got.items() if fixed is not None} == \
            {1: DAY - 60 * S, 2: DAY - 60 * S, 3: DAY - 60 * S}, order
        assert rx.summary().time_redated == 3


async def test_a_synchronised_clock_of_another_run_re_dates_nothing(tmp_path: Path) -> None:
    clock = SteppedClock(T0 - DAY, synced=False)
    data = await _gateway_batches(tmp_path, clock, [("put", 3), ("restart",), ("step", DAY, True), ("put", 3)])
    rx = _rx(tmp_path)
    feeds = [rx.feed(d) for d in data]
    assert [f.header["bo"] for f in feeds] == [1, 2]
    assert feeds[1].redated == [] and all(s.shift_ns is None for f in feeds for s in f.time)
    s = rx.summary()
    assert (s.time_uncertain, s.time_redated) == (3, 0)  # the monotonic clock restarted: no anchor


async def test_duplicates_are_not_counted_twice_and_epochs_are_bounded(tmp_path: Path) -> None:
    clock = SteppedClock(T0, synced=False)
    data = await _gateway_batches(tmp_path, clock, [("put", 2), ("put", 2)])
    rx = _rx(tmp_path)
    for d in data + data:
        rx.feed(d)
    assert rx.summary().time_uncertain == 4
    book = StreamClock()
    h = wire.parse_header(cose.parse_sign1(data[0]).protected)
    for i in range(MAX_EPOCHS + 50):
        e = h.ck[0]._replace(first_seq=10 + i)
        book.take(wire.Header(h.gw, h.st, h.bo, h.bs, h.pv, (10 + i, 10 + i), ck=[e]), TimeTally())
    assert len(book.epochs) == MAX_EPOCHS and len(book.uncertain) <= MAX_EPOCHS


async def test_the_command_line_prints_the_flag_and_the_corrected_time_beside_the_original(tmp_path: Path) -> None:
    clock = SteppedClock(T0 - DAY, synced=False)
    data = await _gateway_batches(tmp_path, clock, [("put", 2), ("step", DAY, True), ("put", 1)])
    args = argparse.Namespace(url="mqtt://127.0.0.1:1", ca="", cert="", key="", username="", password="", count=0,
                              batches=0)
    out = io.StringIO()
    run = ReceiveRun(args, _rx(tmp_path), out)
    for d in data:
        run.on_batch(d, "gw-test")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    first, second = lines[0], lines[1]
    assert first["t_synced"] is False and "t_fixed_ns" not in first
    redate = next(x["redate"] for x in lines if "redate" in x)
    assert (redate["first"], redate["last"], redate["shift_ns"]) == (1, 2, DAY)
    assert second["seq"] == 2
    last = [x for x in lines if "seq" in x][-1]
    assert last["seq"] == 3 and "t_synced" not in last
    assert "2 readings stamped on an unsynchronised clock, 2 of them re-dated; 1 clock steps" in \
        format_summary(run.rx.summary())


# -- malformed clock keys --------------------------------------------------------------------

KEY = Ed25519PrivateKey(bytes(range(32)))
GOOD_CK = [[5, 1, 10**12, T0, False, 16_000_000]]
GOOD_CJ = [[1, 2 * 10**12, 10**12, T0, T0 + DAY, 7]]


def _message(ck: Any = None, cj: Any = None, sq: tuple[int, int] = (5, 9)) -> bytes:
    head: dict[Any, Any] = {cose.CONTENT_TYPE: 112, "sg": 1, "gw": "gw-test", "st": 1, "bo": 1, "bs": 1,
                            "pv": bytes(32), "sq": list(sq)}
    if ck is not None:
        head["ck"] = ck
    if cj is not None:
        head["cj"] = cj
    n = sq[1] - sq[0] + 1
    pack = cbor2.dumps([{0: "gw-test/n", 2: 1.0, -3: 1_795_000_000, 6: 0.0}] + [{0: "gw-test/n", 2: 1.0}] * (n - 1))
    prot = cose.protected_header(KEY, key_id(KEY.public_key()), head)
    return cose.encode_sign1(prot, pack, cose.sign(KEY, prot, pack))


def _status(msg: bytes) -> str:
    return Receiver(KeyBindings({"gw-test": [KEY.public_key()]})).feed(msg).status


def test_well_formed_clock_keys_are_accepted() -> None:
    assert _status(_message(GOOD_CK, GOOD_CJ)) == "ok"
    assert _status(_message([[1, *GOOD_CK[0][1:]], [6, *GOOD_CK[0][1:]]])) == "ok"
    assert _status(_message([[7, *GOOD_CK[0][1:]]])) == "ok"  # readings 5, 6 of unknown clock


@pytest.mark.parametrize("ck", [
    [[5, 1, 10**12, T0, 0, 16_000_000]],  # synced not a boolean
    [[5, 1, 10**12, float(T0), False, 16]],  # a float
    [[5, 1, -1, T0, False, 16]],  # negative
    [[5, 1, 10**12, 2**63, False, 16]],  # beyond 2^63-1
    [[0, 1, 10**12, T0, False, 16]],  # reading 0
    [[6, 1, 1, T0, False, 16], [5, 1, 1, T0, False, 16]],  # out of order
    [[6, 1, 1, T0, False, 16], [6, 1, 1, T0, True, 16]],  # the same reading twice
    [[10, 1, 1, T0, False, 16]],  # after the batch's readings
    [[1, 1, 1, T0, False, 16], [5, 1, 1, T0, True, 16]],  # the first entry covers nothing
    [[5, 1, 1, T0, False]],  # short
    [GOOD_CK[0]] * 65,  # too many
    "ck", {"a": 1}, [[None] * 6],
])
def test_malformed_epochs_are_refused(ck: Any) -> None:
    assert _status(_message(ck)) == "malformed"


@pytest.mark.parametrize("cj", [
    [[1, 10**12, 2 * 10**12, T0, T0, 7]],  # since after the step
    [[1, 10**12, 10**12, T0, T0, 0]],  # reading 0
    [[1, 10**12, 10**12, T0, True, 7]],
    [[1, 10**12, 10**12, T0, T0]],
    [GOOD_CJ[0]] * 65,
    7,
])
def test_malformed_steps_are_refused(cj: Any) -> None:
    assert _status(_message(None, cj)) == "malformed"


def test_clock_epochs_in_a_batch_without_readings_are_refused() -> None:
    assert _status(_message(GOOD_CK, sq=(5, 4))) == "malformed"


@given(st.lists(st.lists(st.one_of(st.integers(-5, 2**64), st.booleans(), st.none(), st.floats(), st.text(max_size=3)),
                         max_size=7), max_size=4),
       st.lists(st.lists(st.one_of(st.integers(-5, 2**64), st.booleans(), st.binary(max_size=2)), max_size=7),
                max_size=3))
def test_hostile_clock_keys_never_break_the_receiver(ck: list[Any], cj: list[Any]) -> None:
    rx = Receiver(KeyBindings({"gw-test": [KEY.public_key()]}))
    f = rx.feed(_message(ck, cj))
    assert f.status in ("ok", "malformed")
    if f.status == "ok":
        assert all(s.first >= 5 and s.last <= 9 for s in f.time)
    assert rx.summary().time_uncertain <= 5
