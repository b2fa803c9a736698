"""One broker message -> a VerifiedBatch, a BlobChunk, or Refused with the reason.

The checks, in the order that keeps a forger from learning anything useful: the message is a
COSE_Sign1 naming a gateway; the key it names (``kid``) is bound to THAT gateway in the trust
registry, and not revoked; the signature verifies; the signed header and the SenML pack are a
valid batch (docs/wire-format.md); the topic names the same gateway as the signed header.
"""

from __future__ import annotations

import hashlib
import json

import cbor2

from gateway import cose, senml, signedjson
from gateway.heartbeat import KIND, Issued
from gateway.ingest.contract import (
    BAD_BLOB,
    BAD_HEARTBEAT,
    BAD_SIGNATURE,
    MALFORMED,
    TOPIC_MISMATCH,
    BlobChunk,
    Heartbeat,
    Refused,
    TrustLookup,
    Untrusted,
    VerifiedBatch,
)
from gateway.wire import KeyLookup, parse_header

MAX_BLOB_CHUNKS = 4096
MAX_TS_NS = 253_402_300_799 * 10**9  # 9999-12-31T23:59:59Z: beyond it no database keeps a timestamp
INT64 = 2**63 - 1  # batch, stream, boot and reading numbers are stored as bigint


def topic_parts(topic: str, prefix: str = "") -> tuple[str, str, str]:
    """``<prefix>/<gw>/batch`` -> (gw, "batch", ""); ``.../<gw>/blob/<sha>`` -> (gw, "blob", sha);
    with the ``prefix`` known, ``<prefix>/<gw>/status`` -> (gw, "status", "") (other statuses,
    a node's or a config push's, end in ``status`` too); anything else -> ("", "", "")."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[-1] == "batch":
        return parts[-2], "batch", ""
    if len(parts) >= 4 and parts[-2] == "blob":
        return parts[-3], "blob", parts[-1]
    if prefix and topic.startswith(prefix + "/") and topic.endswith("/status"):
        rest = topic[len(prefix) + 1:].split("/")
        if len(rest) == 2:
            return rest[0], "status", ""
    return "", "", ""


def verify_batch(topic: str, data: bytes, trust: TrustLookup, received_ns: int) -> VerifiedBatch | Refused:
    """Check one batch message completely; nothing in it is believed before its signature is."""
    topic_gw = topic_parts(topic)[0]

    def refuse(reason: str, detail: str, gateway: str = topic_gw, kid: bytes = b"") -> Refused:
        return Refused(reason, detail, topic, gateway, kid, data, received_ns)

    try:
        msg = cose.parse_sign1(data)
    except cose.CoseError as e:
        return refuse(MALFORMED, str(e))
    claimed = msg.protected.get("gw")
    kid = msg.kid or b""
    if not isinstance(claimed, str) or not claimed:
        return refuse(MALFORMED, "the protected header names no gateway", kid=kid)
    key = trust.key_for(claimed, kid)
    if isinstance(key, Untrusted):
        return refuse(key.reason, key.detail, claimed, kid)
    try:
        cose.verify(msg, key)
    except cose.CoseError as e:
        return refuse(BAD_SIGNATURE, str(e), claimed, kid)
    try:
        head = parse_header(msg.protected)
        h = head.to_json()
        numbers = [h["st"], h["bo"], h["bs"], *h["sq"], *(x for d in h["dr"] for x in d[:2])]
        if max(numbers) > INT64:
            raise ValueError("a batch, stream, boot or reading number beyond 2^63 - 1")
        pack = cbor2.loads(msg.payload)
        first, last = h["sq"]
        readings = senml.decode_pack(pack, first)
        if len(readings) != last - first + 1:
            raise senml.SenmlError(f"pack holds {len(readings)} records but sq says {last - first + 1}")
        times = [r.ts_ns for r in readings]
        lo, hi = (min(times), max(times)) if times else (0, 0)
        if not 0 <= lo <= hi <= MAX_TS_NS:
            raise senml.SenmlError("a reading's time is before 1970 or after 9999")
    except (senml.SenmlError, ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as e:
        return refuse(MALFORMED, f"signed by {claimed}'s key but not a valid batch: {e}", claimed, kid)
    if topic_gw != claimed:
        # reported under the topic's gateway: someone published on its topic what it did not sign
        return refuse(TOPIC_MISMATCH, f"published on {topic!r} but signed for gateway {claimed!r}", topic_gw, kid)
    return VerifiedBatch(
        gateway=claimed, kid=kid, stream=h["st"], boot=h["bo"], bseq=h["bs"], prev=h["pv"],
        digest=hashlib.sha256(data).digest(), first_seq=first, last_seq=last,
        drops=tuple((a, b, r) for a, b, r in h["dr"]), blob_drops=tuple((s, r) for s, r in h["bd"]),
        readings=readings, received_ns=received_ns, topic=topic, message=data, clock=tuple(head.ck),
        steps=tuple(head.cj), ts_min=lo, ts_max=hi,
    )


def parse_blob_chunk(topic: str, data: bytes, received_ns: int) -> BlobChunk | Refused:
    """A blob chunk ``[index, count, content_type, bytes]`` on ``<prefix>/<gw>/blob/<sha256 hex>``."""
    gateway, _, sha_hex = topic_parts(topic)
    try:
        sha = bytes.fromhex(sha_hex)
        index, count, ctype, chunk = cbor2.loads(data)
        if (len(sha) != 32 or type(index) is not int or type(count) is not int or not 0 <= index < count
                or count > MAX_BLOB_CHUNKS or not isinstance(ctype, str) or not isinstance(chunk, bytes)):
            raise ValueError("not [index, count, content type, bytes] for a SHA-256 topic")
    except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
        return Refused(BAD_BLOB, f"malformed blob chunk: {e}", topic, gateway, b"", data, received_ns)
    return BlobChunk(gateway, sha, index, count, ctype, chunk, received_ns)


def verify_heartbeat(topic: str, gateway: str, data: bytes, trust: KeyLookup, received_ns: int
                     ) -> Heartbeat | Refused | None:
    """A gateway's status message: its heartbeat when signed by a key bound to ``gateway`` (the
    topic's), Refused when it is signed but does not verify, None when it is not a heartbeat
    (an unsigned status: the broker's last will, a gateway without a device key or too old to
    sign; or a status without ``issued``: a gateway whose buffer is not open)."""
    try:
        body = json.loads(data) if len(data) <= signedjson.MAX_SIGNED * 2 else None
    except ValueError:
        return None
    if not isinstance(body, dict) or signedjson.FIELD not in body:
        return None
    checked = signedjson.check(body, trust, gateway, KIND)
    if not checked.verified:
        return Refused(BAD_HEARTBEAT, checked.reason, topic, gateway, b"", data, received_ns)
    health = checked.body.get("health")
    if not isinstance(health, dict) or health.get("issued") is None:
        return None
    try:
        issued = Issued.from_json(health["issued"])
        sent = checked.body.get("ts")
        sent_ns = int(sent * 1e9) if isinstance(sent, int | float) and 0 <= sent < MAX_TS_NS / 1e9 else 0
    except ValueError as e:
        return Refused(MALFORMED, f"a heartbeat signed by {gateway}'s key but not valid: {e}", topic, gateway, b"",
                       data, received_ns)
    return Heartbeat(gateway, issued.stream, issued.boot, issued.last_seq, issued.last_bseq, issued.held_from,
                     sent_ns, received_ns)
