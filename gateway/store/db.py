"""The store's database: one SQLite file on one thread, written in one *group transaction*.

Every write joins the open group transaction, committed at most ``commit_interval`` after it
began (by a timer here, or sooner by a caller). Each write is also recorded in the *journal*:
when a commit fails (a full disk) the transaction is rolled back and the journal replays it at
the next attempt, a second later, so nothing written is lost and nothing new is stored until it
succeeds. ``durable()`` is the one fsynced commit (numbers reserved ahead of use); otherwise
the WAL is fsynced at most every SYNC_EVERY while stored readings wait unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SYNC_EVERY = 5.0  # longest time stored, unacknowledged readings stay without an fsync (power-cut window)
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
CREATE TABLE IF NOT EXISTS clock (
    first_seq INTEGER PRIMARY KEY, boot INTEGER NOT NULL, mono_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL,
    synced INTEGER NOT NULL, max_error_us INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clock_steps (
    boot INTEGER NOT NULL, mono_ns INTEGER NOT NULL, since_ns INTEGER NOT NULL, wall_before_ns INTEGER NOT NULL,
    wall_after_ns INTEGER NOT NULL, first_seq INTEGER NOT NULL, PRIMARY KEY (boot, mono_ns)) WITHOUT ROWID;
"""


class StoreError(Exception):
    """The buffer file cannot be used (newer format, another gateway's buffer, unwritable)."""


@dataclass
class StoreStats:
    """Counters for metrics and status, kept as rows change (recounted from the file at open)."""

    committed: int = 0
    commits: int = 0
    dropped: int = 0
    batches_created: int = 0
    acked_batches: int = 0
    acked_readings: int = 0
    readings: int = 0  # committed, not yet acknowledged
    bytes: int = 0
    oldest_ns: int = 0
    oldest_seq: int = 0  # the lowest reading number the buffer still holds (0: none); the heartbeat's held_from
    last_batch_readings: int = 0
    last_batch_bytes: int = 0
    dead_letters: int = 0
    blobs_dropped: int = 0
    group_commits: int = 0  # group transactions committed
    reservations: int = 0  # blocks of numbers reserved (each one fsync)
    syncs: int = 0  # fsyncs for readings waiting unacknowledged (at most one per SYNC_EVERY)
    skipped_unclean: int = 0  # reading numbers skipped at open after an unclean stop
    last_ack_ns: int = 0  # wall clock of the last acknowledged batch (doctor: is anything delivered?)

    def recount(self, conn: sqlite3.Connection) -> None:
        """Count what the segments hold (once, at open)."""
        n, nbytes = conn.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COALESCE(SUM(nbytes), 0) FROM segments").fetchone()
        self.readings, self.bytes = n, nbytes
        self.refresh_oldest(conn)

    def refresh_oldest(self, conn: sqlite3.Connection) -> None:
        """The oldest segment's commit time and first reading number (an index lookup, not a
        scan). Segments of released batches not yet deleted count for up to a second: the figures
        are for metrics and the heartbeat, and err old."""
        if self.readings <= 0:
            self.oldest_ns = self.oldest_seq = 0
            return
        row = conn.execute("SELECT created_ns, first_seq FROM segments ORDER BY first_seq LIMIT 1").fetchone()
        self.oldest_ns, self.oldest_seq = (row[0], row[1]) if row else (0, 0)


