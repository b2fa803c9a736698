"""Modbus register maps: plan the read requests for a map, decode replies, encode writes.

Pure protocol code: no I/O, no pymodbus, never imports `gateway`, so it is property-tested
against hostile replies. The one exception ``decode_block`` raises is ``DecodeError`` (a reply
that does not fit its request); a value that cannot be used (a NaN float, a scaled value that
overflows) comes back as a ``Sample`` with ``value=None`` and the reason in ``error``.

Byte and word order, for a 32-bit value whose big-endian bytes are A B C D:

==========  ==========  ==============  ===================================
byte_order  word_order  registers       common name
==========  ==========  ==============  ===================================
big         big         AB CD           ABCD, "big-endian" (Modbus default)
big         little      CD AB           CDAB, "word swap"
little      big         BA DC           BADC, "byte swap"
little      little      DC BA           DCBA, "little-endian"
==========  ==========  ==============  ===================================

``word_order`` says which register holds the most significant word (``big``: the first one);
``byte_order`` says which byte of each register comes first on the wire (``big``: the high
byte, as the Modbus specification says). Strings use the same rules: register order, then
the byte order within each register.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

MAX_REGISTERS = 125  # Modbus application protocol: at most 125 registers per read (FC 3/4)
MAX_BITS = 2000  # and at most 2000 coils or discrete inputs per read (FC 1/2)
MAX_ADDRESS = 0xFFFF

Order = Literal["big", "little"]
Scalar = bool | int | float | str


class MapError(ValueError):
    """A register map entry that cannot work (unknown type, too wide, bad bit number)."""


class DecodeError(ValueError):
    """A reply that does not fit its request (wrong length, not 16-bit words)."""


class WriteError(ValueError):
    """A write refused before it reaches the bus (read-only point, out of range, wrong type)."""


class Table(enum.Enum):
    """The four Modbus data tables; the YAML ``function`` names them."""

    COILS = "coils"
    DISCRETE_INPUTS = "discrete_inputs"
    HOLDING = "holding"
    INPUT = "input"

    @property
    def bits(self) -> bool:
        """Whether the table holds single bits (coils, discrete inputs) rather than registers."""
        return self in (Table.COILS, Table.DISCRETE_INPUTS)

    @property
    def writable(self) -> bool:
        """Whether the protocol can write this table at all."""
        return self in (Table.COILS, Table.HOLDING)


_STRUCT = {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "u64": "Q", "i64": "q", "f32": "f", "f64": "d"}
_WIDTH = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2, "f64": 4}
NUMERIC_TYPES = tuple(_STRUCT)
TYPES = (*NUMERIC_TYPES, "string", "bitfield", "bool")
_FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True, slots=True)
class Point:
    """One named value in a node's register map.

    ``count`` is the number of registers of a ``string`` (required) or a ``bitfield`` (1 or 2).
    A numeric value reads as ``raw * scale + offset``, rounded to ``precision`` decimals if set.
    A bitfield yields one bool per named bit, named ``<point>.<bit name>``.
    """

    name: str
    table: Table
    address: int
    type: str = "u16"
    count: int = 0
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None
    unit: str | None = None
    bits: tuple[tuple[int, str], ...] = ()
    writable: bool = False
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise MapError(f"{self.name}: unknown type {self.type!r} (one of {', '.join(TYPES)})")
        if self.table.bits != (self.type == "bool"):
            need = "bool" if self.table.bits else "a register type, not bool"
            raise MapError(f"{self.name}: {self.table.value} points have type {need}")
        if not 0 <= self.address <= MAX_ADDRESS:
            raise MapError(f"{self.name}: address {self.address} outside 0..65535")
        if self.type == "string" and not 1 <= self.count <= MAX_REGISTERS:
            raise MapError(f"{self.name}: a string needs count (its length in registers, 1..125)")
        if self.type == "bitfield":
            if self.count not in (0, 1, 2):
                raise MapError(f"{self.name}: a bitfield spans 1 or 2 registers")
            if not self.bits:
                raise MapError(f"{self.name}: a bitfield needs named bits")
            top = 16 * (self.count or 1)
            for bit, label in self.bits:
                if not 0 <= bit < top:
                    raise MapError(f"{self.name}: bit {bit} ({label}) outside 0..{top - 1}")
            labels = [label for _, label in self.bits]
            if len(set(labels)) != len(labels):
                raise MapError(f"{self.name}: bit names must be unique")
        elif self.bits:
            raise MapError(f"{self.name}: only bitfield points have bits")
        if self.type not in ("string", "bitfield") and self.count not in (0, self.width):
            raise MapError(f"{self.name}: type {self.type} is {self.width} register(s) wide; drop count")
        if self.address + self.width - 1 > MAX_ADDRESS:
            raise MapError(f"{self.name}: runs past address 65535")
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.offset)):
            raise MapError(f"{self.name}: scale must be finite and non-zero, offset finite")
        if self.writable and not self.table.writable:
            raise MapError(f"{self.name}: {self.table.value} cannot be written")
        if self.writable and self.type == "bitfield":
            raise MapError(f"{self.name}: bitfields are read-only; map the register as u16 to write it")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise MapError(f"{self.name}: min is above max")

    @property
    def width(self) -> int:
        """Registers (or bits, in a bit table) this point occupies."""
        if self.type == "bool":
            return 1
        if self.type in ("string", "bitfield"):
            return self.count or 1
        return _WIDTH[self.type]

    @property
    def end(self) -> int:
        """First address after this point."""
        return self.address + self.width

    def names(self) -> list[str]:
        """The reading names this point produces."""
        if self.type == "bitfield":
            return [f"{self.name}.{label}" for _, label in self.bits]
        return [self.name]


@dataclass(frozen=True, slots=True)
class Request:
    """One read on the bus: a run of addresses in one table, and the points it serves."""

    table: Table
    address: int
    count: int
    points: tuple[Point, ...]


@dataclass(slots=True)
class Sample:
    """A decoded value; ``value`` is None when the registers held no usable value (see ``error``)."""

    name: str
    value: Scalar | None
    unit: str | None = None
    error: str = ""


def plan(
    points: Iterable[Point], *, max_gap: int = 0, max_registers: int = MAX_REGISTERS, max_bits: int = MAX_BITS
) -> list[Request]:
    """Group points into as few reads as the protocol allows.

    Points of one table are merged into one read while the read stays within ``max_registers``
    (``max_bits`` for coils and discrete inputs) and the unmapped addresses between two points
    are at most ``max_gap`` (bridging a gap reads registers nobody asked for; some devices answer
    that with an exception, hence the default 0). Overlapping points share a read.
    """
    if not 1 <= max_registers <= MAX_REGISTERS or not 1 <= max_bits <= MAX_BITS or max_gap < 0:
        raise MapError("max_registers must be 1..125, max_bits 1..2000, max_gap >= 0")
    out: list[Request] = []
    by_table: dict[Table, list[Point]] = {}
    for p in points:
        by_table.setdefault(p.table, []).append(p)
    for table in Table:
        group = sorted(by_table.get(table, ()), key=lambda p: (p.address, p.width))
        limit = max_bits if table.bits else max_registers
        start = end = -1
        members: list[Point] = []
        for p in group:
            if p.width > limit:
                raise MapError(f"{p.name}: {p.width} wide, more than one read allows ({limit})")
            if members and p.address - end <= max_gap and max(end, p.end) - start <= limit:
                end = max(end, p.end)
                members.append(p)
                continue
            if members:
                out.append(Request(table, start, end - start, tuple(members)))
            start, end, members = p.address, p.end, [p]
        if members:
            out.append(Request(table, start, end - start, tuple(members)))
    return out


def words_to_bytes(words: Sequence[int], byte_order: Order = "big", word_order: Order = "big") -> bytes:
    """Registers as one big-endian byte string, undoing the device's byte and word order."""
    ordered = reversed(words) if word_order == "little" else words
    if byte_order == "little":
        return b"".join(((w & 0xFF) << 8 | w >> 8).to_bytes(2, "big") for w in ordered)
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def bytes_to_words(data: bytes, byte_order: Order = "big", word_order: Order = "big") -> list[int]:
    """Inverse of ``words_to_bytes``: big-endian bytes to registers in the device's order."""
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order == "little":
        words = [(w & 0xFF) << 8 | w >> 8 for w in words]
    if word_order == "little":
        words.reverse()
    return words


