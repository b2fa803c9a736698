"""The PostgreSQL back-end (psycopg 3): readings by binary COPY (gateway/ingest/stores/pgcopy.py)
into a table partitioned by month.

One transaction per fetch: lock the ledger rows of the (gateway, stream)s in it (sorted, so two
workers never deadlock), read the stored neighbours of its batches, decide (``ledger.plan``),
then COPY the batch log and the readings, update the ledgers, record blob drops and the
quarantine. A few round trips whatever the number of batches.

Every operation runs under a deadline: a database that stops answering (not only one that
refuses) turns into StorageUnavailable within ``timeout`` seconds plus psycopg's bounded
cancel, and the connection is dropped and made again on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.ingest import clock, ledger
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
from gateway.ingest.stores import pgcopy
from gateway.ingest.stores.common import (
    assemble,
    enrol_record,
    month_bounds,
    months_of,
    parse_revoke,
    records_to_enrol,
)
from gateway.wire import ClockEpoch

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as e:  # pragma: no cover - the fleet extra is missing
    raise ImportError("PostgreSQL needs the fleet extra: pip install 'sensegate[fleet]'") from e

log = logging.getLogger("sensegate.ingest.postgres")
SCHEMA_VERSION = 2  # 2: readings' time (time_uncertain, ts_fixed), the ledger's uncertain/redated, clock tables,
# and the heartbeat's ledger columns (ledger.HEARTBEAT_COLUMNS)
_SCHEMA_LOCK = 0x5E4E5E6A7E  # pg_advisory_xact_lock key: one worker creates the schema at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS gateway_keys (
    kid bytea PRIMARY KEY,                     -- SHA-256(SPKI)[:16]: a key is bound to ONE gateway
    gateway text NOT NULL,
    alg text NOT NULL,
    public_pem text NOT NULL,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    revoked_reason text NOT NULL DEFAULT '',
    replaced_by bytea REFERENCES gateway_keys (kid),
    replaced_at timestamptz
);
CREATE INDEX IF NOT EXISTS gateway_keys_gateway ON gateway_keys (gateway);
CREATE TABLE IF NOT EXISTS registry_version (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                                             version bigint NOT NULL);
INSERT INTO registry_version VALUES (true, 1) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS ledger (
    gateway text NOT NULL,
    stream bigint NOT NULL,
    received text NOT NULL DEFAULT '[]',       -- reading numbers stored, as merged [first, last] ranges
    covered text NOT NULL DEFAULT '[]',        -- received, declared dropped or skipped
    unclean text NOT NULL DEFAULT '[]',        -- declared skipped after unclean stops
    boots text NOT NULL DEFAULT '[]',
    readings bigint NOT NULL DEFAULT 0,
    batches bigint NOT NULL DEFAULT 0,
    duplicates bigint NOT NULL DEFAULT 0,
    duplicate_readings bigint NOT NULL DEFAULT 0,
    dropped bigint NOT NULL DEFAULT 0,
    drop_reasons jsonb NOT NULL DEFAULT '{}',
    chain_links bigint NOT NULL DEFAULT 0,
    chain_breaks bigint NOT NULL DEFAULT 0,
    conflicts bigint NOT NULL DEFAULT 0,
    max_bseq bigint NOT NULL DEFAULT 0,
    kid bytea NOT NULL DEFAULT '',
    first_seen_ns bigint NOT NULL DEFAULT 0,
    last_seen_ns bigint NOT NULL DEFAULT 0,
    last_reading_ns bigint NOT NULL DEFAULT 0,
    missing bigint NOT NULL DEFAULT 0,         -- readings unaccounted for, as of the last update
    uncertain text NOT NULL DEFAULT '[]',      -- stored readings stamped on an unsynchronised clock
    redated text NOT NULL DEFAULT '[]',        -- of those, given a corrected time (ts_fixed)
    PRIMARY KEY (gateway, stream)
);
CREATE TABLE IF NOT EXISTS batches (
    gateway text NOT NULL,
    stream bigint NOT NULL,
    bseq bigint NOT NULL,
    digest bytea NOT NULL,
    prev bytea NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    boot bigint NOT NULL,
    kid bytea NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (gateway, stream, bseq)
);
CREATE TABLE IF NOT EXISTS readings (
    gateway text NOT NULL,
    stream bigint NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    node text NOT NULL,
    point text NOT NULL,
    unit text,
    v double precision,
    vs text,
    vb boolean,
    vd bytea,
    quality smallint NOT NULL,
    path smallint NOT NULL,
    extra jsonb,
    blob bytea,
    time_uncertain boolean NOT NULL DEFAULT false, -- stamped on a clock the gateway did not call synchronised
    ts_fixed timestamptz,                      -- its corrected time, once known (ts stays as the gateway stamped it)
    UNIQUE (gateway, stream, seq, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 bytea PRIMARY KEY,
    content_type text NOT NULL,
    size bigint NOT NULL,
    data bytea NOT NULL,
    gateway text NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_parts (
    sha256 bytea NOT NULL,
    idx integer NOT NULL,
    count integer NOT NULL,
    content_type text NOT NULL,
    data bytea NOT NULL,
    gateway text NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (sha256, idx)
);
CREATE TABLE IF NOT EXISTS blob_drops (
    sha256 bytea NOT NULL,
    gateway text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (sha256, gateway)
);
CREATE TABLE IF NOT EXISTS quarantine (
    id bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL,
    topic text NOT NULL,
    gateway text NOT NULL,                     -- as claimed: not to be believed
    kid bytea NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    message bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS quarantine_gateway ON quarantine (gateway, reason);
CREATE TABLE IF NOT EXISTS clock_epochs (          -- the clock epochs gateways declared ("ck")
    gateway text NOT NULL,
    stream bigint NOT NULL,
    first_seq bigint NOT NULL,
    boot bigint NOT NULL,
    mono_ns bigint NOT NULL,
    wall_ns bigint NOT NULL,
    synced boolean NOT NULL,
    max_error_us bigint NOT NULL,
    shift_ns bigint,                           -- given to its readings' corrected time, once known
    PRIMARY KEY (gateway, stream, first_seq)
);
CREATE TABLE IF NOT EXISTS clock_steps (           -- steps of gateways' wall clocks ("cj")
    gateway text NOT NULL,
    stream bigint NOT NULL,
    boot bigint NOT NULL,
    mono_ns bigint NOT NULL,
    since_ns bigint NOT NULL,
    wall_before_ns bigint NOT NULL,
    wall_after_ns bigint NOT NULL,
    first_seq bigint NOT NULL,
    PRIMARY KEY (gateway, stream, boot, mono_ns)
);
"""
# schema 1 -> 2, on a database made before (metadata only: the defaults are constants)
UPGRADE = """
ALTER TABLE readings ADD COLUMN IF NOT EXISTS time_uncertain boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS ts_fixed timestamptz;
ALTER TABLE ledger ADD COLUMN IF NOT EXISTS uncertain text NOT NULL DEFAULT '[]',
    ADD COLUMN IF NOT EXISTS redated text NOT NULL DEFAULT '[]';
ALTER TABLE ledger """
UPGRADE += ",\n    ".join(f"ADD COLUMN IF NOT EXISTS {name} {sql_type}" for name, sql_type in HEARTBEAT_COLUMNS) + ";\n"

