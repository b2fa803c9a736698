"""The completeness ledger of one (gateway, stream), and what one transaction writes.

Pure logic, shared by every storage back-end: the back-end locks and loads the ledger rows and
the stored neighbours of the batches it was given, ``plan`` decides, the back-end writes the plan
in the same transaction. Because the decision is made under the lock from what is stored, the
order in which batches arrive and which worker takes them do not change the outcome:

* a batch number stored before with the same hash is a duplicate (nothing inserted), with
  another hash a conflict (quarantined);
* a chain link is checked when both of its batches are stored, by whichever arrives second;
* readings are inserted only for numbers not yet received (a reading is stored once);
* every reading number is received, declared dropped (with its reason), declared skipped after
  an unclean stop, or missing: the holes between 1 and the highest number accounted for, and
  the *tail*: numbers a signed heartbeat said had left the gateway (gateway/heartbeat.py) more
  than a grace period ago, and that neither arrived nor were declared;
* readings stamped on a clock their gateway did not call synchronised are counted (``uncertain``)
  and re-dated when they can be (``redated``): gateway/ingest/clock.py.

A heartbeat's claim ("everything up to N has left me") is kept with the time it first reached
the broker, so a gateway that keeps sending heartbeats does not push its own deadline back:
``claims`` holds the rising claims with their first arrival, at most MAX_CLAIMS of them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.ingest import clock
from gateway.ingest.clock import KnownEpoch, Span, TimePlan
from gateway.ingest.contract import CONFLICT, DEFAULT_TAIL_GRACE, Heartbeat, Refused, StoreReport, VerifiedBatch, Work
from gateway.receiver.state import Ranges
from gateway.senml import DecodedReading
from gateway.wire import UNCLEAN_STOP

Key = tuple[str, int]  # (gateway, stream)
MAX_CLAIMS = 16


def ranges_json(r: Ranges) -> str:
    return json.dumps(r.r, separators=(",", ":"))


def ranges_from(text: str | None) -> Ranges:
    out = Ranges()
    if text:
        out.r = [[int(a), int(b)] for a, b in json.loads(text)]
    return out


def ranges_size(r: Ranges) -> int:
    return sum(b - a + 1 for a, b in r.r)


@dataclass
class StreamLedger:
    """What is known about one gateway's stream of reading numbers (one buffer's lifetime)."""

    gateway: str
    stream: int
    received: Ranges = field(default_factory=Ranges)  # reading numbers stored
    covered: Ranges = field(default_factory=Ranges)  # received, declared dropped or skipped
    unclean: Ranges = field(default_factory=Ranges)  # declared skipped after unclean stops
    boots: Ranges = field(default_factory=Ranges)  # boot counters seen
    readings: int = 0
    batches: int = 0
    duplicates: int = 0  # batches received again
    duplicate_readings: int = 0  # readings that arrived in more than one batch
    dropped: int = 0  # declared dropped (not counting unclean-stop skips)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    chain_links: int = 0  # links between consecutive batches checked and sound
    chain_breaks: int = 0
    conflicts: int = 0
    max_bseq: int = 0
    kid: bytes = b""  # the key of the newest batch
    first_seen_ns: int = 0
    last_seen_ns: int = 0
    last_reading_ns: int = 0  # newest reading timestamp stored
    uncertain: Ranges = field(default_factory=Ranges)  # stored, stamped on an unsynchronised clock
    redated: Ranges = field(default_factory=Ranges)  # of those, given a corrected time
    # from the newest heartbeat (gateway/heartbeat.py)
    hb_last_seq: int = 0  # highest reading number issued
    hb_last_bseq: int = 0
    hb_held_from: int = 0  # lowest number still on the gateway, unacknowledged
    hb_boot: int = 0
    hb_sent_ns: int = 0  # the gateway's clock
    hb_seen_ns: int = 0  # when it reached the broker
    claims: list[list[int]] = field(default_factory=list)  # [[handed off up to, first seen ns], ...], rising

    @property
    def key(self) -> Key:
        return (self.gateway, self.stream)

    def due(self, at_ns: int | None = None, grace: float = DEFAULT_TAIL_GRACE) -> int:
        """The highest number heartbeats said had left the gateway ``grace`` seconds before ``at_ns`` (now)."""
        limit = (time.time_ns() if at_ns is None else at_ns) - int(grace * 1e9)
        return max((upto for upto, seen in self.claims if seen <= limit), default=0)

    def missing_ranges(self, at_ns: int | None = None, grace: float = DEFAULT_TAIL_GRACE) -> list[tuple[int, int]]:
        """Numbers neither received nor declared: the holes from 1 to the highest accounted for,
        and the tail up to what heartbeats said had left the gateway ``grace`` seconds ago."""
        holes = self.covered.holes()
        if self.covered.r and self.covered.r[0][0] > 1:
            holes.insert(0, (1, self.covered.r[0][0] - 1))
        due = self.due(at_ns, grace)
        if due > self.last_seq:
            holes.append((self.last_seq + 1, due))
        return holes

    def pending(self, at_ns: int | None = None, grace: float = DEFAULT_TAIL_GRACE) -> int:
        """Numbers the newest heartbeat says were issued, not yet received and not (yet) missing:
        still on the gateway, or left it less than ``grace`` seconds ago."""
        return max(0, self.hb_last_seq - max(self.last_seq, self.due(at_ns, grace)))

    @property
    def missing(self) -> int:
        """Missing now, with the default grace."""
        return sum(b - a + 1 for a, b in self.missing_ranges())

    @property
    def skipped(self) -> int:
        """Numbers skipped after an unclean stop that never arrived (lost in it, or never used)."""
        return sum(b - a + 1 - self.received.overlap(a, b) for a, b in self.unclean.r)

    @property
    def restarts(self) -> int:
        return max(0, ranges_size(self.boots) - 1)

    @property
    def last_seq(self) -> int:
        return self.covered.r[-1][1] if self.covered.r else 0

    @property
    def chain_ok(self) -> bool:
        return not (self.chain_breaks or self.conflicts)

    def verdict(self) -> str:
        """``complete``, ``missing`` (readings unaccounted for) or ``broken`` (chain breaks)."""
        if not self.chain_ok:
            return "broken"
        return "missing" if self.missing else "complete"


@dataclass(frozen=True)
class Link:
    """A stored batch as the chain check needs it."""

    digest: bytes
    prev: bytes


@dataclass
class Plan:
    """What one transaction writes."""

    batches: list[VerifiedBatch] = field(default_factory=list)  # new rows for the batch log
    # new readings per batch, with the spans that flag and correct their time (clock.timed)
    readings: list[tuple[VerifiedBatch, list[DecodedReading], list[Span]]] = field(default_factory=list)
    ledgers: list[StreamLedger] = field(default_factory=list)  # changed rows
    refused: list[Refused] = field(default_factory=list)
    report: StoreReport = field(default_factory=StoreReport)
    time: TimePlan = field(default_factory=TimePlan)


def keys_of(work: Work) -> list[Key]:
    """The ledger rows a transaction must lock, in the one order every worker uses."""
    return sorted({(b.gateway, b.stream) for b in work.batches} | {(h.gateway, h.stream) for h in work.heartbeats})


def links_needed(work: Work) -> list[tuple[str, int, int]]:
    """(gateway, stream, bseq) of every stored batch the chain checks may need."""
    return sorted({(b.gateway, b.stream, n) for b in work.batches for n in (b.bseq - 1, b.bseq, b.bseq + 1)})


def plan(work: Work, ledgers: dict[Key, StreamLedger], links: dict[Key, dict[int, Link]],
         epochs: dict[Key, dict[int, KnownEpoch]] | None = None) -> Plan:
    """Decide what to write; ``ledgers``, ``links`` and ``epochs`` (the clock epochs of the runs
    ``clock.boots_needed`` names) are the locked, stored state (updated here)."""
    out = Plan(refused=list(work.refused))
    epochs = {} if epochs is None else epochs
    for r in work.refused:
        out.report.refuse(r.reason)
    changed: dict[Key, StreamLedger] = {}
    stored: dict[Key, list[tuple[VerifiedBatch, list[DecodedReading]]]] = {}
    before: dict[Key, Ranges] = {}  # uncertain reading numbers stored before this transaction
    for b in sorted(work.batches, key=lambda b: (b.gateway, b.stream, b.bseq)):
        led = ledgers.setdefault((b.gateway, b.stream), StreamLedger(b.gateway, b.stream))
        changed[led.key] = led
        if led.key not in before:
            before[led.key] = ranges_from(ranges_json(led.uncertain))
        stream_links = links.setdefault(led.key, {})
        fresh = _apply(led, b, stream_links, out)
        if fresh is not None:
            out.batches.append(b)
            stored.setdefault(led.key, []).append((b, fresh))
            clock.note(b, epochs.setdefault(led.key, {}), out.time)
            out.report.batches += 1
            out.report.readings += len(fresh)
    for key, batches in stored.items():
        spans, uncertain, redated = clock.settle(ledgers[key], epochs.get(key, {}), batches, before[key], out.time)
        out.report.time_uncertain += uncertain
        out.report.time_redated += redated
        out.readings += [(b, fresh, sp) for (b, fresh), sp in zip(batches, spans, strict=True) if fresh]
    for h in work.heartbeats:
        led = ledgers.setdefault((h.gateway, h.stream), StreamLedger(h.gateway, h.stream))
        changed[led.key] = led
        _heartbeat(led, h)
        out.report.heartbeats += 1
    out.ledgers = list(changed.values())
    for led in out.ledgers:
        out.report.gaps[led.gateway] = out.report.gaps.get(led.gateway, 0) + led.missing
    return out


def _apply(led: StreamLedger, b: VerifiedBatch, links: dict[int, Link], out: Plan) -> list[DecodedReading] | None:
    """Account for one batch; returns its readings not stored before, or None when the batch
    itself is not stored (duplicate or conflict)."""
    led.last_seen_ns = max(led.last_seen_ns, b.received_ns)
    led.first_seen_ns = min(led.first_seen_ns or b.received_ns, b.received_ns)
    have = links.get(b.bseq)
    if have is not None:
        if have.digest == b.digest:
            led.duplicates += 1
            out.report.duplicates += 1
        else:
            led.conflicts += 1
            out.refused.append(Refused(CONFLICT, f"batch {b.bseq} of stream {b.stream} was stored before with "
                                       f"other content", b.topic, b.gateway, b.kid, b.message, b.received_ns))
            out.report.refuse(CONFLICT)
        return None
    before, after = links.get(b.bseq - 1), links.get(b.bseq + 1)
    if before is not None:
        _link(led, before.digest == b.prev)
    if after is not None:
        _link(led, after.prev == b.digest)
    links[b.bseq] = Link(b.digest, b.prev)
    led.boots.add(b.boot, b.boot)
    led.batches += 1
    if b.bseq > led.max_bseq:
        led.max_bseq = b.bseq
        led.kid = b.kid
    for first, last, reason in b.drops:
        if reason == UNCLEAN_STOP:  # counted when asked: those of them that never arrive
            led.covered.add(first, last)
            led.unclean.add(first, last)
            continue
        declared = last - first + 1 - led.covered.add(first, last)
        led.dropped += declared
        led.drop_reasons[reason] = led.drop_reasons.get(reason, 0) + declared
    if b.count <= 0:
        return []
    again = led.received.overlap(b.first_seq, b.last_seq)
    fresh = list(b.readings) if not again else [r for r in b.readings if not led.received.contains(r.seq)]
    led.received.add(b.first_seq, b.last_seq)
    led.covered.add(b.first_seq, b.last_seq)
    led.readings += len(fresh)
    led.duplicate_readings += again
    if fresh:
        newest = b.ts_max if len(fresh) == b.count else max(r.ts_ns for r in fresh)
        led.last_reading_ns = max(led.last_reading_ns, newest)
    return fresh


def _heartbeat(led: StreamLedger, h: Heartbeat) -> None:
    """Take a heartbeat: the newest says how far the stream got; each adds its claim."""
    if (h.last_seq, h.sent_ns) >= (led.hb_last_seq, led.hb_sent_ns):
        led.hb_last_seq, led.hb_last_bseq, led.hb_held_from = h.last_seq, h.last_bseq, h.held_from
        led.hb_boot, led.hb_sent_ns = h.boot, h.sent_ns
    led.hb_seen_ns = max(led.hb_seen_ns, h.received_ns)
    claim(led.claims, h.handed_off, h.received_ns)


def claim(claims: list[list[int]], upto: int, seen_ns: int) -> None:
    """Add "everything up to ``upto`` had left, as of ``seen_ns``": keep, for each number, the
    earliest time a claim covered it (claims rising in both), at most MAX_CLAIMS; dropping the
    oldest claim only delays when its numbers count as missing, never hastens it."""
    if upto <= 0 or any(u >= upto and s <= seen_ns for u, s in claims):
        return
    claims[:] = sorted([c for c in claims if not (c[0] <= upto and c[1] >= seen_ns)] + [[upto, seen_ns]])
    del claims[:-MAX_CLAIMS]


def _link(led: StreamLedger, sound: bool) -> None:
    if sound:
        led.chain_links += 1
    else:
        led.chain_breaks += 1


@dataclass
class GatewaySummary:
    """One gateway's streams added up, as ``sensegate fleet report`` shows them."""

    gateway: str
    streams: int = 0
    readings: int = 0
    batches: int = 0
    dropped: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    missing: int = 0
    missing_ranges: list[tuple[int, int, int]] = field(default_factory=list)  # (stream, first, last)
    duplicates: int = 0
    restarts: int = 0
    chain_links: int = 0
    chain_breaks: int = 0
    conflicts: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    last_seen_ns: int = 0
    last_reading_ns: int = 0
    time_uncertain: int = 0  # readings stamped on a clock the gateway did not call synchronised
    time_redated: int = 0  # of them, given a corrected time
    pending: int = 0  # issued per the heartbeat, not yet received, not yet missing
    issued: int = 0  # highest reading number its newest heartbeat gave (of any stream)
    heartbeat_ns: int = 0  # when its newest heartbeat reached the broker

    def verdict(self) -> str:
        if self.chain_breaks or self.conflicts:
            return "broken"
        if self.missing:
            return "missing"
        return "complete" if self.streams else "nothing received"


