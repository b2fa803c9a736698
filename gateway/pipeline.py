"""The durable path: drivers -> buffer -> signed batches -> uplink -> acknowledged.

Batching policy: while nothing is in flight a batch goes out as soon as readings are
committed (low latency at low load); while batches are in flight the next one waits until it
is full (``batch.max_readings``) or its oldest reading is ``batch.max_age`` old (batches
grow at high load). Unacknowledged batches are re-sent, oldest first, after a reconnect and
after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from gateway.buffer import Batch, Buffer
from gateway.config.validate import GatewayConfig
from gateway.driver_api import Reading
from gateway.keys import KeyError_, alg_of, load_private_key
from gateway.scheduler import NodeTracker
from gateway.uplinks import Uplink

log = logging.getLogger("sensegate.pipeline")


class PipelineError(Exception):
    """The pipeline cannot start (key, buffer, uplink config); the message says what to fix."""


def key_path(cfg: GatewayConfig) -> Path:
    """The device key file a config uses."""
    g = cfg.config.gateway
    return Path(g.key_file) if g.key_file else Path(g.state_dir) / "keys" / "device.key"


def buffer_path(cfg: GatewayConfig) -> Path:
    """The buffer database a config uses."""
    c = cfg.config
    return Path(c.buffer.path) if c.buffer.path else Path(c.gateway.state_dir) / "buffer.db"


class BufferedPipeline:
    """Owns the buffer, the signing key and the uplink, and moves batches between them."""

    def __init__(self, cfg: GatewayConfig, nodes: NodeTracker) -> None:
        c = cfg.config
        self.cfg = cfg
        self.buffer = Buffer(buffer_path(cfg), c.gateway.id, c.buffer, c.batch)
        batch_uplinks = [u for u in c.uplinks if u.type != "jsonl"]
        if len(batch_uplinks) != 1 or len(c.uplinks) != 1:
            raise PipelineError("exactly one uplink is supported in this version (mqtt, or jsonl alone)")
        from gateway.uplinks.mqtt import MqttUplink

        self.uplink: Uplink = MqttUplink(batch_uplinks[0], c.gateway.id, nodes)
        self.uplink.on_ack = self._acked
        self.uplink.on_state = self._state
        self._queue: deque[Batch] = deque()  # signed, waiting to be (re)sent
        self._inflight: dict[int, Batch] = {}
        self._acks: deque[Batch] = deque()
        self._changed = asyncio.Event()
        self._pumped = asyncio.Event()
        self._since = 0.0  # monotonic time of the first commit not yet in a batch
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.key: Any = None
        self.batches_sent = 0

    async def start(self) -> None:
        path = key_path(self.cfg)
        try:
            self.key = load_private_key(path)
        except KeyError_ as e:
            raise PipelineError(str(e)) from None
        want = self.cfg.config.batch.alg
        if alg_of(self.key) != want:
            raise PipelineError(f"batch.alg is {want} but {path} is an {alg_of(self.key)} key")
        self.buffer.on_commit = self._committed
        await self.buffer.open()
        self._queue.extend(await self.buffer.outbox())
        if self._queue:
            log.info("re-sending %d unacknowledged batch(es) from before the restart", len(self._queue))
        self.uplink.boot = self.buffer.boot  # type: ignore[attr-defined]
        await self.uplink.start()
        self._task = asyncio.create_task(self._pump_loop(), name="pipeline")
        self._changed.set()

    def put(self, reading: Reading) -> None:
        self.buffer.put(reading)

    def _committed(self) -> None:
        if not self._since:
            self._since = time.monotonic()
        self._changed.set()

    def _acked(self, batch: Batch) -> None:
        self._acks.append(batch)
        self._changed.set()

    def _state(self, connected: bool) -> None:
        if not connected and self._inflight:
            # not acknowledged: send again, in order, ahead of anything newer
            self._queue.extendleft(sorted(self._inflight.values(), key=lambda b: b.bseq, reverse=True))
            self._inflight.clear()
        self._changed.set()

    def _due(self) -> bool:
        if not self._inflight:
            return True
        if self.buffer.unbatched() >= self.cfg.config.batch.max_readings:
            return True
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

    async def _pump_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self._pump()
            except Exception:
                log.exception("pipeline error; retrying")
                await asyncio.sleep(1.0)
                self._changed.set()

    async def _pump(self) -> None:
        while self._acks:
            batch = self._acks.popleft()
            self._inflight.pop(batch.bseq, None)
            await self.buffer.ack(batch)
        up = self.uplink
        while up.connected and len(self._inflight) < up.window:
            if self._queue:
                batch = self._queue.popleft()
            else:
                if not self._due():
                    break
                made = await self.buffer.make_batch(self.key)
                if made is None:
                    self._since = 0.0
                    break
                batch = made
                self._since = time.monotonic() if self.buffer.unbatched() > 0 else 0.0
            if not up.connected:
                self._queue.appendleft(batch)
                break
            self._inflight[batch.bseq] = batch
            up.send(batch)
            self.batches_sent += 1
        self.buffer.eager = not self._inflight
        self._pumped.set()

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and the status topic."""
        b = self.buffer.stats
        age = (time.time_ns() - b.oldest_ns) / 1e9 if b.oldest_ns else 0.0
        up = self.uplink
        return {
            "buffer": {"readings": b.readings, "bytes": b.bytes, "oldest_age_s": age,
                       "dropped": b.dropped, "committed": b.committed},
            "batches": {"sent": self.batches_sent, "acked": b.acked_batches,
                        "last_readings": b.last_batch_readings, "last_bytes": b.last_batch_bytes},
            "uplinks": {up.name: {"connected": up.connected, "inflight": len(self._inflight),
                                  "acked": getattr(up, "acked", 0), "errors": getattr(up, "errors", 0),
                                  "latency_s": getattr(up, "latency_s", 0.0)}},
        }

    async def drain(self, within: float) -> None:
        """Commit what is pending and let the uplink take what it can, for up to ``within`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.buffer.commit()
                self._changed.set()
                while self.uplink.connected and (self._inflight or self._queue or self.buffer.unbatched() > 0):
                    self._pumped.clear()
                    await self._pumped.wait()

    async def close(self, grace: float = 3.0) -> None:
        """Flush for up to ``grace`` seconds, then stop: nothing unsent is lost, it stays buffered."""
        if grace and self._task is not None:
            await self.drain(grace)
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            while self._acks:
                await self.buffer.ack(self._acks.popleft())
        await self.uplink.close()
        await self.buffer.close()
