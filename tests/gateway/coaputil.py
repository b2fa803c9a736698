"""A verifying CoAP receiver on loopback for the CoAP tests: the real server, in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.receiver import Feed, KeyBindings, Receiver
from gateway.receiver.coap import CoapReceiverServer
from gateway.testing import free_port


def coap_url(scheme: str = "coap") -> str:
    kind = socket.SOCK_DGRAM if scheme == "coap" else socket.SOCK_STREAM
    return f"{scheme}://127.0.0.1:{free_port(kind)}"


class CoapReceiver:
    """CoapReceiverServer + the library receiver; records every answer it gave."""

    def __init__(self, url: str, pub: Path, gateway: str = "gw-test", **server: Any) -> None:
        self.url = url
        self.rx = Receiver(KeyBindings.files(gateway, pub))
        self.readings: list[Any] = []
        self.statuses: list[str] = []
        self.changed = asyncio.Event()
        self.reject_next: list[str] = []  # tamper with the next batches: "flip" a signature byte
        self.server = CoapReceiverServer(url, self._feed, self.rx, **server)

    def _feed(self, data: bytes) -> Feed:
        if self.reject_next:
            self.reject_next.pop(0)
            data = data[:-1] + bytes([data[-1] ^ 1])
        res = self.rx.feed(data)
        self.statuses.append(res.status)
        self.readings.extend(res.readings)
        self.changed.set()
        return res

    async def wait_readings(self, n: int, within: float = 20.0) -> list[Any]:
        async with asyncio.timeout(within):
            while len(self.readings) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.readings

    async def start(self) -> None:
        self.server = CoapReceiverServer(self.url, self._feed, self.rx, **self._server_kw())
        await self.server.start()

    def _server_kw(self) -> dict[str, Any]:
        s = self.server
        cert, key, ca = s.tls
        return {"oscore": s.oscore_dir, "cert_file": cert, "key_file": key, "ca_file": ca}

    async def stop(self) -> None:
        await self.server.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CoapReceiver]:
        await self.server.start()
        try:
            yield self
        finally:
            await self.server.close()
