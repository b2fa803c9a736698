"""The front of edge processing: which rule a point has, its state, and the timer that closes windows.

The scheduler's ``emit`` asks ``admit`` about every reading of an instance with ``report:``
rules, before a ``Reading`` is made: two dictionary lookups find the point's state, whose
``offer`` answers. A point's rule is looked up once, the first time it is seen. Windows are
closed by the next reading of their point or, when none comes, by one timer per instance;
``close`` reports the windows still open (at a stop, a reload, a push), so what a driver
emitted is never held back by a rule change.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Sequence

from gateway.driver_api import Path, Quality, Reading, Value
from gateway.edge.points import PASS, ChangeFilter, Pass, Window
from gateway.edge.rules import ReportRule

MAX_POINTS = 100_000
"""Points with a state, per instance; past it new points are reported unfiltered (and it is logged once)."""
GRACE_NS = 250_000_000
"""A window is closed by the timer this long after its end, so a reading stamped just before the end
(a driver's own timestamp, a poll still running) is folded in rather than reported late."""

State = Pass | ChangeFilter | Window


def _matcher(patterns: Sequence[str]) -> Callable[[str], object]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


class EdgeProcessor:
    """One driver instance's report rules and the state of each of its points."""

    def __init__(self, rules: Sequence[ReportRule], put: Callable[[Reading], None], node: str, path: Path,
                 instance: str, log: logging.Logger, timer: bool = True) -> None:
        self._put = put
        self._timers = timer  # False: nothing closes windows but close_due and close (unit tests)
        self._node = node  # the instance's node: readings that name none
        self._path = path
        self._instance = instance
        self._log = log
        self._states: dict[str | None, dict[str, State]] = {}
        self._count = 0
        self._open: dict[Window, None] = {}  # windows holding readings (an ordered set)
        self._timer: asyncio.TimerHandle | None = None
        self.passed = 0  # readings reported as they came
        self.folded = 0  # readings folded into windows already reported
        self.records = 0  # window records reported
        self._set_rules(rules)

    def _set_rules(self, rules: Sequence[ReportRule]) -> None:
        self.rules = tuple(rules)
        self._match = [(_matcher(r.points), _matcher(r.nodes), r) for r in self.rules]

    # -- the hot path ------------------------------------------------------------------------------

    def admit(self, node: str | None, point: str, ts: int, value: Value, unit: str | None,
              quality: Quality) -> bool:
        """True: report this reading now; False: it was left out or folded into a window."""
        states = self._states.get(node)
        st = states.get(point) if states is not None else None
        if st is None:
            st = self._state(node, point)
        if st is PASS or st.offer(ts, value, unit, quality):
            self.passed += 1
            return True
        return False

    def _state(self, node: str | None, point: str) -> State:
        if self._count >= MAX_POINTS:
            if self._count == MAX_POINTS:
                self._count += 1
                self._log.warning("%s: more than %d points with report rules; readings of new points are "
                                  "reported unfiltered", self._instance, MAX_POINTS)
            return PASS
        real_node = self._node if node is None else node
        path = self._path if node is None else Path.IP3
        st: State = PASS
        for match_point, match_node, rule in self._match:
            if match_point(point) and match_node(real_node):
                if rule.window is not None:
                    st = Window(rule, point, real_node, path, self._instance, self)
                elif not rule.passes_all:
                    st = ChangeFilter(rule)
                break
        self._states.setdefault(node, {})[point] = st
        self._count += 1
        return st

    # -- windows ------------------------------------------------------------------------------------

    def opened(self, window: Window) -> None:
        """A window holds readings: make sure the timer will close it."""
        self._open[window] = None
        if self._timer is None:
            self._arm(window.end)

    def closed(self, window: Window, records: list[Reading]) -> None:
        """A window's records go to the buffer."""
        self._open.pop(window, None)
        self.folded += window.count
        self.records += len(records)
        put = self._put
        for r in records:
            put(r)

    def _arm(self, end_ns: int) -> None:
        if not self._timers:
            return
        delay = max(0.0, (end_ns + GRACE_NS - time.time_ns()) / 1e9)
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.close_due(time.time_ns())

    def close_due(self, now_ns: int) -> None:
        """Close the windows whose end (and grace) has passed by ``now_ns``; wake again for the next one."""
        for w in [w for w in self._open if w.end + GRACE_NS <= now_ns]:
            w.close()
        if self._open and self._timer is None:
            self._arm(min(w.end for w in self._open))

    # -- life cycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Report every open window now (partial: its count says so) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for w in list(self._open):
            w.close()

    def retune(self, rules: Sequence[ReportRule]) -> None:
        """New rules: open windows are reported, and every point starts afresh (its next reading is reported)."""
        self.close()
        self._states.clear()
        self._count = 0
        self._set_rules(rules)

    def counts(self, emitted: int) -> dict[str, int]:
        """What the rules did to ``emitted`` readings: reported as they came, folded into windows, left out.

        Counted this way so that a reading left out costs no counter of its own."""
        pending = sum(w.count for w in self._open)
        return {"reported": self.passed, "aggregated": self.folded + pending, "aggregates": self.records,
                "suppressed": max(0, emitted - self.passed - self.folded - pending)}