_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError)
_RETRY = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.LockNotAvailable)


def ts(ns: int) -> datetime:
    """A reading's timestamp at PostgreSQL's precision (microseconds, rounded down)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


class PostgresStorage:
    """Storage in PostgreSQL 13+; any number of workers share one database."""

    def __init__(self, dsn: str, timeout: float = 20.0) -> None:
        self.dsn = dsn
        self.url = _redact(dsn)
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()
        self._partitions: set[str] = set()
        self._copy = pgcopy.ReadingsCopy()

    # -- connection ---------------------------------------------------------------------------

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(2, int(self.timeout / 2)),
                application_name="sensegate-ingest", keepalives=1, keepalives_idle=10, keepalives_interval=5,
                keepalives_count=3)
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()

    async def _op(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` under the deadline; transient failures become StorageUnavailable,
        deadlocks and serialization failures are retried."""
        async with self._lock:
            for attempt in range(5):
                try:
                    async with asyncio.timeout(self.timeout):
                        return await fn(await self._connection(), *args)
                except _RETRY as e:
                    log.info("retrying a transaction (%s)", type(e).__name__)
                    await asyncio.sleep(0.05 * (attempt + 1))
                except pg_errors.CheckViolation as e:
                    if "no partition" not in str(e) or attempt:
                        raise
                    self._partitions.clear()  # one was dropped (retention) since we made it: make it again
                except _TRANSIENT as e:
                    await self._drop()
                    what = f"no answer within {self.timeout:g}s" if isinstance(e, TimeoutError) else str(e).strip()
                    raise StorageUnavailable(f"PostgreSQL at {self.url}: {what}") from None
            raise StorageUnavailable("PostgreSQL: gave up after repeated deadlocks")

    async def open(self) -> None:
        await self._op(self._create_schema)

    @staticmethod
    async def _create_schema(conn: psycopg.AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await conn.execute(SCHEMA)
            row = await (await conn.execute("SELECT max(version) FROM ingest_schema")).fetchone()
            version = row[0] if row is not None and row[0] is not None else None
            if version is not None and version > SCHEMA_VERSION:
                raise RuntimeError(f"the database has ingest schema {version}; this sensegate knows {SCHEMA_VERSION}")
            if version is None or version < SCHEMA_VERSION:
                await conn.execute(UPGRADE)
                await conn.execute("DELETE FROM ingest_schema")
                await conn.execute("INSERT INTO ingest_schema VALUES (%s)", (SCHEMA_VERSION,))
                if version is not None:
                    log.info("ingest database upgraded from schema %d to %d", version, SCHEMA_VERSION)

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    # -- storing --------------------------------------------------------------------------------

    async def store(self, work: Work) -> StoreReport:
        report: StoreReport = await self._op(self._store, work)
        return report

    async def _store(self, conn: psycopg.AsyncConnection[Any], work: Work) -> StoreReport:
        await self._ensure_partitions(conn, work)
        async with conn.transaction():
            ledgers = await self._lock_ledgers(conn, ledger.keys_of(work))
            links = await self._links(conn, ledger.links_needed(work))
            epochs = await self._epochs(conn, clock.boots_needed(work))
            plan = ledger.plan(work, ledgers, links, epochs)
            await self._write(conn, plan)
            await self._write_time(conn, plan.time)
            refused = await self._store_chunks(conn, work.chunks, plan.report)
            await self._quarantine(conn, plan.refused + refused)
        return plan.report

    async def _lock_ledgers(self, conn: psycopg.AsyncConnection[Any],
                            keys: list[ledger.Key]) -> dict[ledger.Key, StreamLedger]:
        if not keys:
            return {}
        gws, streams = [k[0] for k in keys], [k[1] for k in keys]
        await conn.execute("INSERT INTO ledger (gateway, stream) SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                           "ON CONFLICT DO NOTHING", (gws, streams))
        cur = await conn.execute(
            f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE (gateway, stream) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[])) ORDER BY gateway, stream FOR UPDATE",
            (gws, streams))
        return {(r[0], r[1]): ledger.from_row(r) for r in await cur.fetchall()}

    @staticmethod
    async def _links(conn: psycopg.AsyncConnection[Any],
                     need: list[tuple[str, int, int]]) -> dict[ledger.Key, dict[int, Link]]:
        out: dict[ledger.Key, dict[int, Link]] = {}
        if not need:
            return out
        cur = await conn.execute(
            "SELECT gateway, stream, bseq, digest, prev FROM batches WHERE (gateway, stream, bseq) IN "
            "(SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]))",
            ([n[0] for n in need], [n[1] for n in need], [n[2] for n in need]))
        for gw, st, bseq, digest, prev in await cur.fetchall():
            out.setdefault((gw, st), {})[bseq] = Link(bytes(digest), bytes(prev))
        return out

    @staticmethod
    async def _epochs(conn: psycopg.AsyncConnection[Any],
                      boots: dict[ledger.Key, int]) -> dict[ledger.Key, dict[int, KnownEpoch]]:
        """The stored clock epochs of the runs the transaction's batches name, and later ones."""
        out: dict[ledger.Key, dict[int, KnownEpoch]] = {key: {} for key in boots}
        if not boots:
            return out
        keys = list(boots.items())
        cur = await conn.execute(
            "SELECT e.gateway, e.stream, first_seq, e.boot, mono_ns, wall_ns, synced, max_error_us, shift_ns "
            "FROM clock_epochs e JOIN unnest(%s::text[], %s::bigint[], %s::bigint[]) AS w(gateway, stream, boot) "
            "ON e.gateway = w.gateway AND e.stream = w.stream AND e.boot >= w.boot",
            ([k[0] for k, _ in keys], [k[1] for k, _ in keys], [b for _, b in keys]))
        for gw, st, first, boot, mono, wall, synced, err, shift in await cur.fetchall():
            out[(gw, st)][first] = KnownEpoch(ClockEpoch(first, boot, mono, wall, synced, err), shift)
        return out

    @staticmethod
    async def _write_time(conn: psycopg.AsyncConnection[Any], t: clock.TimePlan) -> None:
        """The clock epochs and steps, and corrections of readings stored before."""
        async with conn.cursor() as cur:
            if t.epochs:
                await cur.executemany("INSERT INTO clock_epochs VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                                      "ON CONFLICT DO NOTHING",
                                      [(gw, st, *e, shift) for gw, st, e, shift in t.epochs])
            if t.shifts:
                await cur.executemany("UPDATE clock_epochs SET shift_ns = %s WHERE gateway = %s AND stream = %s "
                                      "AND first_seq = %s", [(shift, gw, st, f) for gw, st, f, shift in t.shifts])
            if t.steps:
                await cur.executemany("INSERT INTO clock_steps VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                                      "ON CONFLICT DO NOTHING", [(gw, st, *s) for gw, st, s in t.steps])
            if t.redates:
                await cur.executemany(
                    "UPDATE readings SET ts_fixed = ts + %s * interval '1 microsecond' WHERE gateway = %s AND "
                    "stream = %s AND seq BETWEEN %s AND %s AND time_uncertain",
                    [(shift // 1000, gw, st, a, b) for gw, st, a, b, shift in t.redates])

    async def _write(self, conn: psycopg.AsyncConnection[Any], plan: ledger.Plan) -> None:
        async with conn.cursor() as cur:
            if plan.batches:
                async with cur.copy("COPY batches (gateway, stream, bseq, digest, prev, first_seq, last_seq, boot, "
                                    "kid, received_at) FROM STDIN") as copy:
                    for b in plan.batches:
                        await copy.write_row((b.gateway, b.stream, b.bseq, b.digest, b.prev, b.first_seq,
                                              b.last_seq, b.boot, b.kid, ts(b.received_ns)))
            if plan.readings:
                async with cur.copy(f"COPY readings ({', '.join(pgcopy.COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                    await copy.write(self._copy.encode(plan.readings))
            if plan.ledgers:
                sets = ", ".join(f"{c} = %s" for c in LEDGER_COLUMNS[2:])
                await cur.executemany(f"UPDATE ledger SET {sets} WHERE gateway = %s AND stream = %s",
                                      [(*ledger.to_row(led)[2:], led.gateway, led.stream) for led in plan.ledgers])
            drops = [(sha, b.gateway, reason) for b in plan.batches for sha, reason in b.blob_drops]
            if drops:
                await cur.executemany("INSERT INTO blob_drops VALUES (%s, %s, %s) ON CONFLICT DO NOTHING", drops)

    async def _store_chunks(self, conn: psycopg.AsyncConnection[Any], chunks: Sequence[BlobChunk],
                            report: StoreReport) -> list[Refused]:
        """Keep each chunk; the worker that stores a blob's last chunk assembles and checks it."""
        refused: list[Refused] = []
        for c in sorted(chunks, key=lambda c: (c.sha256, c.index)):
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (c.sha256.hex(),))
            cur = await conn.execute("SELECT 1 FROM blobs WHERE sha256 = %s", (c.sha256,))
            if await cur.fetchone():
                continue
            await conn.execute("INSERT INTO blob_parts VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                               (c.sha256, c.index, c.count, c.content_type, c.data, c.gateway, ts(c.received_ns)))
            cur = await conn.execute("SELECT data FROM blob_parts WHERE sha256 = %s ORDER BY idx",
                                     (c.sha256,))
            parts = await cur.fetchall()
            if len(parts) < c.count:
                continue
            await conn.execute("DELETE FROM blob_parts WHERE sha256 = %s", (c.sha256,))
            data = assemble(c, [bytes(p[0]) for p in parts])
            if isinstance(data, Refused):
                refused.append(data)
                report.refuse(BAD_BLOB)
                continue
            await conn.execute("INSERT INTO blobs VALUES (%s, %s, %s, %s, %s, %s)",
                               (c.sha256, c.content_type, len(data), data, c.gateway, ts(c.received_ns)))
            report.blobs += 1
        return refused

    @staticmethod
    async def _quarantine(conn: psycopg.AsyncConnection[Any], refused: list[Refused]) -> None:
        if refused:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO quarantine (received_at, topic, gateway, kid, reason, detail, message) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [(ts(r.received_ns), r.topic, r.gateway, r.kid, r.reason, r.detail, r.message) for r in refused])

    async def _ensure_partitions(self, conn: psycopg.AsyncConnection[Any], work: Work) -> None:
        """Make the monthly partitions the readings fall in (outside the data transaction: two
        workers may race to make one; the loser finds it made)."""
        for start in months_of(work):
            name = f"readings_{start:%Y_%m}"
            if name in self._partitions:
                continue
            lo, hi = month_bounds(start)
            try:
                await conn.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings "
                                   f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")
            except (pg_errors.DuplicateTable, pg_errors.UniqueViolation):
                pass
            self._partitions.add(name)

    # -- the trust registry -------------------------------------------------------------------

    async def registry(self, since: int) -> tuple[int, list[KeyRecord]] | None:
        result: tuple[int, list[KeyRecord]] | None = await self._op(self._registry, since)
        return result

    @staticmethod
    async def _registry(conn: psycopg.AsyncConnection[Any], since: int) -> tuple[int, list[KeyRecord]] | None:
        row = await (await conn.execute("SELECT version FROM registry_version")).fetchone()
        version = int(row[0]) if row else 0
        if version == since:
            return None
        cur = await conn.execute(
            "SELECT kid, gateway, alg, public_pem, enrolled_at, revoked_at, revoked_reason, replaced_by, replaced_at "
            "FROM gateway_keys")
        return version, [KeyRecord(bytes(r[0]), r[1], r[2], r[3], _ns(r[4]), _ns(r[5]), r[6], bytes(r[7] or b""),
                                   _ns(r[8])) for r in await cur.fetchall()]

    async def enrol(self, gateway: str, public_pem: str, replaces: bytes = b"") -> KeyRecord:
        record: KeyRecord = await self._op(self._enrol, gateway, public_pem, replaces)
        return record

    @staticmethod
    async def _enrol(conn: psycopg.AsyncConnection[Any], gateway: str, public_pem: str,
                     replaces: bytes) -> KeyRecord:
        rec = enrol_record(gateway, public_pem)
        async with conn.transaction():
            await conn.execute("SELECT version FROM registry_version FOR UPDATE")
            cur = await conn.execute("SELECT gateway FROM gateway_keys WHERE kid = %s", (rec.kid,))
            row = await cur.fetchone()
            if row is not None and row[0] != gateway:
                raise ValueError(f"key {rec.kid.hex()} is already bound to gateway {row[0]!r}; a key speaks for "
                                 "one gateway only")
            if row is None:
                await conn.execute("INSERT INTO gateway_keys (kid, gateway, alg, public_pem) VALUES (%s, %s, %s, %s)",
                                   (rec.kid, gateway, rec.alg, public_pem))
            if replaces:
                cur = await conn.execute(
                    "UPDATE gateway_keys SET replaced_by = %s, replaced_at = now() WHERE kid = %s AND gateway = %s "
                    "AND kid <> %s", (rec.kid, replaces, gateway, rec.kid))
                if cur.rowcount != 1:
                    raise ValueError(f"gateway {gateway!r} has no key {replaces.hex()} to replace")
            await conn.execute("UPDATE registry_version SET version = version + 1")
        return rec

    async def enrol_many(self, keys: Sequence[tuple[str, str]]) -> list[KeyRecord | str]:
        out: list[KeyRecord | str] = await self._op(self._enrol_many, keys)
        return out

    @staticmethod
    async def _enrol_many(conn: psycopg.AsyncConnection[Any], keys: Sequence[tuple[str, str]]) -> list[KeyRecord | str]:
        async with conn.transaction():
            await conn.execute("SELECT version FROM registry_version FOR UPDATE")
            cur = await conn.execute("SELECT kid, gateway FROM gateway_keys")
            bound = {bytes(k): g for k, g in await cur.fetchall()}
            out, new = records_to_enrol(keys, bound)
            async with conn.cursor() as c:
                await c.executemany("INSERT INTO gateway_keys (kid, gateway, alg, public_pem) VALUES (%s, %s, %s, %s)",
                                    [(r.kid, r.gateway, r.alg, r.public_pem) for r in new])
            await conn.execute("UPDATE registry_version SET version = version + 1")
        return out

    async def revoke(self, gateway: str, kid: bytes | None, reason: str) -> int:
        n: int = await self._op(self._revoke, gateway, kid, reason)
        return n

    @staticmethod
    async def _revoke(conn: psycopg.AsyncConnection[Any], gateway: str, kid: bytes | None, reason: str) -> int:
        where, args = parse_revoke(gateway, kid)
        async with conn.transaction():
            await conn.execute("SELECT version FROM registry_version FOR UPDATE")
            cur = await conn.execute(f"UPDATE gateway_keys SET revoked_at = now(), revoked_reason = %s "
                                     f"WHERE revoked_at IS NULL AND {where}", (reason, *args))
            await conn.execute("UPDATE registry_version SET version = version + 1")
            return cur.rowcount

    # -- reports ------------------------------------------------------------------------------

    async def ledgers(self, gateway: str | None = None) -> list[StreamLedger]:
        result: list[StreamLedger] = await self._op(self._ledgers, gateway)
        return result

    @staticmethod
    async def _ledgers(conn: psycopg.AsyncConnection[Any], gateway: str | None) -> list[StreamLedger]:
        sql = f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger"
        cur = await (conn.execute(sql + " WHERE gateway = %s ORDER BY gateway, stream", (gateway,)) if gateway
                     else conn.execute(sql + " ORDER BY gateway, stream"))
        return [ledger.from_row(r) for r in await cur.fetchall()]

    async def refusals(self, gateway: str | None = None) -> dict[tuple[str, str], int]:
        result: dict[tuple[str, str], int] = await self._op(self._refusals, gateway)
        return result

    @staticmethod
    async def _refusals(conn: psycopg.AsyncConnection[Any], gateway: str | None) -> dict[tuple[str, str], int]:
        sql = "SELECT gateway, reason, count(*) FROM quarantine"
        cur = await (conn.execute(sql + " WHERE gateway = %s GROUP BY 1, 2", (gateway,)) if gateway
                     else conn.execute(sql + " GROUP BY 1, 2"))
        return {(r[0], r[1]): int(r[2]) for r in await cur.fetchall()}

    async def missing(self, grace: float) -> tuple[int, int]:
        rows: list[StreamLedger] = await self._op(self._maybe_missing)
        return ledger.count_missing(rows, grace)

    @staticmethod
    async def _maybe_missing(conn: psycopg.AsyncConnection[Any]) -> list[StreamLedger]:
        cur = await conn.execute(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM ledger WHERE {ledger.MAYBE_MISSING}")
        return [ledger.from_row(r) for r in await cur.fetchall()]


def _ns(t: datetime | None) -> int:
    return int((t - _EPOCH) / timedelta(microseconds=1)) * 1000 if t is not None else 0


def _redact(dsn: str) -> str:
    """The DSN without its password, for logs."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(unparsable DSN)"
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items()) if "://" not in dsn else \
        f"postgresql://{info.get('user', '')}@{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
