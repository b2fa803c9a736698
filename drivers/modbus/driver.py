"""The modbus driver: pymodbus's asyncio clients on the host's loop, the register maps of
``registers`` and the host contract.

One instance is one bus. Each poll reads every node in turn, one request at a time; a node
that times out, garbles its reply or answers with an exception response is counted and marked
offline (``ctx.node_status``) while the other nodes keep being read. Only when no node answers
at all (silence or garbage; an exception response is an answer), or the bus itself is gone,
does the poll fail (the host then backs off and reopens).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.modbus import registers
from drivers.modbus.config import ModbusConfig
from gateway.driver_api import (
    ConfigError,
    Driver,
    DriverContext,
    Emit,
    MissingExtra,
    NotReady,
    PollError,
    Value,
)

# Exception codes of the Modbus application protocol (section 7), for readable reasons.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
COUNTERS = ("requests", "timeouts", "crc_errors", "exceptions", "bad_values")


class _NodeFault(Exception):
    """One request to one node failed; ``kind`` is the counter it goes to."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


@dataclass
class _Node:
    """Runtime state of one node: its planned reads, writable points and counters."""

    id: str
    slave: int
    requests: list[registers.Request]
    points: dict[str, registers.Point]
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))


class ModbusDriver(Driver):
    """Polls the nodes of one Modbus bus; ``write("<node>/<point>", value)`` actuates."""

    config: ModbusConfig

    def __init__(self, config: ModbusConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._client: Any = None
        self._rx_seen = False
        self.nodes: dict[str, _Node] = {}
        for n in config.nodes:
            points = config.points_of(n)
            reqs = registers.plan(
                points, max_gap=config.max_gap, max_registers=config.max_registers, max_bits=config.max_bits
            )
            self.nodes[n.id] = _Node(n.id, n.slave, reqs, {p.name: p for p in points})

    @property
    def _bus(self) -> str:
        c = self.config
        return str(c.port) if c.transport == "rtu" else f"{c.host}:{c.port}"

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # pymodbus hands us every received chunk: bytes that never became a valid frame mean
        # a garbled reply (CRC or framing error) rather than silence.
        if not sending and data:
            self._rx_seen = True
        return data

    async def setup(self) -> None:
        c = self.config
        # pymodbus logs an ERROR (with a frame dump) for every unanswered request; we count
        # those per node and the host logs each node transition once, so unless someone set
        # pymodbus's level on purpose, keep its per-request noise out of the journal.
        pymodbus_log = logging.getLogger("pymodbus")
        if pymodbus_log.level == logging.NOTSET:
            pymodbus_log.setLevel(logging.CRITICAL)
        common: dict[str, Any] = {
            "timeout": c.request_timeout,
            "retries": c.retries,
            "reconnect_delay": 0,  # no library-started reconnect task: the host owns retries
            "trace_packet": self._trace,
        }
        if c.transport == "rtu":
            if importlib.util.find_spec("serial") is None:
                raise MissingExtra("modbus", "serial", "modbus")
            self._client = AsyncModbusSerialClient(
                str(c.port),
                framer=FramerType.RTU,
                baudrate=c.baudrate,
                parity=c.parity,
                stopbits=c.stopbits,
                bytesize=c.bytesize,
                **common,
            )
        else:
            self._client = AsyncModbusTcpClient(c.host, port=int(c.port), **common)
        # A silent slave must never make pymodbus drop the shared connection (its default
        # after a few unanswered requests); a dead link shows as "no node answered" instead.
        self._client.set_max_no_responses(1 << 30)
        if not await self._client.connect():
            raise NotReady(f"cannot open Modbus bus {self._bus}")

    async def poll(self, emit: Emit) -> None:
        await self._ensure_connected()
        answered = 0
        faults: list[str] = []
        for node in self.nodes.values():
            why = await self._poll_node(node, emit)
            if why is None:
                answered += 1
            else:
                faults.append(f"{node.id}: {why}")
        if not answered:
            raise PollError(f"no node answered on {self._bus} ({'; '.join(faults)})")

    async def _ensure_connected(self) -> None:
        if self._client is None:
            raise PollError("not set up")
        if not self._client.connected and not await self._client.connect():
            for node in self.nodes.values():
                self.ctx.node_status(node.id, False, f"bus {self._bus} is down")
            raise PollError(f"Modbus bus {self._bus} is down")

    async def _poll_node(self, node: _Node, emit: Emit) -> str | None:
        """Read one node and report its status; return why it did not answer at all, or None
        when it did (even with an exception response: then the bus and the node work)."""
        problems: list[str] = []
        replied = not node.requests
        for req in node.requests:
            try:
                data = await self._read(node, req)
                replied = True
                samples = registers.decode_block(req, data)
            except _NodeFault as e:
                problems.append(str(e))
                if e.kind != "exceptions":
                    break  # a silent or garbling node: do not spend more bus time on it now
                replied = True
                continue
            except registers.DecodeError as e:
                node.counters["crc_errors"] += 1
                problems.append(f"malformed reply: {e}")
                continue
            for s in samples:
                if s.value is None:
                    node.counters["bad_values"] += 1
                    self.ctx.log.debug("%s/%s: %s", node.id, s.name, s.error)
                else:
                    emit(s.name, s.value, unit=s.unit, node=node.id)
        if problems:
            self.ctx.node_status(node.id, False, problems[0])
        else:
            self.ctx.node_status(node.id, True)
        if self.config.diagnostics:
            for name, count in node.counters.items():
                emit(f"modbus.{name}", count, node=node.id)
        return None if replied else problems[0]

    async def _call(self, node: _Node, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One request to one node, its failure classified and counted."""
        node.counters["requests"] += 1
        self._rx_seen = False
        try:
            reply = await fn(*args, device_id=node.slave, **kwargs)
        except ConnectionException as e:
            raise PollError(f"Modbus bus {self._bus} lost: {e}") from e
        except ModbusIOException as e:
            if not self._client.connected:
                raise PollError(f"Modbus bus {self._bus} lost: {e}") from e
            if self._rx_seen:
                node.counters["crc_errors"] += 1
                raise _NodeFault("crc_errors", f"garbled reply (CRC/framing error) to {what}") from e
            node.counters["timeouts"] += 1
            raise _NodeFault("timeouts", f"no reply to {what}") from e
        except Exception as e:  # anything else pymodbus raises on a hostile reply is that node's fault
            node.counters["crc_errors"] += 1
            raise _NodeFault("crc_errors", f"bad reply to {what}: {type(e).__name__}: {e}") from e
        if reply.isError():
            code = int(getattr(reply, "exception_code", 0))
            node.counters["exceptions"] += 1
            name = EXCEPTION_NAMES.get(code, "unknown")
            raise _NodeFault("exceptions", f"exception response {code} ({name}) to {what}")
        return reply

    async def _read(self, node: _Node, req: registers.Request) -> list[Any]:
        c = self._client
        fn = {
            registers.Table.COILS: c.read_coils,
            registers.Table.DISCRETE_INPUTS: c.read_discrete_inputs,
            registers.Table.HOLDING: c.read_holding_registers,
            registers.Table.INPUT: c.read_input_registers,
        }[req.table]
        what = f"read {req.table.value} {req.address}+{req.count}"
        reply = await self._call(node, what, fn, req.address, count=req.count)
        return list(getattr(reply, "bits" if req.table.bits else "registers", None) or [])

    async def write(self, point: str, value: Value) -> None:
        """Write ``"<node>/<point>"`` (or a bare point name when the bus has one node).

        Refusals (unknown or read-only point, value outside min/max or the type) raise
        ConfigError and never reach the bus; a node that does not take the write raises PollError.
        """
        node_id, _, name = point.rpartition("/")
        if not node_id and len(self.nodes) == 1:
            node_id = next(iter(self.nodes))
        node = self.nodes.get(node_id)
        if node is None:
            raise ConfigError(f"unknown node in {point!r} (write '<node>/<point>'; nodes: {', '.join(self.nodes)})")
        p = node.points.get(name)
        if p is None:
            raise ConfigError(f"node {node_id} has no point {name!r}")
        try:
            words = registers.encode(p, value)
        except registers.WriteError as e:
            raise ConfigError(f"write to {node_id}/{name} refused: {e}") from e
        await self._ensure_connected()
        c = self._client
        what = f"write {name}"
        try:
            if p.table is registers.Table.COILS:
                await self._call(node, what, c.write_coil, p.address, bool(words[0]))
            elif len(words) == 1:
                await self._call(node, what, c.write_register, p.address, int(words[0]))
            else:
                await self._call(node, what, c.write_registers, p.address, [int(w) for w in words])
        except _NodeFault as e:
            self.ctx.node_status(node.id, False, str(e))
            raise PollError(f"{node.id}: {e}") from e

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
