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
  an unclean stop, or missing: the holes between 1 and the highest number accounted for;
* readings stamped on a clock their gateway did not call synchronised are counted (``uncertain``)
  and re-dated when they can be (``redated``): gateway/ingest/clock.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.ingest import clock
from gateway.ingest.clock import KnownEpoch, Span, TimePlan
from gateway.ingest.contract import CONFLICT, Refused, StoreReport, VerifiedBatch, Work
from gateway.receiver.state import Ranges
from gateway.senml import DecodedReading
from gateway.wire import UNCLEAN_STOP

Key = tuple[str, int]  # (gateway, stream)


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

    @property
    def key(self) -> Key:
        return (self.gateway, self.stream)

    def missing_ranges(self) -> list[tuple[int, int]]:
        """Numbers neither received nor declared, from 1 to the highest accounted for."""
        holes = self.covered.holes()
        if self.covered.r and self.covered.r[0][0] > 1:
            holes.insert(0, (1, self.covered.r[0][0] - 1))
        return holes

    @property
    def missing(self) -> int:
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
    return sorted({(b.gateway, b.stream) for b in work.batches})


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
        led.last_reading_ns = max(led.last_reading_ns, max(r.ts_ns for r in fresh))
    return fresh


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

    def verdict(self) -> str:
        if self.chain_breaks or self.conflicts:
            return "broken"
        if self.missing:
            return "missing"
        return "complete" if self.streams else "nothing received"


def summarize(ledgers: Iterable[StreamLedger], refusals: dict[tuple[str, str], int]) -> list[GatewaySummary]:
    """Per gateway (sorted by id), every stream added up, with the refusals in its name."""
    out: dict[str, GatewaySummary] = {}
    for led in ledgers:
        g = out.setdefault(led.gateway, GatewaySummary(led.gateway))
        g.streams += 1
        g.readings += led.readings
        g.batches += led.batches
        g.dropped += led.dropped
        for reason, n in led.drop_reasons.items():
            g.drop_reasons[reason] = g.drop_reasons.get(reason, 0) + n
        g.skipped += led.skipped
        holes = led.missing_ranges()
        g.missing += sum(b - a + 1 for a, b in holes)
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
                  "uncertain", "redated")


def to_row(led: StreamLedger) -> tuple[object, ...]:
    """The ledger's columns, in LEDGER_COLUMNS order (range sets and reasons as JSON text)."""
    return (led.gateway, led.stream, ranges_json(led.received), ranges_json(led.covered),
            ranges_json(led.unclean), ranges_json(led.boots), led.readings, led.batches, led.duplicates,
            led.duplicate_readings, led.dropped, json.dumps(led.drop_reasons, sort_keys=True), led.chain_links,
            led.chain_breaks, led.conflicts, led.max_bseq, led.kid, led.first_seen_ns, led.last_seen_ns,
            led.last_reading_ns, led.missing, ranges_json(led.uncertain), ranges_json(led.redated))


def from_row(row: tuple[object, ...] | list[object]) -> StreamLedger:
    """A ledger from its columns in LEDGER_COLUMNS order (``missing`` is derived, not read)."""
    (gateway, stream, received, covered, unclean, boots, readings, batches, duplicates, duplicate_readings,
     dropped, drop_reasons, chain_links, chain_breaks, conflicts, max_bseq, kid, first_seen, last_seen,
     last_reading, _missing, uncertain, redated) = row
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
    )


def _int(x: object) -> int:
    return int(x) if isinstance(x, int | float | str) else 0
