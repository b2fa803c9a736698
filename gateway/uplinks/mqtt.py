"""MQTT uplink: QoS 1 batches, a batch is acknowledged only by its PUBACK; retained
birth/death status with a last will; per-node retained status; reconnect with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import cbor2

from gateway import heartbeat
from gateway.config.schema import MqttUplink as MqttUplinkConfig
from gateway.mqtt import (
    MqttError,
    MqttSession,
    MqttSettings,
    batch_topic,
    health_topic,
    insecurities,
    node_topic,
    status_topic,
)
from gateway.scheduler import Backoff, NodeTracker
from gateway.wire import Batch

log = logging.getLogger("sensegate.uplink.mqtt")
BLOB_CHUNK = 64 * 1024
# MQTT 5 Maximum Packet Size of the downlink: pushed documents are at most 1 MiB
# (remote.max_document_bytes), so the broker never hands the gateway a larger message to read
MAX_DOWNLINK_PACKET = 1024 * 1024 + 64 * 1024


def _noop_ack(batch: Batch) -> None:
    pass


def _noop_state(up: bool) -> None:
    pass


def _noop_reject(batch: Batch, reason: str) -> None:
    pass  # a broker takes or drops a QoS 1 message; it never says a batch is bad


class MqttUplink:
    """One broker connection at a time, re-made with backoff and jitter after any loss."""

    def __init__(self, cfg: MqttUplinkConfig, gateway_id: str, nodes: NodeTracker) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.window = cfg.inflight
        self.gateway_id = gateway_id
        self.nodes = nodes
        self.on_ack: Callable[[Batch], None] = _noop_ack
        self.on_state: Callable[[bool], None] = _noop_state
        self.on_reject: Callable[[Batch, str], None] = _noop_reject
        self.errors = 0
        self.last_error = ""  # the last connect failure or loss, in words (quoted by the health gate)
        self.acked = 0
        self.latency_s = 0.0
        self.settings = MqttSettings.for_uplink(cfg, gateway_id, max_packet=MAX_DOWNLINK_PACKET)
        self.topic_prefix = cfg.topic_prefix
        self.topic = batch_topic(cfg.topic_prefix, gateway_id)
        self.status = status_topic(cfg.topic_prefix, gateway_id)
        self._session: MqttSession | None = None
        self._farewell = False  # the last heartbeat (state offline) went out: close publishes no plain one
        self._inflight: dict[int, tuple[Batch, float]] = {}
        self._task: asyncio.Task[None] | None = None
        self.boot = 0
        # downlink (remote config, commands): topic filters to subscribe on every connect, and the
        # handler that receives (topic, payload) for them; set by whoever owns that feature
        self._blob_progress = asyncio.Event()
        self.subscriptions: list[str] = []
        self.on_downlink: Callable[[str, bytes], None] | None = None
        nodes.listeners.append(self._node_changed)

    @property
    def downlink(self) -> MqttUplink:
        """It receives too: remote config and commands on subscribed topics."""
        return self

    @property
    def connected(self) -> bool:
        return self._session is not None

    @property
    def reachable(self) -> bool:
        return self._session is not None  # a session exists once the broker's CONNACK came

    async def probe(self) -> None:
        """Nothing to ask: the session (keepalive included) says whether the broker is there."""

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        for warning, fix in insecurities(self.settings):  # once per start, not per reconnect
            log.warning("%s: %s; %s", self.name, warning, fix)
        self._task = asyncio.create_task(self._run(), name=f"uplink:{self.name}")

    def _status(self, state: str) -> bytes:
        return json.dumps(heartbeat.status(state, self.gateway_id, self.boot), default=str).encode()

    def publish_health(self, payload: bytes, state: str = "online") -> bool:
        """Refresh the retained status and health topics with the signed health summary (the
        heartbeat, made by gateway/remote/health.py); with ``state`` "offline", the last one,
        in place of the plain offline status at close."""
        sent = self.publish(self.status, payload, retain=True)
        sent = self.publish(health_topic(self.cfg.topic_prefix, self.gateway_id), payload, retain=True) and sent
        self._farewell = self._farewell or (sent and state == "offline")
        return sent

    async def _run(self) -> None:
        backoff = Backoff(1.0, self.cfg.reconnect_max)
        outage_logged = False
        while True:
            session = MqttSession(self.settings, will=(self.status, self._status("offline")),
                                  on_publish=self._on_publish, on_message=self._on_message)
            try:
                await session.connect()
            except MqttError as e:
                self.errors += 1
                self.last_error = str(e)
                if not outage_logged:
                    log.warning("%s: %s; retrying with backoff", self.name, e)
                    outage_logged = True
                else:
                    log.debug("%s: %s", self.name, e)
                await asyncio.sleep(backoff.next())
                continue
            log.info("%s: connected to %s:%d", self.name, self.settings.host, self.settings.port)
            outage_logged = False
            backoff.reset()
            self._session = session
            session.client.publish(self.status, self._status("online"), qos=1, retain=True)
            for topic_filter in self.subscriptions:
                session.client.subscribe(topic_filter, qos=1)
            for node, online in self.nodes.state.items():
                self._publish_node(node, online, self.nodes.reason.get(node, ""))
            self.on_state(True)
            try:
                await session.closed.wait()
            finally:
                self._blob_progress.set()
                self._session = None
                self._inflight.clear()
                self.on_state(False)
            self.errors += 1
            self.last_error = f"connection lost ({session.close_reason or 'socket closed'})"
            log.warning("%s: connection lost (%s); reconnecting", self.name, session.close_reason or "socket closed")
            await session.close(graceful=False)
            await asyncio.sleep(backoff.next())

    def send(self, batch: Batch) -> None:
        session = self._session
        if session is None:
            raise ConnectionError("not connected")
        info = session.client.publish(self.topic, batch.data, qos=1)
        self._inflight[info.mid] = (batch, time.monotonic())

    def _on_publish(self, mid: int) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:  # status messages and blob chunks
            self._blob_progress.set()
            return
        batch, sent = entry
        self.acked += 1
        self.latency_s = time.monotonic() - sent
        self.on_ack(batch)

    async def send_blob(self, sha256: bytes, content_type: str, data: bytes) -> None:
        """Upload a blob in chunks (QoS 1) and return once the broker acknowledged every chunk.

        Topic ``<prefix>/<gw>/blob/<sha256 hex>``; each payload is CBOR
        ``[index, count, content_type, chunk]`` (docs/topics.md)."""
        session = self._session
        if session is None:
            raise ConnectionError("not connected")
        size = BLOB_CHUNK
        count = max(1, -(-len(data) // size))
        topic = f"{self.cfg.topic_prefix}/{self.gateway_id}/blob/{sha256.hex()}"
        infos = []
        for i in range(count):
            payload = cbor2.dumps([i, count, content_type, data[i * size : (i + 1) * size]])
            infos.append(session.client.publish(topic, payload, qos=1))
        async with asyncio.timeout(30 + len(data) / 100_000):
            while not all(info.is_published() for info in infos):
                if session.closed.is_set():
                    raise ConnectionError("connection lost during blob upload")
                self._blob_progress.clear()
                await self._blob_progress.wait()

    def _on_message(self, msg: Any) -> None:
        if self.on_downlink is not None:
            self.on_downlink(msg.topic, bytes(msg.payload))

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish a message other than a batch (status, command results); False when offline."""
        if self._session is None:
            return False
        self._session.client.publish(topic, payload, qos=1, retain=retain)
        return True

    def _publish_node(self, node: str, online: bool, reason: str) -> None:
        if self._session is None:
            return
        body = json.dumps({"state": "online" if online else "offline", "reason": reason,
                           "ts": round(time.time(), 3)}).encode()
        self._session.client.publish(node_topic(self.cfg.topic_prefix, self.gateway_id, node), body,
                                     qos=1, retain=True)

    def _node_changed(self, node: str, online: bool, reason: str) -> None:
        self._publish_node(node, online, reason)

    async def close(self) -> None:
        """Publish offline status, disconnect cleanly, stop reconnecting."""
        with contextlib.suppress(ValueError):
            self.nodes.listeners.remove(self._node_changed)
        session = self._session
        if session is not None and not self._farewell:  # (a last heartbeat said offline already)
            with contextlib.suppress(Exception):  # sent ahead of DISCONNECT, so the broker keeps it
                session.client.publish(self.status, self._status("offline"), qos=1, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if session is not None:
            await session.close()
