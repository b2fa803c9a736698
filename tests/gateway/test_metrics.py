"""The metrics endpoint of a real daemon, parsed by the reference Prometheus parser, and the
summary the status topic publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.clock import kernel_clock
from gateway.daemon import Daemon
from gateway.keys import init_key
from gateway.metrics import render, status_line, summary
from gateway.testing import SteppedClock
from tests.gateway.helpers import running_daemon, until


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
    return status, headers, body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextlib.asynccontextmanager
async def running(tmp: Path, doc: dict[str, Any]) -> AsyncIterator[Daemon]:
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    async with running_daemon(path) as d:
        yield d


async def wait_until(cond: Any, within: float = 20.0) -> None:
    await until(cond, within)


def sim_doc(tmp: Path, **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-m", "state_dir": str(tmp / "state")},
        "uplinks": [{"type": "jsonl", "path": str(tmp / "out.jsonl")}],
        "metrics": {"enabled": True, "listen": "127.0.0.1:0"},
        "drivers": [
            {"driver": "sim", "name": "air", "interval": "20ms", "points": [{"name": "t", "pattern": "counter"}]},
            {"driver": "sim", "name": "bus", "interval": "20ms", "nodes": 2, "points": [{"name": "v"}]},
        ],
        **extra,
    }


async def test_endpoint_serves_driver_node_and_process_metrics(tmp_path: Path) -> None:
    async with running(tmp_path, sim_doc(tmp_path)) as d:
        port = d.metrics.port
        assert port
        await wait_until(lambda: d.supervisor is not None and d.supervisor.runners["air"].stats.readings >= 3)
        d.nodes.set("meter-7", False, "no reply")  # what a driver's ctx.node_status does
        d.nodes.set("meter-8", True)
        status, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.0 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body.encode())
        s = samples(body)
        assert s[("sensegate_driver_readings_total", (("driver", "sim"), ("instance", "air")))] >= 3
        assert s[("sensegate_driver_up", (("driver", "sim"), ("instance", "bus")))] == 1
        assert s[("sensegate_driver_errors_total", (("driver", "sim"), ("instance", "air")))] == 0
        assert s[("sensegate_node_online", (("node", "meter-7"),))] == 0
        assert s[("sensegate_node_online", (("node", "meter-8"),))] == 1
        assert s[("sensegate_build_info", (("gateway", "gw-m"), ("version", __version__)))] == 1
        assert s[("process_resident_memory_bytes", ())] > 1e6
        assert s[("process_cpu_seconds_total", ())] > 0
        assert s[("process_open_fds", ())] > 0
        # no buffer in a jsonl-only config: those families are absent, not zero
        assert not any(name.startswith("sensegate_buffer") for name, _ in s)

        status, _, body = await http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert status.endswith("200 OK") and body == ""
        assert (await http(port, b"GET /nope HTTP/1.0\r\n\r\n"))[0].endswith("404 Not Found")
        assert (await http(port, b"POST /metrics HTTP/1.0\r\n\r\n"))[0].endswith("405 Method Not Allowed")
        # garbage and a silent client are hung up on; the endpoint keeps serving
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00\xff" * 10 + b"\r\n\r\n")
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert (await http(port, b"GET /metrics HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")


async def test_reload_moves_or_stops_the_endpoint(tmp_path: Path) -> None:
    from gateway.testing import free_port

    async with running(tmp_path, sim_doc(tmp_path)) as d:
        first = d.metrics.port
        new_port = free_port()
        (tmp_path / "gw.yaml").write_text(
            yaml.safe_dump(sim_doc(tmp_path, metrics={"enabled": True, "listen": f"127.0.0.1:{new_port}"}))
        )
        d.request_reload()
        await wait_until(lambda: d.metrics.port == new_port)
        assert (await http(new_port, b"GET /metrics HTTP/1.0\r\n\r\n"))[0].endswith("200 OK")
        with pytest.raises(OSError):
            await http(first or 0, b"GET /metrics HTTP/1.0\r\n\r\n")
        (tmp_path / "gw.yaml").write_text(yaml.safe_dump(sim_doc(tmp_path, metrics={"enabled": False})))
        d.request_reload()
        await wait_until(lambda: d.metrics.port is None)


async def test_port_in_use_is_logged_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        doc = sim_doc(tmp_path, metrics={"enabled": True, "listen": f"127.0.0.1:{port}"})
        async with running(tmp_path, doc) as d:
            assert d.metrics.port is None
            await wait_until(lambda: d.supervisor is not None and d.supervisor.runners["air"].stats.readings > 0)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert "metrics endpoint not started" in caplog.text


async def test_summary_with_the_durable_pipeline(tmp_path: Path, broker: Any) -> None:
    """Buffer, batch and uplink numbers come from the real BufferedPipeline over a real broker."""
    init_key(tmp_path / "state" / "keys")
    doc = sim_doc(tmp_path)
    doc["uplinks"] = [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}]
    async with running(tmp_path, doc) as d:
        await wait_until(lambda: (summary(d)["batches"] or {}).get("acked", 0) >= 2)
        s = summary(d)
        json.dumps(s)  # the status topic publishes it as is
        assert s["gateway"] == "gw-m" and set(s["drivers"]) == {"air", "bus"}
        assert s["uplinks"]["mqtt"]["connected"] is True
        assert s["batches"]["last_readings"] > 0
        assert s["process"]["rss_bytes"] > 1e6 and s["process"]["uptime_seconds"] >= 0
        text = (await http(d.metrics.port or 0, b"GET /metrics HTTP/1.0\r\n\r\n"))[2]
        m = samples(text)
        assert m[("sensegate_uplink_connected", (("uplink", "mqtt"),))] == 1
        assert m[("sensegate_batches_acked_total", ())] >= 2
        assert ("sensegate_buffer_readings", ()) in m and ("sensegate_buffer_oldest_age_seconds", ()) in m
        assert "drivers running" in status_line(d) and "mqtt connected" in status_line(d)
        # the clock as the kernel calls it (whatever this machine's state), and the steps seen
        real = kernel_clock()
        assert s["clock"]["synchronised"] is real.synchronised and s["clock"]["steps"] == 0
        assert m[("sensegate_clock_synchronised", ())] == int(real.synchronised)
        assert m[("sensegate_clock_steps_total", ())] == 0 and ("sensegate_clock_max_error_seconds", ()) in m
        assert ("clock NOT synchronised" in status_line(d)) is not real.synchronised


def test_the_clock_in_the_summary_and_on_the_metrics_page() -> None:
    """A stepped, unsynchronised clock as metrics render it (values from gateway/clock.py)."""
    clock = SteppedClock(1_795_000_000 * 10**9, synced=False)
    watch = clock.watch()
    clock.advance(10**9)
    clock.step(86_400 * 10**9, synced=True)
    watch.check()
    m = samples(render({"clock": watch.snapshot()}))
    assert m[("sensegate_clock_synchronised", ())] == 1 and m[("sensegate_clock_steps_total", ())] == 1
    assert m[("sensegate_clock_last_step_seconds", ())] == 86_400.0
    assert m[("sensegate_clock_max_error_seconds", ())] == 0.004
    assert m[("sensegate_clock_last_step_timestamp_seconds", ())] == 1_795_086_401.0


def test_render_escapes_labels_and_skips_missing() -> None:
    s = {
        "version": "1",
        "gateway": 'g"w\\1\n',
        "drivers": {"a": {"driver": "sim", "state": "unavailable", "readings": 1}},
        "nodes": {},
        "buffer": None,
        "uplinks": {"u": {"connected": False, "latency_s": float("nan")}},
        "process": {},
    }
    text = render(s)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    info = fams["sensegate_build_info"].samples[0]
    assert info.labels["gateway"] == 'g"w\\1\n'
    m = samples(text)
    assert m[("sensegate_driver_up", (("driver", "sim"), ("instance", "a")))] == 0
    assert ("sensegate_driver_polls_total", (("driver", "sim"), ("instance", "a"))) not in m
    assert m[("sensegate_uplink_connected", (("uplink", "u"),))] == 0
    nan = m[("sensegate_uplink_latency_seconds", (("uplink", "u"),))]
    assert nan != nan


async def test_edge_processing_counters_are_served(tmp_path: Path) -> None:
    """What an instance's report rules did is on the endpoint; an instance without rules has no such series."""
    doc = sim_doc(tmp_path)
    doc["drivers"][0]["report"] = [{"points": ["t"], "window": "1h", "aggregate": ["count"]}]
    doc["drivers"][1]["points"] = [{"name": "v", "pattern": "constant", "value": 5}]
    doc["drivers"][1]["report"] = [{"points": ["*"], "on_change": True}]
    doc["drivers"].append({"driver": "sim", "name": "plain", "interval": "20ms", "points": [{"name": "x"}]})
    async with running(tmp_path, doc) as d:
        assert d.supervisor is not None
        air, bus = d.supervisor.runners["air"], d.supervisor.runners["bus"]
        await wait_until(lambda: air.stats.readings >= 5 and bus.stats.readings >= 10)
        s = samples((await http(d.metrics.port, b"GET /metrics HTTP/1.0\r\n\r\n"))[2])

        def of(name: str, inst: str) -> float:
            return s[(name, (("driver", "sim"), ("instance", inst)))]

        emitted = of("sensegate_driver_readings_total", "bus")
        assert of("sensegate_driver_readings_suppressed_total", "bus") == emitted - 2, "one reading per node reported"
        assert of("sensegate_driver_readings_aggregated_total", "air") == of("sensegate_driver_readings_total", "air")
        assert of("sensegate_driver_aggregate_records_total", "air") == 0, "the hour's window is still open"
        assert ("sensegate_driver_readings_total", (("driver", "sim"), ("instance", "plain"))) in s
        assert not any(n.startswith("sensegate_driver_readings_suppressed") and ("instance", "plain") in labels
                       for n, labels in s)
