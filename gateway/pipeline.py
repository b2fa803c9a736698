"""The durable path: drivers -> store -> batcher -> uplink(s) -> acknowledged.

The one place that joins the stages: the store (gateway/store/) keeps readings and batches, the
batcher (gateway/batcher.py) makes and signs each batch inside the store's transaction, and the
uplinks (gateway/uplinks/) carry them and report acknowledgements, which go back to the store.

Batching policy: while nothing is in flight a batch goes out as soon as readings are
committed (low latency at low load); while batches are in flight the next one waits until it
is full (``batch.max_readings``) or its oldest reading is ``batch.max_age`` old (batches
grow at high load). Unacknowledged batches are re-sent, oldest first, after a reconnect and
after a restart.

Several uplinks (``uplink_mode``):
* ``failover``: each batch goes over the first connected uplink in list order; one
  acknowledgement releases it. Batches in flight on an uplink that drops are re-sent over
  the next one; new batches return to the primary as soon as it is back.
* ``all``: each uplink gets every batch; a batch is released when every uplink has
  acknowledged it. Acknowledgements are stored, so after a restart each uplink is sent only
  what it has not acknowledged. A slow or absent uplink keeps its backlog on disk, not in
  memory, and does not hold up the others.

A batch an uplink refuses as bad (e.g. CoAP 4.00) goes to the dead-letter table instead of
being retried for ever. Blobs (camera images) are uploaded separately by the uplinks that can
(``send_blob``), and deleted once acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.batcher import Batcher
from gateway.bounded import abandon, settle, stop_task
from gateway.config.schema import CoapUplink as CoapUplinkConfig
from gateway.config.schema import MqttUplink as MqttUplinkConfig
from gateway.config.validate import GatewayConfig
from gateway.devicekey import DeviceKey, KeyFiles, open_current, prepare_next
from gateway.driver_api import Reading
from gateway.keys import KeyFileError, Signer, alg_of, fingerprint
from gateway.pkcs11uri import is_pkcs11
from gateway.scheduler import NodeTracker, Sink
from gateway.store import Store
from gateway.uplinks import Uplink
from gateway.wire import Batch

log = logging.getLogger("sensegate.pipeline")
TOKEN_OPEN_TIMEOUT = 30.0
"""Longest a start waits for a PKCS#11 token to load, log in and sign its probe."""
CLOSE_STEP = 2.0  # each step of a close before the buffer's (tasks, last acknowledgements, each uplink)


class PipelineError(Exception):
    """The pipeline cannot start (key, buffer, uplink config); the message says what to fix."""


def key_path(cfg: GatewayConfig) -> Path:
    """The device key file a config uses (for a token key: the directory its public key goes to)."""
    g = cfg.config.gateway
    return Path(g.key_file) if g.key_file and not is_pkcs11(g.key_file) else Path(g.state_dir) / "keys" / "device.key"


def key_files(cfg: GatewayConfig) -> KeyFiles:
    """The device key a config names, with its next key and rotation documents (gateway/devicekey.py)."""
    return KeyFiles.of(cfg.config.gateway.key_file, key_path(cfg))


async def open_device_key(cfg: GatewayConfig) -> Signer:
    """The signing key a config names: a PEM file, or a PKCS#11 token's key opened on a thread of
    its own (loading a token library and logging in block, and a hung token must not hang start).
    A key rotation a stop interrupted is finished first."""
    files = key_files(cfg)
    if not files.token:
        return open_current(files)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Signer] = loop.create_future()

    def settle(key: Signer | None, error: BaseException | None) -> None:
        if done.done():  # start gave up waiting; a key that came late is closed again
            if key is not None:
                key.close()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(key)  # type: ignore[arg-type]

    def opener() -> None:
        try:
            key = open_current(files)
        except Exception as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, key, None)

    threading.Thread(target=opener, name="token-open", daemon=True).start()
    try:
        async with asyncio.timeout(TOKEN_OPEN_TIMEOUT):
            return await asyncio.shield(done)
    except TimeoutError:
        done.cancel()
        raise KeyFileError(f"the PKCS#11 token did not answer within {TOKEN_OPEN_TIMEOUT:g} s") from None


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


