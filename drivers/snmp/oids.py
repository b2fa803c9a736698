"""SNMP object identifiers and values, without the SNMP library: pure and tested with hostile input.

The transport code (``drivers.snmp.client``) hands each variable binding over as an OID tuple
plus ``(kind, raw)``: ``kind`` one of ``KINDS`` (the SMI type, RFC 2578 / RFC 3416), ``raw`` an
int, bytes or str. ``convert`` turns that into a reading value by the point's ``type`` and
scaling. This module never imports ``gateway`` or pysnmp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from drivers.scaling import scaled

MAX_ARC = 2**32 - 1
MAX_ARCS = 128  # RFC 2578 section 3.5: at most 128 sub-identifiers
INTEGER_KINDS = frozenset({"integer", "unsigned", "counter32", "counter64", "gauge", "timeticks"})
KINDS = INTEGER_KINDS | {"octets", "ipaddress", "oid", "opaque", "bits", "null", "missing"}
MAX_TEXT = 1024  # longest string value a point emits (an OCTET STRING may be 65535 bytes)

Oid = tuple[int, ...]


class OidError(ValueError):
    """An object identifier that is not one (the message says why)."""


class BadValue(ValueError):
    """A value that cannot become a reading of this point (counted, never emitted)."""


def parse_oid(text: str) -> Oid:
    """``"1.3.6.1.2.1.1.3.0"`` (a leading dot allowed) -> ``(1, 3, 6, 1, 2, 1, 1, 3, 0)``."""
    if not isinstance(text, str):
        raise OidError(f"an OID is a dotted string of numbers, not {type(text).__name__}")
    body = text.strip()
    body = body[1:] if body.startswith(".") else body
    parts = body.split(".")
    if len(parts) < 2 or len(parts) > MAX_ARCS:
        raise OidError(f"OID {text!r}: give 2 to {MAX_ARCS} numbers separated by dots (e.g. 1.3.6.1.2.1.1.3.0)")
    arcs = []
    for p in parts:
        if not p.isascii() or not p.isdigit():
            raise OidError(f"OID {text!r}: {p!r} is not a number (MIB names are not resolved: use the numeric OID)")
        n = int(p)
        if n > MAX_ARC:
            raise OidError(f"OID {text!r}: {p} is larger than 2^32-1")
        arcs.append(n)
    if arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise OidError(f"OID {text!r}: must start with 0, 1 or 2 (and a second number below 40 under 0 and 1)")
    return tuple(arcs)


def oid_str(oid: Oid) -> str:
    """The dotted form of an OID tuple."""
    return ".".join(map(str, oid))


def suffix(prefix: Oid, oid: Oid) -> str | None:
    """The index of ``oid`` below ``prefix`` as a dotted string; None when not below it."""
    if len(oid) <= len(prefix) or oid[: len(prefix)] != prefix:
        return None
    return oid_str(oid[len(prefix) :])


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One configured OID: how its value becomes a reading."""

    name: str
    oid: Oid
    walk: bool = False  # a table column or subtree: one reading per instance, named <name>.<index>
    type: str = "auto"  # auto | number | string | hex
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None
    unit: str | None = None

    def unit_for(self, kind: str) -> str | None:
        """The SenML unit of a reading: the configured one, else seconds for TIMETICKS."""
        if self.unit is not None:
            return self.unit
        return "s" if kind == "timeticks" and self.type in ("auto", "number") else None


def _scaled(spec: PointSpec, n: int | float) -> int | float:
    v = scaled(n, spec.scale, spec.offset, spec.precision)
    if v is None:
        raise BadValue(f"{spec.name}: {n} (scaled) is not a finite number")
    return v


def _text(raw: bytes) -> str | None:
    """Printable UTF-8 text (trailing NULs dropped), or None when the bytes are binary."""
    data = raw.rstrip(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(not (c.isprintable() or c in "\t\r\n") for c in text):
        return None
    return text


def convert(spec: PointSpec, kind: str, raw: int | bytes | str | None) -> int | float | str | bytes:
    """The reading value of one variable binding; BadValue when there is none.

    ``auto``: integer kinds stay integers (TIMETICKS become seconds), text OCTET STRINGs become
    str and binary ones bytes, IpAddress and OIDs dotted strings. ``number`` also parses numeric
    text ("0.15"); ``string`` forces text; ``hex`` gives ``00:1a:2b``-style octets (MAC addresses).
    Scaling (``scale``, ``offset``, ``precision``) applies to numbers only.
    """
    if kind not in KINDS:
        raise BadValue(f"{spec.name}: unknown SNMP type {kind!r}")
    if kind == "missing":
        raise BadValue(f"{spec.name}: the agent has no such object or instance")
    if kind == "null":
        raise BadValue(f"{spec.name}: the agent returned NULL")
    if kind in INTEGER_KINDS:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise BadValue(f"{spec.name}: {kind} value is not an integer")
        if spec.type in ("string", "hex"):
            return str(raw) if spec.type == "string" else f"{raw:x}"
        if kind == "timeticks":
            return _scaled(spec, raw / 100)
        return _scaled(spec, raw)
    if kind in ("ipaddress", "oid"):
        if not isinstance(raw, str):
            raise BadValue(f"{spec.name}: {kind} value is not text")
        if spec.type == "number":
            raise BadValue(f"{spec.name}: {kind} {raw[:40]!r} is not a number")
        return raw[:MAX_TEXT]
    if not isinstance(raw, bytes):  # octets, opaque, bits
        raise BadValue(f"{spec.name}: {kind} value is not bytes")
    if spec.type == "hex":
        return ":".join(f"{b:02x}" for b in raw[: MAX_TEXT // 3])
    text = _text(raw)
    if spec.type == "number":
        if text is None:
            raise BadValue(f"{spec.name}: binary {kind} is not a number")
        try:
            n = float(text.strip()) if any(c in text for c in ".eE") else int(text.strip())
        except ValueError:
            raise BadValue(f"{spec.name}: {text[:40]!r} is not a number") from None
        if isinstance(n, float) and not math.isfinite(n):
            raise BadValue(f"{spec.name}: {text[:40]!r} is not a finite number")
        return _scaled(spec, n)
    if spec.type == "string":
        return (text if text is not None else raw.decode("utf-8", "replace"))[:MAX_TEXT]
    return text[:MAX_TEXT] if text is not None else raw[:MAX_TEXT]


def parse_engine_id(text: str) -> bytes:
    """An SNMP engine ID given as hex (``80001f8880...``, optional ``0x`` and ``:``): 5 to 32 octets."""
    body = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"engine id {text!r} is not hexadecimal") from None
    if not 5 <= len(raw) <= 32:
        raise ValueError(f"engine id {text!r}: {len(raw)} octets, an engine ID has 5 to 32 (RFC 3411)")
    return raw
