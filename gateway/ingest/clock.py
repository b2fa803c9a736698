"""Readings' time at the fleet ingest: flagged and re-dated inside the ledger's transaction.

The rule is the reference receiver's (gateway/receiver/clock.py, ``wire.correction``): a
reading stamped in a clock epoch its gateway did not call synchronised is *uncertain*; once a
synchronised epoch of the same run is known, it gets a corrected time, its own plus the
difference of the two epochs' offsets, stored beside the original (which never changes).

What is stored: every epoch a batch declares (``clock_epochs``, with the shift its readings
were given once known), the steps (``clock_steps``), per reading ``time_uncertain`` and the
corrected time, and per (gateway, stream) in the ledger the reading numbers that are
uncertain and those re-dated. The decision is made under the ledger's row lock from what is
stored plus what the transaction brings, so the order in which batches arrive, and which
worker takes them, do not change the outcome: readings that arrive after their correction is
known are stored with it; readings stored before are updated (``redates``) when it becomes
known, or when a nearer synchronised epoch turns up later.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.receiver.state import Ranges
from gateway.wire import ClockEpoch, ClockStep, clock_spans, correction

if TYPE_CHECKING:
    from gateway.ingest.contract import VerifiedBatch, Work
    from gateway.ingest.ledger import Key, StreamLedger
    from gateway.senml import DecodedReading

Span = tuple[int, int, bool, int | None]  # first, last reading number; uncertain; shift (None: not known yet)


@dataclass
class KnownEpoch:
    """An epoch as the database holds it (``stored``) or as this transaction brings it."""

    epoch: ClockEpoch
    shift_ns: int | None = None  # the shift its readings were given
    stored: bool = True


@dataclass
class TimePlan:
    """What one transaction writes about time."""

    epochs: list[tuple[str, int, ClockEpoch, int | None]] = field(default_factory=list)  # new rows
    shifts: list[tuple[str, int, int, int]] = field(default_factory=list)  # (gw, st, first_seq, shift) changed
    steps: list[tuple[str, int, ClockStep]] = field(default_factory=list)
    redates: list[tuple[str, int, int, int, int]] = field(default_factory=list)  # (gw, st, first, last, shift)


def boots_needed(work: Work) -> dict[Key, int]:
    """Per (gateway, stream) whose batches declare epochs, the oldest run they name: the stored
    epochs of that run and later ones are what the decision needs."""
    out: dict[Key, int] = {}
    for b in work.batches:
        for e in b.clock:
            key = (b.gateway, b.stream)
            out[key] = min(out.get(key, e.boot), e.boot)
    return out


def note(b: VerifiedBatch, known: dict[int, KnownEpoch], plan: TimePlan) -> None:
    """A batch being stored: the epochs and steps it declares."""
    for e in b.clock:
        if e.first_seq not in known:
            known[e.first_seq] = KnownEpoch(e, stored=False)
    plan.steps += [(b.gateway, b.stream, s) for s in b.steps]


def settle(led: StreamLedger, known: dict[int, KnownEpoch], fresh: Sequence[tuple[VerifiedBatch, list[DecodedReading]]],
           before: Ranges, plan: TimePlan) -> tuple[list[list[Span]], int, int]:
    """Shifts of every unsynchronised epoch of a stream from all that is known; the corrections
    of readings stored before (``before``: the uncertain numbers stored before this transaction);
    the spans that flag and correct the new readings of each of ``fresh``. Returns the spans,
    and how many readings became uncertain and how many were re-dated."""
    gw, st = led.gateway, led.stream
    epochs = [k.epoch for k in known.values()]
    order = sorted(known)
    redated = 0
    for i, first in enumerate(order):
        k = known[first]
        to = None if k.epoch.synced else correction(k.epoch, epochs)
        shift = None if to is None else to.offset_ns - k.epoch.offset_ns
        if not k.stored:
            plan.epochs.append((gw, st, k.epoch, shift))
            k.stored = True
        elif shift is not None and shift != k.shift_ns:
            plan.shifts.append((gw, st, first, shift))
            end = order[i + 1] - 1 if i + 1 < len(order) else 2**63 - 1
            for lo, hi in _within(before, first, end):
                plan.redates.append((gw, st, lo, hi, shift))
                redated += hi - lo + 1 - led.redated.add(lo, hi)
        k.shift_ns = shift
    out: list[list[Span]] = []
    uncertain = 0
    for batch, readings in fresh:
        spans: list[Span] = []
        for a, z, e in clock_spans(batch.clock, batch.first_seq, batch.last_seq):
            epoch = known.get(e.first_seq)
            shift = epoch.shift_ns if epoch is not None else None
            spans.append((a, z, not e.synced, shift))
            if e.synced:
                continue
            for x, y in _runs(r.seq for r in readings if a <= r.seq <= z):
                n = y - x + 1 - led.uncertain.add(x, y)
                uncertain += n
                if shift is not None:
                    redated += y - x + 1 - led.redated.add(x, y)
        out.append(spans)
    return out, uncertain, redated


def timed(readings: Sequence[DecodedReading], spans: list[Span]) -> Iterator[tuple[DecodedReading, bool, int | None]]:
    """Each reading (in number order) with its flag and the shift of its corrected time (None:
    not uncertain, or no correction known yet)."""
    if not any(uncertain for _, _, uncertain, _ in spans):  # the usual batch: a synchronised clock
        for r in readings:
            yield r, False, None
        return
    i = 0
    for r in readings:
        while i < len(spans) and spans[i][1] < r.seq:
            i += 1
        if i < len(spans) and spans[i][0] <= r.seq and spans[i][2]:
            yield r, True, spans[i][3]
        else:
            yield r, False, None


def _runs(seqs: Iterator[int]) -> Iterator[tuple[int, int]]:
    """Consecutive numbers as (first, last) ranges."""
    start = prev = None
    for s in seqs:
        if prev is not None and s == prev + 1:
            prev = s
            continue
        if start is not None and prev is not None:
            yield start, prev
        start = prev = s
    if start is not None and prev is not None:
        yield start, prev


def _within(r: Ranges, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    for a, b in r.r:
        if b >= lo and a <= hi:
            yield max(a, lo), min(b, hi)
