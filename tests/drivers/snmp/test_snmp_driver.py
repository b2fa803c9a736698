"""The snmp driver through the real scheduler against Debian's real snmpd (hil/devices/snmp_agent.py):
v2c and v3 polls with every SMI type, walks, an agent that goes away, and real traps from snmptrap."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers.snmp import MANIFEST
from drivers.snmp.driver import SnmpDriver
from gateway.driver_api import Path
from gateway.testing import DriverHarness, run_driver, wait_until
from hil.devices.snmp_agent import ENTERPRISE, OBJECTS, SnmpAgent

V3 = {"version": "v3", "user": "sguser", "auth_protocol": "sha256", "auth_key": "authpassword1",
      "priv_protocol": "aes", "priv_key": "privpassword1"}
POINTS: list[dict[str, Any]] = [
    {"name": "temperature", "oid": OBJECTS["temperature"][0], "scale": 0.1, "precision": 1, "unit": "Cel"},
    {"name": "energy", "oid": OBJECTS["energy"][0], "unit": "Wh"},
    {"name": "level", "oid": OBJECTS["level"][0]},
    {"name": "runtime", "oid": OBJECTS["runtime"][0]},
    {"name": "label", "oid": OBJECTS["label"][0]},
    {"name": "model", "oid": OBJECTS["model"][0]},
    {"name": "load", "oid": OBJECTS["load"][0], "type": "number"},
    {"name": "location", "oid": "1.3.6.1.2.1.1.6.0"},
    {"name": "absent", "oid": f"{ENTERPRISE}.9.9.0"},
    {"name": "if_hc_in", "oid": "1.3.6.1.2.1.31.1.1.1.6", "walk": True, "unit": "B"},
    {"name": "ip_addr", "oid": "1.3.6.1.2.1.4.20.1.1", "walk": True},
]
EXPECTED = {
    "temperature": (-21.5, "Cel"),
    "energy": (4_000_000_000, "Wh"),
    "level": (1234, None),
    "runtime": (123.45, "s"),
    "label": ("cabinet-7", None),
    "model": ("1.3.6.1.4.1.99999.2.7", None),
    "load": (0.75, None),
    "location": ("street cabinet 7", None),
    "ip_addr.127.0.0.1": ("127.0.0.1", None),
}


@asynccontextmanager
async def agent(**kw: Any) -> AsyncIterator[SnmpAgent]:
    a = SnmpAgent(**kw)
    await a.start()
    try:
        yield a
    finally:
        await a.close()


@asynccontextmanager
async def polling(a: SnmpAgent, **options: Any) -> AsyncIterator[DriverHarness]:
    options = {"interval": 0.1, "jitter": 0, "timeout": 3, "request_timeout": 0.5, "retries": 0,
               "name": "ups", "host": a.host, "port": a.port, **options}
    async with run_driver(MANIFEST, **options) as h:
        yield h


until = functools.partial(wait_until, within=15.0)  # generous: real stacks on a shared CI machine


def latest(h: DriverHarness, point: str, node: str | None = None) -> Any:
    got = h.sink.points(point, node)
    return got[-1].value if got else None


def driver_of(h: DriverHarness) -> SnmpDriver:
    d = h.runner._driver
    assert isinstance(d, SnmpDriver)
    return d


@pytest.mark.parametrize("security", ["v2c", "v3"])
async def test_every_type_walk_and_scaling_exactly(security: str) -> None:
    creds = V3 if security == "v3" else {}
    async with agent() as a, polling(a, oids=POINTS, **creds) as h:
        await until(lambda: all(h.sink.points(p) for p in EXPECTED))
        for point, (value, unit) in EXPECTED.items():
            r = h.sink.points(point)[0]
            assert (r.value, type(r.value), r.unit) == (value, type(value), unit), point
            assert (r.node, r.path) == ("gw-test", Path.IP2)
        hc = [r for r in h.sink.readings if r.point.startswith("if_hc_in.")]
        assert hc and all(isinstance(r.value, int) and r.unit == "B" for r in hc)  # Counter64, one per interface
        assert not h.sink.points("absent") and driver_of(h).bad_values >= 1  # noSuchObject: counted, not emitted
        assert h.runner.stats.errors == 0 and h.runner.stats.state == "running"


async def test_values_follow_the_agent() -> None:
    async with agent() as a, polling(a, oids=POINTS[:1]) as h:
        await until(lambda: latest(h, "temperature") == -21.5)
        await a.set("temperature", "305")
        await until(lambda: latest(h, "temperature") == 30.5)


async def test_v3_wrong_key_is_unavailable_with_the_reason() -> None:
    async with agent() as a, polling(a, oids=POINTS[:1], **{**V3, "auth_key": "wrongpassword"}) as h:
        await until(lambda: h.runner.stats.state == "unavailable")
        assert "digest (authentication failed: check auth_protocol and auth_key)" in h.runner.stats.last_error
        assert not h.sink.readings


async def test_unreachable_agent_is_logged_once_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sensegate.driver.snmp")
    async with agent() as a, polling(a, oids=POINTS[:1], request_timeout=0.2, timeout=1) as h:
        await until(lambda: latest(h, "temperature") is not None)
        await a.stop()
        await until(lambda: h.runner.stats.errors >= 4 and h.runner.stats.restarts >= 1)
        assert h.runner.stats.state == "unavailable"
        assert "did not answer" in h.runner.stats.last_error
        await a.start(a.port)
        mark = len(h.sink.readings)
        await until(lambda: len(h.sink.readings) > mark and h.runner.stats.state == "running")
    lines = [r.getMessage() for r in caplog.records if r.name == "sensegate.driver.snmp.ups"]
    assert sum("unavailable" in m for m in lines) == 1, lines
    assert sum("recovered" in m for m in lines) == 1, lines


async def test_two_instances_side_by_side_v2c_and_v3() -> None:
    async with agent() as a, polling(a, oids=POINTS[:3], name="one") as h1, \
            polling(a, oids=POINTS[:3], name="two", **V3) as h2:
        await until(lambda: latest(h1, "level") == 1234 and latest(h2, "level") == 1234)
        await a.set("level", "17")
        await until(lambda: latest(h1, "level") == 17 and latest(h2, "level") == 17)
        assert driver_of(h1) is not driver_of(h2)


# -- traps ------------------------------------------------------------------------------------

TRAP_POINTS = [
    {"name": "temperature", "oid": OBJECTS["temperature"][0], "scale": 0.1, "unit": "Cel"},
    {"name": "port_status", "oid": "1.3.6.1.2.1.2.2.1.8", "walk": True},
]
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"


@asynccontextmanager
async def trap_listener(**options: Any) -> AsyncIterator[tuple[DriverHarness, int]]:
    options = {"interval": 0.1, "jitter": 0, "name": "traps", "oids": TRAP_POINTS, **options}
    options["traps"] = {"address": "127.0.0.1", "port": 0, **options.get("traps", {})}
    if options.get("host") is None:
        options.pop("host", None)
    async with run_driver(MANIFEST, **options) as h:
        await until(lambda: h.runner.stats.state == "running")
        yield h, driver_of(h).trap_port


async def test_v2c_trap_from_snmptrap_becomes_readings() -> None:
    """A trap-only instance (no host): the sender's address names the node (IP3)."""
    async with agent() as a, trap_listener(oids=[], traps={}) as (h, port):
        await a.send_trap(port, LINK_DOWN, ("1.3.6.1.2.1.2.2.1.8.3", "i", "2"))
        await until(lambda: bool(h.sink.points("trap")))
        r = h.sink.points("trap")[0]
        assert (r.value, r.node, r.path) == (LINK_DOWN, "127.0.0.1", Path.IP3)
        assert not h.sink.points("port_status.3")  # unmapped variables are not readings


