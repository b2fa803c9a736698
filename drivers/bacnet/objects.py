"""BACnet object references and values, without the BACnet library: pure and tested with hostile input.

The transport code (``drivers.bacnet.client``) hands each property value over as a plain Python
value (``bool``, ``int``, ``float``, ``str``) or a ``Refused`` error; ``convert`` turns it into a
reading by the point's scaling. Object and property names are checked here at config time, so
``sensegate check`` needs no BACnet library. Never imports ``gateway`` or bacpypes3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from drivers.scaling import scaled

# Standard object types (ANSI/ASHRAE 135, clause 21 BACnetObjectType), in BACnet's own spelling.
OBJECT_TYPES = frozenset(
    {
        "access-credential",
        "access-door",
        "access-point",
        "access-rights",
        "access-user",
        "access-zone",
        "accumulator",
        "alert-enrollment",
        "analog-input",
        "analog-output",
        "analog-value",
        "audit-log",
        "audit-reporter",
        "averaging",
        "binary-input",
        "binary-lighting-output",
        "binary-output",
        "binary-value",
        "bitstring-value",
        "calendar",
        "channel",
        "characterstring-value",
        "command",
        "credential-data-input",
        "date-pattern-value",
        "date-value",
        "datetime-pattern-value",
        "datetime-value",
        "device",
        "elevator-group",
        "escalator",
        "event-enrollment",
        "event-log",
        "file",
        "global-group",
        "group",
        "integer-value",
        "large-analog-value",
        "life-safety-point",
        "life-safety-zone",
        "lift",
        "lighting-output",
        "load-control",
        "loop",
        "multi-state-input",
        "multi-state-output",
        "multi-state-value",
        "network-security",
        "network-port",
        "notification-class",
        "notification-forwarder",
        "octetstring-value",
        "positive-integer-value",
        "program",
        "pulse-converter",
        "schedule",
        "staging",
        "structured-view",
        "time-pattern-value",
        "time-value",
        "timer",
        "trend-log",
        "trend-log-multiple",
    }
)
# Objects whose present-value is commandable through a priority array (clause 19.2).
COMMANDABLE = frozenset(
    {
        "analog-output",
        "binary-output",
        "multi-state-output",
        "analog-value",
        "binary-value",
        "multi-state-value",
        "integer-value",
        "large-analog-value",
        "positive-integer-value",
        "characterstring-value",
        "lighting-output",
        "binary-lighting-output",
    }
)
BINARY = frozenset({"binary-input", "binary-output", "binary-value"})
MULTISTATE = frozenset({"multi-state-input", "multi-state-output", "multi-state-value"})
MAX_INSTANCE = 4194302  # 22 bits; 4194303 is the "any instance" wildcard
_PROPERTY = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_ABBREVIATIONS = {
    "ai": "analog-input",
    "ao": "analog-output",
    "av": "analog-value",
    "bi": "binary-input",
    "bo": "binary-output",
    "bv": "binary-value",
    "msi": "multi-state-input",
    "mso": "multi-state-output",
    "msv": "multi-state-value",
}
MAX_TEXT = 1024


class RefError(ValueError):
    """An object or property reference that cannot be one (the message says why)."""


class BadValue(ValueError):
    """A value that cannot become a reading of this point (counted, never emitted)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The device answered a property read with an error (e.g. unknown-object)."""

    reason: str


def _hyphenate(name: str) -> str:
    """BACnet's camelCase spelling (bacpypes3, EDE files) -> its hyphenated one."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", name).lower()


def parse_object(text: str) -> tuple[str, int]:
    """``"analog-input:1"`` (also ``analog-input,1``, ``AI:1``, ``analogInput:1``) -> ("analog-input", 1)."""
    if not isinstance(text, str):
        raise RefError(f"an object is written type:instance, not {type(text).__name__}")
    kind, sep, inst = text.strip().replace(",", ":").rpartition(":")
    if not sep or not kind:
        raise RefError(f"object {text!r}: write type:instance, e.g. analog-input:1")
    kind = kind.strip()
    if kind.lower() in _ABBREVIATIONS:
        kind = _ABBREVIATIONS[kind.lower()]
    kind = _hyphenate(kind)
    if kind not in OBJECT_TYPES:
        raise RefError(f"object {text!r}: unknown object type {kind!r} (e.g. analog-input, binary-output)")
    inst = inst.strip()
    if not inst.isascii() or not inst.isdigit() or int(inst) > MAX_INSTANCE:
        raise RefError(f"object {text!r}: the instance must be a number from 0 to {MAX_INSTANCE}")
    return kind, int(inst)


def parse_property(text: str) -> str:
    """``present-value`` (also ``presentValue``) -> "present-value"."""
    if not isinstance(text, str):
        raise RefError("a property is a name like present-value")
    name = _hyphenate(text.strip())
    if not _PROPERTY.match(name) or len(name) > 64:
        raise RefError(f"property {text!r}: use BACnet's name, e.g. present-value, status-flags, units")
    return name


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One configured property of one object: how its value becomes a reading."""

    name: str
    object_type: str
    instance: int
    property: str = "present-value"
    cov: bool = False
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None
    unit: str | None = None
    writable: bool = False
    priority: int | None = 16
    min: float | None = None
    max: float | None = None


def convert(spec: PointSpec, raw: object) -> bool | int | float | str:
    """The reading value of one property value; BadValue when there is none.

    Numbers are scaled (value x scale + offset, rounded to precision); a NaN or infinite REAL
    (which BACnet devices do send) is a bad value. Booleans (binary objects: active = true) and
    text pass unchanged; text is cut at MAX_TEXT characters.
    """
    if isinstance(raw, Refused):
        raise BadValue(f"{spec.name}: the device refused: {raw.reason}")
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float):
        v = scaled(raw, spec.scale, spec.offset, spec.precision)
        if v is None:
            raise BadValue(f"{spec.name}: {raw} (scaled) is not a finite number")
        return v
    if isinstance(raw, str):
        return raw[:MAX_TEXT]
    raise BadValue(f"{spec.name}: unsupported value type {type(raw).__name__}")


def encode_write(spec: PointSpec, value: object) -> bool | int | float | str | None:
    """The value to write for a command; None means relinquish (a NULL at the point's priority).

    Refuses (ValueError) what the point cannot take: unscaled back with scale and offset,
    bounded by min/max (in reading units); binary objects take true/false, multi-state ones
    a state number from 1.
    """
    if isinstance(value, str) and value.strip().lower() in ("relinquish", "null"):
        if spec.priority is None:
            raise ValueError("relinquish needs a write priority")
        return None
    if spec.object_type in BINARY and spec.property == "present-value":
        if not isinstance(value, bool):
            raise ValueError("a binary point takes true or false")
        return "active" if value else "inactive"
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str) and spec.object_type == "characterstring-value":
            return value
        raise ValueError(f"{spec.name} takes a number")
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    if spec.min is not None and value < spec.min:
        raise ValueError(f"{value} is below min {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"{value} is above max {spec.max:g}")
    if spec.scale == 0:
        raise ValueError("scale 0 cannot be written back")
    raw = (value - spec.offset) / spec.scale
    if spec.object_type in MULTISTATE or spec.object_type in ("integer-value", "positive-integer-value"):
        n = round(raw)
        if spec.object_type in MULTISTATE and n < 1:
            raise ValueError("multi-state values count from 1")
        return n
    return float(raw)
