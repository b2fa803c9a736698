"""Simulated pushing devices: an air-quality box POSTing SenML over HTTP, and a meter publishing
SenML and plain values over MQTT; real sockets, real HTTP/1.1, a real broker.

The packs follow RFC 8428 (base name, base time, relative times, units), in JSON
(``application/senml+json``) or CBOR (``application/senml+cbor``, integer labels). ``post()``
speaks HTTP/1.1 over a plain asyncio connection, so a test can also send what no well-behaved
client would (wrong headers, lies about the length, garbage) with ``post_raw()``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.mqtt import MqttSession, MqttSettings

# RFC 8428 labels -> CBOR integers (table 6)
CBOR_LABELS = {
    "bver": -1,
    "bn": -2,
    "bt": -3,
    "bu": -4,
    "bv": -5,
    "bs": -6,
    "n": 0,
    "u": 1,
    "v": 2,
    "vs": 3,
    "vb": 4,
    "s": 5,
    "t": 6,
    "ut": 7,
    "vd": 8,
}

# RFC 8428 section 5.1.3 (multiple measurements with a base time), and section 6: the same
# pack in its CBOR representation. Devices' reference packs, and test vectors.
RFC_EXAMPLE_JSON: list[dict[str, Any]] = [
    {
        "bn": "urn:dev:ow:10e2073a0108006:",
        "bt": 1.276020076001e09,
        "bu": "A",
        "bver": 5,
        "n": "voltage",
        "u": "V",
        "v": 120.1,
    },
    {"n": "current", "t": -5, "v": 1.2},
    {"n": "current", "t": -4, "v": 1.3},
    {"n": "current", "t": -3, "v": 1.4},
    {"n": "current", "t": -2, "v": 1.5},
    {"n": "current", "t": -1, "v": 1.6},
    {"n": "current", "v": 1.7},
]
RFC_EXAMPLE_CBOR = bytes.fromhex(
    "87a721781b75726e3a6465763a6f773a3130653230373361303130383030363a22fb41d303a15b00106223614120050067766f6c746167"
    "6501615602fb405e066666666666a3006763757272656e74062402fb3ff3333333333333a3006763757272656e74062302fb3ff4cccccccc"
    "cccda3006763757272656e74062202fb3ff6666666666666a3006763757272656e74062102f93e00a3006763757272656e74062002fb3ff9"
    "99999999999aa3006763757272656e74060002fb3ffb333333333333"
)


def encode(pack: list[dict[str, Any]], fmt: str = "json") -> bytes:
    """A pack in SenML JSON or CBOR."""
    if fmt == "json":
        return json.dumps(pack).encode()
    return bytes(cbor2.dumps([{CBOR_LABELS.get(k, k): v for k, v in rec.items()} for rec in pack]))


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def post_raw(host: str, port: int, request: bytes, read_timeout: float = 10.0) -> HttpReply:
    """Send bytes as they are and read one HTTP response (Content-Length framed)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(read_timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        return HttpReply(status, headers, body)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def post(host: str, port: int, path: str, body: bytes, content_type: str, token: str | None = None) -> HttpReply:
    """A well-formed POST, as a device's HTTP client sends it."""
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if token is not None:
        head.append(f"Authorization: Bearer {token}")
    return await post_raw(host, port, ("\r\n".join(head) + "\r\n\r\n").encode() + body)


class AirQualityBox:
    """Posts a pack per ``measure()``: PM2.5, PM10, NO2 and temperature, base name its identity."""

    def __init__(
        self,
        host: str,
        port: int,
        node: str = "aq-17",
        path: str = "/senml",
        fmt: str = "json",
        token: str | None = None,
    ) -> None:
        self.host, self.port, self.node, self.path, self.fmt, self.token = host, port, node, path, fmt, token
        self.sent = 0
        self.replies: list[HttpReply] = []

    def pack(self) -> list[dict[str, Any]]:
        n = self.sent
        return [
            {"bn": f"{self.node}/", "bt": 0, "n": "pm2_5", "u": "ug/m3", "v": 12 + n % 5},
            {"n": "pm10", "u": "ug/m3", "v": 20 + n % 7},
            {"n": "no2", "u": "ppm", "v": 0.021},
            {"n": "temperature", "u": "Cel", "v": 18.5, "t": -1},
        ]

    async def measure(self) -> HttpReply:
        ctype = "application/senml+json" if self.fmt == "json" else "application/senml+cbor"
        reply = await post(self.host, self.port, self.path, encode(self.pack(), self.fmt), ctype, self.token)
        self.sent += 1
        self.replies.append(reply)
        return reply


class MqttMeter:
    """A water meter publishing a SenML pack and a plain value per ``report()`` to a real broker."""

    def __init__(self, broker_url: str, node: str = "meter-3", client_id: str = "meter-sim") -> None:
        self.url, self.node, self.client_id = broker_url, node, client_id
        self.volume = 1000.0
        self.sent = 0
        self._session: MqttSession | None = None

    async def start(self) -> None:
        session = MqttSession(MqttSettings.from_url(self.url, client_id=self.client_id))
        await session.connect()
        self._session = session

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self._session is not None, "start() first"
        self._session.client.publish(topic, payload, qos=1, retain=retain)

    def report(self, fmt: str = "json") -> None:
        self.sent += 1
        self.volume += 0.5
        pack = [{"bn": f"{self.node}/", "n": "volume", "u": "m3", "v": self.volume}, {"n": "leak", "vb": False}]
        self.publish(f"meters/{self.node}/senml", encode(pack, fmt))
        self.publish(f"meters/{self.node}/value/flow", f"{0.25 * (self.sent % 4):g}".encode())
