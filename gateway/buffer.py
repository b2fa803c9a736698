"""The durable local buffer: SQLite in WAL mode, written in amortized group commits.

Readings wait in memory for at most ``buffer.commit_interval`` (less when the uplink is idle),
then are stored as one *segment* row: their SenML records, already CBOR-encoded, with a
contiguous range of reading sequence numbers. Batches are built from whole segments, signed,
recorded in the ``batches`` table (the outbox) and sent. An acknowledged batch deletes its row
and its segments.

Every write joins one open *group transaction*, committed at most ``commit_interval`` after it
began (and at once by the committer when readings were stored without a batch). A batch leaves
before its transaction commits: readings acknowledged within the interval are stored and
deleted in the same transaction and never reach the disk, which is what keeps a trickle of
readings from wearing an SD card. What makes that safe is the *reservation*: reading and batch
numbers are reserved in blocks, each reservation fsynced before a number of the block is used.
After an unclean stop (kill -9, a crash, a power cut) the buffer never reuses a reserved number:
it skips the rest of the block and the next batch declares the skipped reading numbers
(reason ``unclean_stop``). A receiver thus sees every number either delivered or declared, and
never one number with two contents. A clean stop returns the unused numbers.

A failed commit (disk full) keeps the transaction's statements in memory (the *journal*) and
replays them on the next attempt; meanwhile no new readings are stored or batched, they wait in
memory. Bounds: ``max_bytes`` of segment data and ``max_age``. Past them, the policy drops the
oldest unbatched segments or refuses new readings; either way the dropped sequence range is
recorded and reported in the next batch's header. All SQLite work runs on one dedicated thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway import cose, senml
from gateway.config.schema import BatchSection, BufferSection
from gateway.driver_api import Blob, Reading
from gateway.keys import PrivateKey, key_id

FORMAT_VERSION = 1
GENESIS_HASH = bytes(32)
SENML_CBOR = 112  # CoAP content-format of application/senml+cbor
MAX_DECLARED = 64  # drop ranges one batch declares (docs/wire-format.md; receivers refuse more)
UNCLEAN_STOP = "unclean_stop"  # the drop reason of numbers reserved before an unclean stop
RESERVE_FOR = 5.0  # seconds a block of reserved numbers should last (one fsync per block)
SYNC_EVERY = 5.0  # longest time stored, unacknowledged readings stay without an fsync (power-cut window)
SEQ_BLOCK = (64, 1 << 24)  # smallest and largest block of reading numbers
BSEQ_BLOCK = (16, 1 << 16)  # of batch numbers
log = logging.getLogger("sensegate.buffer")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, nbytes INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS drops (
    first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    bseq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    protected BLOB NOT NULL, signature BLOB NOT NULL, hash BLOB NOT NULL, created_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS acks (
    bseq INTEGER NOT NULL, uplink TEXT NOT NULL, PRIMARY KEY (bseq, uplink)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    bseq INTEGER PRIMARY KEY, uplink TEXT NOT NULL, reason TEXT NOT NULL, created_ns INTEGER NOT NULL,
    data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blob_drops (sha256 BLOB PRIMARY KEY, reason TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 BLOB PRIMARY KEY, content_type TEXT NOT NULL, created_ns INTEGER NOT NULL, data BLOB NOT NULL)
    WITHOUT ROWID;
"""


class BufferError_(Exception):
    """The buffer cannot be used (newer format, another gateway's buffer, unwritable)."""


@dataclass(frozen=True)
class Drop:
    """A range of reading sequence numbers that will never be delivered, and why."""

    first_seq: int
    last_seq: int
    reason: str  # "buffer_full", "expired", "overflow", "unclean_stop"

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class Batch:
    """A signed batch: the COSE_Sign1 bytes and what they hold."""

    bseq: int
    first_seq: int
    last_seq: int
    data: bytes
    hash: bytes
    created_ns: int
    nbytes: int = 0  # encoded records it holds (the segments' bytes)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class _Inserted:
    """What one commit wrote (for the books, once its transaction committed)."""

    next_seq: int
    readings: int
    added_bytes: int
    gone_readings: int
    gone_bytes: int
    drops: list[Drop]
    blobs: bool


@dataclass
class BufferStats:
    """Counters for metrics and status."""

    committed: int = 0
    commits: int = 0
    dropped: int = 0
    batches_created: int = 0
    acked_batches: int = 0
    acked_readings: int = 0
    readings: int = 0  # committed, not yet acknowledged
    bytes: int = 0
    oldest_ns: int = 0
    last_batch_readings: int = 0
    last_batch_bytes: int = 0
    dead_letters: int = 0
    blobs_dropped: int = 0
    group_commits: int = 0  # group transactions committed
    reservations: int = 0  # blocks of numbers reserved (each one fsync)
    syncs: int = 0  # fsyncs for readings waiting unacknowledged (at most one per SYNC_EVERY)
    skipped_unclean: int = 0  # reading numbers skipped at open after an unclean stop
    last_ack_ns: int = 0  # wall clock of the last acknowledged batch (doctor: is anything delivered?)


