"""OPC UA node references and values, without the OPC UA library: pure and tested with hostile input.

Node ids are the standard string form (OPC 10000-6, 5.3.1.10: ``ns=2;i=7``, ``ns=2;s=Boiler.T``,
``g=``, ``b=``, ``nsu=<uri>;...``); browse paths are ``2:Boiler/2:Temperature`` below the
Objects folder. ``convert`` turns a variable's value (as asyncua decodes it: Python numbers,
strings, bytes, datetimes, lists) into a reading. Never imports ``gateway`` or asyncua.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from drivers.scaling import scaled

_NODE_ID = re.compile(
    r"^(?:(?:ns=\d{1,5}|nsu=[^;]{1,200});)?(?:i=\d{1,10}|s=.{1,512}|g=[0-9A-Fa-f-]{36}|b=[A-Za-z0-9+/=]{1,1024})$"
)
_ELEMENT = re.compile(r"^\d{1,5}:[^/]{1,256}$")
MAX_TEXT = 1024


class NodeError(ValueError):
    """A node id or browse path that cannot be one (the message says why)."""


class BadValue(ValueError):
    """A value that cannot become a reading of this point (counted, never emitted)."""


def parse_node_id(text: str) -> str:
    """Check a node id in its standard string form; return it unchanged."""
    if not isinstance(text, str) or not _NODE_ID.match(text):
        raise NodeError(f"node id {text!r}: use the standard form, e.g. ns=2;i=7 or ns=2;s=Boiler.Temperature")
    if text.startswith("ns=") and int(text[3 : text.index(";")]) > 65535:
        raise NodeError(f"node id {text!r}: namespace index above 65535")
    if text.split(";")[-1].startswith("i=") and int(text.split(";")[-1][2:]) > 2**32 - 1:
        raise NodeError(f"node id {text!r}: numeric identifier above 2^32-1")
    return text


def parse_browse_path(text: str) -> list[str]:
    """``2:Boiler/2:Temperature`` -> ["2:Boiler", "2:Temperature"] (qualified names below Objects)."""
    if not isinstance(text, str) or not text.strip("/"):
        raise NodeError("a browse path is like 2:Boiler/2:Temperature")
    parts = text.strip("/").split("/")
    for p in parts:
        if not _ELEMENT.match(p):
            raise NodeError(f"browse path {text!r}: {p!r} is not <namespace index>:<browse name>")
    if len(parts) > 32:
        raise NodeError(f"browse path {text!r}: deeper than 32 levels")
    return parts


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One configured variable: where it is, how it is read and how its value becomes a reading."""

    name: str
    node_id: str = ""
    browse_path: str = ""
    mode: str = "poll"  # poll | subscribe
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None
    unit: str | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None


def convert(spec: PointSpec, value: object) -> bool | int | float | str | bytes:
    """The reading value of one variable value; BadValue when there is none.

    Numbers are scaled; NaN and infinity are bad values. Text and bytes are cut at MAX_TEXT;
    a DateTime becomes ISO 8601 text; a LocalizedText its text. Arrays, structures and empty
    values are not readings (configure one element's node instead).
    """
    if value is None:
        raise BadValue(f"{spec.name}: empty value")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        v = scaled(value, spec.scale, spec.offset, spec.precision)
        if v is None:
            raise BadValue(f"{spec.name}: {value} (scaled) is not a finite number")
        return v
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, bytes | bytearray):
        return bytes(value[:MAX_TEXT])
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = getattr(value, "Text", None)  # LocalizedText
    if isinstance(text, str):
        return text[:MAX_TEXT]
    raise BadValue(f"{spec.name}: {type(value).__name__} values are not readings")


def check_write(spec: PointSpec, value: object) -> bool | int | float | str:
    """The raw value to write for a command (scaled back, bounded); ValueError if refused."""
    if isinstance(value, bool | str):
        return value
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{spec.name} takes a finite number, true/false or text")
    if spec.min is not None and value < spec.min:
        raise ValueError(f"{value} is below min {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise ValueError(f"{value} is above max {spec.max:g}")
    if spec.scale == 1.0 and spec.offset == 0.0:
        return value
    if spec.scale == 0:
        raise ValueError("scale 0 cannot be written back")
    return (value - spec.offset) / spec.scale
