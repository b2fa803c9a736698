"""The simulated fleet's MQTT: a few connections carrying many gateways' topics, QoS 1, re-sent
until acknowledged.

Gateway ``i`` always publishes over connection ``i % connections`` (connection ``j`` goes to
broker URL ``j % len(urls)``: the nodes of a cluster), so its batches reach the broker in the
order it made them. A message counts as delivered when its PUBACK comes; a
connection that drops is made again and everything it had not had acknowledged is published
again, as the gateway's uplink does (the ingest stores such a re-send once). Each connection
holds at most ``window`` messages unacknowledged; ``publish`` waits for room. MQTT 3.1.1, the
protocol a NATS cluster speaks.

One connection per gateway (``connections = gateways``) is what a real fleet opens; fewer keep a
simulation of 10,000 gateways from measuring the broker's connection handling instead of the
ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable

from gateway.mqtt import MqttError, MqttSession, MqttSettings, connect_retrying
from gateway.scheduler import Backoff

log = logging.getLogger("sensegate.simulate")


class _Connection:
    """One MQTT connection and what it has not had acknowledged, in publish order."""

    def __init__(self, settings: MqttSettings, window: int) -> None:
        self.settings = settings
        self.window = window
        self.session: MqttSession | None = None
        self.unacked: dict[int, tuple[str, bytes, bool]] = {}  # mid -> (topic, payload, retain), in order
        self.room = asyncio.Event()
        self.room.set()
        self.up = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.acked = 0
        self.resent = 0

    def _on_publish(self, mid: int) -> None:
        if self.unacked.pop(mid, None) is not None:
            self.acked += 1
            if len(self.unacked) < self.window:
                self.room.set()

    async def run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            session = await connect_retrying(self._session, backoff,
                                             lambda e: log.warning("simulate: %s; retrying", e))
            again = list(self.unacked.values())  # what the last connection left unacknowledged
            self.unacked.clear()
            self.session = session
            for topic, payload, retain in again:
                self._send(topic, payload, retain)
            self.resent += len(again)
            self.up.set()
            try:
                await session.closed.wait()
            finally:
                self.up.clear()
                self.session = None
                await session.close(graceful=False)
            log.warning("simulate: connection %s lost; re-sending %d unacknowledged", self.settings.client_id,
                        len(self.unacked))

    def _session(self) -> MqttSession:
        session = MqttSession(self.settings, on_publish=self._on_publish)
        session.client.max_inflight_messages_set(self.window)
        session.client.max_queued_messages_set(0)
        return session

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        assert self.session is not None
        info = self.session.client.publish(topic, payload, qos=1, retain=retain)
        self.unacked[info.mid] = (topic, payload, retain)
        if len(self.unacked) >= self.window:
            self.room.clear()

    async def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        while True:
            await self.room.wait()
            await self.up.wait()
            if self.session is not None and len(self.unacked) < self.window:
                self._send(topic, payload, retain)
                return


class MqttFleet:
    """``connections`` MQTT sessions shared by a simulated fleet."""

    def __init__(self, urls: list[str], connections: int, window: int = 256, **tls: str) -> None:
        tag = f"sensegate-sim-{os.getpid()}"
        self.conns = [_Connection(MqttSettings.from_url(urls[i % len(urls)], client_id=f"{tag}-{i}", protocol="3.1.1",
                                                        **tls), window) for i in range(max(1, connections))]

    async def open(self, within: float = 30.0) -> None:
        """Connect every session; MqttError when the broker does not take them within ``within`` s."""
        for c in self.conns:
            c.task = asyncio.create_task(c.run(), name=f"simulate:{c.settings.client_id}")
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(c.up.wait() for c in self.conns))
        except TimeoutError:
            await self.close()
            s = self.conns[0].settings
            raise MqttError(f"the broker at {s.host}:{s.port} did not take the simulator's connections within "
                            f"{within:g}s") from None

    async def publish(self, gateway_index: int, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish on the gateway's connection (waits while its window is full or it reconnects)."""
        await self.conns[gateway_index % len(self.conns)].publish(topic, payload, retain)

    @property
    def unacked(self) -> int:
        return sum(len(c.unacked) for c in self.conns)

    @property
    def acked(self) -> int:
        return sum(c.acked for c in self.conns)

    @property
    def resent(self) -> int:
        return sum(c.resent for c in self.conns)

    async def drain(self, within: float, progress: Callable[[], None] | None = None) -> bool:
        """Until every message is acknowledged (True) or ``within`` s passed (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.unacked:
                    if progress is not None:
                        progress()
                    await asyncio.sleep(0.05)
                return True
        return False

    async def close(self) -> None:
        for c in self.conns:
            task, c.task = c.task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if c.session is not None:
                await c.session.close()
