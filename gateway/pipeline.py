"""The durable path: drivers -> store -> batcher -> uplink(s) -> acknowledged.

The one place that joins the stages: the store (gateway/store/) keeps readings and batches, the
batcher (gateway/batcher.py, with the device key of the moment: gateway/signing.py) makes and
signs each batch inside the store's transaction when the batching policy says it is due
(gateway/batch_policy.py), the dispatch (gateway/dispatch.py) gives it to the uplinks
(gateway/uplinks/) by ``uplink_mode``, and their acknowledgements go back to the store.
Blobs (camera images) are uploaded apart from the batches (gateway/blob_upload.py).

Unacknowledged batches are re-sent, oldest first, after a reconnect and after a restart. A
batch an uplink refuses as bad (e.g. CoAP 4.00) goes to the dead-letter table instead of
being retried for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.batch_policy import BatchPolicy
from gateway.blob_upload import BlobUploader
from gateway.bounded import abandon, settle, stop_task
from gateway.config.schema import CoapUplink as CoapUplinkConfig
from gateway.config.schema import MqttUplink as MqttUplinkConfig
from gateway.config.validate import GatewayConfig
from gateway.dispatch import Dispatch
from gateway.driver_api import Reading
from gateway.keys import KeyFileError, Signer
from gateway.scheduler import NodeTracker, Sink
from gateway.signing import BatchSigning
from gateway.store import Store
from gateway.uplinks import Uplink
from gateway.wire import Batch

__all__ = ["BufferedPipeline", "PipelineError", "buffer_path", "make_uplink"]
log = logging.getLogger("sensegate.pipeline")
CLOSE_STEP = 2.0  # each step of a close before the buffer's (tasks, last acknowledgements, each uplink)


class PipelineError(Exception):
    """The pipeline cannot start (key, buffer, uplink config); the message says what to fix."""


def buffer_path(cfg: GatewayConfig) -> Path:
    """The buffer database a config uses."""
    c = cfg.config
    return Path(c.buffer.path) if c.buffer.path else Path(c.gateway.state_dir) / "buffer.db"


def make_uplink(section: MqttUplinkConfig | CoapUplinkConfig, gateway_id: str, nodes: NodeTracker) -> Uplink:
    """Build the uplink object for one `uplinks:` entry."""
    if section.type == "mqtt":
        from gateway.uplinks.mqtt import MqttUplink

        return MqttUplink(section, gateway_id, nodes)
    if section.type == "coap":
        from gateway.uplinks.coap import CoapUplink

        return CoapUplink(section, gateway_id, nodes)
    raise PipelineError(f"uplink type {section.type!r} cannot carry signed batches")


class BufferedPipeline:
    """Owns the store, the signing (batcher and device key), the dispatch over the uplinks and
    the blob uploader, and moves batches between them."""

    def __init__(self, cfg: GatewayConfig, nodes: NodeTracker) -> None:
        c = cfg.config
        self.cfg = cfg
        self.mode = c.uplink_mode
        self.store = Store(buffer_path(cfg), c.gateway.id, c.buffer, c.batch)
        batch_uplinks = [u for u in c.uplinks if u.type != "jsonl"]
        if not batch_uplinks or len(batch_uplinks) != len(c.uplinks):
            raise PipelineError("a jsonl uplink cannot be combined with mqtt/coap uplinks; use it alone")
        self._changed = asyncio.Event()  # something to do: readings, a report, a timer, a connection
        self._pumped = asyncio.Event()
        self.dispatch = Dispatch([make_uplink(u, c.gateway.id, nodes) for u in batch_uplinks], self.mode,
                                 self._changed.set, self._uplink_state)
        self.policy = BatchPolicy(c.batch, self._changed.set)
        self.signing = BatchSigning(cfg, self.store, self.uplinks)
        self.blobs = BlobUploader(self.store, self.uplinks)
        self._task: asyncio.Task[None] | None = None
        self._resumed = False  # the store's outbox is taken up (at start, or once the store opened)
        self.last_acked: tuple[int, float | None] = (0, None)  # batch number and time of the last acknowledgement
        # the last signed heartbeat of a clean stop (set by gateway/remote/health.py's HealthPublisher)
        self.last_word: Callable[[], Awaitable[object]] | None = None

    @property
    def uplink(self) -> Uplink:
        """The primary uplink (the first configured)."""
        return self.dispatch.lanes[0].uplink

    @property
    def uplinks(self) -> list[Uplink]:
        return self.dispatch.uplinks

    @property
    def key(self) -> Signer | None:
        """The device key that signs now (None before start)."""
        return self.signing.key

    async def start(self) -> None:
        try:
            await self.signing.open()
        except KeyFileError as e:
            raise PipelineError(str(e)) from None
        intake = self.store.intake
        intake.on_commit = self._committed
        intake.on_pending = self._readings_waiting
        self.store.on_open = self._store_opened
        await self.store.open()
        if self.store.opened.is_set():  # else (a full disk...) once it opens: see _pump
            await self._resume()
        for up in self.uplinks:
            await up.start()
        self._task = asyncio.create_task(self._pump_loop(), name="pipeline")
        self.blobs.start()
        self._changed.set()

    @property
    def sink(self) -> Sink:
        """Where drivers' readings go: the store's intake, whose ``put`` is the hot path (one
        call per reading, nothing in between)."""
        return self.store.intake

    def put(self, reading: Reading) -> None:
        """Hand one reading to the store (for callers other than drivers, which use ``sink``)."""
        self.store.intake.put(reading)

    async def _resume(self) -> None:
        """Take up the store's outbox: unacknowledged batches from before the restart go again."""
        outbox = await self.store.outbox()
        if outbox:
            log.info("re-sending %d unacknowledged batch(es) from before the restart", len(outbox))
        self.dispatch.resume(outbox)
        for up in self.uplinks:
            up.boot = self.store.boot
        self._resumed = True

    # -- callbacks from the store and the uplinks (on the loop, must not block) ----------------

    def _committed(self) -> None:
        self.policy.readings_came()
        self._changed.set()
        self.blobs.committed()  # a new image to upload?

    def _store_opened(self) -> None:
        """The store's file could be opened at last (it could not at start)."""
        self._changed.set()
        self.blobs.wake()

    def _readings_waiting(self) -> None:
        """Readings wait in memory and the uplink is idle: the next batch takes them."""
        self.policy.readings_came()
        self._changed.set()

    def _uplink_state(self, uplink: Uplink, connected: bool) -> None:
        """An uplink came up or dropped (the dispatch took back what it had in flight)."""
        self.blobs.wake()
        if connected:
            self.signing.announce(uplink)

    async def rotate_key(self) -> dict[str, Any]:
        """Make a next key (unless one waits) and switch to it now (the ``rotate_key`` command)."""
        if not self.store.opened.is_set():  # the switch is recorded at a batch number of the stream
            raise PipelineError("the buffer file cannot be opened yet (see the log): rotate once it is")
        return await self.signing.rotate()

    # -- the pump --------------------------------------------------------------------------

    async def _pump_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._pump()
            except KeyFileError:  # the key cannot sign (said once by the signing): readings stay buffered
                await asyncio.sleep(1.0)
                self._changed.set()
            except Exception:
                log.exception("pipeline error; retrying")
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _pump(self) -> None:
        if not self._resumed:
            if not self.store.opened.is_set():
                return  # nothing can be batched before the store's file is open
            await self._resume()
        await self._record_reports()
        await self.dispatch.fill(self._next_new, self.store.load_batch)
        self.store.intake.eager = not self.dispatch.inflight()
        self._pumped.set()

    async def _record_reports(self) -> None:
        """Hand the uplinks' acknowledgements and refusals to the store (refused batches to the
        dead-letter table); in mode all a batch is released once every uplink has it."""
        d = self.dispatch
        while d.reports:
            acks: list[tuple[Batch, str]] = []
            while d.reports:
                r = d.next_report()
                name = r.lane.uplink.name
                if r.refused:
                    log.error("%s refused batch %d as bad (%s); kept in the dead-letter table",
                              name, r.batch.bseq, r.reason)
                    await self.store.dead_letter(r.batch, name, r.reason)
                acks.append((r.batch, name))
                if not r.refused and r.batch.bseq >= self.last_acked[0]:
                    self.last_acked = (r.batch.bseq, time.time())  # for the fleet view
            released = await self.store.ack_many(acks, d.required)
            d.released(acks, released)

    async def _next_new(self) -> Batch | None:
        """Sign the next batch if the policy says it is time, and queue it for the uplinks."""
        if not self.policy.due(self.store.waiting(), self.dispatch.inflight()):
            return None
        if self.signing.busy:  # a switch whose wait was cancelled is still finishing
            return None
        made = await self.signing.sign(self.store.make_batch)
        if made is None:
            self.policy.nothing_made()
            return None
        self.policy.made(self.store.unbatched() > 0)
        self.dispatch.queue(made.bseq)
        return made

    # -- lifecycle ---------------------------------------------------------------------------

    async def drain(self, within: float) -> None:
        """Commit what is pending and let the uplinks take what they can, for up to ``within`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.store.commit()
                self._changed.set()
                while self._work_left():
                    self._pumped.clear()
                    await self._pumped.wait()

    def _work_left(self) -> bool:
        d = self.dispatch
        if not d.connected():
            return False
        return bool(d.reports) or self.store.unbatched() > 0 or d.backlog()

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and the status topic."""
        b = self.store.stats
        age = (time.time_ns() - b.oldest_ns) / 1e9 if b.oldest_ns else 0.0
        return {
            "buffer": {"readings": b.readings, "bytes": b.bytes, "oldest_age_s": age,
                       "dropped": b.dropped, "committed": b.committed, "dead_letters": b.dead_letters,
                       "blobs_dropped": b.blobs_dropped, "group_commits": b.group_commits,
                       "fsyncs": b.reservations + b.syncs, "skipped_unclean": b.skipped_unclean,
                       "last_ack_age_s": (time.time_ns() - b.last_ack_ns) / 1e9 if b.last_ack_ns else None},
            "batches": {"sent": self.dispatch.batches_sent, "acked": b.acked_batches,
                        "sign_errors": self.signing.errors,
                        "last_readings": b.last_batch_readings, "last_bytes": b.last_batch_bytes,
                        "last_acked": self.last_acked[0] or None, "last_acked_at": self.last_acked[1]},
            "uplinks": self.dispatch.stats(),
            "clock": self.store.clock.snapshot(),
            "issued": self.store.issued(),
        }

    async def close(self, grace: float = 3.0) -> None:
        """Flush for up to ``grace`` seconds, then stop: nothing unsent is lost, it stays buffered.

        Each step before the buffer's close is bounded (CLOSE_STEP, gateway.bounded), so the
        buffer's last commit of what the drivers emitted is reached whatever an uplink does; the
        caller bounds the whole (the daemon's shutdown deadline)."""
        if grace and self._task is not None:
            await self.drain(grace)
        self.policy.cancel()
        for task in (self._task, self.blobs.task):
            if task is not None and not await stop_task(task, (CLOSE_STEP,)):
                abandon(task, f"pipeline task {task.get_name()} would not stop")
        await settle(self._record_reports(), CLOSE_STEP, "recording the last acknowledgements")
        if self.last_word is not None:  # signed, how far this stream got: a tail lost on the way is lost, not late
            await settle(self.last_word(), CLOSE_STEP, "publishing the last heartbeat")
        await asyncio.gather(*(settle(up.close(), CLOSE_STEP, f"closing uplink {up.name}")
                               for up in self.uplinks))
        await self.store.close()
        self.signing.close()
