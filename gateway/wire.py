"""The batch wire format, top to bottom: what a gateway signs and what a receiver checks.

A batch is one COSE_Sign1 message (RFC 9052, tag 18). Its payload is a SenML pack in CBOR
(RFC 8428, content-format 112): one record per reading, numbered from the header's ``sq``.
Everything a receiver needs to prove completeness and order is in the protected header, so it
is signed with the readings. docs/wire-format.md explains each field with a worked example;
this module is the code of that page, shared by the gateway's batcher, the reference receiver
(gateway/receiver/) and the fleet ingest: the constants, the header and signing a batch (the
sending side), then checking a header, verifying a batch and reading its pack (the receiving
side).

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
ck    clock epochs of the readings: [[first, boot, mono_ns, wall_ns, synced, max_error_us], ...]
cj    clock steps since the previous batch: [[boot, mono_ns, since_ns, before_ns, after_ns, first], ...]
====  ======================================================================================

A reading's time is the wall clock of the gateway when it was taken. ``ck`` says what that clock
was worth (synchronised or not) and anchors it to the monotonic clock of its run, so a receiver
re-dates readings of an unsynchronised epoch once a later epoch of the same run is synchronised
(``correction``); an older receiver ignores both keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple, Protocol

import cbor2

from gateway import cose, senml
from gateway.config.schema import ID_PATTERN, MAX_BATCH_READINGS
from gateway.keys import PrivateKey, PublicKey

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


class ClockEpoch(NamedTuple):
    """A ``ck`` entry: from reading ``first_seq`` on (up to the next entry), readings of run
    ``boot`` were stamped by a wall clock that read ``wall_ns`` when the monotonic clock of the
    run read ``mono_ns``; ``synced``: the kernel called it synchronised; ``max_error_us``: the
    kernel's maximum error (16 s while unsynchronised)."""

    first_seq: int
    boot: int
    mono_ns: int
    wall_ns: int
    synced: bool
    max_error_us: int

    @property
    def offset_ns(self) -> int:
        """Wall minus monotonic: constant within the epoch."""
        return self.wall_ns - self.mono_ns


class ClockStep(NamedTuple):
    """A ``cj`` entry: the wall clock of run ``boot`` stepped after monotonic ``since_ns`` and
    was seen stepped at ``mono_ns``, when the old clock would have read ``wall_before_ns`` and
    the clock read ``wall_after_ns``; ``first_seq``: the first reading stamped after it (it may
    travel in a later batch)."""

    boot: int
    mono_ns: int
    since_ns: int
    wall_before_ns: int
    wall_after_ns: int
    first_seq: int

    @property
    def delta_ns(self) -> int:
        return self.wall_after_ns - self.wall_before_ns


@dataclass(frozen=True)
class Header:
    """What a batch's protected header says besides ``alg`` and ``kid``; the fields are named
    after their labels and hold what the table above says."""

    gw: str
    st: int
    bo: int
    bs: int
    pv: bytes
    sq: tuple[int, int]  # (first, last)
    dr: Sequence[Sequence[Any]] = ()  # [first, last, reason]
    bd: Sequence[Sequence[Any]] = ()  # [sha256, reason]
    kr: bytes | None = None  # the key rotation document whose new key signs this batch
    ck: Sequence[ClockEpoch] = ()  # the clock epochs its readings were stamped in
    cj: Sequence[ClockStep] = ()  # clock steps since the previous batch

    def labels(self) -> dict[Any, Any]:
        """The header map as signed (``dr``, ``bd``, ``kr``, ``ck`` and ``cj`` only when there are)."""
        out: dict[Any, Any] = {
            cose.CONTENT_TYPE: SENML_CBOR,
            "sg": FORMAT_VERSION,
            "gw": self.gw,
            "st": self.st,
            "bo": self.bo,
            "bs": self.bs,
            "pv": self.pv,
            "sq": list(self.sq),
        }
        if self.dr:
            out["dr"] = [list(d) for d in self.dr]
        if self.bd:
            out["bd"] = [list(d) for d in self.bd]
        if self.kr is not None:
            out["kr"] = self.kr
        if self.ck:
            out["ck"] = [list(e) for e in self.ck]
        if self.cj:
            out["cj"] = [list(e) for e in self.cj]
        return out

    def to_json(self) -> dict[str, Any]:
        """The header as plain values (a receiver's Feed.header)."""
        return {"gw": self.gw, "st": self.st, "bo": self.bo, "bs": self.bs, "pv": self.pv, "sq": list(self.sq),
                "dr": [list(d) for d in self.dr], "bd": [list(d) for d in self.bd],
                "ck": [list(e) for e in self.ck], "cj": [list(e) for e in self.cj]}

    def clock_spans(self) -> list[tuple[int, int, ClockEpoch]]:
        """The batch's readings as runs ``(first, last, epoch)``: see ``clock_spans``."""
        return clock_spans(self.ck, *self.sq)


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
    body = payload(header.sq[1] - header.sq[0] + 1, records)
    protected = cose.protected_header(key, kid, header.labels())
    signature = cose.sign(key, protected, body)
    return Signed(protected, signature, cose.encode_sign1(protected, body, signature))


