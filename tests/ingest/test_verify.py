"""Verification: a key speaks only for the gateway it is bound to; revoked, replaced, altered,
misrouted and malformed messages are refused with their reason, and hostile bytes never raise."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from gateway import heartbeat, signedjson
from gateway.heartbeat import KIND, Issued
from gateway.ingest import contract as c
from gateway.ingest.stores.common import enrol_record
from gateway.ingest.trust import RegistryTrust
from gateway.ingest.verify import parse_blob_chunk, topic_parts, verify_batch, verify_heartbeat
from gateway.keys import as_signer
from tests.ingest.helpers import GatewayFeed, now_ns


def _trust(*feeds: GatewayFeed, **changes: object) -> RegistryTrust:
    records = [enrol_record(f.gateway, f.pub.read_text()) for f in feeds]
    if changes:
        from dataclasses import replace

        records[0] = replace(records[0], **changes)  # type: ignore[arg-type]
    return RegistryTrust(records, grace=60)


async def test_a_genuine_batch_verifies_with_its_readings(tmp_path: Path) -> None:
    a = GatewayFeed(tmp_path, "gw-a")
    async with a.open():
        data = await a.batch(7)
    got = verify_batch(a.topic, data, _trust(a), now_ns())
    assert isinstance(got, c.VerifiedBatch), got
    assert (got.gateway, got.bseq, got.first_seq, got.last_seq, len(got.readings)) == ("gw-a", 1, 1, 7, 7)
    assert got.prev == bytes(32)


async def test_one_gateways_key_cannot_speak_for_another(tmp_path: Path) -> None:
    a, b = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-b")
    b.key = a.key  # gw-a's stolen key, configured as gw-b
    async with b.open():
        data = await b.batch()
    got = verify_batch(b.topic, data, _trust(a, b), now_ns())
    assert isinstance(got, c.Refused) and got.reason == c.WRONG_GATEWAY, got
    assert "bound to gateway 'gw-a'" in got.detail and got.gateway == "gw-b"


async def test_unknown_revoked_and_replaced_keys_are_refused(tmp_path: Path) -> None:
    a, other = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-z")
    async with a.open():
        data = await a.batch()
    assert verify_batch(a.topic, data, _trust(other), now_ns()).reason == c.UNKNOWN_KEY  # type: ignore[union-attr]
    revoked = _trust(a, revoked_ns=time.time_ns(), revoked_reason="stolen from cabinet 12")
    got = verify_batch(a.topic, data, revoked, now_ns())
    assert isinstance(got, c.Refused) and got.reason == c.REVOKED and "stolen from cabinet 12" in got.detail
    fresh = _trust(a, replaced_ns=time.time_ns(), replaced_by=b"n" * 16)  # within the grace period
    assert isinstance(verify_batch(a.topic, data, fresh, now_ns()), c.VerifiedBatch)
    stale = _trust(a, replaced_ns=time.time_ns() - 3_600 * 10**9, replaced_by=b"n" * 16)
    got = verify_batch(a.topic, data, stale, now_ns())
    assert isinstance(got, c.Refused) and got.reason == c.REPLACED


async def test_altered_and_misrouted_batches_are_refused(tmp_path: Path) -> None:
    a, b = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-b")
    async with a.open():
        data = await a.batch()
    altered = data[:-70] + bytes([data[-70] ^ 1]) + data[-69:]
    assert verify_batch(a.topic, altered, _trust(a), now_ns()).reason == c.BAD_SIGNATURE  # type: ignore[union-attr]
    got = verify_batch(b.topic, data, _trust(a, b), now_ns())  # gw-a's genuine batch replayed on gw-b's topic
    assert isinstance(got, c.Refused) and got.reason == c.TOPIC_MISMATCH


@given(st.binary(max_size=2048))
def test_hostile_bytes_are_refused_never_raised(data: bytes) -> None:
    got = verify_batch("sensegate/gw-a/batch", data, RegistryTrust([]), 1)
    assert isinstance(got, c.Refused) and got.reason in c.REFUSAL_REASONS


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                    | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4),
                    max_leaves=20))
def test_hostile_cbor_is_refused_never_raised(obj: object) -> None:
    data = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({"gw": "gw-a", 4: b"k" * 16}), {}, cbor2.dumps(obj), b"s"]))
    assert isinstance(verify_batch("sensegate/gw-a/batch", data, RegistryTrust([]), 1), c.Refused)
    chunk = parse_blob_chunk("sensegate/gw-a/blob/" + "ab" * 32, cbor2.dumps(obj), 1)
    assert isinstance(chunk, c.Refused | c.BlobChunk)


def test_blob_chunks_are_checked() -> None:
    good = parse_blob_chunk("sensegate/gw-a/blob/" + "ab" * 32, cbor2.dumps([0, 2, "image/jpeg", b"xx"]), 1)
    assert isinstance(good, c.BlobChunk) and good.count == 2
    for topic, body in [("sensegate/gw-a/blob/zz", [0, 1, "x", b""]), ("sensegate/gw-a/blob/" + "ab" * 32,
                        [3, 2, "x", b""]), ("sensegate/gw-a/blob/" + "ab" * 32, [0, 10**6, "x", b""])]:
        got = parse_blob_chunk(topic, cbor2.dumps(body), 1)
        assert isinstance(got, c.Refused) and got.reason == c.BAD_BLOB


async def test_numbers_beyond_the_database_are_refused(tmp_path: Path) -> None:
    """A trusted signer's sq as a 2^200 bignum is a malformed batch, not 1.6e60 missing readings."""
    from gateway import cose

    a = GatewayFeed(tmp_path, "gw-a")
    async with a.open():
        data = await a.batch(1)
    msg = cose.parse_sign1(data)
    header = dict(msg.protected)
    header["sq"] = [2**200, 2**200]
    header.pop(cose.ALG)
    header.pop(cose.KID)
    protected = cose.protected_header(a.key, msg.kid or b"", header)
    forged = cose.encode_sign1(protected, msg.payload, cose.sign(a.key, protected, msg.payload))
    got = verify_batch(a.topic, forged, _trust(a), now_ns())
    assert isinstance(got, c.Refused) and got.reason == c.MALFORMED and "sequence range" in got.detail, got


