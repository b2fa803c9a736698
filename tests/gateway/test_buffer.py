"""The buffer: numbering survives restarts, bounds drop by policy and say so, bad files handled."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.batcher import Batcher
from gateway.driver_api import Reading
from gateway.receiver import KeyBindings, Receiver
from gateway.store import Store, StoreError, backlog
from tests.gateway.helpers import batcher_for, make_config

T0 = 1_795_000_000_000_000_000


def _buffer(state: Path, **buffer_opts: object) -> tuple[Store, Batcher]:
    cfg = make_config(state, buffer=buffer_opts or {}, batch={"max_readings": 100})
    c = cfg.config
    return Store(state / "buffer.db", c.gateway.id, c.buffer, c.batch), batcher_for(cfg)


async def _put(buf: Store, n: int, start: int = 0, size: int = 0) -> None:
    for i in range(start, start + n):
        buf.put(Reading("gw-test", "n", T0 + i, "x" * size if size else i))
    await buf.commit()


async def test_numbering_and_outbox_survive_restart(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state)
    await buf.open()
    await _put(buf, 150)
    b1 = await buf.make_batch(batcher)
    assert b1 is not None and (b1.bseq, b1.first_seq, b1.last_seq) == (1, 1, 100)
    await buf.close()
    buf, batcher = _buffer(state)
    await buf.open()
    assert buf.boot == 2
    outbox = await buf.outbox()
    assert outbox == [(1, set())]
    again = await buf.load_batch(1)
    assert again is not None and again.data == b1.data, "an unacknowledged batch is re-sent byte for byte"
    b2 = await buf.make_batch(batcher)
    assert b2 is not None and (b2.bseq, b2.first_seq, b2.last_seq) == (2, 101, 150)
    await buf.ack(b1)
    await buf.ack(b2)
    await _put(buf, 1)
    b3 = await buf.make_batch(batcher)
    assert b3 is not None and (b3.bseq, b3.first_seq) == (3, 151)
    assert backlog(state / "buffer.db")[0] == 1
    await buf.close()
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    for b in (b1, b2, b3):
        assert rx.feed(b.data).status == "ok"
    s = rx.summary()
    assert (s.readings, s.gaps, s.chain_breaks, s.restarts) == (151, 0, 0, 1)


@pytest.mark.parametrize("policy", ["drop_oldest", "refuse_new"])
async def test_full_buffer_drops_by_policy_and_reports_it(tmp_path: Path, policy: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state, max_bytes="1MiB", policy=policy)
    await buf.open()
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    first = await buf.make_batch(batcher)  # nothing yet
    assert first is None
    for round_ in range(30):  # ~30 x 100 readings x ~1 KiB = ~3 MiB offered to a 1 MiB buffer
        await _put(buf, 100, start=round_ * 100, size=1000)
    assert buf.stats.dropped > 0
    assert buf.stats.bytes <= 1024 * 1024 + 110_000
    while (b := await buf.make_batch(batcher)) is not None:
        assert rx.feed(b.data).status == "ok"
        await buf.ack(b)
    await buf.close()
    s = rx.summary()
    assert s.gaps == 0, "every missing reading is declared"
    assert s.dropped == buf.stats.dropped
    assert s.readings + s.dropped == 3000
    assert set(s.drop_reasons) == {"buffer_full"}
    got = sorted(r for st in rx.streams.values() for r in [st.got.r])
    if policy == "drop_oldest":
        assert got[0][-1][1] == 3000, "the newest readings are kept"
    else:
        assert got[0][0][0] == 1, "the oldest readings are kept"
    episodes = [r for r in caplog.records if "dropping readings" in r.getMessage()]
    assert len(episodes) == 1, "a drop episode is logged once"


async def test_expired_readings_are_dropped_and_reported(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, batcher = _buffer(state, max_age=0.05)
    await buf.open()
    await _put(buf, 10)
    import asyncio

    await asyncio.sleep(0.1)
    await _put(buf, 5, start=10)
    b = await buf.make_batch(batcher)
    await buf.close()
    assert b is not None and (b.first_seq, b.last_seq) == (11, 15)
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    rx.feed(b.data)
    s = rx.summary()
    assert (s.dropped, s.drop_reasons, s.gaps) == (10, {"expired": 10}, 0)


async def test_corrupt_file_is_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s"
    buf, _ = _buffer(state)
    (state / "buffer.db").write_bytes(b"this is not a database" * 100)
    await buf.open()
    await _put(buf, 3)
    await buf.close()
    aside = list(state.glob("buffer.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert backlog(state / "buffer.db")[0] == 3


async def test_newer_format_and_foreign_buffers_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "s"
    buf, _ = _buffer(state)
    await buf.open()
    await buf.close()
    db = sqlite3.connect(state / "buffer.db")
    db.execute("UPDATE meta SET value = 99 WHERE key = 'format'")
    db.commit()
    db.close()
    buf, _ = _buffer(state)
    with pytest.raises(StoreError, match="newer than this sensegate"):
        await buf.open()
    await buf.close()
    db = sqlite3.connect(state / "buffer.db")
    db.execute("UPDATE meta SET value = 1 WHERE key = 'format'")
    db.execute("UPDATE meta SET value = 'gw-other' WHERE key = 'gateway_id'")
    db.commit()
    db.close()
    buf, _ = _buffer(state)
    with pytest.raises(StoreError, match="belongs to gateway 'gw-other'"):
        await buf.open()
    await buf.close()


async def test_blob_store_bound_drops_oldest_and_declares_it(tmp_path: Path) -> None:
    import hashlib

    import cbor2

    from gateway.driver_api import Blob

    state = tmp_path / "s"
    buf, batcher = _buffer(state, max_blob_bytes="1MiB")
    await buf.open()
    images = [bytes([i]) * 700_000 for i in range(3)]
    for i, img in enumerate(images):
        buf.put(Reading("gw-test", "image", T0 + i, Blob(img, "image/jpeg")))
        await buf.commit()
    assert buf.stats.blobs_dropped == 2
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    while (b := await buf.make_batch(batcher)) is not None:
        assert rx.feed(b.data).status == "ok"
    sha, ctype, data = await buf.next_blob()  # type: ignore[misc]
    assert data == images[2]
    assert rx.feed_blob(sha.hex(), cbor2.dumps([0, 1, ctype, data])) == "verified"
    await buf.close()
    s = rx.summary()
    assert (s.blobs_verified, s.blobs_dropped, s.blobs_missing) == (1, 2, 0)
    assert {hashlib.sha256(images[i]).hexdigest() for i in (0, 1)} == set(rx.blob_tracker.recent_drops)


async def test_many_drop_ranges_are_merged_and_declared_at_most_64_per_batch(tmp_path: Path) -> None:
    """A long outage leaves one drop row per commit, and overload leaves separate ranges: a batch
    declares adjacent ranges as one and never more than a receiver accepts (the rest follow)."""
    state = tmp_path / "s"
    buf, batcher = _buffer(state, max_bytes="1MiB")
    await buf.open()
    for round_ in range(150):  # ~15 MiB offered to a 1 MiB buffer: ~140 commits that each drop
        await _put(buf, 100, start=round_ * 100, size=1000)
    rows = sqlite3.connect(state / "buffer.db").execute("SELECT COUNT(*) FROM drops").fetchone()[0]
    assert rows > 64, "the case that used to be refused: more drop rows than one batch may declare"
    buf.intake.max_pending = 5  # the disk cannot keep up: 200 separate overflow ranges, readings between them
    for _round in range(200):
        for i in range(8):
            buf.put(Reading("gw-test", "n", T0 + i, i))
        await buf.commit()
    rx = Receiver(KeyBindings.files("gw-test", state / "keys/device.pub.pem"))
    batches = 0
    while (b := await buf.make_batch(batcher)) is not None:
        assert rx.feed(b.data).status == "ok"
        await buf.ack(b)
        batches += 1
    await buf.close()
    s = rx.summary()
    assert s.malformed == 0 and s.gaps == 0
    assert s.dropped == buf.stats.dropped and s.drop_reasons["overflow"] == 200 * 3
    assert s.readings + s.dropped == 150 * 100 + 200 * 8


async def test_a_new_buffer_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """1 KiB pages for a new file (a batch's transaction rewrites about five pages, and at a
    trickle that is most of what reaches the SD card); a file made with 4 KiB pages is read as is."""
    buf, _batcher = _buffer(tmp_path / "new")
    await buf.open()
    await buf.close()
    db = sqlite3.connect(tmp_path / "new" / "buffer.db")
    assert db.execute("PRAGMA page_size").fetchone()[0] == 1024
    db.close()

    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "buffer.db")
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    buf, batcher = _buffer(old)
    await buf.open()
    await _put(buf, 10)
    batch = await buf.make_batch(batcher)
    assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 10)
    await buf.close()
    db = sqlite3.connect(old / "buffer.db")
    assert db.execute("PRAGMA page_size").fetchone()[0] == 4096
    db.close()