def assemble(protected: bytes, count: int, records: Sequence[bytes], signature: bytes) -> bytes:
    """The message of a batch signed earlier, rebuilt byte for byte from its stored parts."""
    return cose.encode_sign1(protected, payload(count, records), signature)


# -- the receiving side ---------------------------------------------------------------------

MAX_UINT = 2**63 - 1  # every counter fits a signed 64-bit column (SQLite, PostgreSQL bigint)
GATEWAY_ID_RE = re.compile(ID_PATTERN)  # "gw", and the gateway part of the MQTT topic
REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a drop reason: buffer_full, expired, unclean_stop, ...
Position = tuple[int, int]
"""A batch's place: (stream id, batch number)."""


def _uint(v: Any, lo: int = 0) -> bool:
    return type(v) is int and lo <= v <= MAX_UINT


def _declared(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) <= MAX_DECLARED


def parse_header(p: Mapping[Any, Any]) -> Header:
    """Check a received batch's protected header and return its fields; ValueError names the
    first field that is wrong. Every number must be an integer (never a float, NaN, infinity or
    boolean) in its range, so nothing a signer writes can turn into a bignum gap count or an
    unchecked comparison.

    ``sg`` is the integer 1; ``gw`` a gateway id; ``st`` and ``bo`` integers 0..2^63-1, ``bs``
    1..2^63-1; ``pv`` 32 bytes; ``sq`` a pair ``first <= last + 1`` with ``first >= 1``,
    ``last <= 2^63-1`` and at most 100,000 readings; ``dr`` at most 64 ``[first, last, reason]``
    with ``1 <= first <= last <= 2^63-1``; ``bd`` at most 64 ``[sha256, reason]``; content
    type, when present, 112; ``kr`` kept when it is a byte string (its document is checked by
    whoever applies it: gateway/keyevents.py).
    """
    if type(p.get("sg")) is not int or p["sg"] != FORMAT_VERSION:
        raise ValueError(f"unknown batch format {p.get('sg')!r}")
    ct = p.get(cose.CONTENT_TYPE, SENML_CBOR)
    if type(ct) is not int or ct != SENML_CBOR:
        raise ValueError(f"payload content type {ct!r} is not SenML-CBOR (112)")
    gw, pv, sq = p.get("gw"), p.get("pv"), p.get("sq")
    bs, st, bo = p.get("bs", -1), p.get("st", -1), p.get("bo", -1)
    if not isinstance(gw, str) or not GATEWAY_ID_RE.match(gw):
        raise ValueError("bad gateway id")
    if not (_uint(st) and _uint(bo) and _uint(bs, 1)):
        raise ValueError("bad batch numbers (st, bo: integers 0..2^63-1; bs: 1..2^63-1)")
    if not (isinstance(pv, bytes) and len(pv) == 32):
        raise ValueError("bad previous-batch hash")
    if not (isinstance(sq, list | tuple) and len(sq) == 2 and _uint(sq[0], 1) and _uint(sq[1])
            and sq[0] <= sq[1] + 1):
        raise ValueError("bad sequence range")
    if sq[1] - sq[0] + 1 > MAX_BATCH_READINGS:
        raise ValueError(f"sequence range of {sq[1] - sq[0] + 1} readings is over the {MAX_BATCH_READINGS} limit")
    dr = p.get("dr", [])
    if not _declared(dr) or not all(
        isinstance(d, list | tuple) and len(d) == 3 and _uint(d[0], 1) and _uint(d[1]) and d[0] <= d[1]
        and isinstance(d[2], str) and REASON_RE.match(d[2]) for d in dr
    ):
        raise ValueError("bad drop list")
    bd = p.get("bd", [])
    if not _declared(bd) or not all(
        isinstance(d, list | tuple) and len(d) == 2 and isinstance(d[0], bytes) and len(d[0]) == 32
        and isinstance(d[1], str) and REASON_RE.match(d[1]) for d in bd
    ):
        raise ValueError("bad blob drop list")
    kr = p.get("kr")
    return Header(gw, st, bo, bs, pv, (sq[0], sq[1]), [(a, b, r) for a, b, r in dr], [(h, r) for h, r in bd],
                  kr if isinstance(kr, bytes) else None, _clock_epochs(p.get("ck", []), sq[0], sq[1]),
                  _clock_steps(p.get("cj", [])))


