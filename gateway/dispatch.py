"""Which uplink sends which batch (``uplink_mode``), and what each has in flight.

* ``failover``: each batch goes over the first connected uplink in list order; one
  acknowledgement releases it. Batches in flight on an uplink that drops are re-sent over
  the next one; new batches return to the primary as soon as it is back.
* ``all``: each uplink gets every batch; a batch is released when every uplink has
  acknowledged it. Acknowledgements are stored, so after a restart each uplink is sent only
  what it has not acknowledged. A slow or absent uplink keeps its backlog on disk (only batch
  numbers wait here), and does not hold up the others.

Each uplink has a lane: the batch numbers it still has to send, oldest first, and the batches
it has in flight (at most its ``window``). Uplinks report on the event loop and must not wait,
so their acknowledgements and refusals are queued here as events and the pipeline hands them
to the store (gateway/pipeline.py) before it sends more.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.uplinks import Uplink
from gateway.wire import Batch


@dataclass
class Lane:
    """One uplink's share of the work."""

    uplink: Uplink
    pending: deque[int] = field(default_factory=deque)  # bseqs to (re)send, oldest first (mode all)
    inflight: dict[int, Batch] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """An uplink's word on one batch: taken, or refused as bad (``refused``) with ``reason``."""

    lane: Lane
    batch: Batch
    reason: str = ""
    refused: bool = False


class Dispatch:
    """The lanes of the uplinks, the batches waiting for any uplink (failover), and the reports
    not yet handed to the store."""

    def __init__(self, uplinks: list[Uplink], mode: str, wake: Callable[[], None],
                 on_state: Callable[[Uplink, bool], None]) -> None:
        self.mode = mode
        self.lanes = [Lane(u) for u in uplinks]
        # mode all: who must acknowledge a batch before the store may forget it
        self.required = frozenset(u.name for u in uplinks) if mode == "all" else frozenset()
        self.shared: deque[int] = deque()  # failover: bseqs waiting for any uplink
        self.reports: deque[Report] = deque()
        self._wake = wake  # the pipeline looks for work again
        self._on_state = on_state  # the pipeline's own reaction to a connection change
        self.batches_sent = 0
        for lane in self.lanes:
            lane.uplink.on_ack = self._ack_handler(lane)
            lane.uplink.on_state = self._state_handler(lane)
            lane.uplink.on_reject = self._reject_handler(lane)

    @property
    def uplinks(self) -> list[Uplink]:
        return [lane.uplink for lane in self.lanes]

    # -- callbacks from the uplinks (on the loop, must not block) ------------------------------

    def _ack_handler(self, lane: Lane) -> Callable[[Batch], None]:
        def on_ack(batch: Batch) -> None:
            self.reports.append(Report(lane, batch))
            self._wake()

        return on_ack

    def _reject_handler(self, lane: Lane) -> Callable[[Batch, str], None]:
        def on_reject(batch: Batch, reason: str) -> None:
            self.reports.append(Report(lane, batch, reason, refused=True))
            self._wake()

        return on_reject

    def _state_handler(self, lane: Lane) -> Callable[[bool], None]:
        def on_state(connected: bool) -> None:
            if not connected and lane.inflight:
                # not acknowledged: send again, in order, ahead of anything newer
                back = sorted(lane.inflight)
                lane.inflight.clear()
                self._waiting(lane).extendleft(reversed(back))
            self._wake()
            self._on_state(lane.uplink, connected)

        return on_state

    # -- what waits ------------------------------------------------------------------------

    def _waiting(self, lane: Lane) -> deque[int]:
        """The batch numbers this lane sends next: its own (mode all) or everyone's (failover)."""
        return lane.pending if self.mode == "all" else self.shared

    def resume(self, outbox: list[tuple[int, set[str]]]) -> None:
        """Queue the store's unacknowledged batches, oldest first: in mode all, each to every
        uplink that has not acknowledged it."""
        for bseq, acked_by in outbox:
            if self.mode == "all":
                for lane in self.lanes:
                    if lane.uplink.name not in acked_by:
                        lane.pending.append(bseq)
            else:
                self.shared.append(bseq)

    def queue(self, bseq: int) -> None:
        """A new batch: to every uplink (all), or to the first that is free (failover)."""
        if self.mode == "all":
            for lane in self.lanes:
                lane.pending.append(bseq)
        else:
            self.shared.append(bseq)

    def next_report(self) -> Report:
        """The oldest report, its batch no longer in flight."""
        report = self.reports.popleft()
        report.lane.inflight.pop(report.batch.bseq, None)
        return report

    def released(self, acks: list[tuple[Batch, str]], released: list[bool]) -> None:
        """The store forgot the batches ``released`` says (mode all: acknowledged everywhere):
        no lane sends them again."""
        if self.mode != "all":
            return
        for (batch, _), done in zip(acks, released, strict=True):
            if done:
                for lane in self.lanes:
                    with contextlib.suppress(ValueError):
                        lane.pending.remove(batch.bseq)

    def inflight(self) -> int:
        return sum(len(lane.inflight) for lane in self.lanes)

    def connected(self) -> bool:
        return any(lane.uplink.connected for lane in self.lanes)

    def backlog(self) -> bool:
        """Whether a connected uplink has batches to send or in flight."""
        if self.mode == "all":
            return any(ln.inflight or ln.pending for ln in self.lanes if ln.uplink.connected)
        return bool(self.shared) or any(ln.inflight for ln in self.lanes)

    # -- sending -----------------------------------------------------------------------------

    async def fill(self, make: Callable[[], Awaitable[Batch | None]],
                   load: Callable[[int], Awaitable[Batch | None]]) -> None:
        """Send until every connected uplink's window is full or nothing is left: what waits
        first, then new batches (``make`` signs one if the policy says it is time and queues
        it); ``load`` reads a batch that is neither new nor in flight from the store."""
        fresh: Batch | None = None

        async def batch_of(bseq: int) -> Batch | None:
            if fresh is not None and fresh.bseq == bseq:
                return fresh
            for lane in self.lanes:
                if bseq in lane.inflight:
                    return lane.inflight[bseq]
            return await load(bseq)

        # lanes in list order, each until its window is full: in mode all each sends its own
        # backlog; in failover the first connected uplink takes what waits, the next one the rest
        while True:
            progress = False
            for lane in self.lanes:
                up, waiting = lane.uplink, self._waiting(lane)
                while up.connected and len(lane.inflight) < up.window:
                    if not waiting:
                        fresh = await make()
                        if fresh is None:
                            break
                    bseq = waiting.popleft()
                    batch = await batch_of(bseq)
                    if batch is None:
                        continue
                    if not up.connected:  # dropped while the batch was made or read: it waits
                        waiting.appendleft(bseq)
                        break
                    self._send(lane, batch)
                    progress = True
            if not progress:
                break

    def _send(self, lane: Lane, batch: Batch) -> None:
        lane.inflight[batch.bseq] = batch
        lane.uplink.send(batch)
        self.batches_sent += 1

    def stats(self) -> dict[str, Any]:
        """Per uplink, for metrics and the status topic."""
        return {lane.uplink.name: {"connected": lane.uplink.connected, "inflight": len(lane.inflight),
                                   "acked": lane.uplink.acked, "errors": lane.uplink.errors,
                                   "latency_s": lane.uplink.latency_s}
                for lane in self.lanes}
