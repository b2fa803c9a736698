"""Simulated BLE neighbourhood for the bench: N BTHome v2 sensors advertising on a private D-Bus
with python-dbusmock's BlueZ (hil/devices/ble_bluez.py), so the daemon's real bleak code scans
them. Each sensor advertises a new temperature and humidity every PERIOD seconds, spread evenly,
moving as a room's do (bench/signals.py: slow swings, sensor noise, a wandering RSSI).
Prints ``DBUS_SYSTEM_BUS_ADDRESS=...`` for the daemon, serves until SIGTERM.

    python -m bench.ble_nodes 200 1.0
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from bench.signals import Climate
from hil.devices.ble_bluez import SimulatedBlueZ

BTHOME = 0xFCD2


def address(i: int) -> str:
    return f"A4:C1:38:01:{i >> 8:02X}:{i & 0xFF:02X}"


async def _main(nodes: int, period: float) -> None:
    sim = SimulatedBlueZ()
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sim.add_adapter("hci0")
        for i in range(nodes):
            await sim.add_device(address(i), f"DIY-{i:03d}")
        print(f"DBUS_SYSTEM_BUS_ADDRESS={sim.address}", flush=True)
        climates = [Climate(seed=i) for i in range(nodes)]
        tick = 0
        step = period / nodes
        start = loop.time()
        while not stop.is_set():
            i = tick % nodes
            centi, hum, rssi = climates[i].reading(time.time())  # 0.01 Cel, 0.01 %RH, dBm
            data = (bytes([0x40, 0x02]) + centi.to_bytes(2, "little", signed=True) + bytes([0x03])
                    + hum.to_bytes(2, "little"))
            await sim.advertise(address(i), rssi=rssi, service_data={BTHOME: data})
            tick += 1
            delay = start + tick * step - loop.time()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
    finally:
        await sim.stop()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]), float(sys.argv[2])))
