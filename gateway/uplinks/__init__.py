"""Uplinks carry signed batches off the gateway and report acknowledgements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.wire import Batch


class Uplink(Protocol):
    """What the pipeline needs from an uplink."""

    name: str
    window: int  # batches it may have in flight
    on_ack: Callable[[Batch], None]  # set by the pipeline
    on_state: Callable[[bool], None]  # connected / disconnected

    @property
    def connected(self) -> bool: ...

    @property
    def reachable(self) -> bool:
        """The far end answered since the uplink last came up (MQTT: the broker's CONNACK, the
        same as ``connected``; CoAP over UDP, where ``connected`` is optimistic: an answer)."""

    async def probe(self) -> None:
        """Ask the far end for an answer when there is nothing to send, so that ``reachable`` or
        a loss of ``connected`` follows soon (the remote-config health gate asks)."""

    async def start(self) -> None: ...

    def send(self, batch: Batch) -> None:
        """Start sending; ``on_ack(batch)`` follows on success. Never blocks."""

    async def close(self) -> None: ...
