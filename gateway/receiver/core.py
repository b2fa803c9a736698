"""Verification and completeness tracking, independent of any transport."""

from __future__ import annotations

import base64
import bisect
import contextlib
import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gateway import cose, senml
from gateway.keys import PublicKey, key_id

MAX_DECLARED = 64  # drop ranges one batch may declare
UNCLEAN_STOP = "unclean_stop"  # the drop reason of numbers a gateway skipped after an unclean stop


@dataclass
class Summary:
    """What a receiver has seen; ``ok`` means complete, verified and unforged."""

    batches: int = 0
    readings: int = 0
    gaps: int = 0  # readings missing that no batch declared dropped
    gap_ranges: list[tuple[int, int]] = field(default_factory=list)
    dropped: int = 0  # readings the gateway declared dropped
    drop_reasons: dict[str, int] = field(default_factory=dict)
    # reading numbers the gateway skipped after an unclean stop (power cut, kill -9) and that did
    # not arrive: each was lost in that stop or never used (declared, so not a gap)
    skipped: int = 0
    duplicates: int = 0  # batches received again (replays, re-sends)
    duplicate_readings: int = 0
    bad_signatures: int = 0
    malformed: int = 0
    reordered: int = 0
    chain_breaks: int = 0
    restarts: int = 0
    streams: int = 0
    blobs_verified: int = 0  # complete, hash matches, and named by a verified batch
    blobs_unreferenced: int = 0  # complete and hash matches, but no verified batch names it (yet)
    blobs_bad: int = 0  # chunks that do not add up to the hash in their topic
    blobs_dropped: int = 0  # blobs the gateway declared dropped (its blob store was full)
    blobs_missing: int = 0  # named by a verified batch, neither received nor declared dropped
    # with Receiver(latency=True): reading timestamp -> arrival at the receiver, over accepted batches
    latency_ms: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return not (self.gaps or self.bad_signatures or self.malformed or self.chain_breaks or self.blobs_bad)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["gap_ranges"] = [list(r) for r in self.gap_ranges]
        d["ok"] = self.ok
        if d["latency_ms"] is None:
            del d["latency_ms"]
        return d


@dataclass
class Feed:
    """The outcome of one message: accepted (with its new readings), duplicate, or rejected."""

    status: str  # "ok", "duplicate", "bad_signature", "malformed", "conflict"
    readings: list[senml.DecodedReading] = field(default_factory=list)
    reason: str = ""
    gateway: str = ""
    bseq: int = 0
    header: dict[str, Any] = field(default_factory=dict)


class _Ranges:
    """A set of integers kept as sorted, merged, inclusive ranges."""

    def __init__(self) -> None:
        self.r: list[list[int]] = []

    def add(self, a: int, b: int) -> int:
        """Add [a, b]; return how many of its members were already present."""
        if b < a:
            return 0
        overlap = self.overlap(a, b)
        i = bisect.bisect_left(self.r, [a])
        if i > 0 and self.r[i - 1][1] >= a - 1:
            i -= 1
        j = i
        lo, hi = a, b
        while j < len(self.r) and self.r[j][0] <= b + 1:
            lo, hi = min(lo, self.r[j][0]), max(hi, self.r[j][1])
            j += 1
        self.r[i:j] = [[lo, hi]]
        return overlap

    def overlap(self, a: int, b: int) -> int:
        """How many members of [a, b] are present."""
        return sum(max(0, min(b, y) - max(a, x) + 1) for x, y in self._near(a, b))

    def _near(self, a: int, b: int) -> list[list[int]]:
        i = max(0, bisect.bisect_left(self.r, [a]) - 1)
        out = []
        while i < len(self.r) and self.r[i][0] <= b:
            if self.r[i][1] >= a:
                out.append(self.r[i])
            i += 1
        return out

    def contains(self, x: int) -> bool:
        i = bisect.bisect_right(self.r, [x, float("inf")]) - 1
        return i >= 0 and self.r[i][0] <= x <= self.r[i][1]

    def holes(self) -> list[tuple[int, int]]:
        return [(self.r[k][1] + 1, self.r[k + 1][0] - 1) for k in range(len(self.r) - 1)]


@dataclass
class _Stream:
    got: _Ranges = field(default_factory=_Ranges)
    covered: _Ranges = field(default_factory=_Ranges)  # received or declared dropped
    unclean: _Ranges = field(default_factory=_Ranges)  # declared skipped after an unclean stop
    hashes: dict[int, bytes] = field(default_factory=dict)
    prevs: dict[int, bytes] = field(default_factory=dict)
    max_bseq: int = 0
    boot: int | None = None