def _check_words(data: Sequence[object], count: int) -> list[int]:
    if len(data) != count:
        raise DecodeError(f"reply has {len(data)} registers, asked for {count}")
    for w in data:
        if type(w) is not int or not 0 <= w <= 0xFFFF:
            raise DecodeError(f"reply holds {w!r}, not a 16-bit register")
    return list(data)  # type: ignore[arg-type]


def _check_bits(data: Sequence[object], count: int) -> list[bool]:
    # FC 1/2 replies are padded to whole bytes: a few extra bits are normal.
    if not count <= len(data) < count + 8:
        raise DecodeError(f"reply has {len(data)} bits, asked for {count}")
    for b in data[:count]:
        if type(b) is not bool and b not in (0, 1):
            raise DecodeError(f"reply holds {b!r}, not a bit")
    return [bool(b) for b in data[:count]]


def decode_block(request: Request, data: Sequence[object]) -> list[Sample]:
    """Decode the reply to ``request`` into samples, in map order; DecodeError if it does not fit."""
    out: list[Sample] = []
    if request.table.bits:
        bits = _check_bits(data, request.count)
        for p in request.points:
            out.append(Sample(p.name, bits[p.address - request.address], p.unit))
        return out
    words = _check_words(data, request.count)
    for p in request.points:
        first = p.address - request.address
        out.extend(decode_point(p, words[first : first + p.width]))
    return out


