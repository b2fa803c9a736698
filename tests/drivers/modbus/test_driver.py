"""The modbus driver through the real scheduler against the simulated bus (pymodbus server),
over TCP and over RTU on pseudo-terminals: exact values, node status under faults, writes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import yaml

from drivers.modbus import MANIFEST
from gateway.driver_api import ConfigError, Path
from gateway.schema import ValidationError
from gateway.testing import DriverHarness, free_port, make_instance, run_driver
from hil.devices.modbus_slave import ModbusSim, Slave, air_quality, crc16, energy_meter

# Every register type and byte/word order, against literal words put in the simulator below.
KNOWN_MAP: list[dict[str, Any]] = [
    {"name": "u16", "address": 0, "type": "u16", "unit": "count"},
    {"name": "i16", "address": 1, "type": "i16"},
    {"name": "u32_abcd", "address": 2, "type": "u32"},
    {"name": "u32_cdab", "address": 4, "type": "u32", "word_order": "little"},
    {"name": "u32_badc", "address": 6, "type": "u32", "byte_order": "little"},
    {"name": "u32_dcba", "address": 8, "type": "u32", "byte_order": "little", "word_order": "little"},
    {"name": "i32", "address": 10, "type": "i32"},
    {"name": "f32", "address": 12, "type": "f32", "unit": "V"},
    {"name": "f32_dcba", "address": 14, "type": "f32", "byte_order": "little", "word_order": "little"},
    {"name": "f64", "address": 16, "type": "f64", "unit": "Hz"},
    {"name": "f64_swapped", "address": 20, "type": "f64", "word_order": "little"},
    {"name": "u64", "address": 24, "type": "u64", "unit": "Wh"},
    {"name": "i64", "address": 28, "type": "i64"},
    {"name": "text", "address": 32, "type": "string", "count": 4},
    {"name": "text_swapped", "address": 36, "type": "string", "count": 2, "byte_order": "little"},
    {"name": "flags", "address": 38, "type": "bitfield", "bits": {0: "a", 1: "b", 2: "c", 15: "d"}},
    {"name": "temp", "address": 39, "type": "i16", "scale": 0.1, "offset": 1, "precision": 1, "unit": "Cel"},
    {"name": "nan", "address": 40, "type": "f32"},
    {"name": "rh", "function": "input", "address": 5, "scale": 0.01, "precision": 2, "unit": "%RH"},
    {"name": "relay", "function": "coils", "address": 3},
    {"name": "door", "function": "discrete_inputs", "address": 5},
]
KNOWN_WORDS = {
    0: [0xBEEF],
    1: [0xFF85],
    2: [0x1234, 0x5678],
    4: [0x5678, 0x1234],
    6: [0x3412, 0x7856],
    8: [0x7856, 0x3412],
    10: [0xFFFF, 0xFFFE],
    12: [0x4060, 0x0000],
    14: [0x0000, 0xA0BF],
    16: [0x3FF8, 0, 0, 0],
    20: [0, 0, 0, 0xC002],
    24: [0x0001, 0, 0, 0],
    28: [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE],
    32: [0x5347, 0x2D31, 0, 0],
    36: [0x4241, 0x4443],
    38: [0x8005],
    39: [0xFF38],
    40: [0x7FC0, 0x0000],
}
KNOWN_VALUES = {
    "u16": (48879, "count"),
    "i16": (-123, None),
    "u32_abcd": (0x12345678, None),
    "u32_cdab": (0x12345678, None),
    "u32_badc": (0x12345678, None),
    "u32_dcba": (0x12345678, None),
    "i32": (-2, None),
    "f32": (3.5, "V"),
    "f32_dcba": (-1.25, None),
    "f64": (1.5, "Hz"),
    "f64_swapped": (-2.25, None),
    "u64": (1 << 48, "Wh"),
    "i64": (-2, None),
    "text": ("SG-1", None),
    "text_swapped": ("ABCD", None),
    "flags.a": (True, None),
    "flags.b": (False, None),
    "flags.c": (True, None),
    "flags.d": (True, None),
    "temp": (-19.0, "Cel"),
    "rh": (23.45, "%RH"),
    "relay": (True, None),
    "door": (True, None),
}

WRITE_MAP: list[dict[str, Any]] = [
    {"name": "level", "address": 0},
    {"name": "setpoint", "address": 40, "type": "i16", "scale": 0.1, "writable": True, "min": -20, "max": 50},
    {"name": "limit", "address": 42, "type": "u32", "word_order": "little", "writable": True, "unit": "W"},
    {"name": "relay", "function": "coils", "address": 7, "writable": True},
]


def known_slave(slave_id: int) -> Slave:
    s = Slave(slave_id)
    for address, words in KNOWN_WORDS.items():
        s.set_words("holding", address, words)
    s.input[5] = 2345
    s.coils[3] = True
    s.discrete_inputs[5] = True
    return s


@asynccontextmanager
async def bus(
    slaves: list[Slave], transport: str, nodes: list[dict[str, Any]], **options: Any
) -> AsyncIterator[tuple[ModbusSim, DriverHarness]]:
    """A simulated bus and a driver instance polling it through the real scheduler."""
    sim = ModbusSim(slaves, transport=transport)  # type: ignore[arg-type]
    where = await sim.start()
    link = {"host": "127.0.0.1", "port": where} if transport == "tcp" else {"port": where}
    options = {"interval": 0.05, "timeout": 2, "request_timeout": 0.2, "jitter": 0, **options}
    try:
        async with run_driver(MANIFEST, name="bus", transport=transport, nodes=nodes, **link, **options) as h:
            yield sim, h
    finally:
        await sim.stop()


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a condition, polling; fail after a generous overall time."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (conditions span sink, node tracker and device)
            await asyncio.sleep(0.02)


def latest(h: DriverHarness, node: str, point: str) -> Any:
    got = h.sink.points(point, node)
    return got[-1].value if got else None


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_every_type_and_order_decodes_exactly(transport: str) -> None:
    nodes = [{"id": "known-1", "slave": 7, "points": KNOWN_MAP}]
    async with bus([known_slave(7)], transport, nodes, max_gap=2) as (_sim, h):
        await until(lambda: all(h.sink.points(p, "known-1") for p in KNOWN_VALUES))
        for point, (value, unit) in KNOWN_VALUES.items():
            r = h.sink.points(point, "known-1")[0]
            assert (r.value, type(r.value), r.unit) == (value, type(value), unit), point
            assert (r.node, r.path) == ("known-1", Path.IP3)
        assert not h.sink.points("nan")  # a NaN float is no reading (counted as a bad value)
        assert h.nodes.state == {"known-1": True}
        assert h.runner.stats.errors == 0


async def test_slaves_polled_in_turn_and_values_follow_the_device() -> None:
    meters = [energy_meter(1), energy_meter(2)]
    points = [
        {"name": "voltage_l1", "function": "input", "address": 0, "type": "f32", "unit": "V", "precision": 1},
        {"name": "energy", "address": 0, "type": "u32", "unit": "Wh"},
    ]
    nodes = [{"id": "m1", "slave": 1, "points": points}, {"id": "m2", "slave": 2, "points": points}]
    async with bus(meters, "tcp", nodes) as (_sim, h):
        await until(lambda: latest(h, "m1", "energy") is not None and latest(h, "m2", "energy") is not None)
        assert 226 < latest(h, "m1", "voltage_l1") < 234
        meters[1].update = None  # freeze the second meter and set a value we know
        meters[1].set_u32("holding", 0, 4_000_000_123)
        await until(lambda: latest(h, "m2", "energy") == 4_000_000_123)
        assert meters[0].requests > 0 and meters[1].requests > 0


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_silent_node_goes_offline_others_keep_delivering_then_it_returns(transport: str) -> None:
    slaves = [known_slave(1), known_slave(2), known_slave(3)]
    nodes = [{"id": f"n{i}", "slave": i, "points": KNOWN_MAP[:2]} for i in (1, 2, 3)]
    async with bus(slaves, transport, nodes, diagnostics=True) as (_sim, h):
        await until(lambda: h.nodes.state == {"n1": True, "n2": True, "n3": True})
        slaves[1].silent = True
        await until(lambda: h.nodes.state["n2"] is False)
        assert "no reply" in h.nodes.reason["n2"]
        marks = {n: len(h.sink.points("u16", n)) for n in ("n1", "n2", "n3")}
        await until(lambda: all(len(h.sink.points("u16", n)) >= marks[n] + 3 for n in ("n1", "n3")))
        assert len(h.sink.points("u16", "n2")) == marks["n2"]
        assert h.nodes.state["n1"] and h.nodes.state["n3"]
        assert latest(h, "n2", "modbus.timeouts") >= 1 and latest(h, "n1", "modbus.timeouts") == 0
        assert h.runner.stats.state == "running" and h.runner.stats.errors == 0  # the bus is fine
        slaves[1].silent = False
        await until(lambda: h.nodes.state["n2"] is True)
        await until(lambda: len(h.sink.points("u16", "n2")) > marks["n2"])


async def test_garbled_rtu_replies_are_crc_errors_of_that_node() -> None:
    slaves = [known_slave(1), known_slave(2)]
    nodes = [{"id": f"n{i}", "slave": i, "points": KNOWN_MAP[:2]} for i in (1, 2)]
    async with bus(slaves, "rtu", nodes, diagnostics=True) as (_sim, h):
        await until(lambda: h.nodes.state == {"n1": True, "n2": True})
        slaves[0].garbage = True
        await until(lambda: h.nodes.state["n1"] is False)
        assert "CRC" in h.nodes.reason["n1"]
        await until(lambda: (latest(h, "n1", "modbus.crc_errors") or 0) >= 2)
        assert latest(h, "n1", "modbus.timeouts") == 0
        mark = len(h.sink.points("u16", "n2"))
        await until(lambda: len(h.sink.points("u16", "n2")) > mark + 2)
        slaves[0].garbage = False
        await until(lambda: h.nodes.state["n1"] is True)


async def test_exception_response_is_counted_and_marks_the_node_offline() -> None:
    slaves = [known_slave(1), known_slave(2)]
    nodes = [{"id": f"n{i}", "slave": i, "points": KNOWN_MAP[:2]} for i in (1, 2)]
    async with bus(slaves, "tcp", nodes, diagnostics=True) as (_sim, h):
        await until(lambda: h.nodes.state == {"n1": True, "n2": True})
        slaves[1].exception = 2
        await until(lambda: h.nodes.state["n2"] is False)
        assert "exception response 2 (illegal data address)" in h.nodes.reason["n2"]
        await until(lambda: (latest(h, "n2", "modbus.exceptions") or 0) >= 2)
        assert latest(h, "n1", "modbus.exceptions") == 0 and h.nodes.state["n1"]
        slaves[0].exception = 4  # every node refuses: they still answer, so the bus is fine
        await until(lambda: h.nodes.state["n1"] is False and (latest(h, "n1", "modbus.exceptions") or 0) >= 2)
        assert h.runner.stats.errors == 0 and h.runner.stats.state == "running"
        slaves[0].exception = slaves[1].exception = 0
        await until(lambda: h.nodes.state == {"n1": True, "n2": True})


async def test_no_node_answering_makes_the_instance_unavailable() -> None:
    slaves = [known_slave(1)]
    async with bus(slaves, "tcp", [{"id": "n1", "slave": 1, "points": KNOWN_MAP[:1]}]) as (_sim, h):
        await h.sink.wait_for(1)
        slaves[0].silent = True
        await until(lambda: h.runner.stats.state == "unavailable")
        assert "no node answered" in h.runner.stats.last_error
        slaves[0].silent = False
        await until(lambda: h.runner.stats.state == "running" and h.nodes.state["n1"] is True)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_bus_disconnect_and_reconnect(transport: str) -> None:
    slaves = [known_slave(1)]
    async with bus(slaves, transport, [{"id": "n1", "slave": 1, "points": KNOWN_MAP[:1]}]) as (sim, h):
        await h.sink.wait_for(1)
        sim.disconnect()
        if transport == "rtu":  # the adapter is gone: reads fail until it is plugged back
            await until(lambda: h.runner.stats.errors > 0)
            assert h.nodes.state["n1"] is False
            sim.reconnect()
        mark = len(h.sink.readings)
        await until(lambda: len(h.sink.readings) > mark + 2 and h.nodes.state["n1"] is True)
        assert h.runner.stats.state == "running"


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_stop_with_a_request_in_flight_leaves_nothing_running(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pymodbus answers a request in a task it starts a few loop turns after the frame arrives.
    Stop the simulator at each of those turns in order (frame decoded, handler scheduled, task
    created, task done): no task may outlive ``stop()``, whatever stage the request was at."""
    me = asyncio.current_task()
    pdu = bytes([3, 0, 0, 0, 1])  # read one holding register
    answered = []
    for turns in range(6):
        slave = known_slave(1)
        sim = ModbusSim([slave], transport=transport)  # type: ignore[arg-type]
        if transport == "rtu":
            frame = bytes([1]) + pdu
            frame += crc16(frame).to_bytes(2, "big")
        else:
            frame = bytes([0, 1, 0, 0, 0, 1 + len(pdu), 1]) + pdu
        decoded = asyncio.Event()

        def spy(
            sending: bool,
            data: bytes,
            trace: Callable[[bool, bytes], bytes] = sim._trace,
            size: int = len(frame),
            decoded: asyncio.Event = decoded,
        ) -> bytes:
            if not sending and len(data) >= size:  # the whole request has reached the server
                decoded.set()
            return trace(sending, data)

        monkeypatch.setattr(sim, "_trace", spy)
        where = await sim.start()
        fd, writer = -1, None
        try:
            if transport == "rtu":
                fd = os.open(str(where), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                os.write(fd, frame)
            else:
                _, writer = await asyncio.open_connection("127.0.0.1", where)
                writer.write(frame)
            async with asyncio.timeout(5):
                await decoded.wait()
            for _ in range(turns):
                await asyncio.sleep(0)
        finally:
            await sim.stop()
            left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if fd >= 0:
                os.close(fd)
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        assert not left, (turns, left)
        answered.append(slave.requests)
    assert answered[0] == 0 and answered[-1] == 1, answered  # the turns span the whole request
    for _ in range(5):  # a handler scheduled before stop() runs later: it must not start anything
        await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if t is not me and not t.done()]


