"""One broker message -> a VerifiedBatch, a BlobChunk, or Refused with the reason.

The checks, in the order that keeps a forger from learning anything useful: the message is a
COSE_Sign1 naming a gateway; the key it names (``kid``) is bound to THAT gateway in the trust
registry, and not revoked; the signature verifies; the signed header and the SenML pack are a
valid batch (docs/wire-format.md); the topic names the same gateway as the signed header.
"""

from __future__ import annotations

import hashlib

import cbor2

from gateway import cose, senml
from gateway.ingest.contract import (
    BAD_BLOB,
    BAD_SIGNATURE,
    MALFORMED,
    TOPIC_MISMATCH,
    BlobChunk,
    Refused,
    TrustLookup,
    Untrusted,
    VerifiedBatch,
)
from gateway.wire import parse_header

MAX_BLOB_CHUNKS = 4096
MAX_TS_NS = 253_402_300_799 * 10**9  # 9999-12-31T23:59:59Z: beyond it no database keeps a timestamp
INT64 = 2**63 - 1  # batch, stream, boot and reading numbers are stored as bigint


def topic_parts(topic: str) -> tuple[str, str, str]:
    """``<prefix>/<gw>/batch`` -> (gw, "batch", ""); ``.../<gw>/blob/<sha>`` -> (gw, "blob", sha);
    anything else -> ("", "", "")."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[-1] == "batch":
        return parts[-2], "batch", ""
    if len(parts) >= 4 and parts[-2] == "blob":
        return parts[-3], "blob", parts[-1]
    if len(parts) >= 3 and parts[-1] == "status":
        return parts[-2], "status", ""
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
        if readings and not 0 <= min(r.ts_ns for r in readings) <= max(r.ts_ns for r in readings) <= MAX_TS_NS:
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
        steps=tuple(head.cj),
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
