"""Uplink payload codecs: the built-in registry, and ChirpStack's decoded ``object``; pure, no gateway.

A device's ``codec`` names one of ``CODECS`` (applied to the uplink's FRMPayload bytes) or
``object`` (take the ``object`` ChirpStack's own device-profile codec decoded, flattened to
points by ``flatten_object``). Every codec returns ``(point, value, unit)`` with SenML units and
raises ``CodecError`` (``Partial`` when the start of the payload was readable) and nothing else:
payloads come from radios anyone can transmit on.

Cayenne Low Power Payload (myDevices, "Cayenne LPP"): ``channel, type, value...`` repeated;
the types of the myDevices table plus the extended types ChirpStack's own Cayenne codec reads
(chirpstack/src/codec/cayenne_lpp.rs). Points are ``<type>_<channel>`` (``temperature_3``), so
one sensor keeps its name across frames; a GPS fix is a ``Position``. Conversions to SenML
units: acceleration G -> m/s2, barometer hPa -> Pa, energy kWh -> Wh; the gyrometer's deg/s
has no SenML unit and carries none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STANDARD_GRAVITY = 9.80665  # m/s2 per G
MAX_DEPTH = 8  # nesting levels of an object that are flattened
MAX_LEAVES = 256  # values one object may yield


@dataclass(frozen=True, slots=True)
class Position:
    """A GPS fix from a payload (degrees, metres)."""

    lat: float
    lon: float
    alt: float | None = None


Value = int | float | bool | str | bytes | Position
Decoded = tuple[str, Value, str | None]


class CodecError(ValueError):
    """The payload is not in the codec's format, or is cut short."""


class Partial(CodecError):
    """Only the start of the payload could be read; ``readings`` holds what came before."""

    def __init__(self, message: str, readings: list[Decoded]) -> None:
        super().__init__(message)
        self.readings = readings


# -- Cayenne LPP --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lpp:
    """One LPP type: ``axes`` big-endian integers of ``size`` bytes times num/den."""

    name: str
    size: int
    signed: bool
    num: int
    den: int
    unit: str | None
    axes: tuple[str, ...] = ("",)


_LPP: dict[int, _Lpp] = {
    0: _Lpp("digital_input", 1, False, 1, 1, None),
    1: _Lpp("digital_output", 1, False, 1, 1, None),
    2: _Lpp("analog_input", 2, True, 1, 100, None),
    3: _Lpp("analog_output", 2, True, 1, 100, None),
    100: _Lpp("generic", 4, False, 1, 1, None),
    101: _Lpp("illuminance", 2, False, 1, 1, "lx"),
    102: _Lpp("presence", 1, False, 1, 1, None),
    103: _Lpp("temperature", 2, True, 1, 10, "Cel"),
    104: _Lpp("humidity", 1, False, 1, 2, "%RH"),
    113: _Lpp("acceleration", 2, True, 1, 1000, "m/s2", ("x", "y", "z")),  # G, converted below
    115: _Lpp("pressure", 2, False, 10, 1, "Pa"),  # 0.1 hPa = 10 Pa
    116: _Lpp("voltage", 2, False, 1, 100, "V"),
    117: _Lpp("current", 2, False, 1, 1000, "A"),
    118: _Lpp("frequency", 4, False, 1, 1, "Hz"),
    120: _Lpp("percentage", 1, False, 1, 1, "%"),
    121: _Lpp("altitude", 2, True, 1, 1, "m"),
    125: _Lpp("concentration", 2, False, 1, 1, "ppm"),
    128: _Lpp("power", 2, False, 1, 1, "W"),
    130: _Lpp("distance", 4, False, 1, 1000, "m"),
    131: _Lpp("energy", 4, False, 1, 1, "Wh"),  # 0.001 kWh = 1 Wh
    132: _Lpp("direction", 2, False, 1, 1, "deg"),
    133: _Lpp("unix_time", 4, False, 1, 1, "s"),
    134: _Lpp("gyrometer", 2, True, 1, 100, None, ("x", "y", "z")),  # deg/s: no SenML unit
    135: _Lpp("colour", 1, False, 1, 1, None, ("r", "g", "b")),
    142: _Lpp("switch", 1, False, 1, 1, None),
}
_LPP_GPS = 136  # 3 x 3 bytes signed: latitude 0.0001 deg, longitude 0.0001 deg, altitude 0.01 m


