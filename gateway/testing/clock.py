"""Fake time: for the scheduler (``FakeClock``), and the gateway's clocks as ``gateway.clock``
watches them (``SteppedClock``): a test steps the clock instead of waiting for it.

Pass a ``FakeClock`` to ``run_driver(..., clock=clock)`` (or ``InstanceRunner(clock=...)``):
the poll schedule and the backoff between restarts then wait on this clock, so a driver
with ``interval: 1h`` polls exactly when the test calls ``await clock.advance(3600)``.
Timeouts (``timeout:``) still run on real loop time, and readings are stamped with the
wall clock, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.clock import ClockState, ClockWatch


class FakeClock:
    """A monotonic clock that moves only when told; implements ``gateway.scheduler.Clock``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []
        self._changed: asyncio.Event | None = None

    # -- the Clock protocol (used by the scheduler) ---------------------------------------

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut = self._add(delay)
        try:
            await fut
        finally:
            self._remove(fut)

    async def wait(self, event: asyncio.Event, delay: float) -> None:
        fut = self._add(delay)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((fut, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await woken
            self._remove(fut)

    # -- for tests ------------------------------------------------------------------------

    @property
    def sleepers(self) -> int:
        """How many waits are pending (a polled instance between polls counts one)."""
        return len(self._waiters)

    @property
    def next_deadline(self) -> float | None:
        """When the earliest pending wait ends, or None."""
        return min((d for d, _ in self._waiters), default=None)

    async def advance(self, seconds: float, settle: float = 10.0) -> None:
        """Move time forward, firing every wait that falls due on the way, in deadline order.

        Each due wait runs (a poll, a retry) and goes back to sleep before time moves on to the
        next deadline, as on a real clock: advancing 300 s over a 30 s interval gives 10 polls,
        not one. ``settle`` bounds (in real seconds) how long one wake-up may take to go back to
        sleep; an instance that ended does not, and time moves on after that bound.
        """
        if seconds < 0:
            raise ValueError("time does not go backwards")
        target = self.now + seconds
        rounds = 0
        while True:
            due = [d for d, f in self._waiters if not f.done() and d <= target]
            if not due:
                break
            rounds += 1
            if rounds > 1_000_000:
                raise RuntimeError("a wait keeps falling due without time passing (an interval of zero?)")
            self.now = max(self.now, min(due))
            pending = self._pending()
            self._wake_due()
            await self._settle(pending, settle)
        self.now = target
        await asyncio.sleep(0)

    async def tick(self) -> None:
        """Advance to the earliest pending deadline (the next poll or retry)."""
        deadline = self.next_deadline
        if deadline is None:
            raise RuntimeError("nothing is waiting on the clock")
        await self.advance(max(0.0, deadline - self.now))

    async def until_sleeping(self, count: int = 1, within: float = 10.0) -> None:
        """Wait (in real time, at most ``within`` s) until ``count`` waits are pending: the
        instance has finished its poll and gone back to sleep."""
        async with asyncio.timeout(within):
            while self._pending() < count:
                self._event().clear()
                await self._event().wait()

    # -- internals ------------------------------------------------------------------------

    def _wake_due(self) -> None:
        for deadline, fut in list(self._waiters):
            if deadline <= self.now and not fut.done():
                fut.set_result(None)

    async def _settle(self, pending: int, within: float) -> None:
        """Let the woken waits run until as many waits are pending again (each went back to sleep)."""
        await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self._pending() < pending:
                    self._event().clear()
                    await self._event().wait()

    def _pending(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    def _event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _add(self, delay: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if delay <= 0:
            fut.set_result(None)
        self._waiters.append((self.now + delay, fut))
        self._event().set()
        return fut

    def _remove(self, fut: asyncio.Future[None]) -> None:
        self._waiters = [(d, f) for d, f in self._waiters if f is not fut]
        self._event().set()


class SteppedClock:
    """The gateway's wall and monotonic clocks and the kernel's sync state, for a
    ``gateway.clock.ClockWatch`` (``watch()``): they move only when the test says, so any number
    of checks between two moves reads the same. ``now_ns()`` is what a reading stamped now
    carries. ``state_reads`` counts the kernel's state being asked; ``broken`` makes it fail."""

    def __init__(self, wall_ns: int, synced: bool = True, mono_ns: int = 1_000 * 10**9) -> None:
        self.mono = mono_ns
        self.offset = wall_ns - mono_ns
        self.synced = synced
        self.state_reads = 0
        self.broken = False

    def now_ns(self) -> int:
        return self.mono + self.offset

    def advance(self, ns: int) -> None:
        """Time passes (both clocks)."""
        self.mono += ns

    def step(self, ns: int, synced: bool | None = None) -> None:
        """The wall clock steps by ``ns`` (NTP, or by hand); optionally the sync state changes."""
        self.offset += ns
        if synced is not None:
            self.synced = synced

    def state(self) -> ClockState:
        self.state_reads += 1
        if self.broken:
            raise OSError(1, "Operation not permitted")
        return ClockState(self.synced, 0.004 if self.synced else 16.0)

    def watch(self, **kw: int) -> ClockWatch:
        return ClockWatch(self.state, self.now_ns, lambda: self.mono, **kw)
