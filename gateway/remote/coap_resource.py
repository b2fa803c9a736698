"""CoAP face of remote configuration: ops PUT a signed config to the gateway's own resource.

When ``remote.coap_listen`` is set the gateway listens there (UDP) with two resources:

* ``PUT /sensegate/config``: the same signed document as an MQTT push (content-format 18,
  COSE_Sign1). The answer is 2.04 once it is queued (4.13 if oversized, 5.03 if busy); the
  outcome follows as a status, exactly as for MQTT.
* ``GET /sensegate/config/status``: the latest status as JSON (observable), so an ops tool
  without MQTT (or libcoap's ``coap-client``) can wait for applied / rejected / rolled back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import resource

log = logging.getLogger("sensegate.remote.coap")
JSON = 50  # application/json


class ConfigResource(resource.Resource):  # type: ignore[misc]
    """Takes pushes; hands the bytes to the agent's queue."""

    def __init__(self, take: Callable[[bytes], bool], max_bytes: int) -> None:
        super().__init__()
        self._take = take
        self._max = max_bytes

    async def render_put(self, request: Any) -> Any:
        if len(request.payload) > self._max:
            return aiocoap.Message(
                code=aiocoap.REQUEST_ENTITY_TOO_LARGE, payload=f"larger than {self._max} bytes".encode()
            )
        if not self._take(bytes(request.payload)):
            return aiocoap.Message(code=aiocoap.SERVICE_UNAVAILABLE, payload=b"busy: push again later")
        return aiocoap.Message(code=aiocoap.CHANGED, payload=b"queued; see /sensegate/config/status")


class StatusResource(resource.ObservableResource):  # type: ignore[misc]
    """The latest config status, observable."""

    def __init__(self) -> None:
        super().__init__()
        self.body = b"{}"

    def update(self, body: bytes) -> None:
        self.body = body
        self.updated_state()

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=self.body, content_format=JSON)


class CoapConfigServer:
    """The aiocoap server context; one per daemon, on its loop."""

    def __init__(self, listen: str, take: Callable[[bytes], bool], max_bytes: int) -> None:
        self.listen = listen
        host, _, port = listen.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.status = StatusResource()
        self._site = resource.Site()
        self._site.add_resource(["sensegate", "config"], ConfigResource(take, max_bytes))
        self._site.add_resource(["sensegate", "config", "status"], self.status)
        self._ctx: Any = None

    async def start(self) -> None:
        try:
            self._ctx = await aiocoap.Context.create_server_context(
                self._site, bind=(self.host, self.port), transports=["udp6"], loggername="sensegate.remote.coap"
            )
        except OSError as e:
            log.error(
                "remote config over CoAP: cannot listen on %s:%d (%s); MQTT pushes still work", self.host, self.port, e
            )
            self._ctx = None

    async def close(self) -> None:
        if self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None
            await asyncio.sleep(0)
