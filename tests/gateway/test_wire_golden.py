"""Golden batches: the same inputs give the same signed bytes, release after release.

The scenario below (every value type, several segments per batch, refused readings, an
overflow, a dropped blob, a clean and an unclean restart) was run once and its batches recorded
in ``tests/fixtures/golden/batches.json``. Ed25519 signatures are deterministic, so any change
to numbering, segment choice, drop declarations, header, pack or signature shows here as a
changed digest. The gateway's clock is a fake one that starts a day behind, unsynchronised,
and is stepped forward and synchronised half-way, so the clock keys (``ck``, ``cj``) are in the
record too. A deliberate change of the wire format regenerates the file
(``SENSEGATE_GOLDEN=write``) and says so in CHANGELOG.md; the file it replaces is kept
(``batches-before-clock.json``: the batches of gateways before the clock keys), and a receiver
must still verify and read those.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway import cose, wire
from gateway.batcher import Batcher
from gateway.driver_api import Blob, Location, Quality, Reading
from gateway.driver_api import Path as IPath
from gateway.keys import Ed25519PrivateKey, private_pem, public_pem
from gateway.receiver import KeyBindings, Receiver
from gateway.store import Store
from gateway.testing import SteppedClock
from tests.gateway.helpers import batcher_for, make_config

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden" / "batches.json"
BEFORE_CLOCK = GOLDEN.with_name("batches-before-clock.json")  # format 1 without ck/cj: older gateways
SEED = bytes(range(32))  # the golden gateway's Ed25519 key
STREAM = 0x5E115E6A7E  # the buffer's random stream id, fixed
T0 = 1_795_000_000_123_456_789

READINGS = [
    Reading("gw-test", "temperature", T0, 21.5, "Cel"),
    Reading("gw-test", "count", T0 + 1, 2**40, None),
    Reading("gw-test", "negative", T0 + 2, -17, "W"),
    Reading("gw-test", "small", T0 + 3, 300),
    Reading("gw-test", "door", T0 + 4, True),
    Reading("rtu-7", "serial", T0 + 5, "SN-0042 \u00e9", None, Quality.UNCERTAIN, IPath.IP3),
    Reading("rtu-7", "raw", T0 + 6, b"\x00\xff\x10", None, Quality.BAD, IPath.IP3),
    Reading("gw-test", "position", T0 + 7,
            Location(10.762622, 106.660172, alt=12.5, speed=1.25, course=90.0, fix=1, sats=9, hdop=0.8)),
    Reading("gw-test", "far_future", T0 + 86_400 * 10**9 * 365, 1.0),
    Reading("gw-test", "tiny", T0 + 9, 1e-300, "Cel"),
    Reading("gw-test", "huge", T0 + 10, 2**70),
]


def _key(state: Path) -> None:
    keys = state / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey(SEED)
    path = keys / "device.key"
    path.write_bytes(private_pem(key))
    path.chmod(0o600)
    (keys / "device.pub.pem").write_bytes(public_pem(key.public_key()))


def _clock() -> SteppedClock:
    """The gateway's clock: a day behind and unsynchronised at first."""
    return SteppedClock(T0 - 86_400 * 10**9, synced=False)


def _open(state: Path, clock: SteppedClock, **buffer: Any) -> tuple[Store, Batcher]:
    config = make_config(state, buffer=buffer, batch={"max_readings": 40, "max_bytes": "16KiB"})
    cfg = config.config
    return Store(state / "buffer.db", cfg.gateway.id, cfg.buffer, cfg.batch, clock.watch()), batcher_for(config)


async def _drain(buf: Store, batcher: Batcher, out: list[Any], ack: bool = True) -> None:
    while (b := await buf.make_batch(batcher)) is not None:
        out.append(b)
        if ack:
            await buf.ack(b)