def summarize(ledgers: Iterable[StreamLedger], refusals: dict[tuple[str, str], int], at_ns: int | None = None,
              grace: float = DEFAULT_TAIL_GRACE) -> list[GatewaySummary]:
    """Per gateway (sorted by id), every stream added up, with the refusals in its name; the
    tails heartbeats claimed count as missing ``grace`` seconds after they arrived (``at_ns``: now)."""
    out: dict[str, GatewaySummary] = {}
    at_ns = time.time_ns() if at_ns is None else at_ns
    for led in ledgers:
        g = out.setdefault(led.gateway, GatewaySummary(led.gateway))
        g.streams += 1
        g.readings += led.readings
        g.batches += led.batches
        g.dropped += led.dropped
        for reason, n in led.drop_reasons.items():
            g.drop_reasons[reason] = g.drop_reasons.get(reason, 0) + n
        g.skipped += led.skipped
        holes = led.missing_ranges(at_ns, grace)
        g.missing += sum(b - a + 1 for a, b in holes)
        g.pending += led.pending(at_ns, grace)
        if led.hb_seen_ns > g.heartbeat_ns:
            g.heartbeat_ns, g.issued = led.hb_seen_ns, led.hb_last_seq
        g.missing_ranges += [(led.stream, a, b) for a, b in holes]
        g.duplicates += led.duplicates
        g.restarts += led.restarts
        g.chain_links += led.chain_links
        g.chain_breaks += led.chain_breaks
        g.conflicts += led.conflicts
        g.last_seen_ns = max(g.last_seen_ns, led.last_seen_ns)
        g.last_reading_ns = max(g.last_reading_ns, led.last_reading_ns)
        g.time_uncertain += ranges_size(led.uncertain)
        g.time_redated += ranges_size(led.redated)
    for (gateway, reason), n in refusals.items():
        g = out.setdefault(gateway, GatewaySummary(gateway))
        g.refused[reason] = g.refused.get(reason, 0) + n
    return [out[k] for k in sorted(out)]


