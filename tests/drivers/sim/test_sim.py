"""The sim driver's patterns, units and node fan-out, run in the real scheduler."""

from __future__ import annotations

from drivers.sim import MANIFEST
from gateway.testing import run_driver


async def test_patterns_and_units() -> None:
    points = [
        {"name": "c", "pattern": "counter", "value": 10, "step": 5},
        {"name": "k", "pattern": "constant", "value": "ok"},
        {"name": "s", "pattern": "step", "values": [True, False], "hold": 3600},
        {"name": "t", "unit": "Cel", "pattern": "sine", "low": 10, "high": 20, "period": 60},
        {"name": "w", "pattern": "random_walk", "low": 0, "high": 1, "step": 5, "seed": 1},
    ]
    async with run_driver(MANIFEST, name="s1", points=points, interval=0.02, jitter=0) as h:
        await h.sink.wait_for(3, point="c")
    assert [r.value for r in h.sink.points("c")][:3] == [10, 15, 20]
    assert {r.value for r in h.sink.points("k")} == {"ok"}
    assert h.sink.points("s")[0].value is True
    temps = h.sink.points("t")
    assert all(10 <= r.value <= 20 and r.unit == "Cel" for r in temps)
    assert all(0 <= r.value <= 1 for r in h.sink.points("w"))


async def test_nodes_and_repeat() -> None:
    async with run_driver(MANIFEST, name="many", points=[{"name": "x", "pattern": "counter"}],
                          nodes=3, repeat=4, interval=3600) as h:
        got = await h.sink.wait_for(12)
    assert {r.node for r in got} == {"sim-1", "sim-2", "sim-3"}
    assert all(int(r.path) == 3 for r in got)
    per_node = [r.value for r in got if r.node == "sim-2"]
    assert per_node == [0, 1, 2, 3]
    assert len({r.ts_ns for r in got if r.node == "sim-1"}) == 4
