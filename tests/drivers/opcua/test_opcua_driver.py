"""The opcua driver through the real scheduler against a real asyncua server on loopback
(hil/devices/opcua_server.py): browse paths, polling, subscriptions, Basic256Sha256 Sign and
SignAndEncrypt with certificates made here, writes, and a server that goes away."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.opcua import MANIFEST
from gateway.driver_api import ConfigError
from gateway.driver_api import Path as IP
from gateway.testing import DriverHarness, run_driver, wait_until
from hil.devices.opcua_server import OpcUaServer, make_certificate

POINTS: list[dict[str, Any]] = [
    {"name": "temperature", "browse_path": "2:Boiler/2:Temperature", "unit": "Cel"},
    {"name": "pressure", "browse_path": "2:Boiler/2:Pressure", "scale": 100000, "unit": "Pa"},
    {"name": "running", "browse_path": "2:Boiler/2:Running"},
    {"name": "starts", "browse_path": "2:Boiler/2:Starts"},
    {"name": "label", "browse_path": "2:Boiler/2:Name"},
    {"name": "setpoint", "browse_path": "2:Boiler/2:Setpoint", "unit": "Cel", "writable": True, "min": 40, "max": 90},
    {"name": "server_state", "node_id": "i=2259"},
]


@asynccontextmanager
async def server(cert_dir: Path | None = None) -> AsyncIterator[OpcUaServer]:
    s = OpcUaServer(cert_dir)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@asynccontextmanager
async def client(
    s: OpcUaServer, points: list[dict[str, Any]] | None = None, **options: Any
) -> AsyncIterator[DriverHarness]:
    options = {
        "interval": 0.1,
        "jitter": 0,
        "timeout": 3,
        "request_timeout": 1,
        "name": "boiler",
        "url": s.url,
        "points": points or POINTS,
        **options,
    }
    async with run_driver(MANIFEST, **options) as h:
        yield h


until = functools.partial(wait_until, within=20.0)  # generous: real stacks on a shared CI machine


def latest(h: DriverHarness, point: str) -> Any:
    got = h.sink.points(point)
    return got[-1].value if got else None


async def test_browse_paths_and_polling_read_every_type() -> None:
    async with server() as s, client(s) as h:
        expect = {
            "temperature": (71.5, "Cel"),
            "pressure": (150000.0, "Pa"),
            "running": (True, None),
            "starts": (42, None),
            "label": ("boiler-1", None),
            "setpoint": (70.0, "Cel"),
            "server_state": (0, None),
        }
        await until(lambda: all(h.sink.points(p) for p in expect))
        for point, (value, unit) in expect.items():
            r = h.sink.points(point)[0]
            assert (r.value, type(r.value), r.unit, r.path) == (value, type(value), unit, IP.IP2), point
        await s.set("Temperature", 80.25)
        await until(lambda: latest(h, "temperature") == 80.25)
        assert h.runner.stats.errors == 0


async def test_subscription_delivers_every_change_with_source_time() -> None:
    points = [{"name": "temperature", "node_id": "", "browse_path": "2:Boiler/2:Temperature", "mode": "subscribe"}]
    async with server() as s, client(s, points, interval=0.5, publishing_interval=0.05) as h:
        await until(lambda: latest(h, "temperature") == 71.5)
        for v in (72.0, 73.0, 74.0):
            await s.set("Temperature", v)
            await asyncio.sleep(0.12)  # one publishing interval apart: each is its own notification
        await until(lambda: [r.value for r in h.sink.points("temperature")][-3:] == [72.0, 73.0, 74.0])
        stamps = [r.ts_ns for r in h.sink.points("temperature")]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)  # the server's source timestamps


@pytest.mark.parametrize("security", ["sign", "sign_and_encrypt"])
async def test_basic256sha256_with_certificates(security: str, tmp_path: Path) -> None:
    cert, key = await make_certificate(tmp_path, "client", "urn:sensegate:client", server=False)
    async with (
        server(tmp_path) as s,
        client(
            s,
            POINTS[:1],
            security=security,
            certificate=str(cert),
            private_key=str(key),
            server_certificate=str(tmp_path / "server.der"),
        ) as h,
    ):
        await until(lambda: latest(h, "temperature") == 71.5)


async def test_security_without_matching_endpoint_is_unavailable(tmp_path: Path) -> None:
    cert, key = await make_certificate(tmp_path, "client", "urn:sensegate:client", server=False)
    async with server() as s, client(s, POINTS[:1], security="sign", certificate=str(cert), private_key=str(key)) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert h.runner.stats.state == "unavailable" and not h.sink.readings


async def test_writes_bounded_and_typed() -> None:
    async with server() as s, client(s) as h:
        await until(lambda: h.runner.stats.state == "running" and latest(h, "setpoint") is not None)
        await h.runner.write("setpoint", 65)
        assert await s.get("Setpoint") == 65.0
        for point, value, why in [
            ("setpoint", 95, "above max"),
            ("temperature", 1.0, "not writable"),
            ("nothing", 1, "no point"),
        ]:
            with pytest.raises(ConfigError, match=why):
                await h.runner.write(point, value)
        assert await s.get("Setpoint") == 65.0


async def test_server_gone_unavailable_once_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sensegate.driver.opcua")
    async with server() as s, client(s, POINTS[:1], request_timeout=0.5) as h:
        await until(lambda: latest(h, "temperature") == 71.5)
        await s.stop()
        await until(lambda: h.runner.stats.state == "unavailable" and h.runner.stats.restarts >= 2)
        await s.start()
        mark = len(h.sink.readings)
        await until(lambda: len(h.sink.readings) > mark and h.runner.stats.state == "running")
    lines = [r.getMessage() for r in caplog.records if r.name == "sensegate.driver.opcua.boiler"]
    assert sum("unavailable" in m for m in lines) == 1, lines


async def test_unknown_browse_path_says_which() -> None:
    async with server() as s, client(s, [{"name": "x", "browse_path": "2:Boiler/2:Nothing"}]) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "browse path 2:Boiler/2:Nothing not found" in h.runner.stats.last_error


async def test_two_instances_side_by_side() -> None:
    sub = [{"name": "temperature", "browse_path": "2:Boiler/2:Temperature", "mode": "subscribe"}]
    async with server() as s, client(s, POINTS[:1], name="a") as h1, client(s, sub, name="b") as h2:
        await s.set("Temperature", 60.0)
        await until(lambda: latest(h1, "temperature") == 60.0 and latest(h2, "temperature") == 60.0)


async def test_garbage_server_is_not_ready_not_a_crash() -> None:
    """A TCP peer that answers OPC UA Hello with garbage (hostile or not OPC UA at all)."""
    replies = [
        b"\xff" * 64,
        b"ACKF\x00\x00\x00\x00",
        b"ERRF\x20\x00\x00\x00" + b"\x00" * 24,
        b"HTTP/1.1 400 Bad\r\n\r\n",
    ]
    for reply in replies:

        async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter, reply: bytes = reply) -> None:
            await r.read(1024)
            w.write(reply)
            await w.drain()
            w.close()

        srv = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            async with run_driver(
                MANIFEST,
                name="x",
                url=f"opc.tcp://127.0.0.1:{port}/",
                interval=0.1,
                timeout=2,
                request_timeout=1,
                points=POINTS[:1],
            ) as h:
                await until(lambda: h.runner.stats.restarts >= 1)
                assert h.runner.stats.state == "unavailable", reply
        finally:
            srv.close()
            await srv.wait_closed()
