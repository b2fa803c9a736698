"""What the gateway's clock is worth: synchronised or not, and whether it stepped.

A Raspberry Pi has no real-time clock. After a power cut it boots at the time fake-hwclock
saved (minutes to weeks behind) until NTP steps it, maybe minutes later over a cellular link.
Readings are stamped with the wall clock (CLOCK_REALTIME), so this module watches it:

* **the kernel's view** (``kernel_clock``: adjtimex(2) with ``modes = 0``, as ``timedatectl``
  and ``sensegate doctor`` read it): synchronised or not, and its maximum error;
* **steps**: the offset between the wall clock and the monotonic clock (CLOCK_MONOTONIC, which
  no one can set) stays put while nothing sets the clock (NTP slews it by 500 ppm at most).
  An offset that moved by more than ``STEP_THRESHOLD_NS`` since the previous check is a step,
  recorded with the monotonic time it was seen, the window it happened in (since the previous
  check) and what the wall clock read before and after it.

An **epoch** is a stretch of one run of the daemon in which the offset and the sync state stay
the same. The store records from which reading number each epoch applies (gateway/store/
intake.py) and every batch says which epochs its readings were stamped in (``ck``) and which
steps happened (``cj``), so a receiver can flag readings taken on an unsynchronised clock and
re-date them once a later epoch of the same run is synchronised (docs/wire-format.md).

``ClockWatch.check`` is called on the event loop only: when the store takes readings (once per
commit, not per reading) and about once a second otherwise. It reads the two clocks (vDSO, no
system call) and, at most once a second or right after a step, the kernel's state (one
adjtimex call).
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("sensegate.clock")

STEP_THRESHOLD_NS = 100_000_000  # a change of the wall-minus-monotonic offset beyond this is a step
STATE_EVERY_NS = 1_000_000_000  # the kernel's sync state is read at most this often (and after a step)
CHECK_EVERY = 1.0  # seconds between the store's checks while no readings come
READ_SKEW_NS = 1_000_000  # a clock pair read further apart than this (a preemption) is read again
UNKNOWN_ERROR_US = 16_000_000  # the kernel's own maximum error of an unsynchronised clock (16 s)
SPLIT_SLACK_NS = 10_000_000  # how far a reading's stamp may stray from its step window (slew, read skew)


@dataclass(frozen=True)
class ClockState:
    """What the kernel says about the system clock (adjtimex(2), as timedatectl reads it)."""

    synchronised: bool
    max_error_s: float | None = None
    source: str = "adjtimex"
    offset_s: float | None = None  # the NTP offset the kernel is slewing away (fleet health)


def kernel_clock() -> ClockState:
    """Read the kernel's NTP state without changing it (adjtimex with modes=0).

    Looked up in the process's global symbol namespace, so a preloaded library that stands in
    for the kernel's answer (the rig's hil/clockstate.c, as libfaketime stands in for the time)
    is the one called."""
    libc = ctypes.CDLL(None, use_errno=True)
    c_long, c_int = ctypes.c_long, ctypes.c_int

    class Timex(ctypes.Structure):
        _fields_ = [
            ("modes", c_int),
            ("offset", c_long),
            ("freq", c_long),
            ("maxerror", c_long),
            ("esterror", c_long),
            ("status", c_int),
            ("constant", c_long),
            ("precision", c_long),
            ("tolerance", c_long),
            ("tv_sec", c_long),
            ("tv_usec", c_long),
            ("tick", c_long),
            ("ppsfreq", c_long),
            ("jitter", c_long),
            ("shift", c_int),
            ("stabil", c_long),
            ("jitcnt", c_long),
            ("calcnt", c_long),
            ("errcnt", c_long),
            ("stbcnt", c_long),
            ("tai", c_int),
            ("_pad", c_int * 16),
        ]

    tx = Timex()
    state = libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex failed")
    sta_unsync, sta_nano, time_error = 0x0040, 0x2000, 5
    offset = tx.offset / (1e9 if tx.status & sta_nano else 1e6)
    return ClockState(state != time_error and not (tx.status & sta_unsync), tx.maxerror / 1e6, offset_s=offset)


@dataclass(frozen=True)
class Epoch:
    """A stretch of one run in which the wall clock read ``wall_ns`` when the monotonic clock
    read ``mono_ns`` (their offset held), and the kernel's sync state held."""

    mono_ns: int
    wall_ns: int
    synchronised: bool
    max_error_us: int

    @property
    def offset_ns(self) -> int:
        """Wall minus monotonic: what turns a monotonic time into this epoch's wall time."""
        return self.wall_ns - self.mono_ns


@dataclass(frozen=True)
class Step:
    """A step of the wall clock, seen at monotonic ``mono_ns``; it happened after ``since_ns``
    (the previous check, which still saw the old offset). ``wall_before_ns``: what the old
    clock would have read at ``mono_ns``; ``wall_after_ns``: what the clock read then."""

    mono_ns: int
    since_ns: int
    wall_before_ns: int
    wall_after_ns: int

    @property
    def delta_ns(self) -> int:
        return self.wall_after_ns - self.wall_before_ns


@dataclass(frozen=True)
class Change:
    """A new epoch: after a step (``step``) or a change of the sync state (``step`` None)."""

    epoch: Epoch
    previous: Epoch
    step: Step | None


