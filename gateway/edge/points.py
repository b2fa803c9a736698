"""What edge processing keeps per point: a change filter or an aggregation window.

Each reading of a point with a rule goes through one ``offer`` call that answers: report it
now (True) or not (False). The filter's test is two comparisons against bounds computed when
the point last reported (no arithmetic, so no object is made for a reading left out); a
window adds the reading to running min/max/sum/count and reports them when it closes.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.driver_api import Path, Quality, Reading, Value
from gateway.edge.rules import ReportRule

_NS = 1_000_000_000
_BEFORE_ALL = -(2**63)  # a time before any reading
_NUMBERS = (int, float)  # bool is not a number here: a switch reports on change


def _ns(seconds: float | None) -> int:
    return round(seconds * _NS) if seconds else 0


class Pass:
    """A point with no rule, or a rule with no strategy: every reading is reported."""

    __slots__ = ()

    def offer(self, ts: int, value: Value, unit: str | None, quality: Quality) -> bool:
        return True


PASS = Pass()


class ChangeFilter:
    """On change, deadband (absolute or percent), at least every ``max_interval``, at most every ``min_interval``.

    The reference is the last *reported* reading, never the last one seen, so a slow drift is
    reported once it leaves the band and a held value never differs from the truth by more
    than the band. A reading whose time is before the last report (the clock was set back)
    is reported and becomes the reference.
    """

    __slots__ = (
        "band",
        "change",
        "due",
        "hi",
        "lo",
        "max_ns",
        "min_ns",
        "numeric",
        "percent",
        "quality",
        "quiet_until",
        "ts",
        "unit",
        "value",
    )

    def __init__(self, rule: ReportRule) -> None:
        self.band = rule.deadband or 0.0
        self.percent = rule.deadband_percent / 100 if rule.deadband_percent is not None else None
        self.change = rule.filters_change
        self.min_ns = _ns(rule.min_interval)
        self.max_ns = _ns(rule.max_interval)
        self.ts = _BEFORE_ALL  # time of the last report
        self.quiet_until = _BEFORE_ALL  # no report before this (min_interval)
        self.due = _BEFORE_ALL  # report whatever the value from this time on (max_interval)
        self.value: Any = None
        self.numeric = False
        self.lo: float = 0.0
        self.hi: float = 0.0
        self.unit: str | None = None
        self.quality = Quality.GOOD

    def offer(self, ts: int, value: Value, unit: str | None, quality: Quality) -> bool:
        if ts >= self.ts:  # (else the clock went back: report, and start again from this reading)
            if ts < self.quiet_until:
                return False
            if self.change and ts < self.due and unit == self.unit and quality == self.quality:
                if self.numeric and type(value) in _NUMBERS:
                    if self.lo <= value <= self.hi:  # type: ignore[operator]
                        return False
                elif type(value) is type(self.value) and value == self.value:
                    return False
        self._take(ts, value, unit, quality)
        return True

    def _take(self, ts: int, value: Value, unit: str | None, quality: Quality) -> None:
        self.ts = ts
        self.quiet_until = ts + self.min_ns if self.min_ns else _BEFORE_ALL
        self.due = ts + self.max_ns if self.max_ns else 2**63
        self.value = value
        self.unit = unit
        self.quality = quality
        self.numeric = type(value) in _NUMBERS
        if self.numeric:
            band = self.band if self.percent is None else abs(value) * self.percent  # type: ignore[arg-type]
            self.lo = value - band  # type: ignore[operator]
            self.hi = value + band  # type: ignore[operator]


class Owner(Protocol):
    """What a window reports to: the processor that keeps the timer and the sink."""

    def opened(self, window: Window) -> None:
        """The window holds readings now; close it at its end if no later reading does."""

    def closed(self, window: Window, records: list[Reading]) -> None:
        """The window's records, to the buffer."""


class Window:
    """One point's aggregation window: min/max/sum/count/last of its numbers, reported when it closes.

    Windows are aligned to the clock (a window's start is a multiple of its length since the
    epoch) and keyed by the reading's own time. A reading of another window closes this one
    (the usual way, readings arriving in order); the processor's timer closes it when no such
    reading comes. A reading late for a window already reported (by less than a window; more
    means the clock was set back, and a window opens there) is reported as it comes, with its
    own time. Numbers of quality BAD, and values that are not numbers, are reported as they
    come too, never folded in: an average must not hide a fault.
    """

    __slots__ = (
        "count",
        "end",
        "instance",
        "last",
        "length",
        "max",
        "min",
        "names",
        "node",
        "owner",
        "path",
        "quality",
        "start",
        "sum",
        "unit",
    )

    def __init__(self, rule: ReportRule, point: str, node: str, path: Path, instance: str, owner: Owner) -> None:
        assert rule.window is not None
        self.length = _ns(rule.window)
        self.names = tuple((fn, f"{point}:{fn}") for fn in rule.aggregate)
        self.owner = owner
        self.node, self.path, self.instance = node, path, instance
        self.start = self.end = _BEFORE_ALL  # the window open, or the last one reported
        self.count = 0
        self.min: Any = None
        self.max: Any = None
        self.sum: float = 0.0
        self.last: Any = None
        self.unit: str | None = None
        self.quality = Quality.GOOD

    def offer(self, ts: int, value: Value, unit: str | None, quality: Quality) -> bool:
        if type(value) not in _NUMBERS or quality == Quality.BAD:
            return True
        if ts >= self.end or ts < self.start - self.length:
            self._open(ts, unit)  # the next window, or the clock went back by more than a window
        elif ts < self.start or not self.count:
            return True  # late for a window already reported: as it comes, with its own time
        elif unit != self.unit:
            self._open(ts, unit)
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.sum += value  # type: ignore[operator]
        self.last = value
        if quality > self.quality:
            self.quality = quality
        return False

    def _open(self, ts: int, unit: str | None) -> None:
        if self.count:
            self.close()
        self.start = ts - ts % self.length
        self.end = self.start + self.length
        self.min = float("inf")
        self.max = float("-inf")
        self.sum = 0.0
        self.unit = unit
        self.quality = Quality.GOOD
        self.owner.opened(self)

    def close(self) -> None:
        """Report the window (if it holds readings) and empty it."""
        if self.count:
            self.owner.closed(self, self.records())
            self.count = 0

    def records(self) -> list[Reading]:
        """The window's records: one per function, stamped with the window's start."""
        out = []
        for fn, name in self.names:
            value: Value
            unit = self.unit
            if fn == "mean":
                value = self.sum / self.count
            elif fn == "count":
                value, unit = self.count, None
            else:
                value = getattr(self, fn)
            out.append(Reading(self.node, name, self.start, value, unit, self.quality, self.path, self.instance))
        return out
