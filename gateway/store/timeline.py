"""The buffer file's clock record: from which reading number each clock epoch applies, and the
clock steps no batch has declared yet (tables ``clock`` and ``clock_steps``).

The intake records the epochs and steps its readings were stamped in (``record_sync``, from the
clock marks of gateway/store/intake.py); the batch step reads the epochs of a batch's readings
and the undeclared steps (``epochs``, ``undeclared``); the outbox forgets what a batch declared
(``declare_sync``). Everything runs on the database thread, inside the caller's ``op``. The two
tables are mirrored in memory, so a batch costs no query; an ``op`` that fails rolls the
database back, and the mirror is read again from it before its next use.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.wire import ClockEpoch, ClockStep

if TYPE_CHECKING:
    from gateway.store.db import Database
    from gateway.store.intake import ClockMark


class Timeline:
    """The ``clock`` and ``clock_steps`` tables and their mirror (database thread only)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._firsts: list[int] = []  # epochs' first reading numbers, ascending
        self._epochs: list[ClockEpoch] = []
        self._steps: dict[tuple[int, int], ClockStep] = {}  # (boot, mono_ns) -> undeclared step
        self._seen_aborts = -1  # the database's abort count when the mirror was read

    def load_sync(self) -> None:
        """Read the tables (at open, and after a failed ``op``)."""
        conn = self.db.view_sync()
        self._epochs = [ClockEpoch(a, b, c, d, bool(e), f) for a, b, c, d, e, f in conn.execute(
            "SELECT first_seq, boot, mono_ns, wall_ns, synced, max_error_us FROM clock ORDER BY first_seq")]
        self._firsts = [e.first_seq for e in self._epochs]
        self._steps = {(s.boot, s.mono_ns): s for s in (ClockStep(*r) for r in conn.execute(
            "SELECT boot, mono_ns, since_ns, wall_before_ns, wall_after_ns, first_seq FROM clock_steps"))}
        self._seen_aborts = self.db.aborts

    def _fresh(self) -> None:
        if self._seen_aborts != self.db.aborts:
            self.load_sync()

    def record_sync(self, seq: int, boot: int, marks: Sequence[ClockMark]) -> None:
        """The epochs (and steps) of ``marks`` at the reading numbers they apply from (``seq``:
        the number of the first reading taken); a later mark on the same reading wins."""
        self._fresh()
        epochs = [ClockEpoch(seq + m.index, boot, m.epoch.mono_ns, m.epoch.wall_ns, m.epoch.synchronised,
                             m.epoch.max_error_us) for m in marks]
        steps = [ClockStep(boot, st.mono_ns, st.since_ns, st.wall_before_ns, st.wall_after_ns, seq + m.index)
                 for m in marks if (st := m.step) is not None]
        self.db.xm("INSERT OR REPLACE INTO clock VALUES (?, ?, ?, ?, ?, ?)", epochs)
        self.db.xm("INSERT OR IGNORE INTO clock_steps VALUES (?, ?, ?, ?, ?, ?)", steps)
        for e in epochs:
            i = bisect.bisect_left(self._firsts, e.first_seq)
            if i < len(self._firsts) and self._firsts[i] == e.first_seq:
                self._epochs[i] = e
            else:
                self._firsts.insert(i, e.first_seq)
                self._epochs.insert(i, e)
        for step in steps:
            self._steps.setdefault((step.boot, step.mono_ns), step)

    def epochs(self, first: int, last: int) -> list[ClockEpoch]:
        """The epochs readings ``first``..``last`` were stamped in, in order (the first one began
        at or before ``first``); none for readings stored before the clock was recorded."""
        self._fresh()
        lo = max(bisect.bisect_right(self._firsts, first) - 1, 0)
        hi = bisect.bisect_right(self._firsts, last)
        return self._epochs[lo:hi]

    def undeclared(self, limit: int) -> list[ClockStep]:
        """Steps no batch has declared, oldest first."""
        self._fresh()
        if not self._steps:
            return []
        return sorted(self._steps.values())[:limit]

    def declare_sync(self, steps: Sequence[ClockStep], batched_upto: int) -> None:
        """A batch declared ``steps``, and readings up to ``batched_upto`` are in batches: the
        epochs before the one in force at the next reading are no longer needed."""
        self._fresh()
        if steps:
            self.db.xm("DELETE FROM clock_steps WHERE boot = ? AND mono_ns = ?", [(s.boot, s.mono_ns) for s in steps])
            for s in steps:
                self._steps.pop((s.boot, s.mono_ns), None)
        keep = bisect.bisect_right(self._firsts, batched_upto + 1) - 1  # the epoch in force there
        if keep > 0:
            self.db.x("DELETE FROM clock WHERE first_seq < ?", (self._firsts[keep],))
            del self._firsts[:keep], self._epochs[:keep]