class Buffer:
    """One gateway's buffer file; every public coroutine is safe to call from the loop."""

    def __init__(self, path: Path, gateway_id: str, cfg: BufferSection, batch: BatchSection) -> None:
        self.path = path
        self.gateway_id = gateway_id
        self.cfg = cfg
        self.batch_cfg = batch
        self.stats = BufferStats()
        self.eager = True  # set by the pipeline: commit at once when the uplink is idle
        self.on_commit: Callable[[], None] = lambda: None
        # set by the pipeline: readings are waiting and the uplink is idle, make a batch (which
        # commits them in the same transaction); None: the committer commits on its own
        self.on_pending: Callable[[], None] | None = None
        self._pending_since = 0.0  # monotonic time of the oldest pending reading
        self.blob_commits = 0  # commits that stored blobs (the uploader's cue)
        self._pending: list[Reading] = []
        self._overflow = 0
        self._max_pending = max(cfg.commit_readings * 10, 100_000)
        self._commit_at = cfg.commit_readings - 1  # pending count at which a put wakes the committer
        self._wake = asyncio.Event()
        self._db: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sensegate-db")
        self._meta: dict[str, Any] = {}
        self._dropping = False
        self._episode: list[int] = [0, 0, 0]  # count, first, last of the current drop episode
        self._committer: asyncio.Task[None] | None = None
        self._encoder = senml.RecordEncoder()
        # acknowledged batches whose rows are deleted with the next write (or within a second):
        # one transaction fewer per batch; a power cut before that only re-sends (at-least-once)
        self._released: list[tuple[int, int, int]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._live: set[int] = set()  # batches made or loaded and not yet released
        # the group transaction (state of the database thread; the loop reads it between calls)
        self._tx_open = False
        self._tx_began = 0.0  # monotonic
        self._journal: list[tuple[str, Any, bool]] = []  # its statements: (sql, params, executemany)
        self._tx_timer: asyncio.TimerHandle | None = None
        self._closer: asyncio.Task[None] | None = None
        self._blocks = {"seq": SEQ_BLOCK[0], "bseq": BSEQ_BLOCK[0]}
        self._synced_at = time.monotonic()  # the last fsync
        self._unsynced = False  # a transaction committed since then
        self._reserved_at = {"seq": 0.0, "bseq": 0.0}

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create, or set aside a corrupt) database and start the committer."""
        await self._run(self._open_sync)
        self._committer = asyncio.create_task(self._commit_loop(), name="buffer-committer")

    async def close(self) -> None:
        """Commit what is pending, return the unused reserved numbers, close the database."""
        self._disarm()
        for task in (self._committer, self._flusher, self._closer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._committer = self._flusher = self._closer = None
        try:
            if self._db is not None and (self._pending or self._overflow):
                try:
                    await self.commit()
                except sqlite3.Error as e:
                    log.error("buffer: storing the last %d readings failed at stop (%s); they are lost",
                              len(self._pending) + self._overflow, e)
            if self._db is not None:
                await self._run(self._close_sync)
        finally:
            self._disarm()  # (a commit that failed just now armed its retry)
            # never block the loop on the database thread: idle, it ends at once; still in a
            # statement (this close was cancelled by the shutdown deadline), it ends after it
            self._pool.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._arm()

    def _arm(self) -> None:
        """Schedule the group transaction's commit: ``commit_interval`` after it began, or a
        second from now while a failed one waits in the journal; else the fsync that is due
        SYNC_EVERY after the last one while committed readings wait unacknowledged."""
        if self._tx_timer is not None or self._closer is not None or self._db is None:
            return
        if self._tx_open:
            delay = self._tx_began + self.cfg.commit_interval - time.monotonic()
        elif self._stalled:
            delay = 1.0
        elif self._unsynced and self.stats.readings > 0:
            delay = self._synced_at + SYNC_EVERY - time.monotonic()
        else:
            return
        self._tx_timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._fire)

    def _disarm(self) -> None:
        if self._tx_timer is not None:
            self._tx_timer.cancel()
            self._tx_timer = None

    def _fire(self) -> None:
        self._tx_timer = None
        self._closer = asyncio.create_task(self._group_commit(), name="buffer-group-commit")

    async def _group_commit(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._group_commit_sync)
        except (sqlite3.Error, OSError) as e:  # disk full: the journal keeps the writes, retried in a second
            log.error("buffer commit failed (%s); %d statements kept in memory, retrying", e, len(self._journal))
        finally:
            self._closer = None
        self._arm()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # 1 KiB pages (new files only): a batch's transaction rewrites about five pages, and each
        # is one WAL frame; at a trickle of readings that is most of what reaches the SD card
        db.execute("PRAGMA page_size=1024")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=1000")
        db.executescript(SCHEMA)
        return db

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
            self._db = db
            self._load_meta()
            db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as e:
            if self._db is not None:
                self._db.close()
                self._db = None
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            log.error("buffer %s is corrupt (%s); set aside as %s, starting a new one", self.path, e, aside)
            self._db = self._connect()
            self._load_meta()
        self._refresh_stats()

    def _load_meta(self) -> None:
        db = self._db
        assert db is not None
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            meta = {
                "format": FORMAT_VERSION,
                "gateway_id": self.gateway_id,
                "stream": secrets.randbits(63),
                "next_seq": 1,
                "next_bseq": 1,
                "batched_upto": 0,
                "last_hash": GENESIS_HASH,
                "boot": 0,
            }
        fmt = meta.get("format")
        if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
            raise BufferError_(
                f"buffer {self.path} has format {fmt!r}, newer than this sensegate reads ({FORMAT_VERSION}); "
                "upgrade sensegate or move the file aside"
            )
        if meta["gateway_id"] != self.gateway_id:
            raise BufferError_(
                f"buffer {self.path} belongs to gateway {meta['gateway_id']!r}, not {self.gateway_id!r}; "
                "deliver or move it aside before changing the gateway id"
            )
        meta["boot"] = int(meta["boot"]) + 1
        # numbers reserved but not stored may have left in batches before an unclean stop: never
        # reuse them. The readings are skipped and declared; the batch numbers are skipped, one
        # more than reserved, so the chain restarts after a hole (the next batch's pv names the
        # last batch this file kept, not one that may have been sent after it)
        next_seq, next_bseq = int(meta["next_seq"]), int(meta["next_bseq"])
        seq_resv = int(meta.setdefault("seq_resv", next_seq - 1))
        bseq_resv = int(meta.setdefault("bseq_resv", next_bseq - 1))
        skip = None
        if seq_resv >= next_seq:
            skip = Drop(next_seq, seq_resv, UNCLEAN_STOP)
            meta["next_seq"] = seq_resv + 1
        if bseq_resv >= next_bseq:
            meta["next_bseq"] = bseq_resv + 2
        if skip is not None or bseq_resv >= next_bseq:
            log.warning("buffer: the last stop was unclean; skipping reading numbers %s and batch numbers "
                        "%d-%d, which may have been sent (the next batch declares the readings)",
                        f"{skip.first_seq}-{skip.last_seq}" if skip else "(none)", next_bseq, bseq_resv + 1)
        meta["seq_resv"], meta["bseq_resv"] = int(meta["next_seq"]) - 1, int(meta["next_bseq"]) - 1
        self._meta = meta
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        if skip is not None:
            db.execute("INSERT OR REPLACE INTO drops VALUES (?, ?, ?)", (skip.first_seq, skip.last_seq, skip.reason))
            self.stats.skipped_unclean += skip.count
        db.execute("COMMIT")

    def _close_sync(self) -> None:
        """A clean stop: everything durable, the unused reserved numbers returned (so the next
        start skips none), then a checkpoint. Should that fail (disk full), the next start
        finds the reservation and skips and declares the numbers, as after an unclean stop."""
        db = self._db
        if db is None:
            return
        meta = self._meta
        try:
            if meta:  # (not when the file was refused)
                self._group_commit_sync()
                self._durable_sync({"seq_resv": int(meta["next_seq"]) - 1, "bseq_resv": int(meta["next_bseq"]) - 1})
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            log.error("buffer: final commit failed (%s); %d statements not stored, the next start "
                      "declares their reading numbers", e, len(self._journal))
        finally:
            db.close()
            self._db = None

    def _refresh_stats(self) -> None:
        """Count what the segments hold (once, at open; then the counters are kept as rows change)."""
        assert self._db is not None
        n, nbytes, oldest = self._db.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(nbytes), 0), MIN(created_ns) FROM segments"
        ).fetchone()
        self.stats.readings, self.stats.bytes, self.stats.oldest_ns = n, nbytes, oldest or 0

    def _refresh_oldest(self) -> None:
        """The oldest segment's commit time (an index lookup, not a scan). Segments of released
        batches not yet deleted count for up to a second: the figure is for metrics and errs old."""
        assert self._db is not None
        if self.stats.readings <= 0:
            self.stats.oldest_ns = 0
            return
        row = self._db.execute("SELECT created_ns FROM segments ORDER BY first_seq LIMIT 1").fetchone()
        self.stats.oldest_ns = row[0] if row else 0

    # -- the group transaction (database thread) ---------------------------------------------

    def _x(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """A write, in the group transaction (inside ``_op``), recorded in the journal."""
        assert self._db is not None and self._tx_open
        cur = self._db.execute(sql, params)
        self._journal.append((sql, params, False))
        return cur

    def _xm(self, sql: str, rows: Any) -> None:
        """``executemany`` in the group transaction, recorded in the journal."""
        assert self._db is not None and self._tx_open
        rows = list(rows)
        if rows:
            self._db.executemany(sql, rows)
            self._journal.append((sql, rows, True))

    def _begin_sync(self) -> None:
        """Open the group transaction if it is not open; replay the journal of a failed commit."""
        db = self._db
        assert db is not None
        if self._tx_open:
            return
        db.execute("BEGIN")
        self._tx_began = time.monotonic()
        self._tx_open = True
        try:
            for sql, params, many in self._journal:
                (db.executemany if many else db.execute)(sql, params)
        except BaseException:
            self._abort_sync()
            raise

    @property
    def _stalled(self) -> bool:
        """A commit (or a write) failed: the journal waits to be replayed before anything new."""
        return bool(self._journal) and not self._tx_open

    def _abort_sync(self) -> None:
        """Roll the open transaction back; the journal keeps what it held for the next attempt."""
        assert self._db is not None
        self._tx_open = False
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def _op(self) -> Any:
        """One logical write in the group transaction: all its statements, or none of them."""
        self._begin_sync()
        mark = len(self._journal)
        try:
            yield
        except BaseException:
            del self._journal[mark:]
            self._abort_sync()  # the database goes back to committed + journal at the next begin
            raise

    def _end_tx_sync(self) -> None:
        """Commit the group transaction (or the journal of a failed one), without an fsync."""
        if not self._tx_open and not self._journal:
            return
        self._begin_sync()
        assert self._db is not None
        try:
            self._db.execute("COMMIT")
        except BaseException:
            self._abort_sync()
            raise
        self._tx_open = False
        self._unsynced = True
        self._journal.clear()
        self.stats.group_commits += 1

    def _durable_sync(self, values: dict[str, int]) -> None:
        """Commit the group transaction, then write ``values`` to meta in a transaction that is
        fsynced (which makes everything before it durable too)."""
        self._end_tx_sync()
        db = self._db
        assert db is not None
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN")
            try:
                db.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()])
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        self._meta.update(values)
        self._synced_at = time.monotonic()
        self._unsynced = False

    def _sync_if_due_sync(self) -> None:
        """fsync the WAL when readings not yet acknowledged were committed and the last fsync is
        SYNC_EVERY old: a power cut loses at most that much of them (acknowledged ones need none)."""
        if not self._unsynced or self.stats.readings <= 0 or time.monotonic() - self._synced_at < SYNC_EVERY - 0.01:
            return  # (the timer may fire a hair early)
        fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._synced_at = time.monotonic()
        self._unsynced = False
        self.stats.syncs += 1

    def _reserve_sync(self, seqs: int, bseqs: int) -> None:
        """Make sure the next ``seqs`` reading numbers and ``bseqs`` batch numbers are reserved
        (durably) before any of them is used. A block lasts about RESERVE_FOR seconds: it doubles
        when the last one went faster, halves when it lasted far longer."""
        meta = self._meta
        kinds = (("seq", seqs, SEQ_BLOCK), ("bseq", bseqs, BSEQ_BLOCK))
        if all(int(meta["next_" + k]) + n - 1 <= int(meta[k + "_resv"]) for k, n, _ in kinds):
            return
        now = time.monotonic()
        want: dict[str, int] = {}
        for kind, n, (lo, hi) in kinds:
            last, resv, block = int(meta["next_" + kind]) + n - 1, int(meta[kind + "_resv"]), self._blocks[kind]
            if resv - last >= block // 2:
                continue  # enough left (a kind near its end is topped up with the other: one fsync)
            took = now - self._reserved_at[kind]
            if took < RESERVE_FOR:
                block = min(block * 2, hi)
            elif took > 8 * RESERVE_FOR:
                block = max(block // 2, lo)
            self._blocks[kind], self._reserved_at[kind] = block, now
            want[kind + "_resv"] = last + block
        self._durable_sync(want)
        self.stats.reservations += 1

    def _flush_released_sync(self) -> int:
        """Delete the rows of released batches, inside the caller's ``_op``; returns how many (the
        caller drops that many entries from the front of ``_released`` once the op succeeded)."""
        released = self._released[:]  # the loop thread may append meanwhile
        if released:
            self._xm("DELETE FROM batches WHERE bseq = ?", [(b,) for b, _, _ in released])
            self._xm("DELETE FROM segments WHERE first_seq BETWEEN ? AND ?", [(a, b) for _, a, b in released])
        return len(released)

    def _forget_released(self, n: int) -> None:
        if n:
            del self._released[:n]
            self._refresh_oldest()

    def _group_commit_sync(self) -> None:
        """The group transaction's timer: forget released batches, then commit."""
        if self._released:
            self._flush_op_sync()
        self._end_tx_sync()
        self._sync_if_due_sync()

    @property
    def boot(self) -> int:
        return int(self._meta.get("boot", 0))

    @property
    def stream(self) -> int:
        return int(self._meta.get("stream", 0))

    # -- the reading side ------------------------------------------------------------------

    def put(self, reading: Reading) -> None:
        """Take a reading from a driver (never blocks; committed within commit_interval)."""
        pending = self._pending
        n = len(pending)
        if n >= self._max_pending:  # the disk cannot keep up: count, number, report
            self._overflow += 1
            return
        pending.append(reading)
        if not n:
            self._pending_since = time.monotonic()
            self._wake.set()
        elif n >= self._commit_at:
            self._wake.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending and not self._overflow:
                continue
            if self.eager and self.on_pending is not None and len(self._pending) < self.cfg.commit_readings:
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
                if not self._pending and not self._overflow:
                    continue
            # gather a burst: a tick when the uplink is idle, up to commit_interval otherwise
            wait = 0.002 if self.eager else self.cfg.commit_interval
            if len(self._pending) < self.cfg.commit_readings:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                self._wake.clear()
            try:
                await self.commit()
            except sqlite3.Error as e:  # disk full, I/O error: keep readings, retry later
                log.error("buffer commit failed (%s); %d readings kept in memory, retrying", e, len(self._pending))
                await asyncio.sleep(1.0)
                self._wake.set()

    def _take(self) -> tuple[list[Reading], int]:
        """Pending readings for one transaction (at most ``commit_readings``) and the overflow count."""
        limit = self.cfg.commit_readings
        if len(self._pending) <= limit:
            readings, self._pending = self._pending, []
        else:
            readings = self._pending[:limit]
            del self._pending[:limit]
            self._wake.set()  # more to do: the committer comes straight back
        overflow, self._overflow = self._overflow, 0
        return readings, overflow

    def _put_back(self, readings: list[Reading], overflow: int) -> None:
        self._pending[:0] = readings  # in order, ahead of newer ones
        self._overflow += overflow
        if readings:
            self._pending_since = time.monotonic()

    async def commit(self) -> None:
        """Commit pending readings now: one transaction of at most ``commit_readings`` readings,
        so acknowledgements and batch signing never wait long behind a huge commit."""
        readings, overflow = self._take()
        try:
            await self._run(self._commit_sync, readings, overflow)
        except BaseException:
            self._put_back(readings, overflow)
            raise
        self.on_commit()

    def _commit_sync(self, readings: list[Reading], overflow: int) -> None:
        """Store readings (the committer's path: no batch took them) and commit the group."""
        if self._stalled:
            self._end_tx_sync()  # a failed commit first; while it fails nothing new is stored
        self._reserve_sync(len(readings) + overflow, 0)
        with self._op():
            released = self._flush_released_sync()
            done = self._insert_sync(readings, overflow)
        self._forget_released(released)
        self._inserted(done)
        try:
            self._end_tx_sync()
            self._sync_if_due_sync()
        except (sqlite3.Error, OSError) as e:  # stored in the journal: retried by the timer, nothing is lost
            log.error("buffer commit failed (%s); %d statements kept in memory, retrying", e, len(self._journal))

    def _insert_sync(self, readings: list[Reading], overflow: int) -> _Inserted:
        """The writes of storing readings, inside the caller's ``_op`` (their numbers reserved):
        number the readings, store their records as segments, apply the bounds, record the drops."""
        now = time.time_ns()
        seq = int(self._meta["next_seq"])
        drops: list[Drop] = []
        blobs: list[tuple[bytes, str, int, bytes]] = []
        if overflow:
            drops.append(Drop(seq, seq + overflow - 1, "overflow"))
            seq += overflow
        rows = []
        per = self.batch_cfg.max_readings
        full = self.cfg.policy == "refuse_new" and self.stats.bytes >= self.cfg.max_bytes
        for i in range(0, len(readings), per):
            chunk = readings[i : i + per]
            if full:
                drops.append(Drop(seq, seq + len(chunk) - 1, "buffer_full"))
                seq += len(chunk)
                continue
            data, n = senml.encode_records(chunk, self._encoder)
            for r in chunk:
                if isinstance(r.value, Blob):
                    blobs.append((hashlib.sha256(r.value.data).digest(), r.value.content_type, now, r.value.data))
            rows.append((seq, seq + n - 1, len(data), now, data))
            seq += n
        self._xm("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", rows)
        if blobs:
            self._xm("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", blobs)
            self._bound_blobs_sync()
        added = sum(r[2] for r in rows)
        expired, gone_n, gone_b = self._enforce_bounds_sync(self.stats.bytes + added, now)
        drops += expired
        self._xm("INSERT INTO drops VALUES (?, ?, ?)", [(d.first_seq, d.last_seq, d.reason) for d in drops])
        self._x("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq,))
        return _Inserted(seq, sum(r[1] - r[0] + 1 for r in rows), added, gone_n, gone_b, drops, bool(blobs))

    def _inserted(self, done: _Inserted) -> None:
        """Book a stored insert: counters, drop episode, the blob uploader's cue."""
        self._meta["next_seq"] = done.next_seq
        st = self.stats
        st.commits += 1
        st.committed += done.readings
        st.readings += done.readings - done.gone_readings
        st.bytes += done.added_bytes - done.gone_bytes
        if done.gone_readings or not st.oldest_ns:
            self._refresh_oldest()
        if done.blobs:
            self.blob_commits += 1
        self._note_drops(done.drops)

    def _bound_blobs_sync(self) -> None:
        """Drop the oldest blobs past max_blob_bytes; the readings (with the hashes) stay."""
        db = self._db
        assert db is not None
        total = db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM blobs").fetchone()[0]
        if total <= self.cfg.max_blob_bytes:
            return
        doomed = []
        for sha, size in db.execute("SELECT sha256, LENGTH(data) FROM blobs ORDER BY created_ns"):
            if total <= self.cfg.max_blob_bytes:
                break
            doomed.append((sha,))
            total -= size
        self._xm("DELETE FROM blobs WHERE sha256 = ?", doomed)
        self._xm("INSERT OR IGNORE INTO blob_drops VALUES (?, 'blob_store_full')", doomed)
        self.stats.blobs_dropped += len(doomed)
        log.warning("blob store full: dropped %d oldest blob(s) not yet uploaded", len(doomed))

    def _enforce_bounds_sync(self, total: int, now: int) -> tuple[list[Drop], int, int]:
        """Drop the oldest unbatched segments past max_bytes (drop_oldest) or max_age; returns
        the drops and the readings and bytes they removed."""
        db = self._db
        assert db is not None
        drops: list[Drop] = []
        if total <= self.cfg.max_bytes and (not self.stats.oldest_ns or self.stats.oldest_ns >= now - int(
                self.cfg.max_age * 1e9)):
            return drops, 0, 0  # within bounds (the oldest acknowledged-or-not segment is young enough)
        upto = int(self._meta["batched_upto"])
        cutoff = now - int(self.cfg.max_age * 1e9)
        doomed = []
        gone_n = gone_b = 0
        for first, last, nbytes, created in db.execute(
            "SELECT first_seq, last_seq, nbytes, created_ns FROM segments WHERE first_seq > ? ORDER BY first_seq",
            (upto,),
        ):
            if created < cutoff:
                reason = "expired"
            elif self.cfg.policy == "drop_oldest" and total > self.cfg.max_bytes:
                reason = "buffer_full"
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
        self._xm("DELETE FROM segments WHERE first_seq = ?", [(f,) for f in doomed])
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

    # -- the batch side ---------------------------------------------------------------------

    def unbatched(self) -> int:
        """Committed readings not yet in a batch (approximate; for the batching policy)."""
        return int(self._meta.get("next_seq", 1)) - 1 - int(self._meta.get("batched_upto", 0))

    def waiting(self) -> int:
        """Readings not yet in a batch: committed ones and those still in memory."""
        return self.unbatched() + len(self._pending)

    @property
    def next_batch(self) -> int:
        """The number the next batch will have (a key rotation switches there)."""
        return int(self._meta.get("next_bseq", 1))

    async def make_batch(self, key: PrivateKey, extra: dict[Any, Any] | None = None) -> Batch | None:
        """Sign the next batch from unbatched segments (or pending drop reports), or None.
        Readings still pending in memory are committed first, in the batch's transaction.
        ``extra``: more protected header labels (a rotation document, ``kr``)."""
        readings, overflow = self._take() if self._pending or self._overflow else ([], 0)
        try:
            batch = await self._run(self._make_batch_sync, key, readings, overflow, extra)
        except BaseException:
            self._put_back(readings, overflow)
            raise
        if readings or overflow:
            self.on_commit()
        return batch

    def _make_batch_sync(self, key: PrivateKey, readings: list[Reading] | None = None,
                         overflow: int = 0, extra: dict[Any, Any] | None = None) -> Batch | None:
        """Store the readings handed over (if any) and sign the next batch, in the group
        transaction: the batch may leave before it commits (its numbers are reserved)."""
        readings = readings or []
        if self._stalled:
            self._end_tx_sync()  # a failed commit first; while it fails no batch is made
        self._reserve_sync(len(readings) + overflow, 1)
        old_next = self._meta["next_seq"]
        try:
            with self._op():
                released = self._flush_released_sync()
                done = self._insert_sync(readings, overflow) if readings or overflow else None
                if done is not None:
                    self._meta["next_seq"] = done.next_seq  # the batch below numbers from here
                made = self._sign_batch_sync(key, extra)
        except BaseException:
            self._meta["next_seq"] = old_next
            raise
        self._forget_released(released)
        if done is not None:
            self._inserted(done)
        return self._made(made) if made is not None else None

    def _sign_batch_sync(self, key: PrivateKey, extra: dict[Any, Any] | None = None) -> tuple[Batch, int] | None:
        """Build, sign and record the next batch inside the caller's ``_op``; returns it and the
        new ``batched_upto`` (booked by ``_made`` once the op succeeded), or None."""
        db = self._db
        assert db is not None
        meta = self._meta
        upto = int(meta["batched_upto"])
        limit_n, limit_b = self.batch_cfg.max_readings, self.batch_cfg.max_bytes
        parts: list[bytes] = []
        first = last = 0
        nbytes = 0
        for f, last_, data in db.execute(
            "SELECT first_seq, last_seq, data FROM segments WHERE first_seq > ? ORDER BY first_seq", (upto,)
        ):
            if parts and (f != last + 1 or last_ - first + 1 > limit_n or nbytes + len(data) > limit_b):
                break
            if not parts:
                first = f
            parts.append(data)
            last = last_
            nbytes += len(data)
        drop_rows = db.execute(
            "SELECT first_seq, last_seq, reason FROM drops WHERE first_seq < ? ORDER BY first_seq",
            (first if parts else int(meta["next_seq"]),),
        ).fetchall()
        # adjacent ranges with one reason (one per commit of a long episode) go out as one; at most
        # MAX_DECLARED per batch (a receiver refuses more), the rest in the next batch
        declared: list[list[Any]] = []
        taken = 0
        for a, b, reason in drop_rows:
            if declared and declared[-1][2] == reason and declared[-1][1] + 1 == a:
                declared[-1][1] = b
            elif len(declared) == MAX_DECLARED:
                break
            else:
                declared.append([a, b, reason])
            taken += 1
        drop_rows = drop_rows[:taken]
        blob_drops = db.execute("SELECT sha256, reason FROM blob_drops LIMIT 64").fetchall()
        if not parts and not drop_rows and not blob_drops:
            return None  # (an open transaction is the caller's to commit)
        if not parts:  # a report of drops only: an empty pack just after the dropped range
            first = int(meta["next_seq"])
            last = first - 1
        count = last - first + 1
        payload = senml.array_header(count) + b"".join(parts)
        bseq = int(meta["next_bseq"])
        header: dict[Any, Any] = {
            cose.CONTENT_TYPE: SENML_CBOR,
            "sg": FORMAT_VERSION,
            "gw": self.gateway_id,
            "st": int(meta["stream"]),
            "bo": int(meta["boot"]),
            "bs": bseq,
            "pv": meta["last_hash"],
            "sq": [first, last],
        }
        if declared:
            header["dr"] = declared
        if blob_drops:
            header["bd"] = [[sha, reason] for sha, reason in blob_drops]
        if extra:
            header.update(extra)
        protected = cose.protected_header(key, key_id(key.public_key()), header)
        signature = cose.sign(key, protected, payload)
        data = cose.encode_sign1(protected, payload, signature)
        digest = hashlib.sha256(data).digest()
        now = time.time_ns()
        self._x("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?)",
                (bseq, first, last, protected, signature, digest, now))
        if drop_rows:
            self._x("DELETE FROM drops WHERE first_seq <= ?", (drop_rows[-1][0],))
        self._xm("DELETE FROM blob_drops WHERE sha256 = ?", [(sha,) for sha, _ in blob_drops])
        new_upto = max(upto, last, max((r[1] for r in drop_rows), default=0))
        self._xm("UPDATE meta SET value = ? WHERE key = ?",
                 [(bseq + 1, "next_bseq"), (digest, "last_hash"), (new_upto, "batched_upto")])
        return Batch(bseq, first, last, data, digest, now, nbytes), new_upto

    def _made(self, made: tuple[Batch, int]) -> Batch:
        """Book a batch whose op succeeded."""
        batch, new_upto = made
        self._meta.update(next_bseq=batch.bseq + 1, last_hash=batch.hash, batched_upto=new_upto)
        self.stats.batches_created += 1
        self.stats.last_batch_readings = batch.count
        self.stats.last_batch_bytes = len(batch.data)
        self._live.add(batch.bseq)
        return batch

    async def outbox(self) -> list[tuple[int, set[str]]]:
        """Signed, unacknowledged batches (oldest first) and the uplinks that already took each."""
        return await self._run(self._outbox_sync)

    def _view_sync(self) -> sqlite3.Connection:
        """The connection for a read: one that sees the writes of a failed commit's journal too."""
        if self._journal and not self._tx_open:
            self._begin_sync()
        assert self._db is not None
        return self._db

    def _outbox_sync(self) -> list[tuple[int, set[str]]]:
        db = self._view_sync()
        acked: dict[int, set[str]] = {}
        for bseq, uplink in db.execute("SELECT bseq, uplink FROM acks"):
            acked.setdefault(bseq, set()).add(uplink)
        return [(bseq, acked.get(bseq, set())) for (bseq,) in db.execute("SELECT bseq FROM batches ORDER BY bseq")]

    async def load_batch(self, bseq: int) -> Batch | None:
        """Rebuild a signed batch byte for byte from its outbox row and its segments."""
        return await self._run(self._load_batch_sync, bseq)

    def _load_batch_sync(self, bseq: int) -> Batch | None:
        db = self._view_sync()
        row = db.execute("SELECT * FROM batches WHERE bseq = ?", (bseq,)).fetchone()
        if row is None:
            return None
        _, first, last, protected, signature, digest, created = row
        parts = [r[0] for r in db.execute(
            "SELECT data FROM segments WHERE first_seq BETWEEN ? AND ? ORDER BY first_seq", (first, last))]
        body = b"".join(parts)
        payload = senml.array_header(last - first + 1) + body
        data = cose.encode_sign1(protected, payload, signature)
        if hashlib.sha256(data).digest() != digest:
            log.error("batch %d in the outbox no longer matches its hash (damaged file?); dead-lettered", bseq)
            with self._op():
                self._x("INSERT OR REPLACE INTO dead_letters VALUES (?, '', 'damaged in the buffer', ?, ?)",
                        (bseq, time.time_ns(), data))
                self._x("DELETE FROM batches WHERE bseq = ?", (bseq,))
            return None
        self._live.add(bseq)
        return Batch(bseq, first, last, data, digest, created, len(body))

    async def ack(self, batch: Batch, uplink: str = "", required: frozenset[str] = frozenset()) -> bool:
        """Record an acknowledgement; once every required uplink has one (or none are required),
        forget the batch and its readings. Returns True when the batch was released."""
        return (await self.ack_many([(batch, uplink)], required))[0]

    async def ack_many(self, acks: list[tuple[Batch, str]], required: frozenset[str]) -> list[bool]:
        """Several acknowledgements in one trip to the database thread.

        Without required uplinks a release needs no transaction of its own: the rows are deleted
        with the next commit or batch, or within a second when nothing else is written (a power
        cut before that re-sends the batch after the restart: a duplicate, never a gap)."""
        if required:
            return await self._run(lambda: [self._ack_sync(b, u, required) for b, u in acks])
        out = []
        for batch, uplink in acks:
            if batch.bseq not in self._live:  # not made or loaded here, or acknowledged twice: ask the file
                again = any(bseq == batch.bseq for bseq, _, _ in self._released)
                out.append(not again and await self._run(self._ack_sync, batch, uplink, required))
                continue
            self._live.discard(batch.bseq)
            self._released.append((batch.bseq, batch.first_seq, batch.last_seq))
            self._released_stats(batch)
            out.append(True)
        if self.stats.readings <= 0:
            self.stats.oldest_ns = 0
        if self._released and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later(), name="buffer-ack-flush")
        return out

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(1.0)
            if self._released and not self._stalled:
                await self._run(self._flush_op_sync)
        except sqlite3.Error as e:  # the next commit or close tries again
            log.warning("buffer: forgetting acknowledged batches failed (%s); will retry", e)
        finally:
            self._flusher = None

    def _flush_op_sync(self) -> None:
        with self._op():
            n = self._flush_released_sync()
        self._forget_released(n)

    def _released_stats(self, batch: Batch) -> None:
        st = self.stats
        st.acked_batches += 1
        st.last_ack_ns = time.time_ns()
        st.acked_readings += max(batch.count, 0)
        st.readings -= max(batch.count, 0)
        st.bytes -= batch.nbytes

    def _ack_sync(self, batch: Batch, uplink: str, required: frozenset[str]) -> bool:
        db = self._db
        assert db is not None
        with self._op():
            if required:
                self._x("INSERT OR IGNORE INTO acks VALUES (?, ?)", (batch.bseq, uplink))
                have = {u for (u,) in db.execute("SELECT uplink FROM acks WHERE bseq = ?", (batch.bseq,))}
                if not required <= have:
                    return False
            gone = self._x("DELETE FROM batches WHERE bseq = ?", (batch.bseq,)).rowcount
            self._x("DELETE FROM acks WHERE bseq = ?", (batch.bseq,))
            self._x("DELETE FROM segments WHERE first_seq BETWEEN ? AND ?", (batch.first_seq, batch.last_seq))
        self._live.discard(batch.bseq)
        if gone:
            self._released_stats(batch)
        self._refresh_oldest()
        return bool(gone) or bool(required)

    async def dead_letter(self, batch: Batch, uplink: str, reason: str) -> None:
        """Keep a batch an uplink refused as bad, for inspection (sensegate doctor reports them)."""
        await self._run(self._dead_letter_sync, batch, uplink, reason)

    def _dead_letter_sync(self, batch: Batch, uplink: str, reason: str) -> None:
        with self._op():
            self._x("INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?)",
                    (batch.bseq, uplink, reason[:500], time.time_ns(), batch.data))
        self.stats.dead_letters += 1

    async def dead_letters(self) -> list[tuple[int, str, str]]:
        """(bseq, uplink, reason) of every dead-lettered batch."""
        return await self._run(lambda: [tuple(r) for r in self._view_sync().execute(
            "SELECT bseq, uplink, reason FROM dead_letters ORDER BY bseq")])

    # -- blobs (images) -----------------------------------------------------------------------

    async def next_blob(self) -> tuple[bytes, str, bytes] | None:
        """The oldest blob waiting for upload: (sha256, content type, data)."""
        return await self._run(self._next_blob_sync)

    def _next_blob_sync(self) -> tuple[bytes, str, bytes] | None:
        row = self._view_sync().execute(
            "SELECT sha256, content_type, data FROM blobs ORDER BY created_ns LIMIT 1").fetchone()
        return (row[0], row[1], row[2]) if row else None

    async def blob_done(self, sha256: bytes) -> None:
        """The blob reached the uplink: delete it."""
        await self._run(self._blob_done_sync, sha256)

    def _blob_done_sync(self, sha256: bytes) -> None:
        with self._op():
            self._x("DELETE FROM blobs WHERE sha256 = ?", (sha256,))


def backlog(path: str | Path) -> tuple[int, float | None]:
    """Readings waiting in a buffer file and the age (s) of the oldest, read-only (for doctor)."""
    uri = f"file:{Path(path)}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        n, oldest = db.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), MIN(created_ns) FROM segments"
        ).fetchone()
    finally:
        db.close()
    return int(n), (time.time_ns() - oldest) / 1e9 if oldest else None