async def test_trap_variables_named_by_the_oid_map_and_host_is_the_instance_node() -> None:
    async with agent() as a, trap_listener(host="127.0.0.1", port=a.port, node="cab-7", traps={}) as (h, port):
        await a.send_trap(port, LINK_DOWN, ("1.3.6.1.2.1.2.2.1.8.3", "i", "2"),
                          (OBJECTS["temperature"][0], "i", "455"), ("1.3.6.1.4.1.99999.7.7.0", "s", "unmapped"))
        await until(lambda: bool(h.sink.points("trap")))
        trap = h.sink.points("trap")[0]
        assert (trap.value, trap.node, trap.path) == (LINK_DOWN, "cab-7", Path.IP2)
        # the trap's variables: the readings stamped with the trap's arrival time (the OIDs are polled too)
        got = {r.point: (r.value, r.unit) for r in h.sink.readings if r.ts_ns == trap.ts_ns and r.point != "trap"}
        assert got == {"port_status.3": (2, None), "temperature": (45.5, "Cel")}


async def test_v3_trap_with_engine_id_and_wrong_community_ignored() -> None:
    engine = "0x80001f8880aabbccdd01"
    async with agent() as a, trap_listener(oids=[], traps={"engine_ids": [engine[2:]]}, **V3) as (h, port):
        await a.send_trap(port, LINK_DOWN, version="v3", engine_id=engine)
        await until(lambda: len(h.sink.points("trap")) == 1)
        await a.send_trap(port, "1.3.6.1.6.3.1.1.5.4", version="v3", engine_id=engine, auth_key="wrongpassword")
        await a.send_trap(port, "1.3.6.1.6.3.1.1.5.4", community="public")  # v2c is not accepted by a v3 receiver
        await a.send_trap(port, "1.3.6.1.6.3.1.1.5.1", version="v3", engine_id=engine)
        await until(lambda: len(h.sink.points("trap")) == 2)
        await asyncio.sleep(0.3)
        assert [r.value for r in h.sink.points("trap")] == [LINK_DOWN, "1.3.6.1.6.3.1.1.5.1"]