def _clock_epochs(ck: Any, first: int, last: int) -> list[ClockEpoch]:
    """``ck``: at most 64 ``[first, boot, mono_ns, wall_ns, synced, max_error_us]`` (integers
    0..2^63-1, ``synced`` a boolean), ascending ``first``, each but the first within the
    batch's readings (after its first one); none in a batch without readings. Readings before
    the first entry were stored before their gateway recorded its clock (an upgrade, a salvaged
    file): their clock is unknown."""
    if not _declared(ck) or not all(
        isinstance(e, list | tuple) and len(e) == 6 and _uint(e[0], 1) and _uint(e[1]) and _uint(e[2])
        and _uint(e[3]) and type(e[4]) is bool and _uint(e[5]) for e in ck
    ):
        raise ValueError("bad clock epochs (ck)")
    firsts = [e[0] for e in ck]
    if ck and (last < first or firsts[-1] > last or (len(firsts) > 1 and firsts[1] <= first)
               or any(a >= b for a, b in pairwise(firsts))):
        raise ValueError("clock epochs (ck) out of order or outside the batch's readings")
    return [ClockEpoch(*e) for e in ck]


def _clock_steps(cj: Any) -> list[ClockStep]:
    """``cj``: at most 64 ``[boot, mono_ns, since_ns, before_ns, after_ns, first]``, integers
    0..2^63-1 with ``since_ns <= mono_ns`` and ``first >= 1``."""
    if not _declared(cj) or not all(
        isinstance(e, list | tuple) and len(e) == 6 and all(_uint(x) for x in e) and e[2] <= e[1] and e[5] >= 1
        for e in cj
    ):
        raise ValueError("bad clock steps (cj)")
    return [ClockStep(*e) for e in cj]


def clock_spans(ck: Sequence[ClockEpoch], first: int, last: int) -> list[tuple[int, int, ClockEpoch]]:
    """Readings ``first``..``last`` of a batch as runs ``(first, last, epoch)`` of reading numbers
    stamped in one clock epoch; readings before the first ``ck`` entry (stored before their
    gateway recorded its clock) are in none."""
    out = []
    for i, e in enumerate(ck):
        end = ck[i + 1].first_seq - 1 if i + 1 < len(ck) else last
        if end >= first:
            out.append((max(first, e.first_seq), end, e))
    return out


def correction(epoch: ClockEpoch, known: Iterable[ClockEpoch]) -> ClockEpoch | None:
    """The epoch whose clock re-dates readings of ``epoch`` (one that was not synchronised): the
    nearest synchronised epoch after it in the same run, where the monotonic clock is continuous;
    None while no such epoch is known. A reading's corrected time is its time plus
    ``that.offset_ns - epoch.offset_ns``."""
    best = None
    for e in known:
        if (e.synced and e.boot == epoch.boot and e.first_seq > epoch.first_seq and e.mono_ns >= epoch.mono_ns
                and (best is None or e.first_seq < best.first_seq)):
            best = e
    return best


