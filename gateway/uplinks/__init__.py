"""The uplink contract: what the pipeline asks of every uplink, and what an uplink reports back.

An uplink carries signed batches off the gateway and says, for each, whether it was taken
(``on_ack``) or refused as bad (``on_reject``); it reports its connection (``on_state``) and
keeps a few counters for metrics. It also uploads blobs (images) and publishes the gateway's
health where its transport has a place for it. Every call from the pipeline is made on the
event loop and must not block. Two uplinks ship: ``mqtt.MqttUplink`` and ``coap.CoapUplink``;
a new one implements ``Uplink`` (mypy checks it where the pipeline builds it, in
``gateway.pipeline.make_uplink``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.wire import Batch

if TYPE_CHECKING:
    from gateway.mqtt import MqttSettings


class BatchCarrier(Protocol):
    """Sends batches and reports each one's fate."""

    name: str
    boot: int  # the store's boot counter, set by the pipeline before start (status messages carry it)
    on_ack: Callable[[Batch], None]  # set by the pipeline: the batch was taken; it may be forgotten
    on_reject: Callable[[Batch, str], None]  # set by the pipeline: refused as bad (dead-lettered), with why
    on_state: Callable[[bool], None]  # set by the pipeline: connected / disconnected

    @property
    def window(self) -> int:
        """How many batches it may have in flight now."""

    @property
    def connected(self) -> bool:
        """Whether ``send`` can be called now."""

    @property
    def reachable(self) -> bool:
        """The far end answered since the uplink last came up (MQTT: the broker's CONNACK, the
        same as ``connected``; CoAP over UDP, where ``connected`` is optimistic: an answer)."""

    async def probe(self) -> None:
        """Ask the far end for an answer when there is nothing to send, so that ``reachable`` or
        a loss of ``connected`` follows soon (the remote-config health gate asks)."""

    async def start(self) -> None:
        """Begin connecting (returns at once; ``on_state(True)`` follows)."""

    def send(self, batch: Batch) -> None:
        """Start sending; ``on_ack(batch)`` or ``on_reject(batch, why)`` follows, or, when the
        connection drops first, ``on_state(False)`` (the pipeline re-sends). Never blocks."""

    async def close(self) -> None:
        """Stop: abandon what is in flight (it stays in the store)."""


class Downlink(Protocol):
    """The receiving half of an uplink whose transport also carries messages to the gateway
    (MQTT: remote config and commands arrive on subscribed topics; gateway.remote uses it)."""

    name: str
    topic_prefix: str
    subscriptions: list[str]  # topic filters subscribed on every connect
    on_downlink: Callable[[str, bytes], None] | None  # set by gateway.remote: (topic, payload)
    on_state: Callable[[bool], None]  # the uplink's own, which gateway.remote chains onto
    settings: MqttSettings  # its session's, for a second session of the gateway's own (an agent update's download)

    @property
    def connected(self) -> bool: ...

    @property
    def reachable(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Publish a message other than a batch (status, command results); False when offline."""


class UplinkCounters(Protocol):
    """What metrics and the status topic report per uplink."""

    acked: int  # batches acknowledged
    errors: int  # connection failures and losses
    latency_s: float  # send to acknowledgement, of the last batch acknowledged


class BlobCarrier(Protocol):
    """Uploads blobs (camera images), which travel apart from the batches that name them."""

    async def send_blob(self, sha256: bytes, content_type: str, data: bytes) -> None:
        """Upload one blob; return once the far end has all of it. Raises ConnectionError
        (or TimeoutError) when it could not; the pipeline tries again later."""


class HealthPublisher(Protocol):
    """Publishes the gateway's signed status, the heartbeat (the health summary with ``issued``,
    signed by gateway/remote/health.py: gateway/heartbeat.py), where the transport can."""

    def publish_health(self, payload: bytes, state: str = "online") -> bool:
        """Publish the signed status retained; False when this uplink cannot now (offline, or no
        place for it). ``state`` "offline": the last one of a clean stop, which takes the place
        of the plain offline status."""


class Uplink(BatchCarrier, UplinkCounters, BlobCarrier, HealthPublisher, Protocol):
    """Everything the pipeline (and remote config) uses of an uplink."""

    @property
    def downlink(self) -> Downlink | None:
        """Its receiving half, or None when its transport has none (CoAP: pushes to a CoAP-only
        gateway go to its own CoAP resource, gateway/remote/coap_resource.py)."""