# -- the ledger as a table row (every back-end stores the same columns) -------------------------

LEDGER_COLUMNS = ("gateway", "stream", "received", "covered", "unclean", "boots", "readings", "batches",
                  "duplicates", "duplicate_readings", "dropped", "drop_reasons", "chain_links", "chain_breaks",
                  "conflicts", "max_bseq", "kid", "first_seen_ns", "last_seen_ns", "last_reading_ns", "missing",
                  "uncertain", "redated", "covered_upto", "hb_last_seq", "hb_last_bseq", "hb_held_from", "hb_boot",
                  "hb_sent_ns", "hb_seen_ns", "claims", "claimed_upto")
# added in schema 2 (the heartbeat), with their SQL type; the back-ends add them to older databases
HEARTBEAT_COLUMNS = (("covered_upto", "bigint NOT NULL DEFAULT 0"), ("hb_last_seq", "bigint NOT NULL DEFAULT 0"),
                     ("hb_last_bseq", "bigint NOT NULL DEFAULT 0"), ("hb_held_from", "bigint NOT NULL DEFAULT 0"),
                     ("hb_boot", "bigint NOT NULL DEFAULT 0"), ("hb_sent_ns", "bigint NOT NULL DEFAULT 0"),
                     ("hb_seen_ns", "bigint NOT NULL DEFAULT 0"), ("claims", "text NOT NULL DEFAULT '[]'"),
                     ("claimed_upto", "bigint NOT NULL DEFAULT 0"))


