"""The ledger's decisions are the same whatever order batches arrive in and however workers
split them into transactions: duplicates insert nothing, a reading is stored once, the chain
is checked by whichever neighbour comes second, every number ends up received, declared or
missing, and every reading of an unsynchronised clock ends up with the same corrected time."""

from __future__ import annotations

import hashlib
import itertools
import random

from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.ingest import clock, ledger
from gateway.ingest.contract import CONFLICT, Heartbeat, VerifiedBatch, Work
from gateway.receiver.core import UNCLEAN_STOP
from gateway.senml import DecodedReading
from gateway.wire import ClockEpoch, correction

GW = "gw-a"


def _batch(bseq: int, first: int, last: int, prev: bytes, drops: tuple[tuple[int, int, str], ...] = (),
           boot: int = 1, salt: bytes = b"", ck: tuple[ClockEpoch, ...] = ()) -> VerifiedBatch:
    readings = [DecodedReading(s, "gw-a", "t", 1_795_000_000_000_000_000 + s, float(s), "Cel", 0, 2, "v")
                for s in range(first, last + 1)]
    digest = hashlib.sha256(repr((bseq, first, last, prev, drops, boot, ck)).encode() + salt).digest()
    times = [r.ts_ns for r in readings] or [0]
    return VerifiedBatch(GW, b"k" * 16, 7, boot, bseq, prev, digest, first, last, drops, (), readings,
                         1_000 + bseq, f"sensegate/{GW}/batch", b"", ck, ts_min=min(times), ts_max=max(times))


def history(seed: int) -> tuple[list[VerifiedBatch], set[int], int]:
    """A gateway's batches, in order: readings, declared drops, a drop-only batch, unclean stops,
    and a clock that steps and changes its sync state now and then. Returns the batches, the
    reading numbers they carry, and the highest number issued."""
    rng = random.Random(seed)
    out: list[VerifiedBatch] = []
    prev, bseq, seq, boot = bytes(32), 1, 1, 1
    carried: set[int] = set()
    mono = 10**12
    epoch = ClockEpoch(1, 1, mono, 1_795_000_000 * 10**9, rng.random() < 0.5, 16_000_000)
    for _ in range(rng.randint(1, 25)):
        drops: tuple[tuple[int, int, str], ...] = ()
        kind = rng.random()
        if kind < 0.15:  # the buffer dropped some readings: declared in this batch
            n = rng.randint(1, 5)
            drops = ((seq, seq + n - 1, "buffer_full"),)
            seq += n
        elif kind < 0.25 and out:  # an unclean stop: numbers skipped, batch numbers jump by two or more
            n = rng.randint(1, 8)
            drops = ((seq, seq + n - 1, UNCLEAN_STOP),)
            seq += n
            bseq += rng.randint(1, 3)
            boot += 1
            mono = 10**12  # the machine restarted: a new monotonic clock
        count = 0 if kind > 0.95 else rng.randint(1, 6)
        ck: list[ClockEpoch] = []
        if count:
            if epoch.boot != boot:
                epoch = epoch._replace(first_seq=seq, boot=boot, mono_ns=mono, synced=rng.random() < 0.3)
            ck.append(epoch)
            for at in sorted(rng.sample(range(seq + 1, seq + count), k=min(count - 1, rng.randint(0, 2)))):
                mono += rng.randint(1, 10**9)  # a step, or a change of the sync state
                wall = mono + epoch.offset_ns + rng.choice([0, 86_400 * 10**9, -3600 * 10**9, 5 * 10**9])
                epoch = ClockEpoch(at, boot, mono, wall, rng.random() < 0.4, 4000)
                ck.append(epoch)
            mono += 10**9
        b = _batch(bseq, seq, seq + count - 1, prev, drops, boot, ck=tuple(ck))
        out.append(b)
        carried.update(range(seq, seq + count))
        prev, bseq, seq = b.digest, bseq + 1, seq + count
    return out, carried, seq - 1


Fixed = dict[int, tuple[bool, int | None]]  # reading number -> (uncertain, shift of its corrected time)


