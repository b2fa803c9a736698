"""Batches from a NATS cluster whose MQTT listeners take the gateways' QoS 1 publishes.

What nats-server does with an MQTT QoS 1 PUBLISH (server/mqtt.go, 2.9 to 2.14 alike): it
delivers the message to NATS subscribers (subject = the topic with ``/`` -> ``.``), then stores
a copy in its own JetStream stream ``$MQTT_msgs`` as ``$MQTT.msgs.<subject>`` and waits for
that store to be acknowledged (replicated to a quorum when the stream has replicas) before it
sends the PUBACK. A stream of our own that captures ``sensegate.*.batch`` is fed by the first
step, which nobody waits for: a PUBACK does NOT mean such a stream holds the batch. So the
ingest reads ``$MQTT_msgs`` itself, through a durable pull consumer filtered on
``$MQTT.msgs.<prefix>.>``: the copy the PUBACK waited for is the copy the ingest takes.

``$MQTT_msgs`` has the interest retention policy: a message that no consumer wants when it
arrives is acknowledged to the gateway and dropped. The durable consumer must therefore exist
before gateways publish; ``open`` creates it (and the stream, with nats-server's own settings,
if no MQTT client has connected yet), and it outlives every worker. All workers share it: each
message goes to one of them, and comes back to another if it is not acknowledged within
``ack_wait`` or is handed back with ``retry``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.msg import Msg
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
except ImportError as e:  # pragma: no cover - the fleet extra is missing
    raise ImportError("NATS needs the fleet extra: pip install 'sensegate[fleet]'") from e

log = logging.getLogger("sensegate.ingest.nats")
STREAM = "$MQTT_msgs"  # nats-server's stream of MQTT QoS 1/2 messages (server/mqtt.go mqttStreamName)
SUBJECT_PREFIX = "$MQTT.msgs."
DURABLE = "sensegate-ingest"
FILL = 0.05  # once a message is there, how long a fetch waits for more to fill its transaction
OPEN_WITHIN = 60.0  # seconds a starting worker waits for JetStream to answer (leader elections)


def subject_topic(subject: str) -> str:
    """``$MQTT.msgs.sensegate.gw-1.batch`` -> ``sensegate/gw-1/batch`` (our topics have no ``.``)."""
    return subject.removeprefix(SUBJECT_PREFIX).replace(".", "/")


@dataclass
class NatsDelivery:
    """A JetStream message, acknowledged (or handed back) explicitly."""

    topic: str
    data: bytes
    received_ns: int
    msg: Msg

    async def ack(self) -> None:
        await self.msg.ack()

    async def retry(self, delay: float) -> None:
        await self.msg.nak(delay=delay)


class NatsSource:
    """A durable pull consumer on ``$MQTT_msgs``, shared by every worker."""

    name = "nats"

    def __init__(self, servers: list[str], prefix: str = "sensegate", durable: str = DURABLE,
                 ack_wait: float = 60.0, max_ack_pending: int = 50_000, replicas: int = 0) -> None:
        self.servers = servers
        self.prefix = prefix
        self.durable = durable
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.replicas = replicas or min(3, len(servers))
        self._nc: Any = None
        self._sub: Any = None
        self._pending = 0
        self._age = 0.0

    async def open(self) -> None:
        self._nc = await nats.connect(
            servers=self.servers, name=f"{self.durable}-worker", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            connect_timeout=5, error_cb=self._error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected)
        js = self._nc.jetstream(timeout=10)
        # a cluster that is electing its JetStream leaders (a node just restarted) answers 503
        # "temporarily unavailable" or not at all for a while, even where a stream has its quorum
        # again: a worker starting then waits for it (bounded), it does not fail
        loop = asyncio.get_running_loop()
        give_up = loop.time() + OPEN_WITHIN
        while True:
            try:
                await self._ensure(js)
                self._sub = await js.pull_subscribe_bind(self.durable, stream=STREAM)
                return
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                    nats.errors.NoRespondersError) as e:
                if loop.time() >= give_up:
                    raise
                log.warning("nats: JetStream not ready (%s); trying again", e)
                await asyncio.sleep(1.0)

    async def _ensure(self, js: Any) -> None:
        """The stream (as nats-server makes it) and our durable consumer, made when missing."""
        try:
            await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            log.info("creating %s with %d replicas (no MQTT client has connected yet)", STREAM, self.replicas)
            try:
                await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT_PREFIX + ">"],
                                                 storage=StorageType.FILE, retention=RetentionPolicy.INTEREST,
                                                 num_replicas=self.replicas))
            except nats.js.errors.BadRequestError:  # another worker (or nats-server) made it first
                await js.stream_info(STREAM)
        want = f"{SUBJECT_PREFIX}{self.prefix}.>"
        try:
            info = await js.consumer_info(STREAM, self.durable)
            if info.config.filter_subject != want:
                raise RuntimeError(f"consumer {self.durable} on {STREAM} takes {info.config.filter_subject}, "
                                   f"not {want}: another ingest uses that name")
            return
        except nats.js.errors.NotFoundError:
            pass
        log.info("creating the durable consumer %s on %s for %s", self.durable, STREAM, want)
        await js.add_consumer(STREAM, ConsumerConfig(
            durable_name=self.durable, filter_subject=want, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, ack_wait=self.ack_wait, max_deliver=-1,
            max_ack_pending=self.max_ack_pending))

    async def fetch(self, max_messages: int, wait: float) -> Sequence[NatsDelivery]:
        """The first message (waiting up to ``wait``), then what else is there within FILL seconds:
        nats-py's fetch of N would wait up to ``wait`` for all N, which a trickle of batches turns
        into ``wait`` of latency each."""
        try:
            msgs = await self._sub.fetch(batch=1, timeout=wait)
        except TimeoutError:  # nothing within ``wait`` (nats-py raises its own subclass, or the builtin)
            return []
        if max_messages > 1:
            try:
                msgs += await self._sub.fetch(batch=max_messages - 1, timeout=FILL)
            except TimeoutError:
                pass
        now = time.time_ns()
        out = []
        for m in msgs:
            try:
                meta = m.metadata
                stored = int(meta.timestamp.timestamp() * 1e9)
                self._pending = meta.num_pending
            except (ValueError, IndexError, AttributeError):  # not a JetStream message: cannot happen here
                stored = now
            self._age = max(0.0, (now - stored) / 1e9)
            out.append(NatsDelivery(subject_topic(m.subject), m.data, stored, m))
        return out

    def lag(self) -> tuple[int, float]:
        return self._pending, self._age

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            await nc.close()  # nats-py bounds its own drain and close

    async def _error(self, e: Exception) -> None:
        log.debug("nats: %s", e)

    async def _disconnected(self) -> None:
        log.warning("nats: disconnected; reconnecting to another server")

    async def _reconnected(self) -> None:
        log.info("nats: reconnected to %s", self._nc.connected_url.netloc if self._nc else "?")