@dataclass
class _Lane:
    """One uplink's share of the work."""

    uplink: Uplink
    pending: deque[int] = field(default_factory=deque)  # bseqs to (re)send, oldest first
    inflight: dict[int, Batch] = field(default_factory=dict)


class BufferedPipeline:
    """Owns the store, the batcher (with the signing key) and the uplinks, and moves batches
    between them."""

    def __init__(self, cfg: GatewayConfig, nodes: NodeTracker) -> None:
        c = cfg.config
        self.cfg = cfg
        self.mode = c.uplink_mode
        self.store = Store(buffer_path(cfg), c.gateway.id, c.buffer, c.batch)
        batch_uplinks = [u for u in c.uplinks if u.type != "jsonl"]
        if not batch_uplinks or len(batch_uplinks) != len(c.uplinks):
            raise PipelineError("a jsonl uplink cannot be combined with mqtt/coap uplinks; use it alone")
        self.lanes = [_Lane(make_uplink(u, c.gateway.id, nodes)) for u in batch_uplinks]
        self.required = frozenset(lane.uplink.name for lane in self.lanes) if self.mode == "all" else frozenset()
        for lane in self.lanes:
            lane.uplink.on_ack = self._ack_handler(lane)
            lane.uplink.on_state = self._state_handler(lane)
            lane.uplink.on_reject = self._reject_handler(lane)
        self._shared: deque[int] = deque()  # failover: bseqs waiting for any uplink
        self._events: deque[tuple[str, _Lane, Batch, str]] = deque()
        self._changed = asyncio.Event()
        self._pumped = asyncio.Event()
        self._since = 0.0  # monotonic time of the first commit not yet in a batch
        self._timer: asyncio.TimerHandle | None = None
        self._spacing_timer: asyncio.TimerHandle | None = None
        self._last_made = 0.0  # monotonic time the last batch was made
        self._blob_commits = 0
        self._task: asyncio.Task[None] | None = None
        self._blob_task: asyncio.Task[None] | None = None
        self._blob_wake = asyncio.Event()
        self.key: Signer | None = None
        self.device: DeviceKey | None = None
        self.batcher: Batcher | None = None  # made at start; signs with the device key of the moment
        self._signing = asyncio.Lock()  # a key switch happens between two batches, never during one
        self._sign_failing = 0.0  # monotonic time the key (a token) stopped signing; 0: it signs
        self.sign_errors = 0
        self._resumed = False  # the store's outbox is taken up (at start, or once the store opened)
        self.batches_sent = 0

    @property
    def uplink(self) -> Uplink:
        """The primary uplink (the first configured)."""
        return self.lanes[0].uplink

    @property
    def uplinks(self) -> list[Uplink]:
        return [lane.uplink for lane in self.lanes]

    async def start(self) -> None:
        try:
            self.key = await open_device_key(self.cfg)
        except KeyFileError as e:
            raise PipelineError(str(e)) from None
        self.device = DeviceKey(key_files(self.cfg), self.key, self.cfg.config.gateway.id)
        c = self.cfg.config
        if alg_of(self.key) != c.batch.alg:
            where = c.gateway.key_file or key_path(self.cfg)
            raise PipelineError(f"batch.alg is {c.batch.alg} but {where} is an {alg_of(self.key)} key")
        self.batcher = Batcher(self.key, c.gateway.id, c.batch)
        intake = self.store.intake
        intake.on_commit = self._committed
        intake.on_pending = self._readings_waiting
        self.store.on_open = self._store_opened
        await self.store.open()
        if self.store.opened.is_set():  # else (a full disk...) once it opens: see _pump
            await self._resume()
        for lane in self.lanes:
            await lane.uplink.start()
        self._task = asyncio.create_task(self._pump_loop(), name="pipeline")
        self._blob_task = asyncio.create_task(self._blob_loop(), name="blob-upload")
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
        for bseq, acked_by in outbox:
            if self.mode == "all":
                for lane in self.lanes:
                    if lane.uplink.name not in acked_by:
                        lane.pending.append(bseq)
            else:
                self._shared.append(bseq)
        for lane in self.lanes:
            lane.uplink.boot = self.store.boot
        self._resumed = True

    # -- callbacks from the store and the uplinks (on the loop, must not block) ----------------

    def _committed(self) -> None:
        if not self._since:
            self._since = time.monotonic()
        self._changed.set()
        if self.store.intake.blob_commits != self._blob_commits:  # a new image to upload
            self._blob_commits = self.store.intake.blob_commits
            self._blob_wake.set()

    def _store_opened(self) -> None:
        """The store's file could be opened at last (it could not at start)."""
        self._changed.set()
        self._blob_wake.set()

    def _readings_waiting(self) -> None:
        """Readings wait in memory and the uplink is idle: the next batch takes them."""
        if not self._since:
            self._since = time.monotonic()
        self._changed.set()

    def _ack_handler(self, lane: _Lane) -> Callable[[Batch], None]:
        def on_ack(batch: Batch) -> None:
            self._events.append(("ack", lane, batch, ""))
            self._changed.set()

        return on_ack

    def _reject_handler(self, lane: _Lane) -> Callable[[Batch, str], None]:
        def on_reject(batch: Batch, reason: str) -> None:
            self._events.append(("reject", lane, batch, reason))
            self._changed.set()

        return on_reject

    def _state_handler(self, lane: _Lane) -> Callable[[bool], None]:
        def on_state(connected: bool) -> None:
            if not connected and lane.inflight:
                # not acknowledged: send again, in order, ahead of anything newer
                back = sorted(lane.inflight)
                lane.inflight.clear()
                target = lane.pending if self.mode == "all" else self._shared
                target.extendleft(reversed(back))
            self._changed.set()
            self._blob_wake.set()
            if connected:
                self._announce(lane.uplink)

        return on_state

    # -- key rotation (gateway/devicekey.py) ---------------------------------------------------

    def _announce(self, uplink: Any) -> None:
        """Publish the retained rotation history (receivers that missed a rotation learn it)."""
        payload = self.device.announcement() if self.device is not None else None
        publish = getattr(uplink, "publish", None)  # MQTT; CoAP receivers learn it from the batches
        if payload is not None and publish is not None:
            from gateway.mqtt import keys_topic

            publish(keys_topic(uplink.cfg.topic_prefix, self.cfg.config.gateway.id), payload, retain=True)

    async def _switch(self) -> bytes:
        """Switch to the waiting next key at the next batch number (the caller holds ``_signing``)."""
        assert self.device is not None
        doc = await self.device.switch(self.store.stream, self.store.next_bseq)
        self.key = self.device.signer
        for lane in self.lanes:
            if lane.uplink.connected:
                self._announce(lane.uplink)
        return doc

    async def rotate_key(self) -> dict[str, Any]:
        """Make a next key (unless one waits) and switch to it now (the ``rotate_key`` command)."""
        assert self.device is not None
        if not self.store.opened.is_set():  # the switch is recorded at a batch number of the stream
            raise PipelineError("the buffer file cannot be opened yet (see the log): rotate once it is")
        alg = alg_of(self.device.signer)
        prepared = await asyncio.to_thread(prepare_next, self.device.files, alg)
        async with self._signing:
            at = self.store.next_bseq
            if self.device.files.next_public.exists():
                await self._switch()
            key = self.device.signer
            return {"kid": key.kid.hex(), "fingerprint": fingerprint(key.public_key()), "from_batch": at,
                    "stream": self.store.stream, "made": prepared.new}

    # -- the pump --------------------------------------------------------------------------

    def _inflight(self) -> int:
        return sum(len(lane.inflight) for lane in self.lanes)

    def _due(self) -> bool:
        if self.store.waiting() >= self.cfg.config.batch.max_readings:
            return True  # a full batch is there
        if not self._inflight():
            # at once, unless a batch was made less than batch.min_interval ago: then as soon as
            # that has passed (a busy trickle of readings becomes a few batches a second, not one
            # signed batch per reading, and waits at most min_interval)
            wait = self._last_made + self.cfg.config.batch.min_interval - time.monotonic()
            if wait <= 0:
                return True
            if self._spacing_timer is None:
                self._spacing_timer = asyncio.get_running_loop().call_later(wait, self._spacing_fired)
            return False
        age = time.monotonic() - self._since if self._since else 0.0
        if age >= self.cfg.config.batch.max_age:
            return True
        if self._since and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.cfg.config.batch.max_age - age, self._timer_fired)
        return False

    def _timer_fired(self) -> None:
        self._timer = None
        self._changed.set()

    def _spacing_fired(self) -> None:
        self._spacing_timer = None
        self._changed.set()

    async def _pump_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._pump()
            except KeyFileError:  # the key cannot sign (said once by _sign_failed): readings stay buffered
                await asyncio.sleep(1.0)
                self._changed.set()
            except Exception:
                log.exception("pipeline error; retrying")
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _handle_events(self) -> None:
        while self._events:
            acks: list[tuple[Batch, str]] = []
            while self._events:
                kind, lane, batch, reason = self._events.popleft()
                lane.inflight.pop(batch.bseq, None)
                if kind == "reject":
                    log.error("%s refused batch %d as bad (%s); kept in the dead-letter table",
                              lane.uplink.name, batch.bseq, reason)
                    await self.store.dead_letter(batch, lane.uplink.name, reason)
                acks.append((batch, lane.uplink.name))
            released = await self.store.ack_many(acks, self.required)
            if self.mode == "all":
                for (batch, _), done in zip(acks, released, strict=True):
                    if done:  # acknowledged everywhere: nothing left to send
                        for other in self.lanes:
                            with contextlib.suppress(ValueError):
                                other.pending.remove(batch.bseq)

    async def _next_new(self) -> Batch | None:
        """Sign the next batch if the policy says it is time."""
        if not self._due():
            return None
        assert self.device is not None and self.batcher is not None
        if self.device.busy:  # a switch whose wait was cancelled is still finishing
            return None
        async with self._signing:
            if self.device.waiting():  # `sensegate keys rotate` made a next key
                try:
                    await self._switch()
                except (KeyFileError, OSError) as e:
                    log.error("cannot switch to the next device key (%s); signing with the current one", e)
            self.key = self.device.signer
            carry = self.device.carry(self.store.stream, self.store.next_bseq)
            self.batcher.use(self.key, carry.get("kr") if carry else None)
            try:
                made = await self.store.make_batch(self.batcher)
            except KeyFileError as e:
                self._sign_failed(e)
                raise
        if self._sign_failing and made is not None:
            log.warning("the device key signs again, after %.0f s and %d failed attempt(s)",
                        time.monotonic() - self._sign_failing, self.sign_errors)
            self._sign_failing = 0.0
        if made is None:
            self._since = 0.0
            return None
        self._last_made = time.monotonic()
        self._since = time.monotonic() if self.store.unbatched() > 0 else 0.0
        if self.mode == "all":
            for lane in self.lanes:
                lane.pending.append(made.bseq)
        else:
            self._shared.append(made.bseq)
        return made

    def _sign_failed(self, e: KeyFileError) -> None:
        """Count a batch the key could not sign; say it once per outage, not once a second."""
        self.sign_errors += 1
        if not self._sign_failing:
            self._sign_failing = time.monotonic()
            log.error("cannot sign batches: %s; readings stay buffered, trying again every second", e)

    async def _load(self, bseq: int, fresh: Batch | None) -> Batch | None:
        if fresh is not None and fresh.bseq == bseq:
            return fresh
        for lane in self.lanes:
            if bseq in lane.inflight:
                return lane.inflight[bseq]
        return await self.store.load_batch(bseq)

    def _send(self, lane: _Lane, batch: Batch) -> None:
        lane.inflight[batch.bseq] = batch
        lane.uplink.send(batch)
        self.batches_sent += 1

    async def _pump(self) -> None:
        if not self._resumed:
            if not self.store.opened.is_set():
                return  # nothing can be batched before the store's file is open
            await self._resume()
        await self._handle_events()
        fresh: Batch | None = None
        if self.mode == "all":
            # each lane sends its own backlog; a new batch is made when a connected lane is idle
            while True:
                progress = False
                for lane in self.lanes:
                    up = lane.uplink
                    while up.connected and len(lane.inflight) < up.window:
                        if not lane.pending:
                            fresh = await self._next_new()
                            if fresh is None:
                                break
                        bseq = lane.pending.popleft()
                        batch = await self._load(bseq, fresh)
                        if batch is None:
                            continue
                        self._send(lane, batch)
                        progress = True
                if not progress:
                    break
        else:
            while True:
                free = next((ln for ln in self.lanes if ln.uplink.connected
                             and len(ln.inflight) < ln.uplink.window), None)
                if free is None:
                    break
                lane = free
                if not self._shared:
                    fresh = await self._next_new()
                    if fresh is None:
                        break
                bseq = self._shared.popleft()
                batch = await self._load(bseq, fresh)
                if batch is None:
                    continue
                if not lane.uplink.connected:
                    self._shared.appendleft(bseq)
                    continue
                self._send(lane, batch)
        self.store.intake.eager = not self._inflight()
        self._pumped.set()

    # -- blobs -----------------------------------------------------------------------------

    async def _blob_loop(self) -> None:
        """Upload stored blobs, oldest first, over the first connected uplink that can."""
        while True:
            await self._blob_wake.wait()
            self._blob_wake.clear()
            try:
                await self._upload_blobs()
            except Exception:  # e.g. disk full when deleting an uploaded blob: it is sent again later
                log.exception("blob upload error; retrying")
                await asyncio.sleep(1.0)
                self._blob_wake.set()

    async def _upload_blobs(self) -> None:
        while self.store.opened.is_set():
            up = next((u for u in self.uplinks if u.connected), None)
            if up is None:
                return
            blob = await self.store.next_blob()
            if blob is None:
                return
            sha, content_type, data = blob
            try:
                await up.send_blob(sha, content_type, data)
            except (ConnectionError, TimeoutError) as e:
                log.info("blob upload over %s interrupted (%s); will resume", up.name, e)
                await asyncio.sleep(1.0)
                continue
            await self.store.blob_done(sha)

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
        connected = [ln for ln in self.lanes if ln.uplink.connected]
        if not connected:
            return False
        if self._events or self.store.unbatched() > 0:
            return True
        if self.mode == "all":
            return any(ln.inflight or ln.pending for ln in connected)
        return bool(self._shared) or any(ln.inflight for ln in self.lanes)

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and the status topic."""
        b = self.store.stats
        age = (time.time_ns() - b.oldest_ns) / 1e9 if b.oldest_ns else 0.0
        return {
            "buffer": {"readings": b.readings, "bytes": b.bytes, "oldest_age_s": age,
                       "dropped": b.dropped, "committed": b.committed, "dead_letters": b.dead_letters,
                       "blobs_dropped": b.blobs_dropped, "group_commits": b.group_commits,
                       "fsyncs": b.reservations + b.syncs, "skipped_unclean": b.skipped_unclean},
            "batches": {"sent": self.batches_sent, "acked": b.acked_batches, "sign_errors": self.sign_errors,
                        "last_readings": b.last_batch_readings, "last_bytes": b.last_batch_bytes},
            "uplinks": {lane.uplink.name: {"connected": lane.uplink.connected, "inflight": len(lane.inflight),
                                           "acked": lane.uplink.acked, "errors": lane.uplink.errors,
                                           "latency_s": lane.uplink.latency_s}
                        for lane in self.lanes},
        }

    async def close(self, grace: float = 3.0) -> None:
        """Flush for up to ``grace`` seconds, then stop: nothing unsent is lost, it stays buffered.

        Each step before the buffer's close is bounded (CLOSE_STEP, gateway.bounded), so the
        buffer's last commit of what the drivers emitted is reached whatever an uplink does; the
        caller bounds the whole (the daemon's shutdown deadline)."""
        if grace and self._task is not None:
            await self.drain(grace)
        for timer in (self._timer, self._spacing_timer):
            if timer is not None:
                timer.cancel()
        for task in (self._task, self._blob_task):
            if task is not None and not await stop_task(task, (CLOSE_STEP,)):
                abandon(task, f"pipeline task {task.get_name()} would not stop")
        await settle(self._handle_events(), CLOSE_STEP, "recording the last acknowledgements")
        await asyncio.gather(*(settle(lane.uplink.close(), CLOSE_STEP, f"closing uplink {lane.uplink.name}")
                               for lane in self.lanes))
        await self.store.close()
        if self.device is not None:
            self.device.close()  # a token's session; nothing for a PEM key
        elif self.key is not None:
            self.key.close()