def run(transactions: list[list[VerifiedBatch]]) -> tuple[ledger.StreamLedger, list[int], ledger.Plan, Fixed]:
    """Apply transactions one after another, as workers sharing a database would."""
    ledgers: dict[ledger.Key, ledger.StreamLedger] = {}
    links: dict[ledger.Key, dict[int, ledger.Link]] = {}
    stored_epochs: dict[int, clock.KnownEpoch] = {}
    rows: Fixed = {}
    inserted: list[int] = []
    last = ledger.Plan()
    for batches in transactions:
        # what the back-end loads: only the stored neighbours the transaction asks for, the
        # stored clock epochs of the runs it names and later ones
        work = Work(batches=batches)
        need = ledger.links_needed(work)
        loaded = {k: {n: link for n, link in v.items() if (k[0], k[1], n) in need} for k, v in links.items()}
        epochs = {key: {f: clock.KnownEpoch(k.epoch, k.shift_ns) for f, k in stored_epochs.items()
                        if k.epoch.boot >= boot} for key, boot in clock.boots_needed(work).items()}
        last = ledger.plan(work, ledgers, loaded, epochs)
        for key, v in loaded.items():
            links.setdefault(key, {}).update(v)
        for _, fresh, spans in last.readings:
            inserted += [r.seq for r in fresh]
            rows.update({r.seq: (u, shift) for r, u, shift in clock.timed(fresh, spans)})
        t = last.time
        stored_epochs.update({e.first_seq: clock.KnownEpoch(e, shift) for _, _, e, shift in t.epochs})
        for _, _, first, shift in t.shifts:
            stored_epochs[first].shift_ns = shift
        for _, _, a, b, shift in t.redates:
            rows.update({s: (True, shift) for s in range(a, b + 1) if s in rows and rows[s][0]})
    return ledgers.get((GW, 7), ledger.StreamLedger(GW, 7)), inserted, last, rows


def expected_time(batches: list[VerifiedBatch]) -> Fixed:
    """Each reading's flag and shift, from the whole history at once."""
    epochs = {e.first_seq: e for b in batches for e in b.clock}
    out: Fixed = {}
    for b in batches:
        for a, z, e in clock.clock_spans(b.clock, b.first_seq, b.last_seq):
            to = None if e.synced else correction(e, epochs.values())
            for s in range(a, z + 1):
                out[s] = (not e.synced, None if to is None else to.offset_ns - e.offset_ns)
    return out


@given(st.integers(0, 10_000), st.randoms(use_true_random=False))
def test_any_order_and_any_split_give_the_same_ledger(seed: int, rnd: random.Random) -> None:
    batches, carried, _ = history(seed)
    in_order, ins_order, _, time_in_order = run([[b] for b in batches])
    shuffled = batches + rnd.sample(batches, k=rnd.randint(0, len(batches)))  # re-deliveries too
    rnd.shuffle(shuffled)
    cuts = sorted(rnd.sample(range(1, len(shuffled)), k=rnd.randint(0, len(shuffled) - 1))) if len(shuffled) > 1 else []
    groups = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]
    any_order, ins_any, _, time_any = run(groups)
    assert sorted(ins_any) == sorted(carried) == sorted(ins_order), "every reading inserted exactly once"
    want = expected_time(batches)
    assert time_any == time_in_order == {s: want.get(s, (False, None)) for s in carried}, "the same corrected times"
    assert any_order.uncertain.r == in_order.uncertain.r
    assert ledger.ranges_size(any_order.uncertain) == sum(1 for u, _ in want.values() if u)
    assert ledger.ranges_size(any_order.redated) == sum(1 for u, f in want.values() if u and f is not None)
    mine, theirs = ledger.to_row(in_order), ledger.to_row(any_order)
    dup = ledger.LEDGER_COLUMNS.index("duplicates")
    assert mine[:dup] + mine[dup + 1:] == theirs[:dup] + theirs[dup + 1:]
    assert any_order.duplicates == len(shuffled) - len(batches)
    assert any_order.chain_breaks == 0 and any_order.conflicts == 0
    assert any_order.missing == 0, any_order.missing_ranges()


@given(st.integers(0, 10_000), st.data())
def test_a_batch_that_never_arrives_is_missing_and_its_neighbours_still_chain(seed: int, data: st.DataObject) -> None:
    batches, _, _ = history(seed)
    with_readings = [b for b in batches if b.count > 0]
    assume(with_readings)
    lost = data.draw(st.sampled_from(with_readings))
    got, inserted, _, _ = run([[b] for b in reversed(batches) if b is not lost])
    later = any(b.bseq > lost.bseq and (b.count > 0 or b.drops) for b in batches)
    gone = lost.count + sum(b - a + 1 for a, b, _ in lost.drops)  # its declarations were lost with it
    assert got.missing == (gone if later else 0), "a lost tail is unknown until a heartbeat says more"
    assert set(inserted).isdisjoint(range(lost.first_seq, lost.last_seq + 1))
    assert got.chain_breaks == 0


def test_missing_ranges_start_at_one_and_lie_between_what_was_accounted_for() -> None:
    a = _batch(3, 11, 15, bytes(32))
    b = _batch(5, 21, 30, bytes(32))
    got, _, _, _ = run([[a, b]])
    assert got.missing_ranges() == [(1, 10), (16, 20)]
    assert got.missing == 15
    assert got.verdict() == "missing"


def test_same_batch_number_with_other_content_is_a_conflict_and_quarantined() -> None:
    a = _batch(1, 1, 5, bytes(32))
    forged = _batch(1, 1, 5, bytes(32), salt=b"x")
    got, inserted, plan, _ = run([[a], [forged]])
    assert inserted == [1, 2, 3, 4, 5]
    assert got.conflicts == 1 and got.verdict() == "broken"
    assert [r.reason for r in plan.refused] == [CONFLICT]