async def test_snmpd_sends_its_own_cold_start_trap() -> None:
    async with trap_listener(oids=[], traps={}) as (h, port), agent(trap_sink=port):
        await until(lambda: "1.3.6.1.6.3.1.1.5.1" in [r.value for r in h.sink.points("trap")])


async def test_trap_burst_beyond_max_pending_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with agent() as a, trap_listener(oids=[], interval=3600, traps={"max_pending": 2}) as (h, port):
        for i in range(5):
            await a.send_trap(port, f"{ENTERPRISE}.0.{i + 1}")
        d = driver_of(h)
        await until(lambda: d._pending.dropped == 3)
        h.runner.poll_now()
        await until(lambda: latest(h, "snmp.traps_dropped") == 3)
        assert [r.value for r in h.sink.points("trap")] == [f"{ENTERPRISE}.0.4", f"{ENTERPRISE}.0.5"]
        assert any("3 SNMP trap(s) dropped" in r.getMessage() for r in caplog.records)


async def test_hostile_datagrams_on_the_trap_port_do_not_stop_it() -> None:
    rnd = random.Random(23)
    good = bytes.fromhex("302902010104067075626c6963a71c0202000102010002010030103010060a2b060106030101040100060100")
    hostile = [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\xff" * 1400, good[:-3], good[:20] + b"\x00" * 20,
               bytes(rnd.randrange(256) for _ in range(200)), b"\x30\x82\x05\xdc" + b"\x02\x01" * 700]
    hostile += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 600))) for _ in range(200)]
    async with agent() as a, trap_listener(oids=[], traps={}) as (h, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in hostile:
                s.sendto(d, ("127.0.0.1", port))
        # UDP: a burst larger than the socket buffer loses its tail (and any trap sent into a full
        # buffer), so the proof that the receiver still works is a trap that gets through afterwards
        async with asyncio.timeout(15):
            while LINK_DOWN not in [r.value for r in h.sink.points("trap")]:
                await a.send_trap(port, LINK_DOWN)
                await asyncio.sleep(0.3)
        assert (latest(h, "snmp.traps_malformed") or 0) > 0
        assert h.runner.stats.state == "running" and h.runner.stats.errors == 0


async def test_trap_port_in_use_is_not_ready_and_retried() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        async with run_driver(MANIFEST, name="traps", interval=0.1, traps={"address": "127.0.0.1", "port": port}) as h:
            await until(lambda: h.runner.stats.restarts >= 1)
            assert "cannot listen for traps" in h.runner.stats.last_error
    await until(lambda: h.runner.stats.state == "stopped")
