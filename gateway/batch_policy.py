"""When the next batch is due (the batching policy).

While nothing is in flight a batch goes out as soon as readings are committed (low latency at
low load), but at most one per ``batch.min_interval`` (a busy trickle of readings becomes a
few batches a second, not one signed batch per reading). While batches are in flight the next
one waits until it is full (``batch.max_readings``) or its oldest reading is
``batch.max_age`` old (batches grow at high load). The pipeline asks ``due`` each time it
looks for work; a timer wakes it when a batch that is not due yet falls due.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway.config.schema import BatchSection


class BatchPolicy:
    """The policy's clock: when the oldest reading not yet in a batch came, when the last batch
    was made, and the timers that wake the pipeline when a batch falls due."""

    def __init__(self, cfg: BatchSection, wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self._wake = wake  # the pipeline looks for work again
        self._since = 0.0  # monotonic time of the first commit not yet in a batch
        self._last_made = 0.0  # monotonic time the last batch was made
        self._timer: asyncio.TimerHandle | None = None
        self._spacing_timer: asyncio.TimerHandle | None = None

    def readings_came(self) -> None:
        """Readings were committed (or wait in memory): the age of the next batch starts now,
        unless older ones already wait."""
        if not self._since:
            self._since = time.monotonic()

    def due(self, waiting: int, inflight: int) -> bool:
        """Whether to make a batch now, with ``waiting`` readings stored and not batched and
        ``inflight`` batches unacknowledged; if not, a timer wakes the pipeline when it is."""
        if waiting >= self.cfg.max_readings:
            return True  # a full batch is there
        if not inflight:
            # at once, unless a batch was made less than batch.min_interval ago: then as soon as
            # that has passed (waits at most min_interval)
            wait = self._last_made + self.cfg.min_interval - time.monotonic()
            if wait <= 0:
                return True
            if self._spacing_timer is None:
                self._spacing_timer = asyncio.get_running_loop().call_later(wait, self._spacing_fired)
            return False
        age = time.monotonic() - self._since if self._since else 0.0
        if age >= self.cfg.max_age:
            return True
        if self._since and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.cfg.max_age - age, self._timer_fired)
        return False

    def made(self, more_waiting: bool) -> None:
        """A batch was made; ``more_waiting``: readings it did not take wait (their age runs on)."""
        self._last_made = time.monotonic()
        self._since = time.monotonic() if more_waiting else 0.0

    def nothing_made(self) -> None:
        """A batch was due but nothing was there to put in it."""
        self._since = 0.0

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake()

    def _spacing_fired(self) -> None:
        self._spacing_timer = None
        self._wake()

    def cancel(self) -> None:
        """Stop both timers (the pipeline closes)."""
        for timer in (self._timer, self._spacing_timer):
            if timer is not None:
                timer.cancel()
