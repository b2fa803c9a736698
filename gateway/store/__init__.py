"""The store: the gateway's durable local buffer, one SQLite file in WAL mode.

Readings go in through ``put`` (``intake``: held in memory, numbered, stored as segments, kept
within bounds); the batch step turns stored segments into signed batches inside the store's
transaction (``make_batch``); the outbox (``batches``) keeps each batch until its acknowledgement, and
keeps blobs until they are uploaded. All of it is written in one group transaction per
``buffer.commit_interval`` on one database thread (``db``), with reading and batch numbers
reserved ahead of use (``numbers``), so a batch may leave before its readings are committed and
an unclean stop never reuses a number. docs/architecture.md shows where this sits; the README's
Guarantees say what it promises.

A failed commit (disk full) keeps the transaction's statements in memory (the journal) and
replays them on the next attempt; meanwhile no new readings are stored or batched, they wait in
memory within their bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from gateway.clock import ClockWatch
from gateway.config.schema import BatchSection, BufferSection
from gateway.driver_api import Reading
from gateway.heartbeat import Issued
from gateway.store import salvage
from gateway.store.db import Database, StoreError, StoreStats
from gateway.store.intake import ClockMark, Inserted, Intake
from gateway.store.numbers import Numbers
from gateway.store.outbox import BatchStep, NewBatch, Outbox, Unbatched
from gateway.store.timeline import Timeline
from gateway.wire import Batch

__all__ = ["BatchStep", "NewBatch", "Store", "StoreError", "StoreStats", "Unbatched", "backlog"]
RETRY_OPEN = 2.0  # seconds between attempts to open a buffer file that could not be opened
log = logging.getLogger("sensegate.buffer")


class Store:
    """One gateway's buffer file: the front its callers use (the pipeline, tests, tools).
    Every public coroutine is safe to call from the loop; none blocks it."""

    def __init__(self, path: Path, gateway_id: str, cfg: BufferSection, batch: BatchSection,
                 clock: ClockWatch | None = None) -> None:
        self.path = path
        self.gateway_id = gateway_id
        self.stats = StoreStats()
        self.db = Database(path, cfg.commit_interval, self.stats)
        self.numbers = Numbers(self.db, path, gateway_id, self.stats)
        self.timeline = Timeline(self.db)  # the clock epochs and steps of the stored readings
        self.batches = Outbox(self.db, self.numbers, self.stats, self.timeline)
        self.clock = clock if clock is not None else ClockWatch()  # what the readings' clock is worth
        self.intake = Intake(self.db, self.numbers, self.batches, cfg, batch.max_readings, self.stats, self.clock,
                             self.timeline)
        self.db.before_timer_commit = self.batches.flush_if_released_sync
        self.opened = asyncio.Event()  # the file is open (at once, or later: see open)
        self.intake.opened = self.opened
        self.on_open: Callable[[], None] = lambda: None  # called when it opened later than open()
        self._opener: asyncio.Task[None] | None = None
        self._why_not: salvage.WhyNot | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the buffer file and start the committer.

        A file SQLite says is corrupt is set aside and what it holds recovered
        (gateway/store/salvage.py). A file that cannot be opened now (a full disk, a
        permission, a lock, an I/O error) is left as it is: readings wait in memory within
        their bound (``intake.max_pending``, then counted and declared), and opening is tried
        again every RETRY_OPEN seconds; ``opened`` is set, and ``on_open`` called, once it
        worked. Only a file that is not ours (a newer format, another gateway's) raises."""
        try:
            await self.db.run(self._open_sync)
        except (sqlite3.Error, OSError) as e:
            self._why_not = salvage.describe(e, self.path)
            log.error("buffer: cannot open %s: %s; readings wait in memory (up to %d, then counted and "
                      "declared) and are stored once it opens", self.path, self._why_not, self.intake.max_pending)
            self._opener = asyncio.create_task(self._open_later(), name="buffer-open")
        else:
            self.opened.set()
        self.intake.start()

    async def _open_later(self) -> None:
        since = time.monotonic()
        while True:
            await asyncio.sleep(RETRY_OPEN)
            try:
                await self.db.run(self._open_sync)
            except (sqlite3.Error, OSError, StoreError) as e:
                why = salvage.WhyNot(str(e), str(e)) if isinstance(e, StoreError) else salvage.describe(e, self.path)
                if self._why_not is None or why.kind != self._why_not.kind:  # bytes free may differ, not the news
                    log.error("buffer: still cannot open %s: %s", self.path, why)
                    self._why_not = why
                continue
            self._opener = None
            log.warning("buffer: %s opened after %.0f s; the %d readings kept in memory are stored now",
                        self.path, time.monotonic() - since, len(self.intake.pending) + self.intake.overflow)
            self.opened.set()
            self.on_open()
            return

    def _open_sync(self) -> None:
        try:
            conn = self.db.connect_sync()
            salvage.check_sync(conn)  # before anything is written to it
            self.numbers.load_sync()
        except StoreError:
            self.db.close_sync()
            raise
        except (sqlite3.Error, OSError) as e:
            self.db.close_sync()
            if not salvage.is_corrupt(e):
                raise
            self._recover_sync(e)
        assert self.db.conn is not None
        self.stats.recount(self.db.conn)
        self.timeline.load_sync()

    def _recover_sync(self, error: BaseException) -> None:
        """Set a corrupt file aside and start a new one with what could be read from it."""
        aside = salvage.set_aside(self.path)
        log.error("buffer %s is corrupt (SQLite: %s); set aside as %s, recovering what it holds", self.path,
                  error, aside.name)
        found = salvage.read(aside)
        report = salvage.Report(aside.name, time.strftime("%Y-%m-%dT%H:%M:%S%z"), str(error))
        try:
            salvage.restore_sync(self.db.connect_sync(), found, self.gateway_id, report)
            self.numbers.load_sync()
        except BaseException:  # (a full disk now, too): put the file back, recover it at the next attempt
            self.db.close_sync()
            salvage.put_back(aside, self.path)
            raise
        report.save(aside)
        if report.stream == "kept":
            log.warning("buffer: recovered %d readings from %s, numbers kept; %d could not be read and are "
                        "declared lost in the next batch%s", report.recovered_readings, aside.name,
                        report.lost_readings, f" (reading numbers {_ranges(report.lost)})" if report.lost else "")
        elif report.stream == "new":
            log.warning("buffer: the reading numbers in %s could not be read: %d readings recovered from it go out "
                        "in a new stream; what else it held cannot be counted", aside.name,
                        report.recovered_readings)

    async def close(self) -> None:
        """Commit what is pending, return the unused reserved numbers, close the database."""
        intake, outbox = self.intake, self.batches
        self.db.disarm()
        intake.stop_clock()
        for task in (intake.committer, outbox.flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        intake.committer = outbox.flusher = None
        await self.db.stop()
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
            self._opener = None
            if intake.pending or intake.overflow:  # a last try, so they are stored if it can open now
                try:
                    await self.db.run(self._open_sync)
                    self.opened.set()
                except (sqlite3.Error, OSError, StoreError) as e:
                    log.error("buffer: the %d readings kept in memory are lost: %s still cannot be opened (%s)",
                              len(intake.pending) + intake.overflow, self.path, salvage.describe(e, self.path))
        try:
            if self.db.conn is not None and (intake.pending or intake.overflow):
                try:
                    await self.commit()
                except sqlite3.Error as e:
                    log.error("buffer: storing the last %d readings failed at stop (%s); they are lost",
                              len(intake.pending) + intake.overflow, e)
            if self.db.conn is not None:
                await self.db.run(self._close_sync)
        finally:
            self.db.shutdown()

    def _close_sync(self) -> None:
        """A clean stop: everything durable, the unused reserved numbers returned (so the next
        start skips none), then a checkpoint."""
        db = self.db
        try:
            if self.numbers.meta:  # (not when the file was refused)
                db.timer_commit_sync()
                self.numbers.release_sync()
            db.checkpoint_sync()
        except sqlite3.Error as e:
            log.error("buffer: final commit failed (%s); %d statements not stored, the next start "
                      "declares their reading numbers", e, len(db.journal))
        finally:
            db.close_sync()

    # -- the reading side ------------------------------------------------------------------

    def put(self, reading: Reading) -> None:
        """Take a reading (never blocks). Drivers reach ``intake.put`` directly (the pipeline's sink)."""
        self.intake.put(reading)

    async def commit(self) -> None:
        """Store pending readings now (one transaction of at most ``commit_readings``); while
        the file cannot be opened they stay in memory."""
        if self.opened.is_set():
            await self.intake.commit()

    def unbatched(self) -> int:
        """Committed readings not yet in a batch (approximate; for the batching policy)."""
        return self.numbers.next_seq - 1 - self.numbers.batched_upto

    def waiting(self) -> int:
        """Readings not yet in a batch: committed ones and those still in memory."""
        return self.unbatched() + len(self.intake.pending)

    @property
    def boot(self) -> int:
        return self.numbers.boot

    def issued(self) -> dict[str, int] | None:
        """How far this stream has numbered and what it still holds (the heartbeat's ``issued``,
        gateway/heartbeat.py); None before the file is open. Everything below ``held_from`` is
        in a batch the broker acknowledged, or declared in one."""
        n = self.numbers
        if not n.meta:
            return None
        last = n.next_seq - 1
        held = min(self.stats.oldest_seq or last + 1, n.batched_upto + 1)
        return Issued(n.stream, n.boot, last, self.next_bseq - 1, held).to_json()

    @property
    def next_bseq(self) -> int:
        """The number the next batch will have (a key rotation switches there)."""
        return int(self.numbers.meta.get("next_bseq", 1))

    @property
    def stream(self) -> int:
        return self.numbers.stream

    # -- the batch side ---------------------------------------------------------------------

    async def make_batch(self, step: BatchStep) -> Batch | None:
        """The next batch from unbatched segments (or pending drop reports), made by ``step``, or
        None. Readings still pending in memory are stored first, in the batch's transaction."""
        intake = self.intake
        if not self.opened.is_set():
            return None
        readings, overflow, marks = intake.take() if intake.pending or intake.overflow else ([], 0, [])
        try:
            batch = await self.db.run(self._make_batch_sync, step, readings, overflow, marks)
        except BaseException:
            intake.put_back(readings, overflow, marks)
            raise
        if readings or overflow:
            intake.on_commit()
        return batch

    def _make_batch_sync(self, step: BatchStep, readings: list[Reading], overflow: int,
                         marks: list[ClockMark]) -> Batch | None:
        """Store the readings handed over (if any) and make, sign and record the next batch, in the
        group transaction: the batch may leave before it commits (its numbers are reserved)."""
        db, numbers, outbox = self.db, self.numbers, self.batches
        if db.stalled:
            db.end_sync()  # a failed commit first; while it fails no batch is made
        numbers.reserve_sync(len(readings) + overflow, 1)
        old_next = numbers.meta["next_seq"]
        done: Inserted | None = None
        try:
            with db.op():
                released = outbox.flush_released_sync()
                if readings or overflow:
                    done = self.intake.insert_sync(readings, overflow, marks)
                    numbers.meta["next_seq"] = done.next_seq  # the batch below numbers from here
                assert db.conn is not None
                new = step.next_batch(Unbatched(db.conn, numbers, self.timeline))
                if new is not None:
                    outbox.record_sync(new)
        except BaseException:
            numbers.meta["next_seq"] = old_next
            raise
        outbox.forget_released(released)
        if done is not None:
            self.intake.inserted(done)
        return outbox.booked(new) if new is not None else None

    # -- the outbox ----------------------------------------------------------------------------

    async def outbox(self) -> list[tuple[int, set[str]]]:
        """Signed, unacknowledged batches (oldest first) and the uplinks that already took each."""
        return await self.batches.outbox()

    async def load_batch(self, bseq: int) -> Batch | None:
        """Rebuild a signed batch byte for byte from its outbox row and its segments."""
        return await self.batches.load_batch(bseq)

    async def ack(self, batch: Batch, uplink: str = "", required: frozenset[str] = frozenset()) -> bool:
        """Record an acknowledgement; once every required uplink has one (or none are required),
        forget the batch and its readings. Returns True when the batch was released."""
        return (await self.batches.ack_many([(batch, uplink)], required))[0]

    async def ack_many(self, acks: list[tuple[Batch, str]], required: frozenset[str]) -> list[bool]:
        """Several acknowledgements in one trip to the database thread."""
        return await self.batches.ack_many(acks, required)

    async def dead_letter(self, batch: Batch, uplink: str, reason: str) -> None:
        """Keep a batch an uplink refused as bad, for inspection (sensegate doctor reports them)."""
        await self.batches.dead_letter(batch, uplink, reason)

    async def dead_letters(self) -> list[tuple[int, str, str]]:
        """(bseq, uplink, reason) of every dead-lettered batch."""
        return await self.batches.dead_letters()

    async def next_blob(self) -> tuple[bytes, str, bytes] | None:
        """The oldest blob waiting for upload: (sha256, content type, data)."""
        return await self.batches.next_blob()

    async def blob_done(self, sha256: bytes) -> None:
        """The blob reached the uplink: delete it."""
        await self.batches.blob_done(sha256)


def _ranges(ranges: list[list[int]], most: int = 5) -> str:
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges[:most])
    return text + (f" and {len(ranges) - most} more" if len(ranges) > most else "")


def backlog(path: str | Path) -> tuple[int, float | None]:
    """Readings waiting in a buffer file and the age (s) of the oldest, read-only (for doctor)."""
    uri = f"file:{Path(path)}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        n, oldest = conn.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), MIN(created_ns) FROM segments"
        ).fetchone()
    finally:
        conn.close()
    return int(n), (time.time_ns() - oldest) / 1e9 if oldest else None
