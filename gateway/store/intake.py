"""Readings in: held in memory for a moment, then numbered and stored as segments.

A driver's reading waits in memory for at most ``buffer.commit_interval`` (less when the uplink
is idle), then is stored with others as one *segment* row: their SenML records, already
CBOR-encoded, with a contiguous range of reading numbers. Batches are made of whole segments.
Bounds: ``max_bytes`` of segment data and ``max_age``; past them the policy drops the oldest
unbatched segments or refuses new readings, and the dropped range is recorded for the next
batch to declare. When the disk cannot keep up, readings past a bound in memory are counted,
numbered and declared (``overflow``), never dropped silently.

The clock (gateway/clock.py) is checked when readings are taken from memory and about once a
second otherwise, never per reading. A new clock epoch (a step, or a change of the sync state)
becomes a *mark* on the pending reading it applies from (after a step, the first reading
stamped by the new clock: ``clock.split``); marks travel with the readings and are stored, with
the reading number they apply from, for the batch step to declare (gateway/store/timeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import clock, senml
from gateway.clock import ClockWatch, Epoch, Step
from gateway.config.schema import BufferSection
from gateway.driver_api import Blob, Reading
from gateway.store.db import Database, StoreStats
from gateway.store.numbers import Numbers
from gateway.store.outbox import Outbox
from gateway.store.timeline import Timeline
from gateway.wire import BLOB_STORE_FULL, BUFFER_FULL, EXPIRED, OVERFLOW, Drop

log = logging.getLogger("sensegate.buffer")


@dataclass(frozen=True)
class Inserted:
    """What one store of readings wrote (for the books, once its transaction op succeeded)."""

    next_seq: int
    readings: int
    added_bytes: int
    gone_readings: int
    gone_bytes: int
    drops: list[Drop]
    blobs: bool


@dataclass(slots=True)
class ClockMark:
    """A clock epoch that applies from the reading at ``index`` (of the pending list, or of a
    take) on, and the step that began it."""

    index: int
    epoch: Epoch
    step: Step | None = None


class Intake:
    """The reading side of the store: ``put`` (the drivers' hot path), the committer, the bounds."""

    def __init__(self, db: Database, numbers: Numbers, outbox: Outbox, cfg: BufferSection, segment_readings: int,
                 stats: StoreStats, watch: ClockWatch, timeline: Timeline) -> None:
        self.db = db
        self.numbers = numbers
        self.outbox = outbox
        self.cfg = cfg
        self.segment_readings = segment_readings  # at most this many readings per segment (batch.max_readings)
        self.stats = stats
        self.eager = True  # set by the pipeline: commit at once when the uplink is idle
        self.on_commit: Callable[[], None] = lambda: None
        # set by the pipeline: readings are waiting and the uplink is idle, make a batch (which
        # stores them in the same transaction); None: the committer commits on its own
        self.on_pending: Callable[[], None] | None = None
        self.blob_commits = 0  # commits that stored blobs (the uploader's cue)
        self.pending: list[Reading] = []
        self.overflow = 0
        self.max_pending = max(cfg.commit_readings * 10, 100_000)
        self._pending_since = 0.0  # monotonic time of the oldest pending reading
        self._commit_at = cfg.commit_readings - 1  # pending count at which a put wakes the committer
        self._wake = asyncio.Event()
        self.committer: asyncio.Task[None] | None = None
        self.opened = asyncio.Event()  # the store's: nothing is stored before the file is open
        self._encoder = senml.RecordEncoder()
        self._dropping = False
        self._episode: list[int] = [0, 0, 0]  # count, first, last of the current drop episode
        self.clock = watch
        self.timeline = timeline
        self.marks: list[ClockMark] = [ClockMark(0, watch.epoch)]  # this run's first epoch: from its first reading
        self._checked = 0  # pending readings before this index were put before the last clock check
        self._clock_timer: asyncio.TimerHandle | None = None

    def put(self, reading: Reading) -> None:
        """Take a reading from a driver (never blocks; stored within commit_interval)."""
        pending = self.pending
        n = len(pending)
        if n >= self.max_pending:  # the disk cannot keep up: count, number, report
            self.overflow += 1
            return
        pending.append(reading)
        if not n:
            self._pending_since = time.monotonic()
            self._wake.set()
        elif n >= self._commit_at:
            self._wake.set()

    def start(self) -> None:
        self.committer = asyncio.create_task(self._commit_loop(), name="buffer-committer")
        self._clock_timer = asyncio.get_running_loop().call_later(clock.CHECK_EVERY, self._clock_tick)

    def stop_clock(self) -> None:
        if self._clock_timer is not None:
            self._clock_timer.cancel()
            self._clock_timer = None

    def _clock_tick(self) -> None:
        self.watch_clock()
        self._clock_timer = asyncio.get_running_loop().call_later(clock.CHECK_EVERY, self._clock_tick)

    def watch_clock(self) -> None:
        """Check the clock; a new epoch is marked on the first pending reading it applies to."""
        change = self.clock.check()
        n = len(self.pending)
        if change is not None:
            at = n
            if change.step is not None and self._checked < n:  # readings put since the last check straddle it
                at = self._checked + clock.split([r.ts_ns for r in self.pending[self._checked:n]], change.step)
            if self.marks:
                at = max(at, self.marks[-1].index)
            self.marks.append(ClockMark(at, change.epoch, change.step))
        self._checked = n

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.pending and not self.overflow:
                continue
            if not self.opened.is_set():  # the file cannot be opened yet: readings wait here
                await self.opened.wait()
            if self.eager and self.on_pending is not None and len(self.pending) < self.cfg.commit_readings:
                # the uplink is idle: the next batch commits these readings in its own (fsynced)
                # transaction, one disk flush for both; should no batch take them (no uplink),
                # they are committed here once commit_interval has passed
                self.on_pending()
                left = self._pending_since + self.cfg.commit_interval - time.monotonic()
                if left > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await self._wake.wait()
                        continue  # taken, and new readings came: tell the pipeline again
                if not self.pending and not self.overflow:
                    continue
            # gather a burst: a tick when the uplink is idle, up to commit_interval otherwise
            wait = 0.002 if self.eager else self.cfg.commit_interval
            if len(self.pending) < self.cfg.commit_readings:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            try:
                await self.commit()
            except sqlite3.Error as e:  # disk full, I/O error: keep readings, retry later
                log.error("buffer commit failed (%s); %d readings kept in memory, retrying", e, len(self.pending))
                await asyncio.sleep(1.0)
                self._wake.set()

    def take(self) -> tuple[list[Reading], int, list[ClockMark]]:
        """Pending readings for one transaction (at most ``commit_readings``), the overflow count
        and the clock marks on those readings (indexes into the list returned)."""
        self.watch_clock()
        limit = self.cfg.commit_readings
        if len(self.pending) <= limit:
            readings, self.pending = self.pending, []
        else:
            readings = self.pending[:limit]
            del self.pending[:limit]
            self._wake.set()  # more to do: the committer comes straight back
        overflow, self.overflow = self.overflow, 0
        n = len(readings)
        taken: list[ClockMark] = []
        if self.marks and n:
            keep = []
            for m in self.marks:
                if m.index < n:
                    taken.append(m)
                else:
                    m.index -= n
                    keep.append(m)
            self.marks = keep
        self._checked = max(0, self._checked - n)
        return readings, overflow, taken

    def put_back(self, readings: list[Reading], overflow: int, marks: list[ClockMark]) -> None:
        self.pending[:0] = readings  # in order, ahead of newer ones
        self.overflow += overflow
        for m in self.marks:
            m.index += len(readings)
        self.marks[:0] = marks
        self._checked += len(readings)
        if readings:
            self._pending_since = time.monotonic()

    async def commit(self) -> None:
        """Store pending readings now: one transaction of at most ``commit_readings`` readings,
        so acknowledgements and batch signing never wait long behind a huge commit."""
        readings, overflow, marks = self.take()
        try:
            await self.db.run(self._commit_sync, readings, overflow, marks)
        except BaseException:
            self.put_back(readings, overflow, marks)
            raise
        self.on_commit()

    def _commit_sync(self, readings: list[Reading], overflow: int, marks: list[ClockMark]) -> None:
        """Store readings (the committer's path: no batch took them) and commit the group."""
        db = self.db
        if db.stalled:
            db.end_sync()  # a failed commit first; while it fails nothing new is stored
        self.numbers.reserve_sync(len(readings) + overflow, 0)
        with db.op():
            released = self.outbox.flush_released_sync()
            done = self.insert_sync(readings, overflow, marks)
        self.outbox.forget_released(released)
        self.inserted(done)
        try:
            db.end_sync()
            db.sync_if_due_sync()
        except (sqlite3.Error, OSError) as e:  # stored in the journal: retried by the timer, nothing is lost
            log.error("buffer commit failed (%s); %d statements kept in memory, retrying", e, len(db.journal))

    def insert_sync(self, readings: list[Reading], overflow: int, marks: list[ClockMark]) -> Inserted:
        """The writes of storing readings, inside the caller's ``op`` (their numbers reserved):
        number the readings, store their records as segments, apply the bounds, record the drops
        and the clock epochs they were stamped in."""
        db = self.db
        now = time.time_ns()
        seq = self.numbers.next_seq
        drops: list[Drop] = []
        blobs: list[tuple[bytes, str, int, bytes]] = []
        if overflow:
            drops.append(Drop(seq, seq + overflow - 1, OVERFLOW))
            seq += overflow
        if marks:
            self.timeline.record_sync(seq, self.numbers.boot, marks)
        rows = []
        per = self.segment_readings
        full = self.cfg.policy == "refuse_new" and self.stats.bytes >= self.cfg.max_bytes
        for i in range(0, len(readings), per):
            chunk = readings[i : i + per]
            if full:
                drops.append(Drop(seq, seq + len(chunk) - 1, BUFFER_FULL))
                seq += len(chunk)
                continue
            data, n = senml.encode_records(chunk, self._encoder)
            for r in chunk:
                if isinstance(r.value, Blob):
                    blobs.append((hashlib.sha256(r.value.data).digest(), r.value.content_type, now, r.value.data))
            rows.append((seq, seq + n - 1, len(data), now, data))
            seq += n
        db.xm("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", rows)
        if blobs:
            db.xm("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", blobs)
            self._bound_blobs_sync()
        added = sum(r[2] for r in rows)
        expired, gone_n, gone_b = self._enforce_bounds_sync(self.stats.bytes + added, now)
        drops += expired
        db.xm("INSERT INTO drops VALUES (?, ?, ?)", [(d.first_seq, d.last_seq, d.reason) for d in drops])
        db.x("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
        return Inserted(seq, sum(r[1] - r[0] + 1 for r in rows), added, gone_n, gone_b, drops, bool(blobs))

    def inserted(self, done: Inserted) -> None:
        """Book a stored insert: counters, drop episode, the blob uploader's cue."""
        self.numbers.meta["next_seq"] = done.next_seq
        st = self.stats
        st.commits += 1
        st.committed += done.readings
        st.readings += done.readings - done.gone_readings
        st.bytes += done.added_bytes - done.gone_bytes
        if done.gone_readings or not st.oldest_ns:
            assert self.db.conn is not None
            st.refresh_oldest(self.db.conn)
        if done.blobs:
            self.blob_commits += 1
        self._note_drops(done.drops)

    def _bound_blobs_sync(self) -> None:
        """Drop the oldest blobs past max_blob_bytes; the readings (with the hashes) stay."""
        db = self.db
        assert db.conn is not None
        total = db.conn.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs").fetchone()[0]
        if total <= self.cfg.max_blob_bytes:
            return
        doomed = []
        for sha, size in db.conn.execute("SELECT sha256, LENGTH(data) FROM blobs ORDER BY created_ns"):
            if total <= self.cfg.max_blob_bytes:
                break
            doomed.append((sha,))
            total -= size
        db.xm("DELETE FROM blobs WHERE sha256 = ?", doomed)
        db.xm(f"INSERT OR IGNORE INTO blob_drops VALUES (?, '{BLOB_STORE_FULL}')", doomed)
        self.stats.blobs_dropped += len(doomed)
        log.warning("blob store full: dropped %d oldest blob(s) not yet uploaded", len(doomed))

    def _enforce_bounds_sync(self, total: int, now: int) -> tuple[list[Drop], int, int]:
        """Drop the oldest unbatched segments past max_bytes (drop_oldest) or max_age; returns
        the drops and the readings and bytes they removed."""
        db = self.db
        assert db.conn is not None
        drops: list[Drop] = []
        if total <= self.cfg.max_bytes and (not self.stats.oldest_ns or self.stats.oldest_ns >= now - int(
                self.cfg.max_age * 1e9)):
            return drops, 0, 0  # within bounds (the oldest acknowledged-or-not segment is young enough)
        cutoff = now - int(self.cfg.max_age * 1e9)
        doomed = []
        gone_n = gone_b = 0
        for first, last, nbytes, created in db.conn.execute(
            "SELECT first_seq, last_seq, nbytes, created_ns FROM segments WHERE first_seq > ? ORDER BY first_seq",
            (self.numbers.batched_upto,),
        ):
            if created < cutoff:
                reason = EXPIRED
            elif self.cfg.policy == "drop_oldest" and total > self.cfg.max_bytes:
                reason = BUFFER_FULL
            else:
                break
            doomed.append(first)
            total -= nbytes
            gone_n += last - first + 1
            gone_b += nbytes
            if drops and drops[-1].reason == reason and drops[-1].last_seq + 1 == first:
                drops[-1] = Drop(drops[-1].first_seq, last, reason)
            else:
                drops.append(Drop(first, last, reason))
        db.xm("DELETE FROM segments WHERE first_seq = ?", [(f,) for f in doomed])
        return drops, gone_n, gone_b

    def _note_drops(self, drops: list[Drop]) -> None:
        """Count drops, and log an episode once when it starts and once when it ends."""
        if drops:
            n = sum(d.count for d in drops)
            self.stats.dropped += n
            ep = self._episode
            if not self._dropping:
                self._dropping = True
                self._episode = ep = [0, drops[0].first_seq, 0]
                log.warning("buffer: dropping readings (%s, policy %s); the next batch reports them",
                            drops[0].reason, self.cfg.policy)
            ep[0] += n
            ep[2] = drops[-1].last_seq
        elif self._dropping:
            self._dropping = False
            count, first, last = self._episode
            log.warning("buffer: drop episode over: %d readings dropped (seq %d-%d)", count, first, last)
