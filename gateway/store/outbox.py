"""The outbox: signed batches waiting for acknowledgement, and blobs waiting for upload.

A batch is recorded as one ``batches`` row (its protected header, signature and hash) over the
segments it holds, so a batch is rebuilt byte for byte after a restart without being stored
twice. An acknowledged batch deletes its row and its segments; with several uplinks in ``all``
mode the acknowledgements are stored until every required uplink has one. A batch an uplink
refuses as bad is kept in ``dead_letters`` for inspection (``sensegate doctor``).

The batch step (gateway/batcher.py) runs inside the store's transaction: it reads what waits
through ``Unbatched`` and hands back a ``NewBatch``, which the outbox records.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gateway import wire
from gateway.store.db import Database, StoreStats
from gateway.store.numbers import Numbers
from gateway.store.timeline import Timeline
from gateway.wire import Batch

log = logging.getLogger("sensegate.buffer")


class Unbatched:
    """What waits to be batched, as the batch step sees it (database thread, inside the batch's
    transaction): the numbers, the chain's end, and the rows not yet in a batch."""

    def __init__(self, conn: sqlite3.Connection, numbers: Numbers, timeline: Timeline) -> None:
        meta = numbers.meta
        self._conn = conn
        self._timeline = timeline
        self.stream = int(meta["stream"])
        self.boot = int(meta["boot"])
        self.next_seq = int(meta["next_seq"])  # the next reading number (readings below are stored)
        self.next_bseq = int(meta["next_bseq"])
        self.last_hash: bytes = meta["last_hash"]
        self.batched_upto = int(meta["batched_upto"])  # reading numbers up to here are in batches

    def segments(self) -> Iterator[tuple[int, int, bytes]]:
        """(first_seq, last_seq, encoded records) of the segments not yet batched, in order."""
        return iter(self._conn.execute(
            "SELECT first_seq, last_seq, data FROM segments WHERE first_seq > ? ORDER BY first_seq",
            (self.batched_upto,)))

    def drops(self, before: int) -> list[tuple[int, int, str]]:
        """Undeclared drop ranges that start before reading number ``before``, in order."""
        return self._conn.execute(
            "SELECT first_seq, last_seq, reason FROM drops WHERE first_seq < ? ORDER BY first_seq", (before,)
        ).fetchall()

    def blob_drops(self, limit: int) -> list[tuple[bytes, str]]:
        """Undeclared blob drops: (sha256, reason)."""
        return self._conn.execute("SELECT sha256, reason FROM blob_drops LIMIT ?", (limit,)).fetchall()

    def clock(self, first: int, last: int) -> list[wire.ClockEpoch]:
        """The clock epochs readings ``first``..``last`` were stamped in, in order (the first one
        began at or before ``first``); none for readings stored before the clock was recorded."""
        return self._timeline.epochs(first, last)

    def clock_steps(self, limit: int) -> list[wire.ClockStep]:
        """Clock steps not yet declared, oldest first."""
        return self._timeline.undeclared(limit)


@dataclass(frozen=True)
class NewBatch:
    """A batch the batch step signed, for the outbox to record in the same transaction."""

    batch: Batch
    signed: wire.Signed
    drops_upto: int  # the drop rows it declares: first_seq up to this (0: none)
    blob_drops: list[bytes]  # the blob drops it declares
    batched_upto: int  # reading numbers up to here are now in batches (or declared)
    clock_steps: list[wire.ClockStep] = field(default_factory=list)  # the clock steps it declares


class BatchStep(Protocol):
    """Makes the next batch from what waits (gateway.batcher.Batcher)."""

    def next_batch(self, waiting: Unbatched) -> NewBatch | None: ...