async def test_port_absent_at_start_is_retried() -> None:
    port = free_port()
    async with run_driver(
        MANIFEST,
        name="bus",
        transport="tcp",
        host="127.0.0.1",
        port=port,
        interval=0.05,
        request_timeout=0.2,
        nodes=[{"id": "n1", "slave": 1, "points": KNOWN_MAP[:1]}],
    ) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "cannot open Modbus bus" in h.runner.stats.last_error
        sim = ModbusSim([known_slave(1)], transport="tcp")
        await sim.start(port)
        try:
            await h.sink.wait_for(1, within=10)
        finally:
            await sim.stop()


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_writes_reach_the_device_scaled_and_refusals_do_not(transport: str) -> None:
    slaves = [Slave(1), Slave(2)]
    nodes = [{"id": "a", "slave": 1, "points": WRITE_MAP}, {"id": "b", "slave": 2, "points": WRITE_MAP}]
    async with bus(slaves, transport, nodes) as (_sim, h):
        await until(lambda: h.nodes.state == {"a": True, "b": True})
        await h.runner.write("b/setpoint", 21.5)
        assert slaves[1].holding[40] == 215 and slaves[0].holding[40] == 0
        await h.runner.write("b/setpoint", -2)
        assert slaves[1].holding[40] == 0xFFEC
        await h.runner.write("a/limit", 0x12345678)
        assert slaves[0].holding[42:44] == [0x5678, 0x1234]
        await h.runner.write("a/relay", True)
        assert slaves[0].coils[7] is True
        await h.runner.write("a/relay", False)
        assert slaves[0].coils[7] is False
        before = [list(s.writes) for s in slaves]
        for point, value in [
            ("b/setpoint", 50.1),  # above max
            ("b/setpoint", -20.5),  # below min
            ("b/level", 1),  # not writable
            ("b/nope", 1),
            ("c/setpoint", 1),
            ("setpoint", 1),  # bare name, but two nodes
            ("a/relay", 5),
            ("a/limit", -1),  # a u32 cannot hold it
        ]:
            with pytest.raises(ConfigError):
                await h.runner.write(point, value)
        assert [s.writes for s in slaves] == before
        # the map's scaling applies on the way back too
        await until(lambda: h.sink.points("setpoint", "b") and latest(h, "b", "setpoint") == -2.0)


