"""The worker in-process against a real broker and database: a message the database refuses (here
a DBA's trigger) goes alone to the quarantine with the error; everything else in its fetch is
stored, and nothing is left unacknowledged."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from gateway.ingest.sources import open_source
from gateway.ingest.stores import open_storage
from gateway.ingest.worker import STORE_FAILED, Worker, WorkerSettings
from hil.mosquitto import Mosquitto
from tests.ingest.fleet import publish_until_acked, query, wait_complete
from tests.ingest.helpers import GatewayFeed

PG_TRIGGER = """
CREATE FUNCTION refuse_gw_bad() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'gateway % is under audit: refused by policy', NEW.gateway; END $$;
CREATE TRIGGER audit BEFORE INSERT ON batches FOR EACH ROW WHEN (NEW.gateway = 'gw-bad')
EXECUTE FUNCTION refuse_gw_bad();
"""
SQLITE_TRIGGER = """CREATE TRIGGER audit BEFORE INSERT ON batches WHEN NEW.gateway = 'gw-bad'
BEGIN SELECT RAISE(ABORT, 'gateway gw-bad is under audit: refused by policy'); END"""


async def test_a_message_the_database_refuses_is_quarantined_alone(tmp_path: Path, db_url: str,
                                                                    broker: Mosquitto) -> None:
    good, bad = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-bad")
    storage = open_storage(db_url)
    await storage.open()
    for f in (good, bad):
        await storage.enrol(f.gateway, f.pub.read_text())
    await storage.close()
    if db_url.startswith("sqlite:"):
        db = sqlite3.connect(db_url.removeprefix("sqlite:"))
        db.execute(SQLITE_TRIGGER)
        db.commit()
        db.close()
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(PG_TRIGGER)
    worker = Worker(open_source(broker.url, client_id="test-ingest"), open_storage(db_url),
                    WorkerSettings(fetch=64, wait=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            await worker.ready.wait()
        async with good.open(), bad.open():
            for _ in range(5):
                await publish_until_acked(broker.url, good.topic, await good.batch())
                await publish_until_acked(broker.url, bad.topic, await bad.batch())
        await wait_complete(db_url, {"gw-a": (None, 25)}, within=20)
        async with asyncio.timeout(20):
            while worker.metrics.refused.get(STORE_FAILED, 0) < 5:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task
    assert query(db_url, "SELECT gateway, count(*) FROM readings GROUP BY gateway") == [("gw-a", 25)]
    rows = query(db_url, "SELECT gateway, reason, detail FROM quarantine")
    assert len(rows) == 5 and all(r[:2] == ("gw-bad", STORE_FAILED) and "under audit" in r[2] for r in rows), rows
    assert worker.metrics.readings == 25