async def _scenario(state: Path) -> list[Any]:
    """Every batch the scenario makes, in order."""
    made: list[Any] = []
    clock = _clock()
    buf, batcher = _open(state, clock, max_bytes="1MiB", max_blob_bytes="1MiB", policy="refuse_new")
    await buf.open()
    for r in READINGS:  # one batch of every value type
        buf.put(r)
    await buf.commit()
    await _drain(buf, batcher, made)
    for i in range(130):  # several segments per batch, cut by max_readings and max_bytes
        buf.put(Reading("gw-test", "n", T0 + 1000 + i * 1_000_003, i if i % 7 else f"text {i}" * (i % 5)))
        if i % 9 == 0:
            await buf.commit()
    await buf.commit()
    await _drain(buf, batcher, made, ack=False)  # left unacknowledged: re-sent after the restart
    clock.advance(5 * 10**9)
    clock.step(86_400 * 10**9, synced=True)  # NTP: later readings on a synchronised clock; a batch says so
    for i, img in enumerate((b"\x01" * 700_000, b"\x02" * 700_000)):  # the first blob is dropped
        buf.put(Reading("gw-test", "image", T0 + 5000 + i, Blob(img, "image/jpeg")))
        await buf.commit()
    await _drain(buf, batcher, made)
    buf.intake.max_pending = 3  # the disk "cannot keep up": an overflow range declared
    for i in range(6):
        buf.put(Reading("gw-test", "burst", T0 + 6000 + i, i))
    await buf.commit()
    await _drain(buf, batcher, made)
    await buf.close()

    buf, batcher = _open(state, clock, max_bytes="1MiB", max_blob_bytes="1MiB", policy="refuse_new")
    await buf.open()  # a clean restart: boot 2, the outbox re-sent byte for byte
    for bseq, _ in await buf.outbox():
        again = await buf.load_batch(bseq)
        assert again is not None
        made.append(again)
        await buf.ack(again)
    for i in range(1300):  # past max_bytes with refuse_new: later commits are refused and declared
        buf.put(Reading("gw-test", "big", T0 + 7000 + i, "y" * 1000))
        if i % 100 == 99:
            await buf.commit()
    await buf.commit()
    await _drain(buf, batcher, made)
    await buf.close()

    db = sqlite3.connect(state / "buffer.db")  # as an unclean stop leaves it: numbers reserved, unused
    db.execute("UPDATE meta SET value = value + 10 WHERE key = 'seq_resv'")
    db.execute("UPDATE meta SET value = value + 3 WHERE key = 'bseq_resv'")
    db.commit()
    db.close()
    buf, batcher = _open(state, clock)
    await buf.open()  # boot 3: skips and declares the reserved reading numbers
    for i in range(5):
        buf.put(Reading("gw-test", "after", T0 + 9000 + i, float(i)))
    await buf.commit()
    await _drain(buf, batcher, made)
    await buf.close()
    return made


def _record(b: Any) -> dict[str, Any]:
    return {"bseq": b.bseq, "first_seq": b.first_seq, "last_seq": b.last_seq, "size": len(b.data),
            "sha256": b.hash.hex()}


async def test_batches_are_byte_identical_to_the_golden_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "randbits", lambda bits: STREAM)
    state = tmp_path / "s"
    _key(state)
    made = await _scenario(state)
    got = {"first_batch_hex": made[0].data.hex(), "batches": [_record(b) for b in made]}
    if os.environ.get("SENSEGATE_GOLDEN") == "write":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert got["first_batch_hex"] == want["first_batch_hex"], "the first batch's bytes changed"
    assert got["batches"] == want["batches"]
    rx = Receiver(KeyBindings.files("gw-test", state / "keys" / "device.pub.pem"))
    for b in made:
        assert rx.feed(b.data).status in ("ok", "duplicate")
    s = rx.summary()
    assert s.gaps == 0 and s.ok and s.restarts == 2 and s.skipped == 10, s.to_json()
    assert set(s.drop_reasons) == {"buffer_full", "overflow"} and s.blobs_dropped == 1
    heads = {b.bseq: wire.parse_header(cose.parse_sign1(b.data).protected) for b in made}
    assert [tuple(e)[1:] for e in heads[1].ck] == [(1, 10**12, T0 - 86_400 * 10**9, False, 16_000_000)]
    assert [tuple(e) for e in heads[6].cj] == [(1, 1005 * 10**9, 10**12, T0 - 86_395 * 10**9, T0 + 5 * 10**9, 142)]
    assert heads[6].ck[0].synced and heads[6].ck[0].first_seq == 142 and not heads[7].cj


def test_batches_of_gateways_before_the_clock_keys_still_verify_and_read(tmp_path: Path) -> None:
    state = tmp_path / "s"
    _key(state)
    data = bytes.fromhex(json.loads(BEFORE_CLOCK.read_text())["first_batch_hex"])
    rx = Receiver(KeyBindings.files("gw-test", state / "keys" / "device.pub.pem"))
    feed = rx.feed(data)
    assert feed.status == "ok" and len(feed.readings) == len(READINGS)
    assert feed.header["ck"] == [] and feed.header["cj"] == []  # the clock unknown: nothing to flag or re-date
    assert hashlib.sha256(data).hexdigest() == json.loads(BEFORE_CLOCK.read_text())["batches"][0]["sha256"]