class ClockWatch:
    """Watches the wall clock against the monotonic one and the kernel's sync state.

    The time sources are parameters so that tests can step a clock; production uses the real
    ones. Not thread-safe: the store calls it on the event loop only."""

    def __init__(self, state: Callable[[], ClockState] = kernel_clock,
                 wall: Callable[[], int] = time.time_ns, mono: Callable[[], int] = time.monotonic_ns,
                 threshold_ns: int = STEP_THRESHOLD_NS, state_every_ns: int = STATE_EVERY_NS) -> None:
        self._state_fn, self._wall, self._mono = state, wall, mono
        self.threshold_ns = threshold_ns
        self.state_every_ns = state_every_ns
        self.state = ClockState(False, None, "not read yet")
        self.state_error = ""  # why the kernel's state cannot be read ("" when it can)
        self._state_at = 0
        self.steps = 0
        self.last_step: Step | None = None
        mono_ns, wall_ns = self.read()
        self._read_state(mono_ns, force=True)
        self.epoch = Epoch(mono_ns, wall_ns, self.state.synchronised, self._error_us())
        self._offset = wall_ns - mono_ns  # at the last check (follows a slew; a jump is a step)
        self._checked = mono_ns
        if not self.state.synchronised:
            log.warning("the clock is not synchronised%s: batches mark these readings for receivers, which "
                        "re-date them once it is", f" ({self.state_error})" if self.state_error else "")

    def read(self) -> tuple[int, int]:
        """A (monotonic, wall) pair read together (again when a preemption came between)."""
        mono, wall = self._mono, self._wall
        for _ in range(3):
            m0 = mono()
            w = wall()
            m1 = mono()
            if m1 - m0 <= READ_SKEW_NS:
                break
        return (m0 + m1) // 2, max(w, 0)

    def _read_state(self, now_ns: int, force: bool = False) -> None:
        """The kernel's sync state, at most every ``state_every_ns`` unless ``force``."""
        if not force and now_ns - self._state_at < self.state_every_ns:
            return
        self._state_at = now_ns
        try:
            self.state = self._state_fn()
        except OSError as e:  # seccomp (ProtectClock=yes forbids even reading it), no adjtimex
            why = f"cannot read it: {e.strerror or e}"
            if why != self.state_error:
                log.error("clock: %s; readings are marked as taken on an unsynchronised clock (if the systemd "
                          "unit has ProtectClock=yes, use the packaged unit: docs/deploying.md)", why)
            self.state_error = why
            self.state = ClockState(False, None, "unreadable")
            return
        self.state_error = ""

    def _error_us(self) -> int:
        err = self.state.max_error_s
        return UNKNOWN_ERROR_US if err is None or err < 0 else min(int(err * 1e6), 2**63 - 1)

    def check(self) -> Change | None:
        """Read the clocks; a Change when the clock stepped or its sync state changed since the
        previous check, else None."""
        mono_ns, wall_ns = self.read()
        offset = wall_ns - mono_ns
        step = None
        if abs(offset - self._offset) > self.threshold_ns:
            step = Step(mono_ns, self._checked, max(mono_ns + self._offset, 0), wall_ns)
        self._read_state(mono_ns, force=step is not None)
        self._offset, self._checked = offset, mono_ns
        synced = self.state.synchronised
        if step is None and synced == self.epoch.synchronised:
            return None
        previous = self.epoch
        self.epoch = Epoch(mono_ns, wall_ns, synced, self._error_us())
        if step is not None:
            self.steps += 1
            self.last_step = step
            log.warning("clock: the wall clock stepped by %+.3f s (within %.1f s before %s UTC), now %s; batches "
                        "tell receivers, which re-date readings of an unsynchronised clock", step.delta_ns / 1e9,
                        (step.mono_ns - step.since_ns) / 1e9, _utc(wall_ns),
                        "synchronised" if synced else "NOT synchronised")
        elif synced:
            log.warning("clock: synchronised (max error %.0f ms)", self.epoch.max_error_us / 1000)
        else:
            log.warning("clock: no longer synchronised%s; batches mark the readings for receivers",
                        f" ({self.state_error})" if self.state_error else "")
        return Change(self.epoch, previous, step)

    def snapshot(self) -> dict[str, Any]:
        """The clock for metrics and the health summary."""
        s = self.last_step
        return {
            "synchronised": self.state.synchronised,
            "max_error_s": self.state.max_error_s,
            "state": self.state_error or self.state.source,
            "steps": self.steps,
            "last_step_s": s.delta_ns / 1e9 if s else None,
            "last_step_at": s.wall_after_ns / 1e9 if s else None,
            "epoch_since": self.epoch.wall_ns / 1e9,
        }


def split(stamps: Sequence[int], step: Step, slack_ns: int = SPLIT_SLACK_NS) -> int:
    """Where ``step`` falls among readings stamped within its window, in the order they were
    taken: the index of the first one stamped by the new clock.

    A reading taken at monotonic time m in the window (``since_ns``, ``mono_ns``] carries
    m + old offset if it came before the step, m + new offset after. The boundary chosen is
    the one with the fewest readings whose stamp cannot be explained by their side (a driver's
    own device timestamp fits neither and does not matter). When the step is larger than the
    window the two sides cannot overlap and the answer is exact; otherwise a reading put on the
    wrong side is off by less than the step itself."""
    lo, hi = step.since_ns - slack_ns, step.mono_ns + slack_ns
    old = step.wall_before_ns - step.mono_ns
    new = step.wall_after_ns - step.mono_ns
    cost = sum(1 for t in stamps if not lo <= t - new <= hi)  # every reading on the new side
    best, at = cost, 0
    for i, t in enumerate(stamps):  # move reading i to the old side
        cost += (not lo <= t - old <= hi) - (not lo <= t - new <= hi)
        if cost < best:
            best, at = cost, i + 1
    return at


def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))
