"""The store and the batch step with a stepping clock: which epochs a batch declares (``ck``),
from which reading on, and the steps (``cj``); a backlog across a restart; the bounds."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway import cose, wire
from gateway.batcher import Batcher
from gateway.clock import CHECK_EVERY
from gateway.store import Store
from gateway.store.intake import ClockMark
from gateway.testing import SteppedClock
from tests.gateway.helpers import clock_store, put_stamped

S = 10**9
DAY = 86_400 * S
T0 = 1_795_000_000 * S


def _header(batch: wire.Batch) -> wire.Header:
    return wire.parse_header(cose.parse_sign1(batch.data).protected)


async def _drain(store: Store, batcher: Batcher) -> list[wire.Header]:
    out = []
    while (b := await store.make_batch(batcher)) is not None:
        out.append(_header(b))
        await store.ack(b)
    return out


async def test_a_step_among_pending_readings_is_placed_at_the_first_reading_of_the_new_clock(tmp_path: Path) -> None:
    for delta in (DAY, -DAY - 3600 * S):
        clock = SteppedClock(T0 - DAY, synced=False)
        store, batcher = clock_store(tmp_path / str(delta), clock)
        await store.open()
        try:
            put_stamped(store, clock, 5)  # numbers 1-5 on the day-behind clock
            clock.step(delta, synced=True)
            put_stamped(store, clock, 4)  # 6-9 on the new one: the check at the take sees the step after them
            heads = await _drain(store, batcher)
        finally:
            await store.close()
        assert len(heads) == 1
        h = heads[0]
        assert [(e.first_seq, e.synced) for e in h.ck] == [(1, False), (6, True)]
        assert h.ck[1].offset_ns - h.ck[0].offset_ns == delta
        (step,) = h.cj
        assert step.first_seq == 6 and step.delta_ns == delta and step.boot == h.bo == 1
        assert step.mono_ns - step.since_ns <= 10 * S


async def test_a_backlog_keeps_the_epochs_it_was_stamped_in_across_a_restart(tmp_path: Path) -> None:
    clock = SteppedClock(T0 - DAY, synced=False)
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    put_stamped(store, clock, 3)
    await store.commit()  # stored, not batched (the uplink is down)
    clock.advance(5 * S)
    clock.step(DAY, synced=True)
    put_stamped(store, clock, 2)
    await store.commit()
    await store.close()
    clock.advance(60 * S)  # a clean restart: run 2, same machine
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    try:
        put_stamped(store, clock, 2)
        heads = await _drain(store, batcher)
    finally:
        await store.close()
    h = heads[0]
    assert h.bo == 2 and h.sq == (1, 7)
    assert [(e.first_seq, e.boot, e.synced) for e in h.ck] == [(1, 1, False), (4, 1, True), (6, 2, True)]
    assert [(s.boot, s.first_seq, s.delta_ns) for s in h.cj] == [(1, 4, DAY)]


async def test_only_a_sync_change_is_an_epoch_without_a_step_and_steps_are_declared_once(tmp_path: Path) -> None:
    clock = SteppedClock(T0, synced=False)
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    try:
        put_stamped(store, clock, 2)
        assert len(await _drain(store, batcher)) == 1
        clock.advance(2 * S)
        clock.synced = True  # NTP slewed it in: no step
        put_stamped(store, clock, 2)
        (h,) = await _drain(store, batcher)
        # seen when these were taken: they may predate it, so they count as unsynchronised
        assert [(e.first_seq, e.synced) for e in h.ck] == [(1, False)]
        put_stamped(store, clock, 1)
        (h,) = await _drain(store, batcher)
        assert [(e.first_seq, e.synced) for e in h.ck] == [(5, True)] and not h.cj
        clock.step(-30 * S)
        put_stamped(store, clock, 1)
        (h,) = await _drain(store, batcher)
        assert [s.first_seq for s in h.cj] == [6]
        put_stamped(store, clock, 1)
        (h,) = await _drain(store, batcher)
        assert not h.cj and h.ck[0].first_seq == 6  # declared once; the epoch still applies
        assert store.db.conn is not None
        assert [r[0] for r in store.db.conn.execute("SELECT first_seq FROM clock")] == [6]  # older ones pruned
    finally:
        await store.close()


async def test_a_clock_that_changes_more_than_64_times_ends_a_batch_early(tmp_path: Path) -> None:
    clock = SteppedClock(T0)
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    try:
        for i in range(70):  # a flapping clock: one epoch per commit
            put_stamped(store, clock, 2)
            clock.step(S if i % 2 else -S)
            await store.commit()
        heads = await _drain(store, batcher)
    finally:
        await store.close()
    assert len(heads) == 2 and all(len(h.ck) <= wire.MAX_DECLARED for h in heads)
    assert heads[0].sq[1] + 1 == heads[1].sq[0] and heads[1].sq[1] == 140
    assert heads[1].ck[0].first_seq <= heads[1].sq[0]


async def test_the_clock_is_checked_while_no_reading_comes(tmp_path: Path) -> None:
    clock = SteppedClock(T0)
    store, _ = clock_store(tmp_path, clock)
    await store.open()
    try:
        checks = clock.state_reads
        clock.step(DAY)
        await asyncio.sleep(CHECK_EVERY * 1.5)
        assert store.clock.steps == 1 and clock.state_reads > checks  # seen by the periodic check
    finally:
        await store.close()


async def test_readings_stored_before_the_clock_was_recorded_have_no_epoch(tmp_path: Path) -> None:
    """A buffer from a sensegate before the clock keys (or a salvaged one): its backlog goes out
    with the new run's readings, the first ``ck`` entry after the batch's first reading."""
    clock = SteppedClock(T0)
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    put_stamped(store, clock, 3)
    await store.commit()
    await store.close()
    db = sqlite3.connect(tmp_path / "buffer.db")
    db.execute("DROP TABLE clock")  # as the older sensegate left it
    db.commit()
    db.close()
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    try:
        put_stamped(store, clock, 2)
        (h,) = await _drain(store, batcher)
    finally:
        await store.close()
    assert h.sq == (1, 5) and [(e.first_seq, e.boot) for e in h.ck] == [(4, 2)]
    assert [(a, b) for a, b, _ in h.clock_spans()] == [(4, 5)]


async def test_a_failed_write_leaves_the_clock_record_as_the_file_has_it(tmp_path: Path) -> None:
    """The epochs are mirrored in memory; a transaction that fails (a full disk) is rolled back
    and the mirror read again from the file before its next use."""
    clock = SteppedClock(T0)
    store, batcher = clock_store(tmp_path, clock)
    await store.open()
    try:
        put_stamped(store, clock, 2)
        (h,) = await _drain(store, batcher)
        epoch = store.clock.epoch

        def failing() -> None:
            with store.db.op():
                store.timeline.record_sync(50, 1, [ClockMark(0, epoch)])
                raise sqlite3.OperationalError("database or disk is full")

        with pytest.raises(sqlite3.OperationalError):
            await store.db.run(failing)
        got = await store.db.run(store.timeline.epochs, 1, 100)
        assert [e.first_seq for e in got] == [e.first_seq for e in h.ck] == [1]
        put_stamped(store, clock, 1)
        (h,) = await _drain(store, batcher)
        assert [e.first_seq for e in h.ck] == [1]
    finally:
        await store.close()
