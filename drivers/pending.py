"""Events that arrive between two polls (SNMP traps, BACnet COV, OPC UA data changes).

The library's receive callback queues them here; the driver's next poll hands them to the host,
so the host keeps owning time. The queue is bounded: beyond ``maxlen`` the oldest are dropped,
counted, logged once per burst and reported as a cumulative reading. Never imports ``gateway``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """A bounded queue of events with the count of those it had to drop."""

    def __init__(self, maxlen: int) -> None:
        self.queue: deque[T] = deque(maxlen=maxlen)
        self.dropped = 0
        self._told = 0

    def add(self, item: T) -> None:
        """Queue one event (from a library callback); the oldest goes when full."""
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(item)

    def report(self, log: logging.Logger, emit: Callable[..., Any], point: str, what: str, option: str) -> None:
        """Log new drops once and emit the cumulative count as ``point`` (once any were dropped)."""
        if self.dropped != self._told:
            log.warning(
                "%d %s dropped: more than %s=%d arrived between two polls",
                self.dropped - self._told, what, option, self.queue.maxlen,
            )
            self._told = self.dropped
        if self.dropped:
            emit(point, self.dropped)

    def drain(self) -> Iterator[T]:
        """The queued events, oldest first, each once."""
        while self.queue:
            yield self.queue.popleft()