MAYBE_MISSING = "missing > 0 OR claimed_upto > covered_upto"
"""The ledger rows that may have readings missing now (a WHERE clause every back-end runs)."""


def count_missing(rows: Iterable[StreamLedger], grace: float) -> tuple[int, int]:
    """Gateways with readings missing now, and how many readings (``rows``: MAYBE_MISSING's)."""
    gateways: set[str] = set()
    total = 0
    now = time.time_ns()
    for led in rows:
        n = sum(b - a + 1 for a, b in led.missing_ranges(now, grace))
        if n:
            gateways.add(led.gateway)
            total += n
    return len(gateways), total


def to_row(led: StreamLedger) -> tuple[object, ...]:
    """The ledger's columns, in LEDGER_COLUMNS order (range sets and reasons as JSON text)."""
    return (led.gateway, led.stream, ranges_json(led.received), ranges_json(led.covered),
            ranges_json(led.unclean), ranges_json(led.boots), led.readings, led.batches, led.duplicates,
            led.duplicate_readings, led.dropped, json.dumps(led.drop_reasons, sort_keys=True), led.chain_links,
            led.chain_breaks, led.conflicts, led.max_bseq, led.kid, led.first_seen_ns, led.last_seen_ns,
            led.last_reading_ns, led.missing, ranges_json(led.uncertain), ranges_json(led.redated), led.last_seq,
            led.hb_last_seq, led.hb_last_bseq, led.hb_held_from, led.hb_boot, led.hb_sent_ns, led.hb_seen_ns,
            json.dumps(led.claims, separators=(",", ":")),
            max((c[0] for c in led.claims), default=0))


