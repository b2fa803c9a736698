"""Readings' time at the receiver: flag those stamped on an unsynchronised clock, re-date them.

A batch's ``ck`` says in which clock epoch of the gateway each of its readings was stamped,
and whether the kernel called that clock synchronised (docs/wire-format.md, section 5). Per
stream the receiver keeps the epochs it was told of and, for every unsynchronised one, the
reading numbers received in it (merged ranges). Once a synchronised epoch of the same run is
known (``wire.correction``: the monotonic clock of a run is continuous), the readings of an
earlier unsynchronised epoch get a corrected time: their own plus the difference of the two
epochs' offsets. The original time is never replaced; the correction travels beside it.

Batches may come in any order: a correction is given as soon as both epochs are known, and
given again should a nearer synchronised epoch turn up later. Memory is bounded: at most
``MAX_EPOCHS`` epochs per stream (the oldest forgotten, with their readings' ranges), each
unsynchronised one with merged ranges that grow with holes, never with readings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.receiver.state import Ranges
from gateway.wire import ClockEpoch, Header, correction

MAX_EPOCHS = 256  # clock epochs remembered per stream


@dataclass(frozen=True)
class TimeSpan:
    """Readings ``first``..``last`` of a batch, stamped in one clock epoch: ``synced`` or not;
    for readings of an unsynchronised clock, the shift that re-dates them when it is known."""

    first: int
    last: int
    synced: bool
    shift_ns: int | None = None


@dataclass(frozen=True)
class Redate:
    """Readings ``first``..``last`` of a stream, received before, re-dated: their corrected time
    is their own plus ``shift_ns`` (this replaces any earlier correction of them)."""

    gateway: str
    stream: int
    first: int
    last: int
    shift_ns: int


@dataclass
class TimeTally:
    """What one batch changed: readings newly known to be of an unsynchronised clock, and those
    of them newly given a corrected time."""

    uncertain: int = 0
    redated: int = 0


@dataclass
class StreamClock:
    """One stream's clock epochs (by the reading number they begin at) and the readings
    received in the unsynchronised ones."""

    epochs: dict[int, ClockEpoch] = field(default_factory=dict)
    uncertain: dict[int, Ranges] = field(default_factory=dict)
    shifts: dict[int, int] = field(default_factory=dict)  # unsynchronised epoch -> shift given

    def take(self, h: Header, tally: TimeTally) -> tuple[list[TimeSpan], list[Redate]]:
        """Account for a verified batch's readings: the spans to flag them by, and corrections
        of readings received before."""
        news = False  # a synchronised epoch not known before: it may re-date earlier readings
        for e in h.ck:
            if e.first_seq not in self.epochs:
                self.epochs[e.first_seq] = e
                news = news or e.synced
        while len(self.epochs) > MAX_EPOCHS:
            gone = min(self.epochs)
            del self.epochs[gone]
            self.uncertain.pop(gone, None)
            self.shifts.pop(gone, None)
        redates = []
        for first, ranges in self.uncertain.items() if news else ():
            shift = self._shift(self.epochs[first])
            if shift is not None and self.shifts.get(first) != shift:
                if first not in self.shifts:
                    tally.redated += sum(b - a + 1 for a, b in ranges.r)
                self.shifts[first] = shift
                redates += [Redate(h.gw, h.st, a, b, shift) for a, b in ranges.r]
        spans = []
        for a, b, e in h.clock_spans():
            if e.synced or e.first_seq not in self.epochs:  # (not in: forgotten, far older than the rest)
                spans.append(TimeSpan(a, b, e.synced))
                continue
            new = b - a + 1 - self.uncertain.setdefault(e.first_seq, Ranges()).add(a, b)
            tally.uncertain += new
            shift = self.shifts.get(e.first_seq)
            if shift is None and (shift := self._shift(e)) is not None:
                self.shifts[e.first_seq] = shift
            if shift is not None:
                tally.redated += new
            spans.append(TimeSpan(a, b, False, shift))
        return spans, redates

    def _shift(self, epoch: ClockEpoch) -> int | None:
        to = correction(epoch, self.epochs.values())
        return None if to is None else to.offset_ns - epoch.offset_ns


def span_of(spans: list[TimeSpan], seq: int) -> TimeSpan | None:
    """The span a reading number is in (``spans`` in order; None: its clock is unknown)."""
    for s in spans:
        if s.first <= seq <= s.last:
            return s
    return None