def _scaled(raw: int, num: int, den: int) -> int | float:
    return raw * num if den == 1 else raw * num / den  # one rounding: 272 / 10 == 27.2


def decode_cayenne_lpp(data: bytes, f_port: int = 0) -> list[Decoded]:
    """A Cayenne LPP payload; an unknown type stops the decoding (``Partial``): LPP has no lengths."""
    out: list[Decoded] = []
    i, end = 0, len(data)
    while i < end:
        if i + 2 > end:
            raise Partial(f"Cayenne LPP: record at byte {i} truncated (1 byte left)", out)
        channel, kind = data[i], data[i + 1]
        i += 2
        if kind == _LPP_GPS:
            if i + 9 > end:
                raise Partial(f"Cayenne LPP: GPS on channel {channel} truncated", out)
            lat, lon, alt = (int.from_bytes(data[i + k : i + k + 3], "big", signed=True) for k in (0, 3, 6))
            i += 9
            if abs(lat) > 900_000 or abs(lon) > 1_800_000:
                raise Partial(f"Cayenne LPP: GPS on channel {channel} out of range ({lat / 1e4}, {lon / 1e4})", out)
            out.append((f"location_{channel}", Position(lat / 10_000, lon / 10_000, alt / 100), None))
            continue
        spec = _LPP.get(kind)
        if spec is None:
            raise Partial(f"Cayenne LPP: unknown data type {kind} on channel {channel} at byte {i - 1}", out)
        if i + spec.size * len(spec.axes) > end:
            raise Partial(f"Cayenne LPP: {spec.name} on channel {channel} truncated", out)
        for axis in spec.axes:
            raw = int.from_bytes(data[i : i + spec.size], "big", signed=spec.signed)
            i += spec.size
            value = _scaled(raw, spec.num, spec.den)
            if kind == 113:
                value = round(value * STANDARD_GRAVITY, 5)
            name = f"{spec.name}_{channel}" + (f"_{axis}" if axis else "")
            out.append((name, value, spec.unit))
    return out


def decode_raw(data: bytes, f_port: int = 0) -> list[Decoded]:
    """The FRMPayload as it came, for a receiver that decodes it itself."""
    return [("payload", bytes(data), None)]


Codec = Callable[[bytes, int], list[Decoded]]
CODECS: dict[str, Codec] = {"cayenne_lpp": decode_cayenne_lpp, "raw": decode_raw}
"""The built-in codecs by name; ``object`` (ChirpStack's decoded object) is handled apart."""


# -- ChirpStack's decoded object ----------------------------------------------------------------

_BAD_CHARS = re.compile(r"[^-:./_A-Za-z0-9]+")


def point_name(path: str) -> str | None:
    """A JSON path made a SenML-safe point name (letters, digits, -:./_), or None if nothing is left."""
    name = _BAD_CHARS.sub("_", path).strip("_")
    if not name or not name[0].isalnum():
        return None
    return name[:128]


def flatten_object(obj: Any, max_depth: int = MAX_DEPTH, max_leaves: int = MAX_LEAVES) -> list[tuple[str, Any]]:
    """Leaves of a decoded object as ``(path, value)``: nested keys joined with ``.``.

    Numbers (finite), booleans and strings are kept; null, lists of non-numbers and anything
    deeper than ``max_depth`` are left out. Lists of numbers become ``path.0``, ``path.1``...
    ``CodecError`` when the object yields more than ``max_leaves`` values.
    """
    if not isinstance(obj, dict):
        raise CodecError(f"decoded object is a {type(obj).__name__}, not an object")
    out: list[tuple[str, Any]] = []

    def walk(value: Any, path: str, depth: int) -> None:
        if isinstance(value, bool | str) or (isinstance(value, int | float) and math.isfinite(value)):
            if len(out) >= max_leaves:
                raise CodecError(f"decoded object has more than {max_leaves} values")
            out.append((path, value))
        elif isinstance(value, dict) and depth < max_depth:
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key), depth + 1)
        elif isinstance(value, list) and depth < max_depth:
            for n, sub in enumerate(value):
                if isinstance(sub, int | float | dict) and not isinstance(sub, bool):
                    walk(sub, f"{path}.{n}", depth + 1)

    walk(obj, "", 0)
    return out
