"""Batches: exact round trip of every value type, signatures, and the receiver's verdicts."""

from __future__ import annotations

import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cose, senml
from gateway.driver_api import Blob, Location, Quality, Reading
from gateway.driver_api import Path as IPath
from gateway.keys import init_key, key_id, load_private_key, load_public_key
from gateway.receiver import KeyBindings, Receiver
from gateway.store import Store
from tests.gateway.helpers import batcher_for, make_config

T0 = 1_795_000_000_123_456_789

READINGS = [
    Reading("gw-test", "temperature", T0, 21.5, "Cel"),
    Reading("gw-test", "count", T0 + 1, 2**40, None),
    Reading("gw-test", "negative", T0 + 2, -17, "W"),
    Reading("gw-test", "door", T0 + 3, True),
    Reading("rtu-7", "serial", T0 + 4, "SN-0042 \u00e9", None, Quality.UNCERTAIN, IPath.IP3),
    Reading("rtu-7", "raw", T0 + 5, b"\x00\xff\x10", None, Quality.BAD, IPath.IP3),
    Reading("gw-test", "position", T0 + 6,
            Location(10.762622, 106.660172, alt=12.5, speed=1.25, course=90.0, fix=1, sats=9, hdop=0.8)),
    Reading("gw-test", "image", T0 + 7, Blob(b"\x89PNG fake", "image/png")),
    Reading("gw-test", "far_future", T0 + 86_400 * 10**9 * 365, 1.0),  # needs a new base time
    Reading("gw-test", "tiny", T0 + 9, 1e-300, "Cel"),
]


async def _batch(tmp_path: Path, readings: list[Reading], alg: str = "ed25519") -> tuple[bytes, Path]:
    cfg = make_config(tmp_path / "state", batch={"alg": alg})
    c = cfg.config
    buf = Store(tmp_path / "state" / "buffer.db", c.gateway.id, c.buffer, c.batch)
    await buf.open()
    try:
        for r in readings:
            buf.put(r)
        await buf.commit()
        batch = await buf.make_batch(batcher_for(cfg))
        assert batch is not None
        return batch.data, tmp_path / "state/keys/device.pub.pem"
    finally:
        await buf.close()


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
async def test_every_value_type_round_trips_exactly(tmp_path: Path, alg: str) -> None:
    data, pub = await _batch(tmp_path, READINGS, alg)
    rx = Receiver(KeyBindings.files("gw-test", pub))
    res = rx.feed(data)
    assert res.status == "ok", res.reason
    got = {r.point: r for r in res.readings}
    for r in READINGS:
        d = got[r.point]
        assert (d.node, d.ts_ns, d.unit, d.quality, d.path) == (r.node, r.ts_ns, r.unit, int(r.quality), int(r.path))
        if isinstance(r.value, Location):
            assert d.value == "geo:10.762622,106.660172,12.5"
            assert d.extra == {"lat": 10.762622, "lon": 106.660172, "alt": 12.5, "spd": 1.25, "crs": 90.0,
                               "fix": 1, "sat": 9, "hdop": 0.8}
        elif isinstance(r.value, Blob):
            assert d.value == senml.blob_uri(b"\x89PNG fake")
            assert d.extra == {"ct": "image/png", "sz": 9}
        else:
            assert d.value == r.value and type(d.value) is type(r.value)
    assert [d.seq for d in res.readings] == list(range(1, len(READINGS) + 1))
    s = rx.summary()
    assert (s.batches, s.readings, s.gaps, s.bad_signatures) == (1, len(READINGS), 0, 0)


async def test_an_independent_cose_library_verifies_our_batches(tmp_path: Path) -> None:
    from tests.gateway import cosecheck

    data, pub = await _batch(tmp_path, READINGS)
    kid = key_id(load_public_key(pub))
    tampered = bytearray(data)
    tampered[len(tampered) // 2] ^= 0x01
    payload, refused = cosecheck.verify([(data, pub.read_bytes(), kid), (bytes(tampered), pub.read_bytes(), kid)])
    assert isinstance(payload, bytes) and len(cbor2.loads(payload)) == len(READINGS)
    assert isinstance(refused, str) and re.search(r"(?i)verify|fail", refused), refused


async def test_forged_altered_replayed_reordered_are_flagged(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "state")
    c = cfg.config
    batcher = batcher_for(cfg)
    buf = Store(tmp_path / "state" / "buffer.db", c.gateway.id, c.buffer, c.batch)
    await buf.open()
    batches = []
    for i in range(4):
        buf.put(Reading("gw-test", "n", T0 + i, i))
        await buf.commit()
        b = await buf.make_batch(batcher)
        assert b is not None
        batches.append(b.data)
    await buf.close()
    rx = Receiver(KeyBindings.files("gw-test", tmp_path / "state/keys/device.pub.pem"))
    assert rx.feed(batches[0]).status == "ok"
    assert rx.feed(batches[2]).status == "ok"  # 1 is late
    assert rx.summary().gaps == 1
    assert rx.feed(batches[1]).status == "ok"  # arrives out of order: counted, gap closed
    assert rx.feed(batches[1]).status == "duplicate"  # replay
    altered = bytearray(batches[3])
    altered[-70] ^= 0x40
    assert rx.feed(bytes(altered)).status in ("bad_signature", "malformed")
    init_key(tmp_path / "evil", name="evil")
    evil = load_private_key(tmp_path / "evil/evil.key")
    msg = cose.parse_sign1(batches[3])
    forged = cose.encode_sign1(msg.protected_raw, msg.payload, cose.sign(evil, msg.protected_raw, msg.payload))
    assert rx.feed(forged).status == "bad_signature"  # the real kid, another key
    s = rx.summary()
    assert (s.readings, s.gaps, s.reordered, s.duplicates, s.bad_signatures) == (3, 0, 1, 1, 2)
    assert not s.ok


@given(st.binary(max_size=3000))
def test_receiver_survives_any_bytes(data: bytes) -> None:
    rx = Receiver(KeyBindings())
    assert rx.feed(data).status in ("malformed", "untrusted")


@given(st.recursive(st.none() | st.integers() | st.binary(max_size=40) | st.text(max_size=10) | st.floats(),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.integers(-5, 10) | st.text(max_size=3),
                                                                         c, max_size=4), max_leaves=20))
def test_pack_decoder_only_raises_senml_error(pack: object) -> None:
    try:
        senml.decode_pack(pack, 1)
    except senml.SenmlError:
        pass


@given(st.text(max_size=70), st.binary(max_size=300))
def test_blob_chunks_never_crash_the_receiver(sha_hex: str, payload: bytes) -> None:
    assert Receiver(KeyBindings()).feed_blob(sha_hex, payload) in ("malformed", "partial", "bad", "verified")


def test_blob_reassembly_checks_the_hash() -> None:
    import hashlib

    data = bytes(range(256)) * 1000
    sha = hashlib.sha256(data).hexdigest()
    rx = Receiver(KeyBindings())
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    states = [rx.feed_blob(sha, cbor2.dumps([i, len(chunks), "image/png", c])) for i, c in enumerate(chunks)]
    assert states == ["partial"] * (len(chunks) - 1) + ["verified"]
    assert rx.blobs[sha] == ("image/png", data)
    wrong = cbor2.dumps([0, 1, "image/png", b"not the image"])
    assert rx.feed_blob("00" * 32, wrong) == "bad"
    assert rx.summary().blobs_bad == 1
