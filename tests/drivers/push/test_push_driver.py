"""The push driver end to end: the real scheduler, its HTTP endpoint on a loopback port, a real
mosquitto, and the simulated devices of hil/devices/push_device.py; then hostile clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.push import MANIFEST
from gateway.driver_api import Path as IfPath
from gateway.driver_api import Quality
from gateway.testing import DriverHarness, free_port, run_driver
from hil.devices.push_device import RFC_EXAMPLE_CBOR, AirQualityBox, MqttMeter, encode, post, post_raw
from hil.mosquitto import Mosquitto

WITHIN = 15.0
JSON, CBOR = "application/senml+json", "application/senml+cbor"


async def until(cond: Callable[[], Any], within: float = WITHIN) -> Any:
    async with asyncio.timeout(within):
        while not (result := cond()):  # noqa: ASYNC110 (state kept by callbacks)
            await asyncio.sleep(0.02)
    return result


@contextlib.asynccontextmanager
async def endpoint(**extra: Any) -> AsyncIterator[tuple[DriverHarness, int]]:
    port = free_port()
    http = {"listen": f"127.0.0.1:{port}", **extra.pop("http", {})}
    async with run_driver(MANIFEST, name="push", http=http, **extra) as h:
        await until(lambda: h.runner.stats.state == "running")
        yield h, port


@pytest.mark.parametrize("fmt", ["json", "cbor"])
async def test_http_senml_becomes_node_readings(fmt: str) -> None:
    async with endpoint(nodes=["aq-*"]) as (h, port):
        box = AirQualityBox("127.0.0.1", port, fmt=fmt)
        reply = await box.measure()
        assert (reply.status, reply.json()) == (200, {"accepted": 4})
        got = {r.point: (r.value, r.unit) for r in h.sink.points(node="aq-17")}
        assert got == {
            "pm2_5": (12, "ug/m3"),
            "pm10": (20, "ug/m3"),
            "no2": (0.021, "ppm"),
            "temperature": (18.5, "Cel"),
        }
        assert all(r.path == IfPath.IP3 and r.quality == Quality.GOOD for r in h.sink.readings)
        ts = {r.point: r.ts_ns for r in h.sink.points(node="aq-17")}
        assert ts["pm2_5"] - ts["temperature"] == 1_000_000_000  # t: -1, relative to the pack's base time
        assert h.nodes.state == {"aq-17": True}
        assert h.runner.stats.extra["records"] == 4 and h.runner.stats.extra["packs"] == 1


async def test_rfc_example_over_http_without_node_in_the_name() -> None:
    # RFC 8428's CBOR example: names without the separator belong to the instance's node (IP2)
    async with endpoint(node="substation-4") as (h, port):
        reply = await post("127.0.0.1", port, "/senml", RFC_EXAMPLE_CBOR, CBOR)
        assert reply.status == 200 and reply.json() == {"accepted": 7}
        values = [(r.node, r.point, r.value) for r in h.sink.readings]
        assert values[0] == ("substation-4", "urn:dev:ow:10e2073a0108006:voltage", 120.1)
        assert [v for _, p, v in values if p.endswith("current")] == [1.2, 1.3, 1.4, 1.5, 1.6, 1.7]
        assert h.sink.readings[0].ts_ns == 1276020076001000000
        assert all(r.path == IfPath.IP2 for r in h.sink.readings)


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        (("POST", "/senml", "text/plain", b'[{"n":"a","v":1}]'), 415, "content type"),
        (("POST", "/senml", "application/json", b'[{"n":"a","v":1}]'), 415, "senml+json"),
        (("POST", "/senml", None, b'[{"n":"a","v":1}]'), 415, "(none)"),
        (("GET", "/senml", JSON, b""), 405, "POST"),
        (("POST", "/other", JSON, b'[{"n":"a","v":1}]'), 404, "/senml"),
        (("POST", "/senml", JSON, b"not json"), 400, "not JSON"),
        (("POST", "/senml", CBOR, b'[{"n":"a","v":1}]'), 400, "not CBOR"),
        (("POST", "/senml", JSON, b'[{"n":"aq-1/pm","v":1},{"n":"b"}]'), 400, "record 1"),
        (("POST", "/senml", JSON, b'[{"n":"evil-1/pm","v":1}]'), 403, "not allowed"),
        (("POST", "/senml", JSON, b'[{"n":"aq-1/pm","v":1,"t":4102444800}]'), 400, "ahead"),
        (("POST", "/senml", JSON, json.dumps([{"n": "aq-1/x", "v": 1}] * 1001).encode()), 400, "at most 1000"),
    ],
)
async def test_http_refusals_are_clear_4xx_and_counted(
    request_: tuple[str, str, str | None, bytes], status: int, words: str
) -> None:
    method, path, ctype, body = request_
    async with endpoint(nodes=["aq-*"], http={"max_body": "256KiB"}) as (h, port):
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        reply = await post_raw("127.0.0.1", port, head.encode() + b"\r\n" + body)
        assert reply.status == status
        assert words in reply.json()["error"]
        assert h.runner.stats.extra[f"http_rejected_{status}"] == 1
        assert h.sink.readings == []  # a refused pack is not taken in part
        assert h.runner.stats.state == "running"


async def test_hostile_http_clients(tmp_path: Path) -> None:
    async with endpoint(http={"max_body": "1KiB", "timeout": "1s", "max_connections": 4}) as (h, port):
        # a body over the limit is refused by its declared length, before it is read
        reply = await post_raw(
            "127.0.0.1",
            port,
            b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/senml+json\r\nContent-Length: 10000000\r\n\r\n",
        )
        assert reply.status == 413 and reply.headers["connection"] == "close"
        # chunked, growing past the limit without a length
        chunk = b"400\r\n" + b"[" * 1024 + b"\r\n"
        reply = await post_raw(
            "127.0.0.1",
            port,
            b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/senml+json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2,
        )
        assert reply.status == 413
        # garbage instead of HTTP, and an endless header line
        assert (await post_raw("127.0.0.1", port, b"\x16\x03\x01\x02\x00junk\r\n\r\n")).status == 400
        reply = await post_raw("127.0.0.1", port, b"POST /senml HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
        assert reply.status in (400, 431)
        # a client that stops in the middle gets 408 after the timeout
        reply = await post_raw(
            "127.0.0.1",
            port,
            b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\nContent-Type: application/senml+json\r\n\r\n[{",
            read_timeout=5,
        )
        assert reply.status == 408
        # pipelined requests on one connection are both answered
        one = json.dumps([{"n": "p", "v": 1}]).encode()
        req = (
            b"POST /senml HTTP/1.1\r\nHost: x\r\nContent-Type: application/senml+json\r\nContent-Length: "
            + str(len(one)).encode()
            + b"\r\n\r\n"
            + one
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(req + req)
        await writer.drain()
        data = b""
        async with asyncio.timeout(WITHIN):
            while data.count(b"HTTP/1.1 200") < 2:
                data += await reader.read(4096)
        writer.close()
        await writer.wait_closed()
        assert len(h.sink.points("p")) == 2
        events = h.runner.stats.extra
        assert (
            events["http_rejected_413"] == 2 and events["http_rejected_400"] >= 2 and events["http_rejected_408"] == 1
        )
        assert h.runner.stats.state == "running"


async def test_bearer_token_and_rate_limit(tmp_path: Path) -> None:
    token = tmp_path / "push.token"
    token.write_text("s3cret\n")
    async with endpoint(http={"token_file": str(token)}, max_rate=0.1, max_records=10) as (h, port):
        box = AirQualityBox("127.0.0.1", port)
        reply = await box.measure()
        assert reply.status == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        box.token = "wrong"
        assert (await box.measure()).status == 401
        box.token = "s3cret"
        assert (await box.measure()).status == 200  # 4 of the 10 records the bucket holds
        assert (await box.measure()).status == 200
        reply = await box.measure()  # 4 more records; 2 are left in the bucket at 0.1/s
        assert reply.status == 429 and reply.headers["retry-after"] == "1"
        assert len(h.sink.readings) == 8
        assert h.runner.stats.extra["http_rejected_401"] == 2 and h.runner.stats.extra["http_rejected_429"] == 1


async def test_mqtt_senml_and_plain_values(broker: Mosquitto) -> None:
    mqtt = {
        "broker": {"url": broker.url},
        "subscriptions": [
            {"topic": "meters/+/senml", "format": "senml"},
            {"topic": "meters/+/value/+", "format": "value", "node": "{1}", "point": "{3}", "unit": "m3/s"},
        ],
    }
    meter = MqttMeter(broker.url)
    await meter.start()
    try:
        async with run_driver(MANIFEST, name="push", mqtt=mqtt) as h:
            await until(lambda: h.runner.stats.state == "running")
            while not h.sink.points("volume"):
                meter.report("cbor" if meter.sent % 2 else "json")
                with contextlib.suppress(TimeoutError):
                    await h.sink.wait_for(1, point="volume", within=0.5)
            meter.report("cbor")
            await h.sink.wait_for(2, point="flow", within=WITHIN)
            got = {r.point: (r.value, r.unit) for r in h.sink.points(node="meter-3")}
            assert got["leak"] == (False, None) and got["volume"][1] == "m3" and got["flow"][1] == "m3/s"
            # hostile messages: dropped, counted, not fatal
            meter.publish("meters/meter-3/senml", b"\xff\x00garbage")
            meter.publish("meters/meter-3/value/flow", b"NaN")
            meter.publish("meters/meter-3/value/flow", b"x" * 1000)
            meter.publish("meters/bad node/value/flow", b"1")
            meter.report()
            await h.sink.wait_for(3, point="flow", within=WITHIN)
            assert h.runner.stats.extra["mqtt_rejected"] == 4
            assert h.runner.stats.state == "running"
    finally:
        await meter.stop()


async def test_retained_values_are_uncertain_and_nodes_go_offline(broker: Mosquitto) -> None:
    mqtt = {
        "broker": {"url": broker.url},
        "subscriptions": [{"topic": "meters/+/value/+", "format": "value", "node": "{1}", "point": "{3}"}],
    }
    meter = MqttMeter(broker.url)
    await meter.start()
    try:
        meter.publish("meters/meter-9/value/level", b"42", retain=True)
        async with run_driver(MANIFEST, name="push", mqtt=mqtt, offline_after=0.3) as h:
            await h.sink.wait_for(1, point="level", within=WITHIN)
            assert h.sink.points("level")[0].quality == Quality.UNCERTAIN
            await until(lambda: h.nodes.state.get("meter-9") is False)
            assert h.nodes.reason["meter-9"].startswith("nothing pushed for")
            meter.publish("meters/meter-9/value/level", b"43")
            await until(lambda: h.nodes.state.get("meter-9") is True)
            assert h.sink.points("level")[-1].quality == Quality.GOOD
    finally:
        meter.publish("meters/meter-9/value/level", b"", retain=True)
        await meter.stop()


async def test_listen_address_in_use_is_not_ready() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        async with run_driver(MANIFEST, name="push", http={"listen": f"127.0.0.1:{port}"}) as h:
            await until(lambda: h.runner.stats.restarts >= 1)
            assert h.runner.stats.state == "unavailable"
            assert f"cannot listen on 127.0.0.1:{port}" in h.runner.stats.last_error
    finally:
        blocker.close()
        await blocker.wait_closed()


def test_overlapping_topic_filters_are_refused() -> None:
    from gateway.schema import ValidationError

    with pytest.raises(ValidationError, match="overlap"):
        MANIFEST.config.model_validate(
            {"driver": "push", "mqtt": {"subscriptions": [{"topic": "meters/#"}, {"topic": "meters/+/senml"}]}}
        )
    with pytest.raises(ValidationError, match="nothing to do"):
        MANIFEST.config.model_validate({"driver": "push"})


async def test_http_post_helper_against_a_real_pack() -> None:
    async with endpoint() as (h, port):
        reply = await post(
            "127.0.0.1", port, "/senml", encode([{"n": "gw-room/temperature", "u": "Cel", "v": 21}]), JSON
        )
        assert reply.status == 200
        assert h.sink.readings[0].node == "gw-room"


async def test_http_without_h11_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "h11", None)  # as if not installed
    import drivers.push

    monkeypatch.delitem(sys.modules, "drivers.push.httpd", raising=False)
    monkeypatch.delattr(drivers.push, "httpd", raising=False)
    async with run_driver(MANIFEST, name="push", http={"listen": f"127.0.0.1:{free_port()}"}) as h:
        await until(lambda: h.runner.stats.state == "failed")
        assert "pip install 'sensegate[push]'" in h.runner.stats.last_error
