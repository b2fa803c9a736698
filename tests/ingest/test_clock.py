"""The fleet ingest and gateways' clocks, against the real databases: readings of an
unsynchronised clock flagged, re-dated when a later batch of the same run brings a synchronised
clock (whichever arrives first), counted in the ledger and the report; a database made before
(schema 1) upgraded in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from gateway.ingest import contract as c
from gateway.ingest.ledger import summarize
from gateway.ingest.report import gateway_json
from gateway.ingest.stores import open_storage
from gateway.ingest.trust import RegistryTrust
from gateway.ingest.verify import verify_batch
from gateway.testing import SteppedClock
from tests.ingest.fleet import query
from tests.ingest.helpers import T0, GatewayFeed, now_ns

S = 10**9
DAY = 86_400 * S
SCHEMA_1 = Path(__file__).parents[1] / "fixtures" / "ingest-schema-1"


async def _storage(url: str) -> Any:
    s = open_storage(url)
    await s.open()
    return s


async def _trust(storage: Any, feed: GatewayFeed) -> RegistryTrust:
    await storage.enrol(feed.gateway, feed.pub.read_text())
    snapshot = await storage.registry(0)
    assert snapshot is not None
    return RegistryTrust(snapshot[1])


async def _day_behind_then_ntp(root: Path, gateway: str = "gw-a") -> tuple[GatewayFeed, list[bytes]]:
    """A gateway that booted a day behind: two batches of 4, then NTP steps it, then 3 readings."""
    feed = GatewayFeed(root, gateway, clock=SteppedClock(T0 - DAY, synced=False))
    async with feed.open():
        datas = await feed.batches(2, readings=4)
        feed.clock.advance(S)
        feed.clock.step(DAY, synced=True)
        datas.append(await feed.batch(3))
    return feed, datas


def _fixed_shift(db: str, gateway: str) -> list[tuple[int, bool, int | None]]:
    """seq, uncertain, corrected minus original time (ns; microseconds on PostgreSQL)."""
    if db.startswith("sqlite:"):
        rows = query(db, "SELECT seq, time_uncertain, ts_fixed_ns - ts_ns FROM readings "
                         f"WHERE gateway = '{gateway}' ORDER BY seq")
        return [(s, bool(u), d) for s, u, d in rows]
    rows = query(db, "SELECT seq, time_uncertain, (extract(epoch FROM ts_fixed - ts) * 1e9)::bigint FROM readings "
                     f"WHERE gateway = '{gateway}' ORDER BY seq")
    return [(s, u, d) for s, u, d in rows]


async def test_readings_of_an_unsynchronised_clock_are_flagged_then_re_dated_in_any_order(
        tmp_path: Path, db_url: str) -> None:
    storage = await _storage(db_url)
    try:
        for gw, order in (("gw-a", [0, 1, 2]), ("gw-b", [2, 0, 1])):  # the re-dating batch last, or first
            feed, datas = await _day_behind_then_ntp(tmp_path, gw)
            trust = await _trust(storage, feed)
            got = [verify_batch(feed.topic, d, trust, now_ns()) for d in datas]
            assert all(isinstance(v, c.VerifiedBatch) for v in got)
            reports = [await storage.store(c.Work(batches=[got[i]])) for i in order]  # type: ignore[list-item]
            assert sum(r.time_uncertain for r in reports) == 8 and sum(r.time_redated for r in reports) == 8
            [led] = await storage.ledgers(gw)
            assert led.uncertain.r == [[1, 8]] and led.redated.r == [[1, 8]]
            assert led.verdict() == "complete"
            rows = _fixed_shift(db_url, gw)
            assert [s for s, _, _ in rows] == list(range(1, 12))  # nothing lost or renumbered
            assert rows == [(s, True, DAY) for s in range(1, 9)] + [(s, False, None) for s in range(9, 12)]
    finally:
        await storage.close()
    assert query(db_url, "SELECT gateway, wall_after_ns - wall_before_ns FROM clock_steps ORDER BY 1") == \
        [("gw-a", DAY), ("gw-b", DAY)]
    assert query(db_url, "SELECT count(*) FROM clock_epochs WHERE synced") == [(2,)]


async def test_readings_of_a_clock_never_synchronised_stay_uncertain_and_the_report_says_so(
        tmp_path: Path, db_url: str) -> None:
    storage = await _storage(db_url)
    feed = GatewayFeed(tmp_path, clock=SteppedClock(T0 - DAY, synced=False))
    try:
        trust = await _trust(storage, feed)
        async with feed.open():
            datas = await feed.batches(3, readings=2)
        for d in datas:
            v = verify_batch(feed.topic, d, trust, now_ns())
            assert isinstance(v, c.VerifiedBatch)
            await storage.store(c.Work(batches=[v]))
        [g] = summarize(await storage.ledgers(), {})
        assert (g.time_uncertain, g.time_redated) == (6, 0)
        assert gateway_json(g)["time"] == {"uncertain": 6, "redated": 0, "still_uncertain": 6}
    finally:
        await storage.close()
    assert _fixed_shift(db_url, "gw-a") == [(s, True, None) for s in range(1, 7)]


async def test_a_database_of_schema_1_is_upgraded_in_place(tmp_path: Path, db_url: str) -> None:
    if db_url.startswith("sqlite:"):
        path = db_url.removeprefix("sqlite:")
        conn = sqlite3.connect(path)
        conn.executescript((SCHEMA_1 / "sqlite.sql").read_text())
        conn.execute("INSERT INTO readings (gateway, stream, seq, ts_ns, node, point, v, quality, path) "
                     "VALUES ('gw-old', 1, 1, ?, 'gw-old', 't', 20.5, 0, 2)", (T0,))
        conn.execute("INSERT INTO ledger (gateway, stream, readings) VALUES ('gw-old', 1, 1)")
        conn.commit()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute((SCHEMA_1 / "postgres.sql").read_text())  # type: ignore[arg-type]
            conn.execute("CREATE TABLE readings_2026_11 PARTITION OF readings FOR VALUES FROM ('2026-11-01') "
                         "TO ('2026-12-01')")
            conn.execute("INSERT INTO readings (gateway, stream, seq, ts, node, point, v, quality, path) VALUES "
                         "('gw-old', 1, 1, to_timestamp(%s), 'gw-old', 't', 20.5, 0, 2)", (T0 // S,))
            conn.execute("INSERT INTO ledger (gateway, stream, readings) VALUES ('gw-old', 1, 1)")
    storage = await _storage(db_url)
    try:
        assert query(db_url, "SELECT version FROM ingest_schema") == [(2,)]
        old = [led for led in await storage.ledgers() if led.gateway == "gw-old"]
        assert old[0].readings == 1 and old[0].uncertain.r == []
        feed, datas = await _day_behind_then_ntp(tmp_path)
        trust = await _trust(storage, feed)
        for d in datas:
            v = verify_batch(feed.topic, d, trust, now_ns())
            assert isinstance(v, c.VerifiedBatch)
            await storage.store(c.Work(batches=[v]))
        [led] = await storage.ledgers(feed.gateway)
        assert led.redated.r == [[1, 8]]
    finally:
        await storage.close()
    again = await _storage(db_url)  # opening an upgraded database again changes nothing
    await again.close()
    assert query(db_url, "SELECT count(*) FROM readings WHERE gateway = 'gw-old' AND NOT "
                         f"{'time_uncertain' if 'postgres' in db_url else 'time_uncertain = 1'}") == [(1,)]
    assert query(db_url, "SELECT version FROM ingest_schema") == [(2,)]
