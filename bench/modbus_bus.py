"""A simulated Modbus TCP bus for the bench (hil/devices/modbus_slave.py): N slaves with R
holding registers each that change every second. Prints the port, serves until SIGTERM.

    python -m bench.modbus_bus 50 100
"""

from __future__ import annotations

import asyncio
import signal
import sys

from hil.devices.modbus_slave import ModbusSim, Slave


async def _main(nodes: int, registers: int) -> None:
    def counting(s: Slave, now: float) -> None:  # every register changes once a second
        tick = int(now)
        s.holding[:registers] = [(tick + i) & 0xFFFF for i in range(registers)]

    slaves = []
    for i in range(1, nodes + 1):
        s = Slave(i, update=counting)
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