def decode_point(point: Point, words: Sequence[int]) -> list[Sample]:
    """Decode one register point from exactly its own registers (already checked 16-bit)."""
    if len(words) != point.width:
        raise DecodeError(f"{point.name}: needs {point.width} registers, got {len(words)}")
    raw = words_to_bytes(words, point.byte_order, point.word_order)
    if point.type == "string":
        text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return [Sample(point.name, "".join(c for c in text if c.isprintable()).strip(), point.unit)]
    if point.type == "bitfield":
        field = int.from_bytes(raw, "big")
        return [Sample(f"{point.name}.{label}", bool(field >> bit & 1)) for bit, label in point.bits]
    value: int | float = struct.unpack(">" + _STRUCT[point.type], raw)[0]
    if isinstance(value, float) and not math.isfinite(value):
        return [Sample(point.name, None, point.unit, f"device sent {value} (not a number)")]
    if point.scale != 1 or point.offset != 0:
        value = value * point.scale + point.offset
        if not math.isfinite(value):
            return [Sample(point.name, None, point.unit, "scaled value overflows")]
    if point.precision is not None and isinstance(value, float):
        value = round(value, point.precision)
    return [Sample(point.name, value, point.unit)]


def encode(point: Point, value: object) -> list[int] | list[bool]:
    """The registers (or coil bits) that write ``value`` to ``point``; WriteError if refused.

    Numbers go through the inverse of the point's scale and offset, rounded to the nearest raw
    integer for integer types; ``min``/``max`` bound the value as the user sees it (scaled).
    """
    if not point.writable:
        raise WriteError(f"{point.name} is not writable (set writable: true in the map)")
    if point.type == "bool":
        if type(value) is bool or (type(value) is int and value in (0, 1)):
            return [bool(value)]
        raise WriteError(f"{point.name} is a coil: write true or false")
    if point.type == "string":
        if not isinstance(value, str):
            raise WriteError(f"{point.name} is a string")
        data = value.encode("utf-8")
        if len(data) > 2 * point.width:
            raise WriteError(f"{point.name} holds at most {2 * point.width} bytes")
        return bytes_to_words(data.ljust(2 * point.width, b"\0"), point.byte_order, point.word_order)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteError(f"{point.name} is a number, not {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteError(f"{point.name}: {value} is not a finite number")
    if (point.min is not None and value < point.min) or (point.max is not None and value > point.max):
        raise WriteError(f"{point.name}: {value} outside [{point.min}, {point.max}]")
    try:
        raw: int | float = (value - point.offset) / point.scale
    except OverflowError:
        raw = math.inf
    fmt = _STRUCT[point.type]
    if not math.isfinite(raw) or (point.type == "f32" and abs(raw) > _FLOAT32_MAX):
        raise WriteError(f"{point.name}: {value} does not fit a {point.type}")
    if point.type not in ("f32", "f64"):
        raw = round(raw)
        bits = 8 * struct.calcsize(fmt)
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt.islower() else (0, (1 << bits) - 1)
        if not low <= raw <= high:
            raise WriteError(f"{point.name}: {value} does not fit a {point.type} (raw {raw})")
    return bytes_to_words(struct.pack(">" + fmt, raw), point.byte_order, point.word_order)
