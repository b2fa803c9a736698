"""Simulated Modbus bus for drivers/modbus: pymodbus's own server, over TCP or RTU on a real pty.

``ModbusSim`` serves several slave ids, each a ``Slave`` with the four Modbus tables as plain
Python lists that tests read and write directly (``slave.holding[10] = 0x4060``). Registers
change while it runs when a slave has an ``update`` hook: ``energy_meter()`` matches
drivers/modbus/sample.yaml and ``air_quality()`` the sensor of configs/street-cabinet.yaml.

Transports:

* ``tcp``: a pymodbus ``ModbusTcpServer`` on a free loopback port (``sim.port``).
* ``rtu``: a pymodbus ``ModbusSerialServer`` on one pseudo-terminal, relayed byte for byte
  to a second pseudo-terminal whose path the driver opens (``sim.device``, a symlink that
  always points at the current pty). Why two ptys and an in-process relay rather than socat:
  no extra Debian package and no child process to reap, and the relay is the "RS-485 wire"
  where ``disconnect()`` can unplug the line (the client's pty hangs up, like a USB adapter
  pulled out) and a new one appears under the same path when ``reconnect()`` plugs it back.

Faults, per slave: ``silent`` (no reply, the client times out; requests to unknown ids are
silent too, as on a real bus), ``garbage`` (the reply's CRC is corrupted on RTU, its bytes
scrambled on TCP), ``exception`` (an exception code to answer every request with),
``raw_reply`` (a well-framed reply carrying any PDU, for malformed replies). Per bus:
``disconnect()`` / ``reconnect()``.

Usable from a demo::

    sim = ModbusSim([energy_meter(1), energy_meter(2)], transport="tcp")
    await sim.start()   # sim.port
    ...
    await sim.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import struct
import tempfile
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

TABLE_SIZE = 1024  # addresses 0..1023 in each table


@dataclass
class Slave:
    """One simulated device: its four tables, its faults, and what was written to it."""

    id: int
    coils: list[bool] = field(default_factory=lambda: [False] * TABLE_SIZE)
    discrete_inputs: list[bool] = field(default_factory=lambda: [False] * TABLE_SIZE)
    holding: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)
    input: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)
    update: Callable[[Slave, float], None] | None = None  # called before each request, with time
    silent: bool = False
    garbage: bool = False
    exception: int = 0  # a Modbus exception code to answer with, 0 for none
    raw_reply: bytes | None = None  # a PDU (function code + data) sent instead of the real reply
    requests: int = 0
    writes: list[tuple[str, int, list[int] | list[bool]]] = field(default_factory=list)

    def set_words(self, table: Literal["holding", "input"], address: int, words: list[int]) -> None:
        """Put raw register words at an address."""
        getattr(self, table)[address : address + len(words)] = words

    def set_f32(self, table: Literal["holding", "input"], address: int, value: float) -> None:
        """A float32 in the Modbus default order (big-endian bytes, high word first)."""
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        self.set_words(table, address, [hi, lo])

    def set_u32(self, table: Literal["holding", "input"], address: int, value: int) -> None:
        """An unsigned 32-bit value, high word first."""
        self.set_words(table, address, [value >> 16 & 0xFFFF, value & 0xFFFF])


def energy_meter(slave_id: int, *, phase_voltage: float = 230.0) -> Slave:
    """A three-phase energy meter whose readings move (layout: drivers/modbus/sample.yaml).

    Input registers (f32, big-endian): 0/2/4 voltage L1-L3 (V), 6/8/10 current (A), 12 total
    power (W), 14 frequency (Hz). Holding: 0..1 u32 energy (Wh), 2 i16 temperature (0.1 Cel),
    3 status bitfield (bit 0 running, bit 1 fault), 10..17 serial number (string, 16 chars),
    20 u16 CT ratio (writable). Coils: 0 relay. Discrete inputs: 0 door contact.
    """
    start = time.monotonic()

    def update(s: Slave, now: float) -> None:
        t = now - start
        volts = [phase_voltage + 3 * math.sin(t + k) for k in range(3)]
        amps = [5 + 2 * math.sin(t / 3 + k) for k in range(3)]
        for k in range(3):
            s.set_f32("input", 2 * k, volts[k])
            s.set_f32("input", 6 + 2 * k, amps[k])
        s.set_f32("input", 12, sum(v * a for v, a in zip(volts, amps, strict=True)))
        s.set_f32("input", 14, 50.0 + 0.02 * math.sin(t))
        s.set_u32("holding", 0, 1_000_000 + int(t * 10))
        s.holding[2] = int(215 + 10 * math.sin(t / 10)) & 0xFFFF
        s.holding[3] = 0b01 | (0b10 if s.coils[0] else 0)

    s = Slave(slave_id, update=update)
    serial = f"SG-EM{slave_id:04d}-0001"[:16].ljust(16, "\0").encode()
    s.set_words("holding", 10, list(struct.unpack(">8H", serial)))
    s.holding[20] = 100
    update(s, start)
    return s


def air_quality(slave_id: int) -> Slave:
    """An RS-485 air-quality sensor (layout: the cab-0042-air node of configs/street-cabinet.yaml).

    Holding registers, u16 unless noted: 0 PM2.5 (ug/m3), 1 PM10 (ug/m3), 2 CO2 (ppm),
    3 i16 temperature (0.1 Cel), 4 humidity (0.1 %RH), 5 noise (0.1 dB), 8 fault bits.
    """
    start = time.monotonic()

    def update(s: Slave, now: float) -> None:
        t = now - start
        pm25 = 12 + 6 * math.sin(t / 5)
        s.holding[0:6] = [
            round(pm25),
            round(pm25 * 1.6),
            round(420 + 40 * math.sin(t / 7)),
            round(285 + 20 * math.sin(t / 11)) & 0xFFFF,
            round(650 + 50 * math.sin(t / 13)),
            round(550 + 80 * abs(math.sin(t))),
        ]

    s = Slave(slave_id, update=update)
    update(s, start)
    return s


_TABLES = {1: "coils", 5: "coils", 15: "coils", 2: "discrete_inputs"}
_TABLES.update(dict.fromkeys((3, 6, 16, 22, 23), "holding"))
_TABLES[4] = "input"


class _RequestHandler(ServerRequestHandler):
    """pymodbus's per-connection request handler, whose request tasks the server keeps.

    pymodbus answers a decoded request in a task that ``handle_later`` starts with
    ``run_coroutine_threadsafe`` and nobody keeps: it is created two loop turns after the
    frame arrives and runs on the third, and ``ModbusBaseServer.shutdown()`` neither waits for
    nor cancels it. A simulator stopped inside that window left the task behind to answer on a
    closed transport (and the suite's leak guard failed the test). Here the task is made on the
    loop directly, kept in the server's set so ``shutdown()`` can end it, and not made at all
    once the server has stopped.
    """

    def handle_later(self) -> None:
        server: _SimServerMixin = self.server
        if server.stopped:  # the device went off between the frame arriving and now: no answer
            return
        task = self.loop.create_task(self.handle_request(), name="modbus-sim request")
        server.request_tasks.add(task)
        task.add_done_callback(server.request_tasks.discard)


class _SimServerMixin:
    """For the pymodbus servers: handlers whose request tasks are kept, and a ``shutdown()``
    that cancels the ones still pending and waits for them, so nothing outlives the server."""

    trace_packet: Callable[[bool, bytes], bytes] | None
    trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU] | None
    trace_connect: Callable[[bool], None] | None

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.stopped = False
        self.request_tasks: set[asyncio.Task[None]] = set()
        super().__init__(*args, **kwargs)

    def callback_new_connection(self) -> ServerRequestHandler:
        return _RequestHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    async def shutdown(self) -> None:
        self.stopped = True
        await super().shutdown()  # type: ignore[misc]
        pending = list(self.request_tasks)
        for task in pending:
            task.cancel()
        for result in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(result, Exception):
                raise result


class _TcpServer(_SimServerMixin, ModbusTcpServer):
    pass


class _SerialServer(_SimServerMixin, ModbusSerialServer):
    pass


class ModbusSim:
    """A Modbus bus with several slaves, served by pymodbus over TCP or RTU-on-pty."""

    def __init__(self, slaves: list[Slave], transport: Literal["tcp", "rtu"] = "tcp") -> None:
        self.slaves = {s.id: s for s in slaves}
        self.transport = transport
        self.port = 0  # tcp
        self.device = ""  # rtu: the path the client opens (a symlink to the current pty)
        self._server: _TcpServer | _SerialServer | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._fds: list[int] = []  # server pty master/slave
        self._line: tuple[int, int] | None = None  # client-side pty master/slave ("the cable")

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, port: int = 0) -> str | int:
        """Start serving; return the TCP port or the serial device path."""
        devices = [self._device(s) for s in self.slaves.values()]
        if self.transport == "tcp":
            self._server = _TcpServer(
                devices, address=("127.0.0.1", port), framer=FramerType.SOCKET, trace_packet=self._trace
            )
            await self._server.serve_forever(background=True)
            transport = self._server.transport
            assert transport is not None
            self.port = transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            return self.port
        self._tmp = tempfile.TemporaryDirectory(prefix="sensegate-modbus-")
        self.device = os.path.join(self._tmp.name, "ttyRS485")
        master, slave = _open_pty()
        self._fds = [master, slave]
        self._server = _SerialServer(
            devices, port=os.ttyname(slave), framer=FramerType.RTU, trace_packet=self._trace, reconnect_delay=0.1
        )
        await self._server.serve_forever(background=True)
        self.reconnect()
        return self.device

    async def stop(self) -> None:
        """Stop serving and release every fd; safe to call twice."""
        self.disconnect()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # also ends the requests it was still handling
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- faults -------------------------------------------------------------------------

    def disconnect(self) -> None:
        """Pull the cable: TCP drops every client connection; RTU hangs up the client's pty."""
        if self.transport == "tcp":
            if self._server is not None:
                for conn in list(self._server.active_connections.values()):
                    conn.close()
            return
        if self._line is not None:
            loop = asyncio.get_running_loop()
            master, slave = self._line
            self._line = None
            loop.remove_reader(master)
            loop.remove_reader(self._fds[0])
            os.close(master)
            os.close(slave)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.device)

    def reconnect(self) -> None:
        """RTU: plug a fresh line in under the same device path (no-op for TCP)."""
        if self.transport != "rtu" or self._line is not None:
            return
        master, slave = _open_pty()
        self._line = (master, slave)
        tmp = self.device + ".new"
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.device)
        loop = asyncio.get_running_loop()
        loop.add_reader(self._fds[0], self._relay, self._fds[0], master)
        loop.add_reader(master, self._relay, master, self._fds[0])

    def _relay(self, src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
            os.write(dst, data)
        except OSError:  # nobody on the other end yet, or pty buffer full: bytes lost, as on a wire
            pass

    # -- pymodbus hooks -----------------------------------------------------------------

    def _device(self, slave: Slave) -> SimDevice:
        regs = SimData(0, count=TABLE_SIZE, values=0, datatype=DataType.REGISTERS)
        bits = SimData(0, count=TABLE_SIZE // 16, values=[False] * 16, datatype=DataType.BITS)
        return SimDevice(
            slave.id,
            simdata=([bits], [bits], [regs], [regs]),
            action=functools.partial(self._action, slave),
        )

    async def _action(
        self,
        slave: Slave,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Keep pymodbus's copy of the tables in step with the Slave's lists, apply faults."""
        slave.requests += 1
        if slave.exception:
            return ExcCodes(slave.exception)
        if slave.update is not None:
            slave.update(slave, time.monotonic())
        name = _TABLES[function_code]
        table: list[int] | list[bool] = getattr(slave, name)
        if name in ("coils", "discrete_inputs"):
            # bit tables arrive packed, 16 bits per register; count is in registers here
            if set_values:
                table[address : address + len(set_values)] = [bool(v) for v in set_values]  # type: ignore[assignment]
                slave.writes.append((name, address, [bool(v) for v in set_values]))
            first = address // 16 - start_address
            for r in range(first, first + count):
                bits = table[r * 16 : r * 16 + 16]
                registers[r] = sum(1 << i for i, b in enumerate(bits) if b)
            return None
        offset = address - start_address
        if set_values:
            table[address : address + len(set_values)] = list(set_values)  # type: ignore[assignment]
            slave.writes.append((name, address, [int(v) for v in set_values]))
        else:
            registers[offset : offset + count] = table[address : address + count]  # type: ignore[assignment]
        return None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """Replies on their way out: drop them (silent) or corrupt them (garbage)."""
        if not sending or not data:
            return data
        dev_id = data[0] if self.transport == "rtu" else data[6] if len(data) > 6 else -1
        slave = self.slaves.get(dev_id)
        if slave is None or slave.silent:
            return b""
        if slave.raw_reply is not None:  # a well-framed reply with whatever PDU the test wants
            if self.transport == "rtu":
                frame = bytes([dev_id]) + slave.raw_reply
                return frame + crc16(frame).to_bytes(2, "big")
            return data[:4] + (1 + len(slave.raw_reply)).to_bytes(2, "big") + data[6:7] + slave.raw_reply
        if slave.garbage:
            if self.transport == "rtu":
                return data[:-2] + bytes([data[-2] ^ 0x5A, data[-1] ^ 0xA5])
            return data[:7] + bytes(b ^ 0x5A for b in data[7:])
        return data


def _open_pty() -> tuple[int, int]:
    """A raw pseudo-terminal pair (master non-blocking); the slave fd stays open so the
    master never reads EIO while no client has the port open."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


def crc16(frame: bytes) -> int:
    """Modbus RTU CRC of a frame (for tests that build raw frames)."""
    return int(FramerRTU.compute_CRC(frame))


async def _serve(transport: Literal["tcp", "rtu"], port: int) -> None:
    """Run the street-cabinet bus (two meters, one air-quality sensor) until interrupted."""
    sim = ModbusSim([energy_meter(1), energy_meter(2), air_quality(21)], transport=transport)
    where = await sim.start(port)
    print(f"modbus {transport} simulator: slaves 1, 2 (energy meters), 21 (air quality) on {where}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


if __name__ == "__main__":  # python -m hil.devices.modbus_slave [tcp|rtu] [port]
    import sys

    mode = "rtu" if sys.argv[1:2] == ["rtu"] else "tcp"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(mode, int(sys.argv[2]) if len(sys.argv) > 2 else 5020))