class Database:
    """The buffer file, its thread and its group transaction. Methods ending in ``_sync`` and the
    writes (``x``, ``xm``, ``op``) run on the database thread only, through ``run``."""

    def __init__(self, path: Path, commit_interval: float, stats: StoreStats) -> None:
        self.path = path
        self.commit_interval = commit_interval
        self.stats = stats
        self.conn: sqlite3.Connection | None = None
        # called on the database thread before the timer's commit (the outbox forgets released batches)
        self.before_timer_commit: Callable[[], None] = lambda: None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sensegate-db")
        # the group transaction (state of the database thread; the loop reads it between calls)
        self.tx_open = False
        self._tx_began = 0.0  # monotonic
        self.journal: list[tuple[str, Any, bool]] = []  # its statements: (sql, params, executemany)
        self.timer: asyncio.TimerHandle | None = None
        self._committer: asyncio.Task[None] | None = None  # the timer's commit, while it runs
        self.aborts = 0  # transactions rolled back (what mirrors rows in memory reads again after one)
        self._synced_at = time.monotonic()  # the last fsync
        self._unsynced = False  # a transaction committed since then

    # -- the thread ------------------------------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the database thread; then schedule the commit its writes need."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.arm()

    def arm(self) -> None:
        """Schedule the group transaction's commit: ``commit_interval`` after it began, or a
        second from now while a failed one waits in the journal; else the fsync that is due
        SYNC_EVERY after the last one while committed readings wait unacknowledged."""
        if self.timer is not None or self._committer is not None or self.conn is None:
            return
        if self.tx_open:
            delay = self._tx_began + self.commit_interval - time.monotonic()
        elif self.stalled:
            delay = 1.0
        elif self._unsynced and self.stats.readings > 0:
            delay = self._synced_at + SYNC_EVERY - time.monotonic()
        else:
            return
        self.timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._fire)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        self._committer = asyncio.create_task(self._timer_commit(), name="buffer-group-commit")

    async def _timer_commit(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.timer_commit_sync)
        except (sqlite3.Error, OSError) as e:  # disk full: the journal keeps the writes, retried in a second
            log.error("buffer commit failed (%s); %d statements kept in memory, retrying", e, len(self.journal))
        finally:
            self._committer = None
        self.arm()

    def timer_commit_sync(self) -> None:
        """The group transaction's timer: what must go with it, then the commit (and a due fsync)."""
        self.before_timer_commit()
        self.end_sync()
        self.sync_if_due_sync()

    async def stop(self) -> None:
        """Stop the timer and wait for a commit it started."""
        self.disarm()
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None

    def shutdown(self) -> None:
        """End the thread (after the last ``run``)."""
        self.disarm()  # (a commit that failed just now armed its retry)
        # never block the loop on the database thread: idle, it ends at once; still in a
        # statement (this close was cancelled by the shutdown deadline), it ends after it
        self._pool.shutdown(wait=False)

    # -- the file ----------------------------------------------------------------------------

    def connect_sync(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # 1 KiB pages (new files only): a batch's transaction rewrites about five pages, and each
        # is one WAL frame; at a trickle of readings that is most of what reaches the SD card
        conn.execute("PRAGMA page_size=1024")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=1000")
        conn.executescript(SCHEMA)
        self.conn = conn
        return conn

    def checkpoint_sync(self) -> None:
        """Copy the WAL into the database file where no reader is in the way (at a clean stop)."""
        assert self.conn is not None
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close_sync(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()

    # -- the group transaction (database thread) ---------------------------------------------

    def x(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """A write, in the group transaction (inside ``op``), recorded in the journal."""
        assert self.conn is not None and self.tx_open
        cur = self.conn.execute(sql, params)
        self.journal.append((sql, params, False))
        return cur

    def xm(self, sql: str, rows: Any) -> None:
        """``executemany`` in the group transaction, recorded in the journal."""
        assert self.conn is not None and self.tx_open
        rows = list(rows)
        if rows:
            self.conn.executemany(sql, rows)
            self.journal.append((sql, rows, True))

    def begin_sync(self) -> None:
        """Open the group transaction if it is not open; replay the journal of a failed commit."""
        conn = self.conn
        assert conn is not None
        if self.tx_open:
            return
        conn.execute("BEGIN")
        self._tx_began = time.monotonic()
        self.tx_open = True
        try:
            for sql, params, many in self.journal:
                (conn.executemany if many else conn.execute)(sql, params)
        except BaseException:
            self.abort_sync()
            raise

    @property
    def stalled(self) -> bool:
        """A commit (or a write) failed: the journal waits to be replayed before anything new."""
        return bool(self.journal) and not self.tx_open

    def abort_sync(self) -> None:
        """Roll the open transaction back; the journal keeps what it held for the next attempt."""
        assert self.conn is not None
        self.tx_open = False
        self.aborts += 1
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        """One logical write in the group transaction: all its statements, or none of them."""
        self.begin_sync()
        mark = len(self.journal)
        try:
            yield
        except BaseException:
            del self.journal[mark:]
            self.abort_sync()  # the database goes back to committed + journal at the next begin
            raise

    def view_sync(self) -> sqlite3.Connection:
        """The connection for a read: one that sees the writes of a failed commit's journal too."""
        if self.journal and not self.tx_open:
            self.begin_sync()
        assert self.conn is not None
        return self.conn

    def end_sync(self) -> None:
        """Commit the group transaction (or the journal of a failed one), without an fsync."""
        if not self.tx_open and not self.journal:
            return
        self.begin_sync()
        assert self.conn is not None
        try:
            self.conn.execute("COMMIT")
        except BaseException:
            self.abort_sync()
            raise
        self.tx_open = False
        self._unsynced = True
        self.journal.clear()
        self.stats.group_commits += 1

    def durable_sync(self, values: dict[str, int]) -> None:
        """Commit the group transaction, then write ``values`` to meta in a transaction that is
        fsynced (which makes everything before it durable too)."""
        self.end_sync()
        conn = self.conn
        assert conn is not None
        conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN")
            try:
                conn.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in values.items()])
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        self._synced_at = time.monotonic()
        self._unsynced = False

    def sync_if_due_sync(self) -> None:
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
