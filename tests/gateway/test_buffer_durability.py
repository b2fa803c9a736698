"""The buffer's group transaction and number reservation, against the real SQLite files.

A batch may leave before its transaction commits. What keeps that honest is the reservation:
after an unclean stop no reading or batch number is ever reused, and the skipped reading numbers
are declared. The two unclean stops are reproduced on the real files:

* ``kill -9``: the process dies, the operating system keeps every committed transaction. The
  files as another process reads them at that moment are exactly what the next start finds.
* a power cut: only what was fsynced survives. The buffer fsyncs when it reserves numbers, so
  the files copied right after a reservation are the worst case a power cut can leave.

A verifying receiver (the reference one) is fed every batch that "left", before and after.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.batcher import Batcher
from gateway.driver_api import Reading
from gateway.receiver import KeyBindings, Receiver
from gateway.store import Store
from gateway.wire import UNCLEAN_STOP, Batch
from tests.gateway.helpers import batcher_for, make_config

T0 = 1_795_000_000_000_000_000


class SnapshotBuffer(Store):
    """A buffer that copies its files right after each fsync (the durable state at that moment)."""

    snap_dir: Path

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        durable = self.db.durable_sync

        def snapshot(values: dict[str, int]) -> None:
            durable(values)
            _copy_files(self.path, self.snap_dir)

        self.db.durable_sync = snapshot  # type: ignore[method-assign]


def _copy_files(db: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("buffer.db*"):
        old.unlink()
    for suffix in ("", "-wal"):
        src = Path(str(db) + suffix)
        if src.exists():
            shutil.copyfile(src, into / (db.name + suffix))


def _buffer(state: Path, cls: type[Store] = Store, db: Path | None = None, **buffer: Any) -> tuple[Store, Batcher]:
    config = make_config(state, buffer=buffer, batch={"max_readings": 50})
    cfg = config.config
    buf = cls(db or state / "buffer.db", cfg.gateway.id, cfg.buffer, cfg.batch)
    return buf, batcher_for(config)


class Upstream:
    """The receiver side: every batch that left, verified; readings by number, to catch reuse."""

    def __init__(self, state: Path) -> None:
        self.rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
        self.values: dict[int, Any] = {}

    def take(self, batch: Batch) -> None:
        feed = self.rx.feed(batch.data)
        assert feed.status in ("ok", "duplicate"), (feed.status, feed.reason)
        for r in feed.readings:
            assert self.values.setdefault(r.seq, (r.ts_ns, r.value)) == (r.ts_ns, r.value), f"number {r.seq} reused"


async def _send(buf: Store, batcher: Batcher, up: Upstream, start: int, batches: int, ack_every: int = 2) -> int:
    """``batches`` batches of 20 readings each, made at once (as on an idle uplink), all sent, every
    ``ack_every``-th acknowledged; returns the next reading index."""
    i = start
    for k in range(batches):
        for _ in range(20):
            buf.put(Reading("gw-test", "n", T0 + i, i))
            i += 1
        batch = await buf.make_batch(batcher)
        assert batch is not None
        up.take(batch)
        if k % ack_every == 0:
            await buf.ack(batch)
    return i


async def _resend_outbox(buf: Store, up: Upstream) -> None:
    for bseq, _ in await buf.outbox():
        batch = await buf.load_batch(bseq)
        assert batch is not None
        up.take(batch)
        await buf.ack(batch)


def _assert_complete(up: Upstream, next_seq: int) -> None:
    s = up.rx.summary()
    assert (s.gaps, s.chain_breaks, s.bad_signatures, s.malformed, s.dropped) == (0, 0, 0, 0, 0), s.to_json()
    assert s.readings + s.skipped == next_seq - 1, "every number received or declared skipped"


@pytest.mark.parametrize("stop", ["kill9", "power_cut"])
async def test_an_unclean_stop_never_reuses_a_number_and_declares_the_skipped_ones(tmp_path: Path,
                                                                                 stop: str) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state, SnapshotBuffer, commit_interval="60s")
    assert isinstance(buf, SnapshotBuffer)
    buf.snap_dir = tmp_path / "fsynced"
    await buf.open()
    up = Upstream(state)
    i = await _send(buf, batcher, up, 0, 30)
    await buf.commit()  # a group commit (no fsync): a kill keeps it, a power cut may not
    i = await _send(buf, batcher, up, i, 7)  # still in the open transaction, already sent
    if stop == "kill9":
        _copy_files(buf.path, tmp_path / "after")  # committed state, as the next process finds it
    else:
        shutil.copytree(buf.snap_dir, tmp_path / "after")  # what the last fsync made durable
    sent_last = int(buf.numbers.meta["next_seq"]) - 1
    await buf.close()

    again, batcher = _buffer(state, db=tmp_path / "after" / "buffer.db")
    await again.open()
    assert again.stats.skipped_unclean > 0
    first_new = int(again.numbers.meta["next_seq"])
    assert first_new > sent_last, "no number that may have left is used again"
    await _resend_outbox(again, up)  # what the outbox still holds goes again: duplicates at most
    i = await _send(again, batcher, up, i, 5, ack_every=1)
    while (b := await again.make_batch(batcher)) is not None:
        up.take(b)
        await again.ack(b)
    next_seq = int(again.numbers.meta["next_seq"])
    await again.close()

    _assert_complete(up, next_seq)
    declared = [st.unclean.r for st in up.rx.streams.values()]
    assert declared and declared[0][0][1] == first_new - 1, "the skipped range ends where numbering resumed"
    s = up.rx.summary()
    assert s.restarts == 1
    assert s.skipped == first_new - 1 - sent_last, "skipped: the reserved numbers nobody received"
    if stop == "power_cut":
        assert s.duplicate_readings > 0 or s.duplicates > 0, "batches the cut forgot are made again, same numbers"


async def test_a_clean_stop_returns_the_unused_numbers(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    up = Upstream(state)
    i = await _send(buf, batcher, up, 0, 12)
    resv = int(buf.numbers.meta["seq_resv"])
    next_seq = int(buf.numbers.meta["next_seq"])
    assert resv >= next_seq, "numbers are reserved ahead of use"
    await buf.close()
    buf, batcher = _buffer(state)
    await buf.open()
    assert int(buf.numbers.meta["next_seq"]) == next_seq and buf.stats.skipped_unclean == 0
    await _resend_outbox(buf, up)
    await _send(buf, batcher, up, i, 3, ack_every=1)
    await buf.close()
    s = up.rx.summary()
    assert s.skipped == 0 and s.gaps == 0 and s.chain_breaks == 0 and UNCLEAN_STOP not in s.drop_reasons


async def test_acknowledged_readings_are_stored_and_forgotten_in_one_transaction(tmp_path: Path) -> None:
    """At a trickle each batch is acknowledged before the group commits: its segment and row are
    inserted and deleted in the same transaction, and the committed file never holds them."""
    state = tmp_path / "s"
    buf, batcher = _buffer(state, commit_interval="60s")
    await buf.open()
    up = Upstream(state)
    await _send(buf, batcher, up, 0, 10, ack_every=1)
    await buf.close()
    db = sqlite3.connect(state / "buffer.db")
    assert db.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
    assert int(db.execute("SELECT value FROM meta WHERE key = 'next_bseq'").fetchone()[0]) == 11
    db.close()
    assert buf.stats.reservations <= 4, "ten batches need one or two reservations, not one fsync each"
    assert up.rx.summary().readings == 200


async def test_reservations_grow_with_the_rate(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    up = Upstream(state)
    await _send(buf, batcher, up, 0, 300, ack_every=1)
    await buf.close()
    assert up.rx.summary().readings == 6000
    # 300 batches and 6000 readings made in well under RESERVE_FOR: the blocks double each time
    assert buf.stats.reservations <= 12, buf.stats.reservations


async def test_a_failing_write_keeps_the_transaction_s_earlier_writes(tmp_path: Path) -> None:
    """A statement that fails (here: the file may not grow, as on a full disk) rolls the whole
    group transaction back; the journal replays the batches already made, and the readings of the
    failed call wait in memory. Nothing is lost or numbered twice."""
    state = tmp_path / "s"
    buf, batcher = _buffer(state, commit_interval="60s")
    await buf.open()
    up = Upstream(state)
    i = await _send(buf, batcher, up, 0, 3, ack_every=99)  # sent, not acknowledged: in the outbox
    assert buf.db.conn is not None
    pages = buf.db.conn.execute("PRAGMA page_count").fetchone()[0]
    buf.db.conn.execute(f"PRAGMA max_page_count = {pages}")
    assert buf.db.tx_open and buf.db.journal, "batches wait in the open transaction"
    room = int(buf.numbers.meta["seq_resv"]) - int(buf.numbers.meta["next_seq"]) + 1
    assert room > 0
    for _ in range(room):  # within the reserved numbers: no commit before the failing insert
        buf.put(Reading("gw-test", "big", T0 + i, "y" * 3000))
        i += 1
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await buf.make_batch(batcher)
    assert len(buf.intake.pending) == room, "the readings of the failed call wait in memory"
    assert not buf.db.tx_open and buf.db.journal, "rolled back; the earlier writes wait in the journal"
    assert [b for b, _ in await buf.outbox()] == [2, 3], "reads see the journal's writes (batch 1 was acknowledged)"
    buf.db.conn.execute("PRAGMA max_page_count = 1073741823")
    while (b := await buf.make_batch(batcher)) is not None:
        up.take(b)
        await buf.ack(b)
    await _resend_outbox(buf, up)
    next_seq = int(buf.numbers.meta["next_seq"])
    await buf.close()
    _assert_complete(up, next_seq)
    assert up.rx.summary().readings == 60 + room and up.rx.summary().skipped == 0


@pytest.mark.parametrize("order", ["in_order", "declaration_first"])
async def test_the_receiver_counts_skipped_numbers_whatever_the_arrival_order(tmp_path: Path, order: str) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state, commit_interval="60s")
    await buf.open()
    for i in range(20):
        buf.put(Reading("gw-test", "n", T0 + i, i))
    before = await buf.make_batch(batcher)  # left, never committed
    _copy_files(buf.path, tmp_path / "after")
    await buf.close()
    again, batcher = _buffer(state, db=tmp_path / "after" / "buffer.db")
    await again.open()
    again.put(Reading("gw-test", "n", T0 + 99, 99))
    after = await again.make_batch(batcher)
    await again.close()
    assert before is not None and after is not None
    resv = after.first_seq - 1
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    for b in ([before, after] if order == "in_order" else [after, before]):
        assert rx.feed(b.data).status == "ok"
    s = rx.summary()
    assert (s.readings, s.skipped, s.gaps, s.dropped, s.chain_breaks) == (21, resv - 20, 0, 0, 0)
    assert s.ok


async def test_unacknowledged_readings_are_fsynced_within_the_sync_interval(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Readings waiting for an uplink are flushed to disk at least every SYNC_EVERY (here: at
    every commit); acknowledged ones never cost a flush of their own."""
    import gateway.store.db as buffer_mod

    monkeypatch.setattr(buffer_mod, "SYNC_EVERY", 0.0)
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    up = Upstream(state)
    await _send(buf, batcher, up, 0, 5, ack_every=1)
    await buf.commit()
    assert buf.stats.syncs == 0, "everything stored was acknowledged: nothing to flush"
    for i in range(30):
        buf.put(Reading("gw-test", "n", T0 + 1000 + i, i))
    await buf.commit()  # the uplink is down: these wait on disk
    assert buf.stats.readings == 30 and buf.stats.syncs == 1
    await buf.close()


async def test_readings_left_waiting_are_fsynced_when_nothing_else_happens(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that leaves readings waiting, and then silence: a timer makes the fsync, once."""
    import gateway.store.db as buffer_mod

    monkeypatch.setattr(buffer_mod, "SYNC_EVERY", 0.3)
    state = tmp_path / "s"
    buf, _ = _buffer(state)
    await buf.open()
    for i in range(10):
        buf.put(Reading("gw-test", "n", T0 + i, i))
    await buf.commit()
    assert buf.stats.syncs == 0 and buf.stats.readings == 10
    async with asyncio.timeout(10):
        while buf.stats.syncs == 0:  # noqa: ASYNC110 (the buffer's own timer does it)
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.8)
    assert buf.stats.syncs == 1, "one fsync for one commit, then no more wakeups"
    assert buf.db.timer is None
    await buf.close()
