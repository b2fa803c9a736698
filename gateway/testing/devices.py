"""Simulated-device helpers for driver tests: serial lines on real pseudo-terminals and a
Modbus bus on pymodbus's own server (both from ``hil/devices``, shipped with sensegate)."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

from hil.devices.pty import PtyPort


class SerialPair(PtyPort):
    """A pseudo-terminal pair: the driver opens ``path``; the test is the device end.

    ``write(b"...")`` sends bytes to the driver; ``read()`` returns what the driver sent
    (non-blocking, ``b""`` when nothing is there); ``unplug()``/``plug()`` pull the cable.
    """

    def read(self, size: int = 4096) -> bytes:
        """Bytes the driver has written so far (up to ``size``), without blocking."""
        if not self.plugged:
            return b""
        try:
            return os.read(self._master, size)
        except (BlockingIOError, OSError):
            return b""


def serial_pair(path: str | None = None) -> SerialPair:
    """A plugged ``SerialPair`` (close it when done; the ``pty_pair`` fixture does)."""
    pair = SerialPair(path)
    pair.plug()
    return pair


@contextlib.asynccontextmanager
async def modbus_sim(slaves: list[Any], transport: Literal["tcp", "rtu"] = "tcp") -> AsyncIterator[Any]:
    """Serve simulated Modbus slaves while the block runs (needs the ``modbus`` extra).

    TCP: point the driver at ``sim.port``; RTU: at ``sim.device`` (a pty path). Slaves are
    ``hil.devices.modbus_slave.Slave`` objects whose tables the test reads and writes.
    Typed ``Any`` so that importing the test kit never needs pymodbus.
    """
    sim_module = importlib.import_module("hil.devices.modbus_slave")  # pymodbus only when used
    sim = sim_module.ModbusSim(slaves, transport=transport)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()