def test_a_link_that_does_not_chain_is_a_break_whichever_side_arrives_second() -> None:
    a = _batch(1, 1, 5, bytes(32))
    b = _batch(2, 6, 9, b"\x01" * 32)  # names a predecessor that is not batch 1
    for order in ([[a], [b]], [[b], [a]], [[a, b]]):
        got, _, _, _ = run(order)
        assert got.chain_breaks == 1 and got.chain_links == 0


def test_unclean_stop_numbers_that_arrived_are_not_skipped() -> None:
    a = _batch(1, 1, 5, bytes(32))
    sent_before_the_stop = _batch(2, 6, 8, a.digest)  # the gateway forgot it had sent this
    after = _batch(4, 13, 14, a.digest, drops=((6, 12, UNCLEAN_STOP),), boot=2)
    got, inserted, _, _ = run([[after], [a], [sent_before_the_stop]])
    assert sorted(inserted) == [1, 2, 3, 4, 5, 6, 7, 8, 13, 14]
    assert got.skipped == 4 and got.missing == 0 and got.dropped == 0
    assert got.restarts == 1 and got.verdict() == "complete"


def test_rows_round_trip() -> None:
    batches, _, _ = history(3)
    got, _, _, _ = run([batches])
    again = ledger.from_row(ledger.to_row(got))
    assert ledger.to_row(again) == ledger.to_row(got)


# -- the heartbeat and the tail ------------------------------------------------------------------

S = 1_000_000_000  # one second in ns


def _hb(last: int, held: int, seen_s: int, sent_s: int | None = None) -> Heartbeat:
    return Heartbeat(GW, 7, 1, last, last // 5, held, (seen_s if sent_s is None else sent_s) * S, seen_s * S)


def _apply(batches: list[VerifiedBatch], beats: list[Heartbeat]) -> ledger.StreamLedger:
    ledgers: dict[ledger.Key, ledger.StreamLedger] = {}
    ledger.plan(Work(batches=batches, heartbeats=beats), ledgers, {})
    return ledgers[(GW, 7)]


def test_a_tail_the_heartbeat_says_had_left_is_missing_after_the_grace_and_pending_before() -> None:
    led = _apply([_batch(1, 1, 10, bytes(32))], [_hb(25, 21, seen_s=100)])  # 11..20 left, 21..25 on the gateway
    assert led.missing_ranges(at_ns=100 * S + 299 * S) == [] and led.pending(at_ns=399 * S) == 15
    assert led.missing_ranges(at_ns=400 * S) == [(11, 20)] and led.pending(at_ns=400 * S) == 5
    assert ledger.summarize([led], {}, at_ns=400 * S)[0].verdict() == "missing"
    assert ledger.summarize([led], {}, at_ns=400 * S, grace=301)[0].verdict() == "complete"


def test_a_heartbeat_alone_makes_a_ledger_and_a_gateway_that_keeps_beating_does_not_move_its_deadline() -> None:
    beats = [_hb(40, 41, seen_s=100 + 60 * i) for i in range(10)]  # nothing ever arrived
    led = _apply([], beats)
    assert led.claims == [[40, 100 * S]] and led.hb_last_seq == 40
    assert led.missing_ranges(at_ns=400 * S) == [(1, 40)] and led.readings == 0


def test_an_older_heartbeat_arriving_late_changes_nothing_it_should_not() -> None:
    late, new = _hb(30, 31, seen_s=200, sent_s=150), _hb(50, 51, seen_s=210, sent_s=200)
    a, b = _apply([], [new, late]), _apply([], [late, new])
    assert ledger.to_row(a) == ledger.to_row(b)
    assert a.hb_last_seq == 50 and a.claims == [[30, 200 * S], [50, 210 * S]]


@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 50), st.integers(0, 10_000)), max_size=60),
       st.randoms(use_true_random=False), st.integers(0, 20_000))
def test_claims_keep_the_earliest_time_each_number_was_claimed(beats: list[tuple[int, int, int]], rnd: random.Random,
                                                                 at: int) -> None:
    claims: list[list[int]] = []
    order = beats[:]
    rnd.shuffle(order)
    for upto, _, seen in order:
        ledger.claim(claims, upto, seen)
    assert len(claims) <= ledger.MAX_CLAIMS
    assert claims == sorted(claims) and all(a[1] < b[1] for a, b in itertools.pairwise(claims))
    exact = max((u for u, _, s in beats if s <= at), default=0)
    kept = max((u for u, s in claims if s <= at), default=0)
    assert kept <= exact, "a claim is never due earlier than it was made"
    if len(beats) <= ledger.MAX_CLAIMS:
        assert kept == exact