async def test_write_to_a_silent_node_fails_and_marks_it_offline() -> None:
    from gateway.driver_api import PollError

    slaves = [Slave(1)]
    async with bus(slaves, "tcp", [{"id": "a", "slave": 1, "points": WRITE_MAP}], interval=60) as (_sim, h):
        await until(lambda: h.nodes.state == {"a": True})
        slaves[0].silent = True
        with pytest.raises(PollError, match="no reply to write setpoint"):
            await h.runner.write("setpoint", 1)
        assert h.nodes.state["a"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodes": [{"id": "a", "slave": 1, "points": WRITE_MAP}] * 2}, "appears twice"),
        ({"nodes": [{"id": "a", "slave": 1, "map": "nope"}]}, "no map named"),
        ({"nodes": [{"id": "a", "slave": 1}]}, "either map or points"),
        ({"request_timeout": 6}, "must cover one request_timeout"),
        ({"host": ""}, "needs host"),
        (
            {
                "nodes": [
                    {
                        "id": "a",
                        "slave": 1,
                        "points": [{"name": "x", "function": "input", "address": 0, "writable": True}],
                    }
                ]
            },
            "cannot be written",
        ),
        (
            {"nodes": [{"id": "a", "slave": 1, "points": [{"name": "x", "address": 0, "type": "f32", "count": 3}]}]},
            "drop count",
        ),
        (
            {
                "max_registers": 1,
                "nodes": [{"id": "a", "slave": 1, "points": [{"name": "x", "address": 0, "type": "u32"}]}],
            },
            "more than one read",
        ),
    ],
)
def test_config_refuses_maps_that_cannot_work(change: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {
        "transport": "tcp",
        "host": "10.0.0.5",
        "timeout": 5,
        "nodes": [{"id": "a", "slave": 1, "points": WRITE_MAP}],
    }
    with pytest.raises(ValidationError, match=message):
        make_instance(MANIFEST, **{**options, **change})


ROOT = pathlib.Path(__file__).parents[3]


def _section(path: pathlib.Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    sections = doc if isinstance(doc, list) else doc["drivers"]
    [section] = [s for s in sections if s["driver"] == "modbus"]
    return {
        k: v
        for k, v in section.items()
        if k not in ("driver", "name", "transport", "interval", "port", "baudrate", "parity")
    }


@pytest.mark.parametrize(
    ("path", "devices"),
    [
        ("drivers/modbus/sample.yaml", lambda: [energy_meter(1), energy_meter(2)]),
        ("configs/street-cabinet.yaml", lambda: [energy_meter(1), air_quality(21)]),
    ],
)
async def test_documented_maps_read_the_simulated_devices(path: str, devices: Callable[[], list[Slave]]) -> None:
    """sample.yaml and the street-cabinet config, as written, read every point of the simulators."""
    section = _section(ROOT / path)
    expected = {
        (n["id"], name, p.get("unit"))
        for n in section["nodes"]
        for p in (section["maps"][n["map"]] if "map" in n else n["points"])
        for name in ([f"{p['name']}.{b}" for b in p["bits"].values()] if "bits" in p else [p["name"]])
    }
    async with bus(devices(), "rtu", section.pop("nodes"), **section) as (_sim, h):

        def seen() -> set[tuple[str, str, str | None]]:
            return {(r.node, r.point, r.unit) for r in h.sink.readings if not r.point.startswith("modbus.")}

        await until(lambda: seen() >= expected)
        assert seen() == expected
        assert all(h.nodes.state.values())
        volts = h.sink.points("voltage_l1")[0].value
        assert isinstance(volts, float) and 220 < volts < 240


async def test_malformed_reply_is_a_fault_of_that_node() -> None:
    slaves = [known_slave(1), known_slave(2)]
    nodes = [{"id": f"n{i}", "slave": i, "points": KNOWN_MAP[2:3]} for i in (1, 2)]  # one u32
    async with bus(slaves, "rtu", nodes, diagnostics=True) as (_sim, h):
        await until(lambda: h.nodes.state == {"n1": True, "n2": True})
        slaves[0].raw_reply = bytes([3, 2, 0, 1])  # a valid frame with one register, two asked
        await until(lambda: h.nodes.state["n1"] is False)
        assert "malformed reply" in h.nodes.reason["n1"]
        assert h.nodes.state["n2"] and h.runner.stats.errors == 0


async def test_hostile_replies_never_take_down_the_bus() -> None:
    """Random well-framed PDUs from one slave (fixed seed): only that node suffers."""
    rng = random.Random(4711)
    pdus = [bytes([3, 4, 0, 1, 0, 2]), bytes([3, 0]), bytes([3]), bytes([0x83, 0x99]), bytes([1, 1, 0xFF])]
    for _ in range(25):
        fc = rng.choice([1, 2, 3, 4, 5, 6, 0x83, 0x90, rng.randrange(256)])
        pdus.append(bytes([fc, rng.randrange(256)]) + rng.randbytes(rng.randrange(0, 12)))
    slaves = [known_slave(1), known_slave(2)]
    nodes = [{"id": f"n{i}", "slave": i, "points": KNOWN_MAP[:4]} for i in (1, 2)]
    async with bus(slaves, "rtu", nodes, request_timeout=0.1) as (_sim, h):
        await until(lambda: h.nodes.state == {"n1": True, "n2": True})
        for pdu in pdus:
            slaves[0].raw_reply = pdu
            mark = len(h.sink.points("u16", "n2"))
            await until(lambda m=mark: len(h.sink.points("u16", "n2")) > m)  # type: ignore[misc]
            assert h.runner.stats.errors == 0, (pdu.hex(), h.runner.stats.last_error)
        slaves[0].raw_reply = None
        await until(lambda: h.nodes.state["n1"] is True)
