"""The batch wire format, top to bottom: what a gateway signs and what a receiver checks.

A batch is one COSE_Sign1 message (RFC 9052, tag 18). Its payload is a SenML pack in CBOR
(RFC 8428, content-format 112): one record per reading, numbered from the header's ``sq``.
Everything a receiver needs to prove completeness and order is in the protected header, so it
is signed with the readings. docs/wire-format.md explains each field with a worked example;
this module is the code of that page, shared by the gateway's batcher, the reference receiver
(gateway/receiver/) and the fleet ingest.

Protected header (``alg`` and ``kid`` come from the signing key):

====  ======================================================================================
3     content type: 112 (application/senml+cbor)
sg    format version (1)
gw    the gateway id
st    stream: a random 63-bit number chosen when the gateway's buffer was created
bo    boot: how many times the buffer was opened (a restart is a new boot)
bs    batch number, 1, 2, 3 ... in the stream
pv    SHA-256 of the previous batch's whole COSE_Sign1 message (32 zero bytes for the first)
sq    [first, last]: the reading numbers of the pack's records (last = first - 1: no records)
dr    declared drops: [[first, last, reason], ...], at most MAX_DECLARED, only when there are
bd    declared blob drops: [[sha256, reason], ...], at most MAX_DECLARED, only when there are
kr    a key rotation document whose new key signs this batch (the first batches after a rotation)
====  ======================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import cose, senml
from gateway.keys import PrivateKey

FORMAT_VERSION = 1  # "sg"
SENML_CBOR = 112  # CoAP content-format of application/senml+cbor (the "3" label)
GENESIS_HASH = bytes(32)  # "pv" of a stream's first batch
MAX_DECLARED = 64  # drop ranges (and blob drops) one batch declares; receivers refuse more

# Why readings were never delivered (the reason of a "dr" range)
BUFFER_FULL = "buffer_full"  # the buffer reached buffer.max_bytes (policy drop_oldest or refuse_new)
EXPIRED = "expired"  # older than buffer.max_age
OVERFLOW = "overflow"  # more readings waited in memory than the disk could take
UNCLEAN_STOP = "unclean_stop"  # numbers reserved before an unclean stop: lost in it, or never used
BUFFER_CORRUPT = "buffer_corrupt"  # in a buffer file SQLite found damaged, and not readable from it
# Why a blob was never uploaded (the reason of a "bd" entry)
BLOB_STORE_FULL = "blob_store_full"


@dataclass(frozen=True)
class Drop:
    """A range of reading sequence numbers that will never be delivered, and why."""

    first_seq: int
    last_seq: int
    reason: str

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class Header:
    """What a batch's protected header says besides ``alg`` and ``kid``."""

    gateway: str
    stream: int
    boot: int
    bseq: int
    prev: bytes
    first_seq: int
    last_seq: int
    drops: Sequence[Sequence[Any]] = ()  # [first, last, reason]
    blob_drops: Sequence[Sequence[Any]] = ()  # [sha256, reason]
    kr: bytes | None = None  # the key rotation document whose new key signs this batch

    def labels(self) -> dict[Any, Any]:
        """The header map, labels as on the wire (``dr`` and ``bd`` only when not empty)."""
        out: dict[Any, Any] = {
            cose.CONTENT_TYPE: SENML_CBOR,
            "sg": FORMAT_VERSION,
            "gw": self.gateway,
            "st": self.stream,
            "bo": self.boot,
            "bs": self.bseq,
            "pv": self.prev,
            "sq": [self.first_seq, self.last_seq],
        }
        if self.drops:
            out["dr"] = [list(d) for d in self.drops]
        if self.blob_drops:
            out["bd"] = [list(d) for d in self.blob_drops]
        if self.kr is not None:
            out["kr"] = self.kr
        return out


@dataclass(frozen=True)
class Batch:
    """A signed batch: the COSE_Sign1 bytes and what they hold."""

    bseq: int
    first_seq: int
    last_seq: int
    data: bytes
    hash: bytes  # SHA-256 of data: the next batch's "pv"
    created_ns: int
    nbytes: int = 0  # encoded records it holds (the segments' bytes)

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


# -- the sending side -----------------------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    """A signed batch in its parts: what the gateway stores to rebuild the message later."""

    protected: bytes
    signature: bytes
    data: bytes  # the whole COSE_Sign1 message


def payload(count: int, records: Sequence[bytes]) -> bytes:
    """The SenML pack: a CBOR array head and the records, each already CBOR-encoded."""
    return senml.array_header(count) + b"".join(records)


def sign(key: PrivateKey, kid: bytes, header: Header, records: Sequence[bytes]) -> Signed:
    """Sign a batch of ``records`` (encoded SenML records, in reading-number order)."""
    body = payload(header.last_seq - header.first_seq + 1, records)
    protected = cose.protected_header(key, kid, header.labels())
    signature = cose.sign(key, protected, body)
    return Signed(protected, signature, cose.encode_sign1(protected, body, signature))


def assemble(protected: bytes, count: int, records: Sequence[bytes], signature: bytes) -> bytes:
    """The message of a batch signed earlier, rebuilt byte for byte from its stored parts."""
    return cose.encode_sign1(protected, payload(count, records), signature)
