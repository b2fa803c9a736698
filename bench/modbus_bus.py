"""A simulated Modbus TCP bus for the bench (hil/devices/modbus_slave.py): N slaves with R
holding registers each, moving as a plant's do (bench/signals.py: slow process values with
noise, fast noisy ones, counters, states), recomputed once a second. Prints the port, serves
until SIGTERM.

    python -m bench.modbus_bus 50 100
"""

from __future__ import annotations

import asyncio
import signal
import sys

from bench.signals import Plant
from hil.devices.modbus_slave import ModbusSim, Slave


async def _main(nodes: int, registers: int) -> None:
    plants = {i: Plant(seed=i, registers=registers) for i in range(1, nodes + 1)}
    ticks: dict[int, int] = {}

    def plant(s: Slave, now: float) -> None:  # new values once a second, the same for every request in it
        tick = int(now)
        if ticks.get(s.id) != tick:
            ticks[s.id] = tick
            s.holding[:registers] = plants[s.id].values(float(tick))

    slaves = []
    for i in range(1, nodes + 1):
        s = Slave(i, update=plant)
        s.holding = [0] * max(registers, len(s.holding))
        slaves.append(s)
    sim = ModbusSim(slaves, transport="tcp")
    print(await sim.start(), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), int(sys.argv[2])))
