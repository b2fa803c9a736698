"""The sim driver: emits generated values on every poll."""

from __future__ import annotations

import time

from drivers.sim.config import SimConfig, SimPoint
from drivers.sim.patterns import Constant, Counter, Pattern, RandomWalk, Sine, Step
from gateway.driver_api import Driver, DriverContext, Emit


def _pattern(p: SimPoint) -> Pattern:
    if p.pattern == "constant":
        return Constant(p.value)
    if p.pattern == "counter":
        return Counter(start=int(p.value) if isinstance(p.value, int | float) else 0, step=int(p.step))
    if p.pattern == "sine":
        return Sine(p.low, p.high, p.period)
    if p.pattern == "random_walk":
        return RandomWalk(p.low, p.high, p.step, seed=p.seed)
    return Step(list(p.values), p.hold)


class SimDriver(Driver):
    """Generates readings for every configured point (and node) on each poll."""

    config: SimConfig

    def __init__(self, config: SimConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        nodes = [f"{config.node_prefix}-{i}" for i in range(1, config.nodes + 1)] or [None]
        self._series = [(node, p.name, p.unit, _pattern(p)) for node in nodes for p in config.points]
        self._t0 = time.monotonic()

    async def poll(self, emit: Emit) -> None:
        t = time.monotonic() - self._t0
        now = time.time_ns()
        for i in range(self.config.repeat):
            ts = now + i  # distinct timestamps within a burst
            for node, point, unit, pattern in self._series:
                emit(point, pattern.value(t), unit=unit, node=node, ts_ns=ts)
