"""The modbus driver's options: one bus (RTU serial line or TCP), its nodes and their register maps.

Validation does no I/O: the register maps are checked and the read requests planned here, so
`sensegate check` catches a map that cannot work before it reaches a gateway.
"""

from __future__ import annotations

from typing import Literal

from drivers.modbus import registers
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, model_validator
from gateway.units import Duration

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NODE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class PointOptions(Model):
    """One entry of a register map."""

    name: str = Field(pattern=_NAME, description="Point name (the reading's name).")
    function: Literal["coils", "discrete_inputs", "holding", "input"] = Field(
        default="holding", description="Modbus table: coils, discrete_inputs, holding or input (registers)."
    )
    address: int = Field(ge=0, le=65535, description="Zero-based protocol address (holding register 40001 is 0).")
    type: Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "string", "bitfield", "bool"] | None = Field(
        default=None, description="Value type; default u16 for registers, bool for coils/discrete inputs."
    )
    count: int | None = Field(
        default=None, ge=1, le=125, description="Registers of a string (required) or a bitfield (1 or 2)."
    )
    byte_order: Literal["big", "little"] = Field(
        default="big", description="Byte order within each register (big: high byte first, the Modbus norm)."
    )
    word_order: Literal["big", "little"] = Field(
        default="big", description="Register order of 32/64-bit values (big: most significant register first)."
    )
    scale: float = Field(default=1.0, description="Reading = raw * scale + offset.")
    offset: float = Field(default=0.0, description="Added after scaling.")
    precision: int | None = Field(default=None, ge=0, le=12, description="Round scaled values to this many decimals.")
    unit: str | None = Field(default=None, description="SenML unit of the reading, e.g. V, A, W, Wh, Cel, %RH.")
    bits: dict[int, str] = Field(
        default_factory=dict, description="bitfield: bit number (0 = least significant) -> name; one bool each."
    )
    writable: bool = Field(default=False, description="Allow writes (coils and holding registers only).")
    min: float | None = Field(default=None, description="Lowest value a write may set (scaled units).")
    max: float | None = Field(default=None, description="Highest value a write may set (scaled units).")

    def to_point(self) -> registers.Point:
        """The protocol module's view of this entry (raises MapError if it cannot work)."""
        table = registers.Table(self.function)
        return registers.Point(
            name=self.name,
            table=table,
            address=self.address,
            type=self.type or ("bool" if table.bits else "u16"),
            count=self.count or 0,
            byte_order=self.byte_order,
            word_order=self.word_order,
            scale=self.scale,
            offset=self.offset,
            precision=self.precision,
            unit=self.unit,
            bits=tuple(sorted(self.bits.items())),
            writable=self.writable,
            min=self.min,
            max=self.max,
        )

    @model_validator(mode="after")
    def _check(self) -> PointOptions:
        self.to_point()  # MapError is a ValueError: validation reports it against this entry
        for label in self.bits.values():
            if not label or "/" in label or not label.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"bit name {label!r}: use letters, digits, _ and -")
        return self


class NodeOptions(Model):
    """One device (slave / unit id) on the bus: a capillary node with its own identity."""

    id: str = Field(pattern=_NODE, description="Node identity its readings and status carry (IP3).")
    slave: int = Field(ge=0, le=255, description="Modbus slave (unit / device) id on the bus.")
    map: str = Field(default="", description="Name of a register map under `maps` (or give `points`).")
    points: list[PointOptions] = Field(default_factory=list, description="This node's own register map.")


class ModbusConfig(DriverConfig):
    """A Modbus bus: RTU over a serial line (RS-485) or TCP, polled node by node."""

    transport: Literal["rtu", "tcp"] = Field(description="rtu: serial line (RS-485); tcp: Modbus TCP.")
    port: int | str = Field(
        default=502,
        description="rtu: the serial device, e.g. /dev/serial/by-id/... or /dev/ttyUSB0 (as gps, rfid and barcode "
        "name it; `device:` before config_version 2); tcp: the TCP port.",
    )
    baudrate: int = Field(default=9600, ge=300, le=4_000_000, description="rtu: bits per second.")
    parity: Literal["N", "E", "O"] = Field(default="N", description="rtu: parity N, E or O.")
    stopbits: Literal[1, 2] = Field(default=1, description="rtu: stop bits.")
    bytesize: Literal[7, 8] = Field(default=8, description="rtu: data bits.")
    host: str = Field(default="", description="tcp: device or gateway address.")
    request_timeout: Duration = Field(default=1.0, gt=0, description="Longest wait for one node's reply.")
    retries: int = Field(default=0, ge=0, le=5, description="Extra attempts of a request that got no reply.")
    max_gap: int = Field(
        default=0, ge=0, le=124, description="Unmapped registers (bits) a merged read may bridge between points."
    )
    max_registers: int = Field(default=125, ge=1, le=125, description="Most registers per read (device limit).")
    max_bits: int = Field(default=2000, ge=1, le=2000, description="Most coils/discrete inputs per read.")
    diagnostics: bool = Field(
        default=False,
        description="Also emit per-node counters modbus.requests/timeouts/crc_errors/exceptions/bad_values.",
    )
    maps: dict[str, list[PointOptions]] = Field(
        default_factory=dict, description="Named register maps shared by nodes of the same model."
    )
    nodes: list[NodeOptions] = Field(min_length=1, description="The devices on this bus, polled in turn.")

    @model_validator(mode="after")
    def _check(self) -> ModbusConfig:
        if self.transport == "rtu" and not (isinstance(self.port, str) and self.port):
            raise ValueError("transport rtu needs port: the serial device, e.g. /dev/serial/by-id/...")
        if self.transport == "tcp" and not self.host:
            raise ValueError("transport tcp needs host")
        if self.transport == "tcp" and not (isinstance(self.port, int) and 1 <= self.port <= 65535):
            raise ValueError(f"transport tcp needs port: a TCP port number 1-65535, not {self.port!r}")
        ids: set[str] = set()
        slaves: set[int] = set()
        for node in self.nodes:
            if node.id in ids:
                raise ValueError(f"node id {node.id!r} appears twice")
            if node.slave in slaves:
                raise ValueError(f"slave id {node.slave} appears twice on one bus")
            ids.add(node.id)
            slaves.add(node.slave)
            points = self.points_of(node)
            names: set[str] = set()
            for p in points:
                for n in p.names():
                    if n in names:
                        raise ValueError(f"node {node.id}: point {n!r} appears twice")
                    names.add(n)
            registers.plan(points, max_gap=self.max_gap, max_registers=self.max_registers, max_bits=self.max_bits)
        worst = len(self.nodes) * (self.retries + 1) * self.request_timeout
        if worst > self.timeout:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must cover one request_timeout per node and attempt "
                f"({worst:g}s) so that silent nodes cannot stall a poll: raise timeout or lower request_timeout"
            )
        return self

    def points_of(self, node: NodeOptions) -> list[registers.Point]:
        """A node's register map, from its own points or a shared map."""
        if bool(node.map) == bool(node.points):
            raise ValueError(f"node {node.id}: give either map or points")
        if node.map:
            if node.map not in self.maps:
                raise ValueError(f"node {node.id}: no map named {node.map!r} under maps")
            return [p.to_point() for p in self.maps[node.map]]
        return [p.to_point() for p in node.points]
