"""One ingest worker: fetch from the broker, verify, store in one transaction, acknowledge.

The order is the whole of exactly-once: a delivery is acknowledged only after the transaction
holding it committed. If the worker dies in between, the broker delivers the message again (to
any worker) and the store finds the batch already there: nothing is inserted, nothing counted
twice. When the database cannot be reached, the worker hands its messages back to the broker
(another worker may take them), stops fetching, and probes the database with backoff; it logs
the outage once when it starts and once when it ends.

A message that fails to store for any other reason (a bug, data the database refuses) is found
by storing the fetch one message at a time; that message alone goes to the quarantine with the
error, and the rest are stored. Nothing is dropped without a row saying why.

While the database commits one fetch, the worker takes and verifies the next (one transaction at
a time, each fetch acknowledged after its own commit), so one worker keeps its core busy while
the database works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gateway.ingest.contract import (
    DEFAULT_TAIL_GRACE,
    BlobChunk,
    Delivery,
    Heartbeat,
    Refused,
    Source,
    Storage,
    StorageUnavailable,
    StoreReport,
    VerifiedBatch,
    Work,
)
from gateway.ingest.metrics import IngestMetrics
from gateway.ingest.trust import DEFAULT_GRACE, RegistryTrust
from gateway.ingest.verify import parse_blob_chunk, topic_parts, verify_batch, verify_heartbeat
from gateway.scheduler import Backoff

log = logging.getLogger("sensegate.ingest")
STORE_FAILED = "store_failed"  # a quarantine reason: the database refused this message (see detail)
Item = VerifiedBatch | BlobChunk | Heartbeat | Refused | None  # None: a topic the ingest does not store


@dataclass
class WorkerSettings:
    """How much to take at once and how often to look around."""

    fetch: int = 64  # messages per fetch, and per transaction
    wait: float = 1.0  # longest wait for the first message of a fetch
    refresh: float = 2.0  # how often the trust registry's version is checked
    stats_every: float = 15.0  # how often the ledger's missing readings are counted
    retry_delay: float = 1.0  # when messages are handed back, the broker waits this long
    grace: float = DEFAULT_GRACE  # how long a replaced key still verifies
    tail_grace: float = DEFAULT_TAIL_GRACE  # how long a heartbeat's claim waits before it counts as missing
    prefix: str = "sensegate"  # the gateways' topic prefix


class Worker:
    """Stateless: everything it knows lives in the database or the broker."""

    def __init__(self, source: Source, storage: Storage, settings: WorkerSettings | None = None,
                 metrics: IngestMetrics | None = None) -> None:
        self.source = source
        self.storage = storage
        self.settings = settings or WorkerSettings()
        self.metrics = metrics or IngestMetrics()
        self.trust = RegistryTrust([], self.settings.grace)
        self._version = 0
        self._next_refresh = 0.0
        self._next_stats = 0.0
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set: the current transaction finishes and is acknowledged first."""
        try:
            if not await self._until_storage(stop, self._open_storage):
                return
            if not await self._until_source(stop):
                return
            self.ready.set()
            log.info("ingest: taking batches from %s into %s", self.source.name, self.storage.url)
            await self._loop(stop)
        finally:
            with contextlib.suppress(Exception):
                await self.source.close()
            with contextlib.suppress(Exception):
                await self.storage.close()

    async def _loop(self, stop: asyncio.Event) -> None:
        """Fetch and verify the next messages while the database commits the last ones (one
        transaction at a time; each fetch acknowledged only after its own commit)."""
        pending: asyncio.Task[StorageUnavailable | None] | None = None
        try:
            while not stop.is_set():
                await self._housekeeping()
                try:
                    deliveries = await self.source.fetch(self.settings.fetch, self.settings.wait)
                except Exception as e:  # the broker's client raises many kinds while it fails over
                    await self._source_down(e, stop)
                    continue
                self.metrics.source_up = True
                self.metrics.lag_messages, self.metrics.lag_seconds = self.source.lag()
                items = [self._verify(d) for d in deliveries]
                if pending is not None:
                    down, pending = await pending, None
                    if down is not None:  # the database went away: this fetch goes back too
                        await self._hand_back(down, deliveries)
                        await self._until_storage(stop, self._refresh_trust)
                        continue
                if deliveries:
                    pending = asyncio.create_task(self._commit(deliveries, items), name="ingest-commit")
        finally:
            if pending is not None:  # commit and acknowledge what it holds before stopping
                with contextlib.suppress(Exception):
                    await pending

    # -- one fetch -------------------------------------------------------------------------------

    def _verify(self, d: Delivery) -> Item:
        gateway, kind, _ = topic_parts(d.topic, self.settings.prefix)
        if kind == "batch":
            return verify_batch(d.topic, d.data, self.trust, d.received_ns)
        if kind == "blob":
            return parse_blob_chunk(d.topic, d.data, d.received_ns)
        if kind == "status":
            return verify_heartbeat(d.topic, gateway, d.data, self.trust, d.received_ns)
        return None

    async def _commit(self, deliveries: Sequence[Delivery], items: list[Item]) -> StorageUnavailable | None:
        """Store one fetch and acknowledge it; when the database is away, hand it back to the
        broker and return why (the caller waits for the database)."""
        try:
            try:
                await self._store(_work(items))
            except StorageUnavailable:
                raise
            except Exception as e:  # not the database being away: find the message it is about
                log.error("ingest: storing %d messages failed (%s: %s); storing them one by one", len(items),
                          type(e).__name__, e)
                await self._one_by_one(deliveries, items)
        except StorageUnavailable as e:
            await self._hand_back(e, deliveries)
            return e
        self.metrics.ignored += sum(1 for i in items if i is None)
        for d in deliveries:
            with contextlib.suppress(Exception):  # a lost ack means a re-delivery, which stores nothing
                await d.ack()
        return None

    async def _store(self, work: Work) -> StoreReport:
        t0 = time.monotonic()
        report = await self.storage.store(work)
        self.metrics.stored(report, time.monotonic() - t0)
        self.metrics.committed(work.batches, time.time_ns())
        self.metrics.storage_up = True
        return report

    async def _one_by_one(self, deliveries: Sequence[Delivery], items: list[Item]) -> None:
        """Store each message alone; one the database refuses goes to the quarantine with the error.
        Raises StorageUnavailable when the database went away meanwhile."""
        for d, item in zip(deliveries, items, strict=True):
            try:
                await self._store(_work([item]))
            except StorageUnavailable:
                raise
            except Exception as e:
                log.error("ingest: message on %s cannot be stored (%s: %s); quarantined", d.topic,
                          type(e).__name__, e)
                await self._store(Work(refused=[Refused(STORE_FAILED, f"{type(e).__name__}: {e}"[:2000], d.topic,
                                                        topic_parts(d.topic)[0], b"", d.data, d.received_ns)]))

    # -- outages -------------------------------------------------------------------------------

    async def _hand_back(self, e: StorageUnavailable, deliveries: Sequence[Delivery]) -> None:
        """Give messages back to the broker (another worker may take them) while the database is away."""
        self.metrics.store_failures += 1
        self.metrics.storage_up = False
        for d in deliveries:
            with contextlib.suppress(Exception):  # not handed back: the broker re-delivers after its ack wait
                await d.retry(self.settings.retry_delay)
        self.metrics.handed_back += len(deliveries)
        if deliveries:
            log.warning("ingest: %s; %d messages handed back to the broker; retrying with backoff", e,
                        len(deliveries))

    async def _until_storage(self, stop: asyncio.Event, probe: Callable[[], Awaitable[None]]) -> bool:
        """Call ``probe`` until the database answers (True) or ``stop`` is set (False)."""
        backoff = Backoff(0.5, 10.0)
        started = time.monotonic()
        logged = False
        while not stop.is_set():
            try:
                await probe()
            except StorageUnavailable as e:
                if not logged:
                    log.warning("ingest: %s; retrying with backoff", e)
                    logged = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await stop.wait()
                continue
            self.metrics.storage_up = True
            if logged:
                log.info("ingest: the database answers again after %.0fs", time.monotonic() - started)
            return True
        return False

    async def _until_source(self, stop: asyncio.Event) -> bool:
        backoff = Backoff(0.5, 10.0)
        while not stop.is_set():
            try:
                await self.source.open()
                self.metrics.source_up = True
                return True
            except Exception as e:
                log.warning("ingest: cannot open %s: %s; retrying", self.source.name, e)
                with contextlib.suppress(Exception):
                    await self.source.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await stop.wait()
        return False

    async def _source_down(self, e: Exception, stop: asyncio.Event) -> None:
        if self.metrics.source_up:
            log.warning("ingest: fetching from %s failed (%s: %s); retrying", self.source.name, type(e).__name__, e)
        self.metrics.source_up = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()

    # -- housekeeping --------------------------------------------------------------------------

    async def _open_storage(self) -> None:
        await self.storage.open()
        await self._refresh_trust()

    async def _refresh_trust(self) -> None:
        """Load the registry when its version changed (StorageUnavailable when the database is away)."""
        snapshot = await self.storage.registry(self._version)
        if snapshot is not None:
            self._version, records = snapshot
            self.trust = RegistryTrust(records, self.settings.grace)
            log.info("ingest: trust registry version %d: %d keys", self._version, len(records))

    async def _housekeeping(self) -> None:
        now = time.monotonic()
        try:
            if now >= self._next_refresh:
                self._next_refresh = now + self.settings.refresh
                await self._refresh_trust()
            if now >= self._next_stats:
                self._next_stats = now + self.settings.stats_every
                self.metrics.gateways_missing, self.metrics.readings_missing = await self.storage.missing(
                    self.settings.tail_grace)
        except StorageUnavailable:
            pass  # the next store finds out, and hands its messages back


def _work(items: Sequence[Item]) -> Work:
    work = Work()
    for item in items:
        if isinstance(item, VerifiedBatch):
            work.batches.append(item)
        elif isinstance(item, BlobChunk):
            work.chunks.append(item)
        elif isinstance(item, Heartbeat):
            work.heartbeats.append(item)
        elif isinstance(item, Refused):
            work.refused.append(item)
    return work
