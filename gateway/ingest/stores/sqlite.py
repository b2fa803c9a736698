"""The embedded back-end: one SQLite file, for a site with a few gateways and for the demo.

The same tables and the same decisions (``ledger.plan``) as PostgreSQL, in one ``BEGIN
IMMEDIATE`` transaction per fetch, so two processes on one file would still be right (the write
lock serializes them). ``synchronous=FULL``: a commit is on the disk before the broker is told
to forget the messages. The connection lives on one thread of its own; the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.ingest import clock, ledger, rows
from gateway.ingest.clock import KnownEpoch
from gateway.ingest.contract import (
    BAD_BLOB,
    BlobChunk,
    KeyRecord,
    Refused,
    StorageUnavailable,
    StoreReport,
    Work,
)
from gateway.ingest.ledger import HEARTBEAT_COLUMNS, LEDGER_COLUMNS, Link, StreamLedger
from gateway.ingest.stores.common import assemble, enrol_record, parse_revoke, records_to_enrol
from gateway.wire import ClockEpoch

T = TypeVar("T")
log = logging.getLogger("sensegate.ingest.sqlite")
SCHEMA_VERSION = 2  # 2: readings' time (time_uncertain, ts_fixed_ns), the ledger's uncertain/redated, clock tables,
# and the heartbeat's ledger columns (ledger.HEARTBEAT_COLUMNS)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_keys (
    kid BLOB PRIMARY KEY, gateway TEXT NOT NULL, alg TEXT NOT NULL, public_pem TEXT NOT NULL,
    enrolled_ns INTEGER NOT NULL, revoked_ns INTEGER NOT NULL DEFAULT 0, revoked_reason TEXT NOT NULL DEFAULT '',
    replaced_by BLOB NOT NULL DEFAULT x'', replaced_ns INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS gateway_keys_gateway ON gateway_keys (gateway);
CREATE TABLE IF NOT EXISTS registry_version (one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL);
INSERT OR IGNORE INTO registry_version VALUES (1, 1);
CREATE TABLE IF NOT EXISTS ledger (
    gateway TEXT NOT NULL, stream INTEGER NOT NULL,
    received TEXT NOT NULL DEFAULT '[]', covered TEXT NOT NULL DEFAULT '[]', unclean TEXT NOT NULL DEFAULT '[]',
    boots TEXT NOT NULL DEFAULT '[]', readings INTEGER NOT NULL DEFAULT 0, batches INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0, duplicate_readings INTEGER NOT NULL DEFAULT 0,
    dropped INTEGER NOT NULL DEFAULT 0, drop_reasons TEXT NOT NULL DEFAULT '{}',
    chain_links INTEGER NOT NULL DEFAULT 0, chain_breaks INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0, max_bseq INTEGER NOT NULL DEFAULT 0, kid BLOB NOT NULL DEFAULT x'',
    first_seen_ns INTEGER NOT NULL DEFAULT 0, last_seen_ns INTEGER NOT NULL DEFAULT 0,
    last_reading_ns INTEGER NOT NULL DEFAULT 0, missing INTEGER NOT NULL DEFAULT 0,
    uncertain TEXT NOT NULL DEFAULT '[]', redated TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (gateway, stream));
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, stream INTEGER NOT NULL, bseq INTEGER NOT NULL, digest BLOB NOT NULL, prev BLOB NOT NULL,
    first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, boot INTEGER NOT NULL, kid BLOB NOT NULL,
    received_ns INTEGER NOT NULL, PRIMARY KEY (gateway, stream, bseq));
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL, stream INTEGER NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL,
    node TEXT NOT NULL, point TEXT NOT NULL, unit TEXT, v REAL, vs TEXT, vb INTEGER, vd BLOB,
    quality INTEGER NOT NULL, path INTEGER NOT NULL, extra TEXT, blob BLOB,
    time_uncertain INTEGER NOT NULL DEFAULT 0, ts_fixed_ns INTEGER,
    UNIQUE (gateway, stream, seq));
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts_ns);
CREATE TABLE IF NOT EXISTS blobs (sha256 BLOB PRIMARY KEY, content_type TEXT NOT NULL, size INTEGER NOT NULL,
    data BLOB NOT NULL, gateway TEXT NOT NULL, received_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS blob_parts (sha256 BLOB NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
    content_type TEXT NOT NULL, data BLOB NOT NULL, gateway TEXT NOT NULL, received_ns INTEGER NOT NULL,
    PRIMARY KEY (sha256, idx));
CREATE TABLE IF NOT EXISTS blob_drops (sha256 BLOB NOT NULL, gateway TEXT NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (sha256, gateway));
CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, received_ns INTEGER NOT NULL, topic TEXT NOT NULL,
    gateway TEXT NOT NULL, kid BLOB NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL, message BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS quarantine_gateway ON quarantine (gateway, reason);
CREATE TABLE IF NOT EXISTS clock_epochs (
    gateway TEXT NOT NULL, stream INTEGER NOT NULL, first_seq INTEGER NOT NULL, boot INTEGER NOT NULL,
    mono_ns INTEGER NOT NULL, wall_ns INTEGER NOT NULL, synced INTEGER NOT NULL, max_error_us INTEGER NOT NULL,
    shift_ns INTEGER, PRIMARY KEY (gateway, stream, first_seq));
CREATE TABLE IF NOT EXISTS clock_steps (
    gateway TEXT NOT NULL, stream INTEGER NOT NULL, boot INTEGER NOT NULL, mono_ns INTEGER NOT NULL,
    since_ns INTEGER NOT NULL, wall_before_ns INTEGER NOT NULL, wall_after_ns INTEGER NOT NULL,
    first_seq INTEGER NOT NULL, PRIMARY KEY (gateway, stream, boot, mono_ns));
"""
# columns added since schema 1 (all in schema 2): (table, column, definition)
ADDED = [("readings", "time_uncertain", "INTEGER NOT NULL DEFAULT 0"), ("readings", "ts_fixed_ns", "INTEGER"),
         ("ledger", "uncertain", "TEXT NOT NULL DEFAULT '[]'"), ("ledger", "redated", "TEXT NOT NULL DEFAULT '[]'")]