class Receiver:
    """Feed it batch messages from any transport; ask for the summary at any time."""

    MAX_PARTIAL_BLOBS = 32
    MAX_BLOB = 64 * 1024 * 1024

    def __init__(self, trusted: list[PublicKey], keep_readings: bool = True, latency: bool = False) -> None:
        """``keep_readings=False``: verify and count only (Feed.readings stays empty), with every
        check of the full decoder but no object per reading. ``latency=True``: keep a histogram
        (1 ms buckets) of reading timestamp to arrival, reported in the summary."""
        self.keys = {key_id(k): k for k in trusted}
        self.keep_readings = keep_readings
        self.latency: Counter[int] | None = Counter() if latency else None
        self.streams: dict[tuple[str, int], _Stream] = {}
        self._s = Summary()
        self.blobs: dict[str, tuple[str, bytes]] = {}  # sha256 hex -> (content type, bytes), hash checked
        self.referenced: set[str] = set()  # sha256 hex named by verified batches
        self.blob_drops: set[str] = set()  # sha256 hex the gateway declared dropped
        self._parts: dict[str, dict[int, bytes]] = {}

    def feed_blob(self, sha_hex: str, payload: bytes) -> str:
        """Take one blob chunk (``[index, count, content_type, bytes]``); returns "partial",
        "verified" (complete, hash matches), "bad" or "malformed"."""
        try:
            sha = bytes.fromhex(sha_hex)
            index, count, ctype, chunk = cbor2.loads(payload)
            if (len(sha) != 32 or type(index) is not int or type(count) is not int or not 0 <= index < count
                    or count > 4096 or not isinstance(ctype, str) or not isinstance(chunk, bytes)):
                raise ValueError("bad chunk header")
        except (ValueError, TypeError, cbor2.CBORDecodeError):
            self._s.malformed += 1
            return "malformed"
        if sha_hex in self.blobs:
            return "verified"
        parts = self._parts.get(sha_hex)
        if parts is None:
            if len(self._parts) >= self.MAX_PARTIAL_BLOBS:  # bounded memory: forget the oldest partial
                self._parts.pop(next(iter(self._parts)))
            parts = self._parts[sha_hex] = {}
        parts[index] = chunk
        if sum(len(c) for c in parts.values()) > self.MAX_BLOB:
            del self._parts[sha_hex]
            self._s.blobs_bad += 1
            return "bad"
        if len(parts) < count:
            return "partial"
        del self._parts[sha_hex]
        data = b"".join(parts[i] for i in range(count))
        if hashlib.sha256(data).digest() != sha:
            self._s.blobs_bad += 1
            return "bad"
        self.blobs[sha_hex] = (ctype, data)
        return "verified"

    def feed(self, data: bytes) -> Feed:
        """Verify and account for one batch message."""
        s = self._s
        arrived = time.time_ns()
        try:
            msg = cose.parse_sign1(data)
        except cose.CoseError as e:
            s.malformed += 1
            return Feed("malformed", reason=str(e))
        key = self.keys.get(msg.kid or b"")
        if key is None:
            s.bad_signatures += 1
            return Feed("bad_signature", reason="signed by a key that is not trusted (unknown kid)")
        try:
            cose.verify(msg, key)
        except cose.CoseError as e:
            s.bad_signatures += 1
            return Feed("bad_signature", reason=str(e))
        readings: list[senml.DecodedReading] = []
        blob_refs: list[tuple[int, Any]] = []
        stamps: list[int] | None = [] if self.latency is not None else None
        try:
            h = self._header(msg.protected)
            pack = cbor2.loads(msg.payload)
            first, last = h["sq"]
            if self.keep_readings:
                readings = senml.decode_pack(pack, first)
                n = len(readings)
                if stamps is not None:
                    stamps = [r.ts_ns for r in readings]
            else:
                n = senml.check_pack(pack, first, stamps, blob_refs)
            if n != last - first + 1:
                raise senml.SenmlError(f"pack holds {n} records but sq says {last - first + 1}")
        except (senml.SenmlError, ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as e:
            # signed by a trusted key yet malformed: a gateway bug, reported as such
            s.malformed += 1
            return Feed("malformed", reason=str(e))
        gw, bseq = h["gw"], h["bs"]
        st = self.streams.get((gw, h["st"]))
        if st is None:
            st = self.streams[(gw, h["st"])] = _Stream()
            s.streams += 1
        digest = hashlib.sha256(data).digest()
        if bseq in st.hashes:
            if st.hashes[bseq] == digest:
                s.duplicates += 1
                return Feed("duplicate", gateway=gw, bseq=bseq, header=h)
            s.chain_breaks += 1
            return Feed("conflict", reason=f"batch {bseq} seen before with other content", gateway=gw, bseq=bseq)
        if st.boot is not None and h["bo"] != st.boot:
            s.restarts += 1
        st.boot = h["bo"]
        if bseq < st.max_bseq:
            s.reordered += 1
        # the chain: our predecessor's hash, and our successor's claim on us
        if bseq - 1 in st.hashes and st.hashes[bseq - 1] != h["pv"]:
            s.chain_breaks += 1
        if bseq + 1 in st.prevs and st.prevs[bseq + 1] != digest:
            s.chain_breaks += 1
        st.hashes[bseq] = digest
        st.prevs[bseq] = h["pv"]
        st.max_bseq = max(st.max_bseq, bseq)
        for a, b, reason in h.get("dr", []):
            if reason == UNCLEAN_STOP:  # counted at summary time: those of them that never arrive
                st.covered.add(a, b)
                st.unclean.add(a, b)
                continue
            declared = b - a + 1 - st.covered.add(a, b)
            s.dropped += declared
            s.drop_reasons[reason] = s.drop_reasons.get(reason, 0) + declared
        if self.keep_readings:
            fresh = [r for r in readings if not st.got.contains(r.seq)]
            blob_refs = [(r.seq, r.value) for r in fresh if r.kind == "blob"]
        else:
            fresh = []
            blob_refs = [(seq, vs) for seq, vs in blob_refs if not st.got.contains(seq)]
        again = st.got.add(first, last)  # how many of these readings arrived before
        s.duplicate_readings += again
        st.covered.add(first, last)
        for sha, _reason in h.get("bd", []):
            self.blob_drops.add(sha.hex())
        for _, vs in blob_refs:
            if isinstance(vs, str) and vs.startswith("ni:///sha-256;"):
                b64 = vs.removeprefix("ni:///sha-256;")
                with contextlib.suppress(ValueError):
                    self.referenced.add(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex())
        if stamps and self.latency is not None:
            self.latency.update((arrived - ts) // 1_000_000 for ts in stamps)
        s.batches += 1
        s.readings += n - again
        return Feed("ok", fresh, gateway=gw, bseq=bseq, header=h)

    @staticmethod
    def _header(p: dict[Any, Any]) -> dict[str, Any]:
        if p.get("sg") != 1:
            raise ValueError(f"unknown batch format {p.get('sg')!r}")
        gw, bs, st, bo, pv, sq = (p.get(k) for k in ("gw", "bs", "st", "bo", "pv", "sq"))
        if not isinstance(gw, str) or not senml.NAME_RE.match(gw):
            raise ValueError("bad gateway id")
        if not all(type(x) is int and x >= 0 for x in (bs, st, bo)):
            raise ValueError("bad batch numbers")
        if not (isinstance(pv, bytes) and len(pv) == 32):
            raise ValueError("bad previous-batch hash")
        if not (isinstance(sq, list | tuple) and len(sq) == 2 and all(type(x) is int for x in sq)
                and 1 <= sq[0] <= sq[1] + 1):
            raise ValueError("bad sequence range")
        dr = p.get("dr", [])
        if not isinstance(dr, list | tuple) or len(dr) > MAX_DECLARED or not all(
            isinstance(d, list | tuple) and len(d) == 3 and type(d[0]) is int and type(d[1]) is int
            and 1 <= d[0] <= d[1] and isinstance(d[2], str) for d in dr
        ):
            raise ValueError("bad drop list")
        bd = p.get("bd", [])
        if not isinstance(bd, list | tuple) or len(bd) > MAX_DECLARED or not all(
            isinstance(d, list | tuple) and len(d) == 2 and isinstance(d[0], bytes) and len(d[0]) == 32
            and isinstance(d[1], str) for d in bd
        ):
            raise ValueError("bad blob drop list")
        return {"gw": gw, "bs": bs, "st": st, "bo": bo, "pv": pv, "sq": list(sq), "dr": [list(d) for d in dr],
                "bd": [list(d) for d in bd]}

    def summary(self) -> Summary:
        """Current totals; gaps are holes in what was received or declared dropped."""
        s = self._s
        gaps: list[tuple[int, int]] = []
        for st in self.streams.values():
            gaps += st.covered.holes()
        s.gap_ranges = gaps
        s.gaps = sum(b - a + 1 for a, b in gaps)
        s.skipped = sum(b - a + 1 - st.got.overlap(a, b) for st in self.streams.values() for a, b in st.unclean.r)
        s.blobs_verified = sum(1 for h in self.blobs if h in self.referenced)
        s.blobs_unreferenced = len(self.blobs) - s.blobs_verified
        s.blobs_dropped = len(self.blob_drops)
        s.blobs_missing = len(self.referenced - self.blobs.keys() - self.blob_drops)
        if self.latency is not None:
            s.latency_ms = _percentiles(self.latency)
        return s


def _percentiles(hist: Counter[int]) -> dict[str, float]:
    """p50/p90/p99/max (ms, bucket upper bounds) and the count of a 1 ms latency histogram."""
    total = sum(hist.values())
    out: dict[str, float] = {"n": float(total)}
    if not total:
        return out
    keys = sorted(hist)
    want = [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)]
    seen = 0
    for k in keys:
        seen += hist[k]
        while want and seen >= want[0][1] * total:
            out[want.pop(0)[0]] = float(k + 1)
    out["max"] = float(keys[-1] + 1)
    return out