def from_row(row: tuple[object, ...] | list[object]) -> StreamLedger:
    """A ledger from its columns in LEDGER_COLUMNS order (``missing``, ``covered_upto`` and
    ``claimed_upto`` are derived, not read)."""
    (gateway, stream, received, covered, unclean, boots, readings, batches, duplicates, duplicate_readings,
     dropped, drop_reasons, chain_links, chain_breaks, conflicts, max_bseq, kid, first_seen, last_seen,
     last_reading, _missing, uncertain, redated, _covered_upto, hb_last_seq, hb_last_bseq, hb_held_from, hb_boot,
     hb_sent, hb_seen, claims, _claimed_upto) = row
    reasons = drop_reasons if isinstance(drop_reasons, dict) else json.loads(str(drop_reasons or "{}"))
    return StreamLedger(
        gateway=str(gateway), stream=int(str(stream)), received=ranges_from(str(received)),
        covered=ranges_from(str(covered)), unclean=ranges_from(str(unclean)), boots=ranges_from(str(boots)),
        readings=_int(readings), batches=_int(batches), duplicates=_int(duplicates),
        duplicate_readings=_int(duplicate_readings), dropped=_int(dropped),
        drop_reasons={str(k): int(v) for k, v in reasons.items()}, chain_links=_int(chain_links),
        chain_breaks=_int(chain_breaks), conflicts=_int(conflicts), max_bseq=_int(max_bseq),
        kid=bytes(kid) if isinstance(kid, bytes | bytearray | memoryview) else b"",
        first_seen_ns=_int(first_seen), last_seen_ns=_int(last_seen), last_reading_ns=_int(last_reading),
        uncertain=ranges_from(str(uncertain)), redated=ranges_from(str(redated)),
        hb_last_seq=_int(hb_last_seq), hb_last_bseq=_int(hb_last_bseq), hb_held_from=_int(hb_held_from),
        hb_boot=_int(hb_boot), hb_sent_ns=_int(hb_sent), hb_seen_ns=_int(hb_seen),
        claims=[[int(u), int(t)] for u, t in json.loads(str(claims or "[]"))],
    )


def _int(x: object) -> int:
    return int(x) if isinstance(x, int | float | str) else 0
