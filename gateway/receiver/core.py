"""Verification and completeness tracking, independent of any transport.

State is bounded (gateway/receiver/state.py): per stream, merged number ranges and a fixed
window of the latest batch hashes; blobs in gateway/receiver/blobs.py.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gateway import senml, wire
from gateway.keyevents import EventRefused, KeyEvent, OpsKeyring, documents_in
from gateway.receiver.blobs import BlobTracker
from gateway.receiver.clock import Redate, StreamClock, TimeSpan, TimeTally
from gateway.receiver.state import WINDOW, HashWindow, Stream
from gateway.receiver.trust import Trust
from gateway.wire import UNCLEAN_STOP, Header

MAX_REASONS = 32  # distinct drop reasons counted by name; more are counted as "other"
MAX_KEY_LOG = 64  # key event lines kept for the caller's output


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
    bad_signatures: int = 0  # unknown key, or a signature that does not verify
    forged: int = 0  # a trusted key speaking for a gateway it is not bound to, or a batch on another's topic
    revoked: int = 0  # batches signed with a key ops revoked
    key_events: int = 0  # key rotations and revocations verified and applied
    key_events_refused: int = 0  # key events that did not verify (forged, replayed, unknown keys)
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
    time_uncertain: int = 0  # readings stamped on a clock the gateway's kernel did not call synchronised
    time_redated: int = 0  # of them, given a corrected time from a later synchronised clock of the same run
    clock_steps: int = 0  # steps of gateways' wall clocks the batches declared
    # with Receiver(latency=True): reading timestamp -> arrival at the receiver, over accepted batches
    latency_ms: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return not (self.gaps or self.bad_signatures or self.forged or self.malformed or self.chain_breaks
                    or self.blobs_bad or self.revoked or self.key_events_refused)

    @property
    def received(self) -> bool:
        """Whether any batch message arrived at all (accepted or not)."""
        return bool(self.batches or self.duplicates or self.bad_signatures or self.forged or self.malformed
                    or self.revoked)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["gap_ranges"] = [list(r) for r in self.gap_ranges]
        d["ok"] = self.ok
        d["received"] = self.received
        if d["latency_ms"] is None:
            del d["latency_ms"]
        return d


@dataclass
class Feed:
    """The outcome of one message: accepted (with its new readings), duplicate, or refused."""

    # "ok", "duplicate", "malformed", "untrusted" (unknown key), "forged" (key or topic of another
    # gateway, or a key retired before this batch), "revoked" (a key ops revoked), "bad_signature",
    # "conflict" (a batch number seen with other content)
    status: str
    readings: list[senml.DecodedReading] = field(default_factory=list)
    reason: str = ""
    gateway: str = ""
    bseq: int = 0
    header: dict[str, Any] = field(default_factory=dict)
    # the readings' clock (gateway/receiver/clock.py): spans of reading numbers stamped in one
    # epoch, synchronised or not (with the shift that re-dates them, once known); none when the
    # gateway does not say. ``redated``: readings of earlier batches given a corrected time now
    time: list[TimeSpan] = field(default_factory=list)
    redated: list[Redate] = field(default_factory=list)


@dataclass
class KeyFeed:
    """The outcome of one key event: "learned", "known" (no news) or "refused" (with the reason)."""

    status: str
    reason: str = ""
    event: KeyEvent | None = None


class Receiver:
    """Feed it batch messages from any transport; ask for the summary at any time.

    ``trust`` answers which key may speak for which gateway (gateway.receiver.trust:
    ``KeyBindings`` for key files, or a fleet registry). ``keep_readings=False``: verify and
    count only (Feed.readings stays empty), with every check of the full decoder but no object
    per reading. ``latency=True``: keep a histogram (1 ms buckets) of reading timestamp to
    arrival, reported in the summary. ``window``: batch hashes kept per stream for the duplicate,
    conflict and chain checks (gateway/receiver/state.py).
    """

    def __init__(self, trust: Trust, keep_readings: bool = True, latency: bool = False,
                 window: int = WINDOW, ops_keys: OpsKeyring | None = None) -> None:
        if isinstance(trust, list | tuple):
            raise TypeError("Receiver(trust): give a gateway.receiver.KeyBindings (gateway id -> keys), "
                            "not a list of keys: a key speaks for one gateway only")
        self.trust = trust
        self.ops_keys = ops_keys if ops_keys is not None else OpsKeyring({})
        # the latest key events (for the caller's output, which empties it); bounded: refused
        # events can come in floods
        self.key_log: deque[str] = deque(maxlen=MAX_KEY_LOG)
        self.keep_readings = keep_readings
        self.window = window
        self.latency: Counter[int] | None = Counter() if latency else None
        self.streams: dict[tuple[str, int], Stream] = {}
        self.blob_tracker = BlobTracker()
        self._s = Summary()

    @property
    def blobs(self) -> dict[str, tuple[str, bytes]]:
        """The latest verified blobs: sha256 hex -> (content type, bytes); bounded."""
        return self.blob_tracker.blobs

    def feed_blob(self, sha_hex: str, payload: bytes) -> str:
        """Take one blob chunk (``[index, count, content_type, bytes]``); returns "partial",
        "verified" (complete, hash matches), "bad" or "malformed"."""
        status = self.blob_tracker.feed(sha_hex, payload)
        if status == "malformed":
            self._s.malformed += 1
        return status

    def feed(self, data: bytes, topic_gateway: str | None = None) -> Feed:
        """Verify and account for one batch message. ``topic_gateway``: the gateway part of the
        MQTT topic it came on, which must equal the gateway the batch claims."""
        s = self._s
        arrived = time.time_ns()
        try:
            batch = wire.open_batch(data, topic_gateway)
            if batch.header.kr is not None:  # the first batches after a rotation carry it
                taken = self._take_key(batch.header.kr, batch.header.gw)
                if taken.status == "refused":
                    self._refused(taken)
            wire.check_signature(batch, self.trust)
        except wire.Refused as e:
            if e.status == "malformed":
                s.malformed += 1
            elif e.status == "forged":
                s.forged += 1
            elif e.status == "revoked":
                s.revoked += 1
            else:  # an unknown key, or a signature that does not verify
                s.bad_signatures += 1
            h0 = e.header
            return Feed(e.status, reason=e.reason, gateway=h0.gw if h0 else "", bseq=h0.bs if h0 else 0)
        h = batch.header
        blob_refs: list[tuple[int, Any]] = []
        stamps: list[int] | None = [] if self.latency is not None else None
        first, last = h.sq
        try:
            readings, n = wire.read_pack(batch, self.keep_readings, stamps, blob_refs)
        except (ValueError, TypeError, KeyError, cbor2.CBORDecodeError) as e:
            # signed by a trusted key yet malformed: a gateway bug, reported as such
            s.malformed += 1
            return Feed("malformed", reason=str(e), gateway=h.gw, bseq=h.bs)
        refused = self._chain(h, hashlib.sha256(data).digest())
        if refused is not None:
            return refused
        self._declared(h)
        st = self.streams[(h.gw, h.st)]
        if self.keep_readings:
            fresh = [r for r in readings if not st.got.contains(r.seq)]
            blob_refs = [(r.seq, r.value) for r in fresh if r.kind == "blob"]
        else:
            fresh = []
            blob_refs = [(seq, vs) for seq, vs in blob_refs if not st.got.contains(seq)]
        again = st.got.add(first, last)  # how many of these readings arrived before
        s.duplicate_readings += again
        st.covered.add(first, last)
        self.blob_tracker.named(vs for _, vs in blob_refs)
        if stamps and self.latency is not None:
            self.latency.update((arrived - ts) // 1_000_000 for ts in stamps)
        s.batches += 1
        s.readings += n - again
        spans: list[TimeSpan] = []
        redated: list[Redate] = []
        if h.ck:
            if st.clock is None:
                st.clock = StreamClock()
            tally = TimeTally()
            spans, redated = st.clock.take(h, tally)
            s.time_uncertain += tally.uncertain
            s.time_redated += tally.redated
        s.clock_steps += len(h.cj)
        return Feed("ok", fresh, gateway=h.gw, bseq=h.bs, header=h.to_json(), time=spans, redated=redated)

    def feed_keys(self, data: bytes, topic_gateway: str | None = None, ops: bool = False) -> list[KeyFeed]:
        """Take a key message: a gateway's rotation history (``<prefix>/<gw>/keys``), a revocation
        of one of its keys, or with ``ops`` an ops key's rotation or revocation. One outcome per
        document; ``topic_gateway``: the gateway the topic names, which the events must match."""
        try:
            docs = documents_in(data)
        except EventRefused as e:
            docs, out = [], [KeyFeed("refused", str(e))]
        else:
            out = [self._take_key(d, topic_gateway, ops) for d in docs]
        # a history starts before what this receiver knows (it was given a later key): entries
        # older than one it knows or learned are no news, not forgeries
        last = max((i for i, k in enumerate(out) if k.status != "refused"), default=-1)
        out = [KeyFeed("known", "older than the keys trusted here") if i < last and k.status == "refused" else k
               for i, k in enumerate(out)]
        for k in out:
            if k.status == "refused":
                self._refused(k)
        return out

    def _refused(self, k: KeyFeed) -> KeyFeed:
        self._s.key_events_refused += 1
        self.key_log.append(f"key event refused: {k.reason}")
        return k

    def _take_key(self, document: bytes, gateway: str | None, ops: bool = False) -> KeyFeed:
        """Verify and apply one key event; a refusal is counted by the caller."""
        s = self._s
        try:
            if ops:
                ev: KeyEvent | None = self.ops_keys.take(document)
            else:
                ev = self.trust.take(document, self.ops_keys, gateway)
        except EventRefused as e:
            return KeyFeed("refused", str(e))
        if ev is None:
            return KeyFeed("known")
        s.key_events += 1
        self.key_log.append(f"key event: {ev.describe()}")
        return KeyFeed("learned", ev.describe(), ev)

    def _chain(self, h: Header, digest: bytes) -> Feed | None:
        """Duplicate, conflict, order, restart and chain checks of a verified batch; a Feed
        when it is not accepted."""
        s = self._s
        st = self.streams.get((h.gw, h.st))
        if st is None:
            st = self.streams[(h.gw, h.st)] = Stream(window=HashWindow(self.window))
            s.streams += 1
        bseq = h.bs
        known = st.window.get(bseq)
        if known is not None:
            if known[0] == digest:
                s.duplicates += 1
                return Feed("duplicate", gateway=h.gw, bseq=bseq, header=h.to_json())
            s.chain_breaks += 1
            return Feed("conflict", reason=f"batch {bseq} seen before with other content", gateway=h.gw, bseq=bseq)
        if st.batches.contains(bseq):  # seen, but older than the window: its content cannot be compared
            s.duplicates += 1
            return Feed("duplicate", reason=f"batch {bseq} seen before, more than {self.window} batches ago "
                        "(content not compared)", gateway=h.gw, bseq=bseq, header=h.to_json())
        if st.boot is not None and h.bo != st.boot:
            s.restarts += 1
        st.boot = h.bo
        if bseq < st.max_bseq:
            s.reordered += 1
        # the chain: our predecessor's hash, and our successor's claim on us
        before, after = st.window.get(bseq - 1), st.window.get(bseq + 1)
        if before is not None and before[0] != h.pv:
            s.chain_breaks += 1
        if after is not None and after[1] != digest:
            s.chain_breaks += 1
        st.window.put(bseq, digest, h.pv)
        st.batches.add(bseq, bseq)
        st.max_bseq = max(st.max_bseq, bseq)
        return None

    def _declared(self, h: Header) -> None:
        """Account for the readings and blobs a verified batch declares dropped."""
        s = self._s
        st = self.streams[(h.gw, h.st)]
        for a, b, reason in h.dr:
            if reason == UNCLEAN_STOP:  # counted at summary time: those of them that never arrive
                st.covered.add(a, b)
                st.unclean.add(a, b)
                continue
            declared = b - a + 1 - st.covered.add(a, b)
            s.dropped += declared
            if reason not in s.drop_reasons and len(s.drop_reasons) >= MAX_REASONS:
                reason = "other"
            s.drop_reasons[reason] = s.drop_reasons.get(reason, 0) + declared
        self.blob_tracker.declared_dropped(sha for sha, _ in h.bd)

    def summary(self) -> Summary:
        """Current totals; gaps are holes in what was received or declared dropped."""
        s = self._s
        gaps: list[tuple[int, int]] = []
        for st in self.streams.values():
            gaps += st.covered.holes()
        s.gap_ranges = gaps
        s.gaps = sum(b - a + 1 for a, b in gaps)
        s.skipped = sum(b - a + 1 - st.got.overlap(a, b) for st in self.streams.values() for a, b in st.unclean.r)
        b = self.blob_tracker
        s.blobs_verified, s.blobs_unreferenced, s.blobs_bad = b.verified, b.unreferenced, b.bad
        s.blobs_dropped, s.blobs_missing = b.dropped, b.missing
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