@dataclass(frozen=True)
class Untrusted:
    """Why a (gateway, kid) pair may not sign a batch. ``forged``: the key is known, but it does
    not speak for this gateway (bound to another one, or retired before this batch); ``revoked``:
    ops revoked it; otherwise it is unknown."""

    reason: str
    forged: bool = False
    revoked: bool = False


class KeyLookup(Protocol):
    """Which key may sign for a gateway: a receiver's trust (gateway.receiver.trust), a fleet
    registry. A key speaks for one gateway only."""

    def lookup(self, gateway: str, kid: bytes, at: Position | None = None) -> PublicKey | Untrusted:
        """The public key bound to ``gateway`` with this ``kid`` that may sign the batch at
        ``at`` (None: any batch); Untrusted otherwise."""
        ...


class Refused(Exception):
    """A batch that does not verify. ``status``: "malformed" (not a batch of this format),
    "forged" (a key speaking for a gateway it is not bound to, or a batch on another gateway's
    topic), "revoked", "untrusted" (an unknown key) or "bad_signature"; ``header`` once read."""

    def __init__(self, status: str, reason: str, header: Header | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.header = header


@dataclass(frozen=True)
class Opened:
    """A batch message whose envelope and header are sound, signature not yet checked."""

    msg: cose.Sign1
    header: Header


def open_batch(data: bytes, topic_gateway: str | None = None) -> Opened:
    """Parse a batch message (at most cose.MAX_MESSAGE) and check its header, and that the topic
    it came on (``topic_gateway``, when known) names the gateway it claims. Raises Refused."""
    try:
        msg = cose.parse_sign1(data)  # refuses an oversized message before decoding it
        h = parse_header(msg.protected)
    except (cose.CoseError, ValueError) as e:
        raise Refused("malformed", str(e)) from None
    if topic_gateway is not None and topic_gateway != h.gw:
        raise Refused("forged", f"published on the topic of gateway {topic_gateway!r} but claims {h.gw!r}", h)
    return Opened(msg, h)


def check_signature(batch: Opened, keys: KeyLookup) -> None:
    """Check that the batch's ``kid`` may sign for its gateway at its place in the stream, and
    that the signature is that key's. Raises Refused. (A receiver applies a carried ``kr``
    rotation to its trust between open_batch and this.)"""
    h = batch.header
    key = keys.lookup(h.gw, batch.msg.kid or b"", (h.st, h.bs))
    if isinstance(key, Untrusted):
        status = "revoked" if key.revoked else "forged" if key.forged else "untrusted"
        raise Refused(status, key.reason, h)
    try:
        cose.verify(batch.msg, key)
    except cose.CoseError as e:
        raise Refused("bad_signature", str(e), h) from None


def verify(data: bytes, keys: KeyLookup, topic_gateway: str | None = None) -> Opened:
    """open_batch and check_signature in one step. Raises Refused."""
    batch = open_batch(data, topic_gateway)
    check_signature(batch, keys)
    return batch


def read_pack(batch: Opened, keep_readings: bool = True, ts_out: list[int] | None = None,
              blobs_out: list[tuple[int, Any]] | None = None) -> tuple[list[senml.DecodedReading], int]:
    """The readings of a verified batch, numbered from ``sq`` (or, with ``keep_readings=False``,
    only checked and counted); exactly as many records as ``sq`` says. ``ts_out`` and
    ``blobs_out`` as for ``senml.check_pack``. Raises ValueError (SenmlError, or CBOR's own)."""
    first, last = batch.header.sq
    try:
        pack = cbor2.loads(batch.msg.payload)
    except cbor2.CBORDecodeError as e:
        raise senml.SenmlError(f"payload is not CBOR: {e}") from None
    if keep_readings:
        readings = senml.decode_pack(pack, first)
        n = len(readings)
        if ts_out is not None:
            ts_out.extend(r.ts_ns for r in readings)
    else:
        readings, n = [], senml.check_pack(pack, first, ts_out, blobs_out)
    if n != last - first + 1:
        raise senml.SenmlError(f"pack holds {n} records but sq says {last - first + 1}")
    return readings, n
