"""Both back-ends, against the real databases: each reading stored once whatever is re-delivered,
the ledger right when two workers store one gateway's batches at once in any order, the trust
registry, the quarantine, blobs by hash."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.driver_api import Blob, Location, Quality, Reading
from gateway.driver_api import Path as IPath
from gateway.ingest import contract as c
from gateway.ingest.stores import open_storage
from gateway.ingest.trust import RegistryTrust
from gateway.ingest.verify import parse_blob_chunk, verify_batch
from tests.ingest.fleet import query
from tests.ingest.helpers import T0, GatewayFeed, now_ns


async def _storage(url: str) -> Any:
    s = open_storage(url)
    await s.open()
    return s


async def _verified(feed: GatewayFeed, trust: RegistryTrust, datas: list[bytes]) -> list[c.VerifiedBatch]:
    out = []
    for d in datas:
        v = verify_batch(feed.topic, d, trust, now_ns())
        assert isinstance(v, c.VerifiedBatch), v
        out.append(v)
    return out


async def _enrolled_batches(storage: Any, feed: GatewayFeed, n: int, readings: int = 5) -> list[c.VerifiedBatch]:
    """Enrol ``feed`` and make ``n`` verified batches of its own buffer."""
    trust = await _enrolled(storage, feed)
    async with feed.open():
        return await _verified(feed, trust, await feed.batches(n, readings=readings))


async def _enrolled(storage: Any, *feeds: GatewayFeed) -> RegistryTrust:
    for f in feeds:
        await storage.enrol(f.gateway, f.pub.read_text())
    snapshot = await storage.registry(0)
    assert snapshot is not None
    return RegistryTrust(snapshot[1])


async def test_redelivered_batches_insert_nothing_and_the_ledger_is_complete(tmp_path: Path, db_url: str) -> None:
    feed = GatewayFeed(tmp_path)
    storage = await _storage(db_url)
    try:
        batches = await _enrolled_batches(storage, feed, 6, readings=4)
        first = await storage.store(c.Work(batches=batches[:4]))
        assert (first.batches, first.readings, first.duplicates) == (4, 16, 0)
        again = await storage.store(c.Work(batches=batches))  # a crash before the ack: all of it comes again
        assert (again.batches, again.readings, again.duplicates) == (2, 8, 4)
        assert again.gaps == {"gw-a": 0}
        [led] = await storage.ledgers()
        assert (led.readings, led.batches, led.duplicates, led.missing, led.chain_links) == (24, 6, 4, 0, 5)
        assert led.verdict() == "complete" and led.last_seq == 24
    finally:
        await storage.close()
    assert query(db_url, "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM readings") == [(24, 24, 1, 24)]
    assert query(db_url, "SELECT count(*) FROM batches") == [(6,)]


@pytest.mark.parametrize("workers", [2])
async def test_two_workers_storing_one_gateway_in_any_order_keep_the_ledger_right(
        tmp_path: Path, db_url: str, workers: int) -> None:
    feeds = [GatewayFeed(tmp_path, f"gw-{i}") for i in range(3)]
    stores = [await _storage(db_url) for _ in range(workers)]
    try:
        trust = await _enrolled(stores[0], *feeds)
        every: list[c.VerifiedBatch] = []
        for f in feeds:
            async with f.open():
                every += await _verified(f, trust, await f.batches(20, readings=3))
        rng = random.Random(5)
        deliveries = every + rng.sample(every, 15)  # re-deliveries, as after a worker died before acking
        rng.shuffle(deliveries)
        cuts = sorted(rng.sample(range(1, len(deliveries)), 20))
        chunks = [deliveries[a:b] for a, b in zip([0, *cuts], [*cuts, len(deliveries)], strict=True)]
        queue: asyncio.Queue[list[c.VerifiedBatch]] = asyncio.Queue()
        for ch in chunks:
            queue.put_nowait(ch)

        async def worker(storage: Any) -> int:
            n = 0
            while not queue.empty():
                r = await storage.store(c.Work(batches=queue.get_nowait()))
                n += r.readings
            return n

        stored = await asyncio.gather(*(worker(s) for s in stores))
        assert sum(stored) == 3 * 20 * 3
        ledgers = await stores[0].ledgers()
        assert [(led.gateway, led.readings, led.batches, led.missing, led.chain_links, led.chain_breaks)
                for led in ledgers] == [(f"gw-{i}", 60, 20, 0, 19, 0) for i in range(3)]
        assert sum(led.duplicates for led in ledgers) == 15
    finally:
        for s in stores:
            await s.close()
    assert query(db_url, "SELECT gateway, count(*), count(DISTINCT seq) FROM readings GROUP BY gateway "
                         "ORDER BY gateway") == [(f"gw-{i}", 60, 60) for i in range(3)]


async def test_every_value_type_is_stored_as_a_row(tmp_path: Path, db_url: str) -> None:
    feed = GatewayFeed(tmp_path)
    image = b"\xff\xd8 not really a jpeg"
    readings = [
        Reading("gw-a", "temperature", T0, 21.5, "Cel"),
        Reading("gw-a", "door", T0 + 1, True),
        Reading("rtu-7", "serial", T0 + 2, "SN-1\x00x", None, Quality.UNCERTAIN, IPath.IP3),
        Reading("rtu-7", "raw", T0 + 3, b"\x00\xff", None, Quality.BAD, IPath.IP3),
        Reading("gw-a", "position", T0 + 4, Location(10.5, 106.25, alt=12.5, fix=1, sats=9)),
        Reading("gw-a", "image", T0 + 5, Blob(image, "image/jpeg")),
        Reading("gw-a", "huge", T0 + 6, 10**400),
    ]
    storage = await _storage(db_url)
    try:
        trust = await _enrolled(storage, feed)
        async with feed.open():
            assert feed.buffer is not None
            for r in readings:
                feed.buffer.put(r)
            await feed.buffer.commit()
            b = await feed.buffer.make_batch(feed.batcher)
            assert b is not None
        [v] = await _verified(feed, trust, [b.data])
        await storage.store(c.Work(batches=[v]))
    finally:
        await storage.close()
    got = {r[0]: (*r[1:9], json.loads(r[9]) if isinstance(r[9], str) else r[9], r[10]) for r in query(
        db_url, "SELECT point, node, unit, v, vs, vb, vd, quality, path, extra, blob FROM readings ORDER BY seq")}
    assert got["temperature"][:3] == ("gw-a", "Cel", 21.5)
    assert bool(got["door"][4]) is True
    assert got["serial"][3] == "SN-1\ufffdx" and got["serial"][8] == {"nul": True} and got["serial"][6:8] == (1, 3)
    assert bytes(got["raw"][5]) == b"\x00\xff" and got["raw"][6] == 2
    assert got["position"][3] == "geo:10.5,106.25,12.5"
    assert got["position"][8] == {"lat": 10.5, "lon": 106.25, "alt": 12.5, "fix": 1, "sat": 9}
    assert bytes(got["image"][9]) == hashlib.sha256(image).digest()
    assert got["image"][8] == {"ct": "image/jpeg", "sz": len(image)}
    assert got["huge"][2] is None and got["huge"][3] == str(10**400) and got["huge"][8] == {"big": True}


async def test_registry_binds_a_key_to_one_gateway_with_revocation_and_replacement(
        tmp_path: Path, db_url: str) -> None:
    a, b, a2 = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-b"), GatewayFeed(tmp_path / "new", "gw-a")
    storage = await _storage(db_url)
    try:
        rec = await storage.enrol("gw-a", a.pub.read_text())
        with pytest.raises(ValueError, match="already bound to gateway 'gw-a'"):
            await storage.enrol("gw-b", a.pub.read_text())
        with pytest.raises(ValueError, match="not a PEM public key"):
            await storage.enrol("gw-b", "garbage")
        version, keys = await storage.registry(0)
        assert [(k.gateway, k.kid) for k in keys] == [("gw-a", rec.kid)]
        assert await storage.registry(version) is None, "unchanged: nothing to load"
        new = await storage.enrol("gw-a", a2.pub.read_text(), replaces=rec.kid)
        version2, keys = await storage.registry(version)
        assert version2 > version
        old = next(k for k in keys if k.kid == rec.kid)
        assert old.replaced_by == new.kid and old.replaced_ns > 0 and not old.revoked_ns
        await storage.enrol("gw-b", b.pub.read_text())
        assert await storage.revoke("gw-b", None, "cabinet broken into") == 1
        _, keys = await storage.registry(0)
        gone = next(k for k in keys if k.gateway == "gw-b")
        assert gone.revoked_ns and gone.revoked_reason == "cabinet broken into"
        assert await storage.revoke("gw-b", None, "again") == 0
    finally:
        await storage.close()


async def test_refused_messages_go_to_the_quarantine_with_their_reason(tmp_path: Path, db_url: str) -> None:
    storage = await _storage(db_url)
    try:
        refused = [c.Refused(c.UNKNOWN_KEY, "key 00 is not enrolled", "sensegate/gw-x/batch", "gw-x", b"\0" * 16,
                             b"forged bytes", now_ns()),
                   c.Refused(c.MALFORMED, "not CBOR", "sensegate/gw-x/batch", "gw-x", b"", b"\xff", now_ns())]
        report = await storage.store(c.Work(refused=refused))
        assert report.refused == {c.UNKNOWN_KEY: 1, c.MALFORMED: 1}
        assert await storage.refusals() == {("gw-x", c.UNKNOWN_KEY): 1, ("gw-x", c.MALFORMED): 1}
        assert await storage.ledgers() == [], "nothing stored but the quarantine"
    finally:
        await storage.close()
    assert query(db_url, "SELECT count(*) FROM readings") == [(0,)]
    assert sorted(bytes(r[0]) for r in query(db_url, "SELECT message FROM quarantine")) == [b"forged bytes", b"\xff"]


async def test_blob_chunks_from_two_workers_make_one_verified_blob(tmp_path: Path, db_url: str) -> None:
    image = bytes(range(256)) * 700
    sha = hashlib.sha256(image).digest()
    parts = [image[i:i + 65536] for i in range(0, len(image), 65536)]
    topic = f"sensegate/gw-a/blob/{sha.hex()}"
    chunks = [parse_blob_chunk(topic, cbor2.dumps([i, len(parts), "image/jpeg", p]), now_ns())
              for i, p in enumerate(parts)]
    assert all(isinstance(ch, c.BlobChunk) for ch in chunks)
    bad_sha = hashlib.sha256(b"other").digest()
    bad = parse_blob_chunk(f"sensegate/gw-a/blob/{bad_sha.hex()}", cbor2.dumps([0, 1, "image/jpeg", b"x"]), now_ns())
    stores = [await _storage(db_url), await _storage(db_url)]
    try:
        reports = await asyncio.gather(stores[0].store(c.Work(chunks=chunks[::2])),  # type: ignore[arg-type]
                                       stores[1].store(c.Work(chunks=chunks[1::2])))  # type: ignore[arg-type]
        again = await stores[0].store(c.Work(chunks=[*chunks[:1], bad]))  # type: ignore[list-item]
    finally:
        for s in stores:
            await s.close()
    assert sum(r.blobs for r in reports) == 1 and again.blobs == 0 and again.refused == {c.BAD_BLOB: 1}
    assert [(bytes(r[0]), r[1]) for r in query(db_url, "SELECT sha256, size FROM blobs")] == [(sha, len(image))]
    assert query(db_url, "SELECT count(*) FROM blob_parts") == [(0,)]


async def test_a_partition_dropped_for_retention_is_made_again(tmp_path: Path, pg_dsn: str) -> None:
    import psycopg

    feed = GatewayFeed(tmp_path)
    storage = await _storage(pg_dsn)
    try:
        first, second = await _enrolled_batches(storage, feed, 2)
        await storage.store(c.Work(batches=[first]))
        [(name,)] = query(pg_dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                   "WHERE c.relkind = 'r'")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {name}")  # type: ignore[arg-type]
        report = await storage.store(c.Work(batches=[second]))
    finally:
        await storage.close()
    assert report.readings == 5
    assert query(pg_dsn, "SELECT count(*) FROM readings") == [(5,)]


async def test_heartbeats_in_the_ledger_and_a_schema_1_database_upgraded(tmp_path: Path, db_url: str) -> None:
    """A database made before the heartbeat (schema 1) gets its columns at the next open, keeps
    its ledgers, and then records heartbeats: a tail they claim and that never came is missing."""
    from gateway.ingest.ledger import HEARTBEAT_COLUMNS

    feed = GatewayFeed(tmp_path)
    storage = await _storage(db_url)
    try:
        batches = await _enrolled_batches(storage, feed, 2)
        await storage.store(c.Work(batches=batches))
    finally:
        await storage.close()
    downgrade = [f"ALTER TABLE ledger DROP COLUMN {name}" for name, _ in HEARTBEAT_COLUMNS]
    downgrade.append("UPDATE ingest_schema SET version = 1")
    if db_url.startswith("sqlite:"):
        import sqlite3

        conn = sqlite3.connect(db_url.removeprefix("sqlite:"))
        conn.executescript(";".join(downgrade))
        conn.close()
    else:
        import psycopg

        with psycopg.connect(db_url) as pg:
            for sql in downgrade:
                pg.execute(sql)  # type: ignore[arg-type]
    storage = await _storage(db_url)
    try:
        (led,) = await storage.ledgers()
        assert (led.readings, led.hb_last_seq, led.claims) == (10, 0, [])
        assert query(db_url, "SELECT version FROM ingest_schema") == [(2,)]
        past = now_ns() - 3_600 * 10**9
        beat = c.Heartbeat(feed.gateway, led.stream, 1, 25, 4, 26, past, past)  # 11..25 left an hour ago
        report = await storage.store(c.Work(heartbeats=[beat]))
        assert report.heartbeats == 1
        (led,) = await storage.ledgers()
        assert (led.hb_last_seq, led.hb_held_from, led.missing_ranges()) == (25, 26, [(11, 25)])
        assert await storage.missing(300.0) == (1, 15)
        assert await storage.missing(7_200.0) == (0, 0)
    finally:
        await storage.close()


async def test_a_fleets_keys_enrolled_in_one_transaction(tmp_path: Path, db_url: str) -> None:
    feeds = [GatewayFeed(tmp_path, f"gw-{i}") for i in range(40)]
    storage = await _storage(db_url)
    try:
        await storage.enrol("gw-0", feeds[0].pub.read_text())
        keys = [(f.gateway, f.pub.read_text()) for f in feeds]
        keys += [("gw-x", feeds[1].pub.read_text()), ("gw-y", "not a key"), ("gw-2", feeds[2].pub.read_text())]
        got = await storage.enrol_many(keys)
        assert all(isinstance(r, c.KeyRecord) for r in got[:40])  # gw-0 again: already its own, fine
        assert "already bound to gateway 'gw-1'" in str(got[40]) and isinstance(got[41], str)
        assert isinstance(got[42], c.KeyRecord)  # the same key for the same gateway twice: one row
        snapshot = await storage.registry(0)
        assert snapshot is not None and sorted(r.gateway for r in snapshot[1]) == sorted(f.gateway for f in feeds)
    finally:
        await storage.close()