# -- heartbeats --------------------------------------------------------------------------------


def _beat(feed: GatewayFeed, issued: dict[str, object], kind: str = KIND, gateway: str = "") -> bytes:
    body = heartbeat.status("online", gateway or feed.gateway, 3, {"issued": issued})
    return signedjson.seal(body, as_signer(feed.key), gateway or feed.gateway, kind)


ISSUED = {"stream": 7, "boot": 3, "last_seq": 120, "last_bseq": 9, "held_from": 101}


def test_a_heartbeat_verifies_and_says_how_far_the_stream_got(tmp_path: Path) -> None:
    a = GatewayFeed(tmp_path, "gw-a")
    got = verify_heartbeat("sensegate/gw-a/status", "gw-a", _beat(a, ISSUED), _trust(a), 5)
    assert isinstance(got, c.Heartbeat), got
    assert (got.stream, got.last_seq, got.held_from, got.handed_off, got.received_ns) == (7, 120, 101, 100, 5)


def test_statuses_that_are_not_heartbeats_are_ignored(tmp_path: Path) -> None:
    a = GatewayFeed(tmp_path, "gw-a")
    plain = json.dumps(heartbeat.status("offline", "gw-a", 3)).encode()  # the broker's last will
    no_issued = signedjson.seal(heartbeat.status("online", "gw-a", 3, {}), as_signer(a.key), "gw-a", KIND)
    for data in (plain, no_issued, b"not json", b"[1, 2]", b"\xff"):
        assert verify_heartbeat("sensegate/gw-a/status", "gw-a", data, _trust(a), 1) is None


def test_forged_altered_and_misdirected_heartbeats_are_refused(tmp_path: Path) -> None:
    a, z = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-z")
    trust = _trust(a, z)
    forged = _beat(GatewayFeed(tmp_path / "x", "gw-a"), ISSUED)  # a key nobody enrolled
    stolen = _beat(z, ISSUED, gateway="gw-a")  # gw-z's key speaking for gw-a
    body = json.loads(_beat(a, ISSUED))
    body["health"]["issued"]["last_seq"] = 10**6  # altered after signing
    altered = json.dumps(body).encode()
    config_status = _beat(a, ISSUED, kind="config-status")
    for data in (forged, stolen, altered, config_status):
        got = verify_heartbeat("sensegate/gw-a/status", "gw-a", data, trust, 1)
        assert isinstance(got, c.Refused) and got.reason == c.BAD_HEARTBEAT, got
    got = verify_heartbeat("sensegate/gw-z/status", "gw-z", _beat(a, ISSUED), trust, 1)  # on another's topic
    assert isinstance(got, c.Refused) and got.reason == c.BAD_HEARTBEAT
    bad = _beat(a, {**ISSUED, "held_from": 500})
    got = verify_heartbeat("sensegate/gw-a/status", "gw-a", bad, trust, 1)
    assert isinstance(got, c.Refused) and got.reason == c.MALFORMED and "held_from" in got.detail


def test_only_a_gateways_own_status_topic_is_a_heartbeat() -> None:
    assert topic_parts("sensegate/gw-a/status", "sensegate") == ("gw-a", "status", "")
    assert topic_parts("city/east/gw-a/status", "city/east") == ("gw-a", "status", "")
    for topic in ("sensegate/gw-a/config/status", "sensegate/gw-a/nodes/n1/status", "other/gw-a/status"):
        assert topic_parts(topic, "sensegate")[1] != "status", topic


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=6), max_leaves=25))
def test_hostile_issued_members_are_refused_never_raised(obj: object) -> None:
    try:
        issued = Issued.from_json(obj)
    except ValueError:
        return
    assert 1 <= issued.held_from <= issued.last_seq + 1


@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_hostile_status_bytes_never_raise(data: bytes) -> None:
    got = verify_heartbeat("sensegate/gw-a/status", "gw-a", data, RegistryTrust([]), 1)
    assert got is None or isinstance(got, c.Refused)