class Outbox:
    """Batches from signing to acknowledgement; dead letters; blobs. Public coroutines run on the
    loop; ``_sync`` methods on the database thread."""

    def __init__(self, db: Database, numbers: Numbers, stats: StoreStats, timeline: Timeline) -> None:
        self.db = db
        self.numbers = numbers
        self.stats = stats
        self.timeline = timeline
        # acknowledged batches whose rows are deleted with the next write (or within a second):
        # one transaction fewer per batch; a power cut before that only re-sends (at-least-once)
        self.released: list[tuple[int, int, int]] = []
        self.flusher: asyncio.Task[None] | None = None
        self._live: set[int] = set()  # batches made or loaded and not yet released

    # -- recording a new batch ---------------------------------------------------------------

    def record_sync(self, new: NewBatch) -> None:
        """Write a new batch's row and what it declared, inside the caller's ``op``."""
        b, db = new.batch, self.db
        db.x("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
             (b.bseq, b.first_seq, b.last_seq, new.signed.protected, new.signed.signature, b.hash, b.created_ns))
        if new.drops_upto:
            db.x("DELETE FROM drops WHERE first_seq <= ?", (new.drops_upto,))
        db.xm("DELETE FROM blob_drops WHERE sha256 = ?", [(sha,) for sha in new.blob_drops])
        self.timeline.declare_sync(new.clock_steps, new.batched_upto)
        db.xm("UPDATE meta SET value = ? WHERE key = ?",
              [(b.bseq + 1, "next_bseq"), (b.hash, "last_hash"), (new.batched_upto, "batched_upto")])

    def booked(self, new: NewBatch) -> Batch:
        """Book a batch whose ``op`` succeeded."""
        batch = new.batch
        self.numbers.meta.update(next_bseq=batch.bseq + 1, last_hash=batch.hash, batched_upto=new.batched_upto)
        self.stats.batches_created += 1
        self.stats.last_batch_readings = batch.count
        self.stats.last_batch_bytes = len(batch.data)
        self._live.add(batch.bseq)
        return batch

    # -- reading the outbox -------------------------------------------------------------------

    async def outbox(self) -> list[tuple[int, set[str]]]:
        """Signed, unacknowledged batches (oldest first) and the uplinks that already took each."""
        return await self.db.run(self._outbox_sync)

    def _outbox_sync(self) -> list[tuple[int, set[str]]]:
        conn = self.db.view_sync()
        acked: dict[int, set[str]] = {}
        for bseq, uplink in conn.execute("SELECT bseq, uplink FROM acks"):
            acked.setdefault(bseq, set()).add(uplink)
        return [(bseq, acked.get(bseq, set())) for (bseq,) in conn.execute("SELECT bseq FROM batches ORDER BY bseq")]

    async def load_batch(self, bseq: int) -> Batch | None:
        """Rebuild a signed batch byte for byte from its outbox row and its segments."""
        return await self.db.run(self._load_batch_sync, bseq)

    def _load_batch_sync(self, bseq: int) -> Batch | None:
        conn = self.db.view_sync()
        row = conn.execute("SELECT * FROM batches WHERE bseq = ?", (bseq,)).fetchone()
        if row is None:
            return None
        _, first, last, protected, signature, digest, created = row
        parts = [r[0] for r in conn.execute(
            "SELECT data FROM segments WHERE first_seq BETWEEN ? AND ? ORDER BY first_seq", (first, last))]
        data = wire.assemble(protected, last - first + 1, parts, signature)
        if hashlib.sha256(data).digest() != digest:
            log.error("batch %d in the outbox no longer matches its hash (damaged file?); dead-lettered", bseq)
            with self.db.op():
                self.db.x("INSERT OR REPLACE INTO dead_letters VALUES (?, '', 'damaged in the buffer', ?, ?)",
                          (bseq, time.time_ns(), data))
                self.db.x("DELETE FROM batches WHERE bseq = ?", (bseq,))
            return None
        self._live.add(bseq)
        return Batch(bseq, first, last, data, digest, created, sum(len(p) for p in parts))

    # -- acknowledgements ---------------------------------------------------------------------

    async def ack_many(self, acks: list[tuple[Batch, str]], required: frozenset[str]) -> list[bool]:
        """Several acknowledgements in one trip to the database thread.

        Without required uplinks a release needs no transaction of its own: the rows are deleted
        with the next commit or batch, or within a second when nothing else is written (a power
        cut before that re-sends the batch after the restart: a duplicate, never a gap)."""
        if required:
            return await self.db.run(lambda: [self._ack_sync(b, u, required) for b, u in acks])
        out = []
        for batch, uplink in acks:
            if batch.bseq not in self._live:  # not made or loaded here, or acknowledged twice: ask the file
                again = any(bseq == batch.bseq for bseq, _, _ in self.released)
                out.append(not again and await self.db.run(self._ack_sync, batch, uplink, required))
                continue
            self._live.discard(batch.bseq)
            self.released.append((batch.bseq, batch.first_seq, batch.last_seq))
            self._released_stats(batch)
            out.append(True)
        if self.stats.readings <= 0:
            self.stats.oldest_ns = self.stats.oldest_seq = 0
        if self.released and self.flusher is None:
            self.flusher = asyncio.create_task(self._flush_later(), name="buffer-ack-flush")
        return out

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(1.0)
            if self.released and not self.db.stalled:
                await self.db.run(self.flush_op_sync)
        except sqlite3.Error as e:  # the next commit or close tries again
            log.warning("buffer: forgetting acknowledged batches failed (%s); will retry", e)
        finally:
            self.flusher = None

    def flush_op_sync(self) -> None:
        """Forget the released batches in an ``op`` of their own."""
        with self.db.op():
            n = self.flush_released_sync()
        self.forget_released(n)

    def flush_if_released_sync(self) -> None:
        """Before the timer's commit: forget released batches with it."""
        if self.released:
            self.flush_op_sync()

    def flush_released_sync(self) -> int:
        """Delete the rows of released batches, inside the caller's ``op``; returns how many (the
        caller drops that many entries from the front of ``released`` once the op succeeded)."""
        released = self.released[:]  # the loop thread may append meanwhile
        if released:
            self.db.xm("DELETE FROM batches WHERE bseq = ?", [(b,) for b, _, _ in released])
            self.db.xm("DELETE FROM segments WHERE first_seq BETWEEN ? AND ?", [(a, b) for _, a, b in released])
        return len(released)

    def forget_released(self, n: int) -> None:
        if n:
            del self.released[:n]
            assert self.db.conn is not None
            self.stats.refresh_oldest(self.db.conn)

    def _released_stats(self, batch: Batch) -> None:
        st = self.stats
        st.acked_batches += 1
        st.last_ack_ns = time.time_ns()
        st.acked_readings += max(batch.count, 0)
        st.readings -= max(batch.count, 0)
        st.bytes -= batch.nbytes

    def _ack_sync(self, batch: Batch, uplink: str, required: frozenset[str]) -> bool:
        db = self.db
        assert db.conn is not None
        with db.op():
            if required:
                db.x("INSERT OR IGNORE INTO acks VALUES (?, ?)", (batch.bseq, uplink))
                have = {u for (u,) in db.conn.execute("SELECT uplink FROM acks WHERE bseq = ?", (batch.bseq,))}
                if not required <= have:
                    return False
            gone = db.x("DELETE FROM batches WHERE bseq = ?", (batch.bseq,)).rowcount
            db.x("DELETE FROM acks WHERE bseq = ?", (batch.bseq,))
            db.x("DELETE FROM segments WHERE first_seq BETWEEN ? AND ?", (batch.first_seq, batch.last_seq))
        self._live.discard(batch.bseq)
        if gone:
            self._released_stats(batch)
        self.stats.refresh_oldest(db.conn)
        return bool(gone) or bool(required)

    # -- dead letters -------------------------------------------------------------------------

    async def dead_letter(self, batch: Batch, uplink: str, reason: str) -> None:
        """Keep a batch an uplink refused as bad, for inspection (sensegate doctor reports them)."""
        await self.db.run(self._dead_letter_sync, batch, uplink, reason)

    def _dead_letter_sync(self, batch: Batch, uplink: str, reason: str) -> None:
        with self.db.op():
            self.db.x("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                      (batch.bseq, uplink, reason[:500], time.time_ns(), batch.data))
        self.stats.dead_letters += 1

    async def dead_letters(self) -> list[tuple[int, str, str]]:
        """(bseq, uplink, reason) of every dead-lettered batch."""
        return await self.db.run(lambda: [(int(r[0]), str(r[1]), str(r[2])) for r in self.db.view_sync().execute(
            "SELECT bseq, uplink, reason FROM dead_letters ORDER BY bseq")])

    # -- blobs (images) -----------------------------------------------------------------------

    async def next_blob(self) -> tuple[bytes, str, bytes] | None:
        """The oldest blob waiting for upload: (sha256, content type, data)."""
        return await self.db.run(self._next_blob_sync)

    def _next_blob_sync(self) -> tuple[bytes, str, bytes] | None:
        row = self.db.view_sync().execute(
            "SELECT sha256, content_type, data FROM blobs ORDER BY created_ns LIMIT 1").fetchone()
        return (row[0], row[1], row[2]) if row else None

    async def blob_done(self, sha256: bytes) -> None:
        """The blob reached the uplink: delete it."""
        await self.db.run(self._blob_done_sync, sha256)

    def _blob_done_sync(self, sha256: bytes) -> None:
        with self.db.op():
            self.db.x("DELETE FROM blobs WHERE sha256 = ?", (sha256,))
