"""Batches from an MQTT broker (mosquitto on a site): a persistent session, QoS 1, manual PUBACK.

The ingest subscribes with a fixed client id and a persistent session (clean session off), so
the broker queues batches while the ingest is away, and it acknowledges each delivery itself
(paho's manual ack) only after the transaction that stored it committed. A message that was
delivered but not acknowledged when the connection ends is sent again by the broker on the
next connection (MQTT 3.1.1 section 4.4). To hand messages back (``retry``) the source
therefore drops the connection without acknowledging, and makes a new one.

One process holds the session: the embedded default runs one ingest per broker. mosquitto keeps
at most ``max_queued_messages`` (default 1000) per session while the ingest is away and drops
the rest; the ledger shows any such loss as missing readings (docs/ingest.md: raise the limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.mqtt import MqttSession, MqttSettings, connect_retrying
from gateway.scheduler import Backoff

log = logging.getLogger("sensegate.ingest.mqtt")


@dataclass
class MqttDelivery:
    """A QoS 1 message; its PUBACK is sent by ``ack`` on the session that delivered it."""

    topic: str
    data: bytes
    received_ns: int
    mid: int
    session: MqttSession
    source: MqttSource

    async def ack(self) -> None:
        if not self.session.closed.is_set():  # else the broker sends it again on the next session
            self.session.client.ack(self.mid, 1)

    async def retry(self, delay: float) -> None:
        await self.source.redeliver(self.session, delay)


class MqttSource:
    """One persistent MQTT session subscribed to every gateway's batches and blobs."""

    name = "mqtt"

    def __init__(self, settings: MqttSettings, prefix: str = "sensegate") -> None:
        self.settings = settings
        self.prefix = prefix
        self._queue: asyncio.Queue[MqttDelivery] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._session: MqttSession | None = None
        self._reconnect_after = 0.0
        self._age = 0.0
        self.connected = asyncio.Event()

    async def open(self) -> None:
        log.info("mqtt: the broker keeps batches for this ingest's session while it is away or behind, up to its "
                 "limit (mosquitto: max_queued_messages, 1000 unless raised), then drops them silently and the "
                 "ledger shows them missing; raise it (docs/ingest.md, Quick start)")
        self._task = asyncio.create_task(self._run(), name="ingest-mqtt")
        try:  # the first session: the broker must know our subscription before gateways publish
            async with asyncio.timeout(15):
                await self.connected.wait()
        except TimeoutError:
            log.warning("mqtt: not connected to %s:%d yet; still trying", self.settings.host, self.settings.port)

    async def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        topics = [f"{self.prefix}/+/batch", f"{self.prefix}/+/blob/+", f"{self.prefix}/+/status"]  # status: heartbeats
        while True:
            session = await connect_retrying(self._new_session, backoff, lambda e: log.warning("mqtt: %s; retrying", e))
            # ready only once the broker has acknowledged the subscriptions: a gateway started
            # after "taking batches" must not publish into a session the broker has no filter for
            if not await session.subscribe_each(topics, qos=1):
                log.warning("mqtt: the broker did not acknowledge the subscriptions; connecting again")
                await session.close(graceful=False)
                await asyncio.sleep(backoff.next())
                continue
            self._session = session
            self.connected.set()
            try:
                await session.closed.wait()
            finally:
                self.connected.clear()
                self._session = None
                self._drain(session)
                await session.close(graceful=False)
            if self._reconnect_after:
                await asyncio.sleep(self._reconnect_after)
                self._reconnect_after = 0.0

    def _new_session(self) -> MqttSession:
        session = MqttSession(self.settings)
        session.client.manual_ack_set(True)  # PUBACK after the commit, not when paho hands the message over
        session.client.on_message = lambda c, u, msg, s=session: self._on_message(s, msg)
        return session

    def _on_message(self, session: MqttSession, msg: Any) -> None:
        self._queue.put_nowait(MqttDelivery(msg.topic, bytes(msg.payload), time.time_ns(), msg.mid, session, self))

    def _drain(self, session: MqttSession) -> None:
        """Forget deliveries of a dead session: the broker sends them again on the next one."""
        keep = []
        while not self._queue.empty():
            d = self._queue.get_nowait()
            if d.session is not session:
                keep.append(d)
        for d in keep:
            self._queue.put_nowait(d)

    async def redeliver(self, session: MqttSession, delay: float) -> None:
        """Hand back every unacknowledged delivery of ``session``: disconnect without their PUBACKs
        (the broker keeps them in the persistent session) and connect again after ``delay``."""
        if session is self._session and not session.closed.is_set():
            self._reconnect_after = delay
            await session.close()

    async def fetch(self, max_messages: int, wait: float) -> Sequence[MqttDelivery]:
        try:
            async with asyncio.timeout(wait):
                first = await self._queue.get()
        except TimeoutError:
            return []
        out = [first]
        while len(out) < max_messages and not self._queue.empty():
            out.append(self._queue.get_nowait())
        self._age = max(0.0, (time.time_ns() - out[-1].received_ns) / 1e9)
        return out

    def lag(self) -> tuple[int, float]:
        return self._queue.qsize(), self._age

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