ADDED += [("ledger", name, sql_type) for name, sql_type in HEARTBEAT_COLUMNS]


class SqliteStorage:
    """Storage in one SQLite file (WAL, synchronous=FULL), on a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:{path}"
        self._db: sqlite3.Connection | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ingest-sqlite")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as e:  # locked beyond the busy timeout, disk full, I/O error
            raise StorageUnavailable(f"{self.url}: {e}") from None

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN IMMEDIATE")  # another process opening the file waits for the upgrade
        try:
            version = self._schema_sync(db)
        except BaseException:
            db.execute("ROLLBACK")
            db.close()
            raise
        db.execute("COMMIT")
        if version < SCHEMA_VERSION:
            log.info("ingest database %s upgraded from schema %d to %d", self.path, version, SCHEMA_VERSION)
        self._db = db

    @staticmethod
    def _schema_sync(db: sqlite3.Connection) -> int:
        """Create the tables, or upgrade an older file's (columns added with their defaults);
        the version the file had."""
        version = 0
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ingest_schema'").fetchone():
            version = db.execute("SELECT max(version) FROM ingest_schema").fetchone()[0] or 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the database has ingest schema {version}; this sensegate knows {SCHEMA_VERSION}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        for table, column, definition in ADDED:
            if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        db.execute("DELETE FROM ingest_schema")
        db.execute("INSERT INTO ingest_schema VALUES (?)", (SCHEMA_VERSION,))
        return version or SCHEMA_VERSION

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        await asyncio.get_running_loop().run_in_executor(pool, self._close_sync)
        pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one write transaction (BEGIN IMMEDIATE: the write lock first)."""
        db = self._db
        assert db is not None, "open() first"
        db.execute("BEGIN IMMEDIATE")
        try:
            out = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return out

    # -- storing --------------------------------------------------------------------------------

    async def store(self, work: Work) -> StoreReport:
        return await self._run(self._tx, lambda db: self._store(db, work))

    def _store(self, db: sqlite3.Connection, work: Work) -> StoreReport:
        keys = ledger.keys_of(work)
        ledgers: dict[ledger.Key, StreamLedger] = {}
        for gw, st in keys:
            row = db.execute(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE gateway = ? AND stream = ?",
                             (gw, st)).fetchone()
            if row is not None:
                ledgers[(gw, st)] = ledger.from_row(row)
        links: dict[ledger.Key, dict[int, Link]] = {}
        for gw, st, bseq in ledger.links_needed(work):
            row = db.execute("SELECT digest, prev FROM batches WHERE gateway = ? AND stream = ? AND bseq = ?",
                             (gw, st, bseq)).fetchone()
            if row is not None:
                links.setdefault((gw, st), {})[bseq] = Link(row[0], row[1])
        epochs: dict[ledger.Key, dict[int, KnownEpoch]] = {}
        for (gw, st), boot in clock.boots_needed(work).items():
            epochs[(gw, st)] = {r[0]: KnownEpoch(ClockEpoch(r[0], r[1], r[2], r[3], bool(r[4]), r[5]), r[6])
                                for r in db.execute("SELECT first_seq, boot, mono_ns, wall_ns, synced, max_error_us, "
                                                    "shift_ns FROM clock_epochs WHERE gateway = ? AND stream = ? "
                                                    "AND boot >= ?", (gw, st, boot))}
        plan = ledger.plan(work, ledgers, links, epochs)
        db.executemany("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(b.gateway, b.stream, b.bseq, b.digest, b.prev, b.first_seq, b.last_seq, b.boot, b.kid,
                         b.received_ns) for b in plan.batches])
        db.executemany(f"INSERT INTO readings (gateway, stream, seq, ts_ns, {', '.join(rows.COLUMNS)}, time_uncertain, "
                       f"ts_fixed_ns) VALUES ({', '.join('?' * (6 + len(rows.COLUMNS)))})",
                       [(b.gateway, b.stream, r.seq, r.ts_ns, *rows.values(r), uncertain,
                         None if shift is None else r.ts_ns + shift)
                        for b, fresh, spans in plan.readings for r, uncertain, shift in clock.timed(fresh, spans)])
        self._store_time(db, plan.time)
        db.executemany(f"INSERT OR REPLACE INTO ledger ({', '.join(LEDGER_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(LEDGER_COLUMNS))})", [ledger.to_row(led) for led in plan.ledgers])
        db.executemany("INSERT OR IGNORE INTO blob_drops VALUES (?, ?, ?)",
                       [(sha, b.gateway, reason) for b in plan.batches for sha, reason in b.blob_drops])
        refused = plan.refused + self._store_chunks(db, work.chunks, plan.report)
        db.executemany("INSERT INTO quarantine (received_ns, topic, gateway, kid, reason, detail, message) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(r.received_ns, r.topic, r.gateway, r.kid, r.reason, r.detail, r.message) for r in refused])
        return plan.report

    @staticmethod
    def _store_time(db: sqlite3.Connection, t: clock.TimePlan) -> None:
        """The clock epochs and steps, and corrections of readings stored before."""
        db.executemany("INSERT OR IGNORE INTO clock_epochs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(gw, st, *e[:4], int(e.synced), e.max_error_us, shift) for gw, st, e, shift in t.epochs])
        db.executemany("UPDATE clock_epochs SET shift_ns = ? WHERE gateway = ? AND stream = ? AND first_seq = ?",
                       [(shift, gw, st, first) for gw, st, first, shift in t.shifts])
        db.executemany("INSERT OR IGNORE INTO clock_steps VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [(gw, st, *s) for gw, st, s in t.steps])
        db.executemany("UPDATE readings SET ts_fixed_ns = ts_ns + ? WHERE gateway = ? AND stream = ? AND seq BETWEEN "
                       "? AND ? AND time_uncertain", [(shift, gw, st, a, b) for gw, st, a, b, shift in t.redates])

    @staticmethod
    def _store_chunks(db: sqlite3.Connection, chunks: Sequence[BlobChunk], report: StoreReport) -> list[Refused]:
        refused: list[Refused] = []
        for c in sorted(chunks, key=lambda c: (c.sha256, c.index)):
            if db.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (c.sha256,)).fetchone():
                continue
            db.execute("INSERT OR IGNORE INTO blob_parts VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (c.sha256, c.index, c.count, c.content_type, c.data, c.gateway, c.received_ns))
            parts = db.execute("SELECT data FROM blob_parts WHERE sha256 = ? ORDER BY idx", (c.sha256,)).fetchall()
            if len(parts) < c.count:
                continue
            db.execute("DELETE FROM blob_parts WHERE sha256 = ?", (c.sha256,))
            data = assemble(c, [p[0] for p in parts])
            if isinstance(data, Refused):
                refused.append(data)
                report.refuse(BAD_BLOB)
                continue
            db.execute("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
                       (c.sha256, c.content_type, len(data), data, c.gateway, c.received_ns))
            report.blobs += 1
        return refused

    # -- the trust registry -------------------------------------------------------------------

    async def registry(self, since: int) -> tuple[int, list[KeyRecord]] | None:
        return await self._run(self._registry_sync, since)

    def _registry_sync(self, since: int) -> tuple[int, list[KeyRecord]] | None:
        db = self._db
        assert db is not None
        version = int(db.execute("SELECT version FROM registry_version").fetchone()[0])
        if version == since:
            return None
        return version, [KeyRecord(*r) for r in db.execute(
            "SELECT kid, gateway, alg, public_pem, enrolled_ns, revoked_ns, revoked_reason, replaced_by, replaced_ns "
            "FROM gateway_keys")]

    async def enrol(self, gateway: str, public_pem: str, replaces: bytes = b"") -> KeyRecord:
        rec = enrol_record(gateway, public_pem)

        def enrol(db: sqlite3.Connection) -> KeyRecord:
            row = db.execute("SELECT gateway FROM gateway_keys WHERE kid = ?", (rec.kid,)).fetchone()
            if row is not None and row[0] != gateway:
                raise ValueError(f"key {rec.kid.hex()} is already bound to gateway {row[0]!r}; a key speaks for "
                                 "one gateway only")
            if row is None:
                db.execute("INSERT INTO gateway_keys (kid, gateway, alg, public_pem, enrolled_ns) "
                           "VALUES (?, ?, ?, ?, ?)", (rec.kid, gateway, rec.alg, public_pem, rec.enrolled_ns))
            if replaces:
                n = db.execute("UPDATE gateway_keys SET replaced_by = ?, replaced_ns = ? WHERE kid = ? AND gateway = ? "
                               "AND kid <> ?", (rec.kid, time.time_ns(), replaces, gateway, rec.kid)).rowcount
                if n != 1:
                    raise ValueError(f"gateway {gateway!r} has no key {replaces.hex()} to replace")
            db.execute("UPDATE registry_version SET version = version + 1")
            return rec

        return await self._run(self._tx, enrol)

    async def enrol_many(self, keys: Sequence[tuple[str, str]]) -> list[KeyRecord | str]:
        def enrol(db: sqlite3.Connection) -> list[KeyRecord | str]:
            bound = {bytes(k): g for k, g in db.execute("SELECT kid, gateway FROM gateway_keys")}
            out, new = records_to_enrol(keys, bound)
            rows_ = [(r.kid, r.gateway, r.alg, r.public_pem, r.enrolled_ns) for r in new]
            db.executemany("INSERT INTO gateway_keys (kid, gateway, alg, public_pem, enrolled_ns) "
                           "VALUES (?, ?, ?, ?, ?)", rows_)
            db.execute("UPDATE registry_version SET version = version + 1")
            return out

        return await self._run(self._tx, enrol)

    async def revoke(self, gateway: str, kid: bytes | None, reason: str) -> int:
        where, args = parse_revoke(gateway, kid, "?")

        def revoke(db: sqlite3.Connection) -> int:
            n = db.execute("UPDATE gateway_keys SET revoked_ns = ?, revoked_reason = ? "
                           f"WHERE revoked_ns = 0 AND {where}", (time.time_ns(), reason, *args)).rowcount
            db.execute("UPDATE registry_version SET version = version + 1")
            return n

        return await self._run(self._tx, revoke)

    # -- reports ------------------------------------------------------------------------------

    async def ledgers(self, gateway: str | None = None) -> list[StreamLedger]:
        def read() -> list[StreamLedger]:
            assert self._db is not None
            sql = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger"
            cur = (self._db.execute(sql + " WHERE gateway = ? ORDER BY gateway, stream", (gateway,)) if gateway
                   else self._db.execute(sql + " ORDER BY gateway, stream"))
            return [ledger.from_row(r) for r in cur]

        return await self._run(read)

    async def refusals(self, gateway: str | None = None) -> dict[tuple[str, str], int]:
        def read() -> dict[tuple[str, str], int]:
            assert self._db is not None
            sql = "SELECT gateway, reason, count(*) FROM quarantine"
            cur = (self._db.execute(sql + " WHERE gateway = ? GROUP BY 1, 2", (gateway,)) if gateway
                   else self._db.execute(sql + " GROUP BY 1, 2"))
            return {(r[0], r[1]): int(r[2]) for r in cur}

        return await self._run(read)

    async def missing(self, grace: float) -> tuple[int, int]:
        def read() -> list[StreamLedger]:
            assert self._db is not None
            return [ledger.from_row(r) for r in self._db.execute(
                f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE {ledger.MAYBE_MISSING}")]

        return ledger.count_missing(await self._run(read), grace)
