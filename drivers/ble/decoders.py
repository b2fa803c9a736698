"""Decoders for BLE advertisement formats; pure functions, no bleak, no gateway.

Input is what a scanner hands over: manufacturer data ``{company_id: bytes}`` and service data
``{uuid: bytes}`` (BlueZ gives 128-bit UUID strings; 16-bit short forms are accepted too).
Output is a list of ``(point, value, unit)`` with SenML units (RFC 8428, RFC 8798).

Each format decoder returns ``None`` when the data is not in its format, a list (possibly
empty when every field says "not available") when it is, and raises ``DecodeError`` when
the data claims to be its format but is malformed. ``Unsupported`` (a DecodeError) marks a
well-formed payload we deliberately do not read, e.g. ``Encrypted`` BTHome or eTLM frames.
Nothing else escapes: advertisements are hostile input.

Formats (specifications these follow):

- BTHome v2 (https://bthome.io/format/), service UUID 0xFCD2. Every object of the format
  page's tables (checked factor by factor against its examples and the reference parser's
  test vectors, tests/drivers/ble/test_ble_decoders.py). A device-info byte with the MAC flag
  (bit 1) carries the device's address in the next 6 bytes, before the objects. Parsing
  stops at the first unknown object id, as the spec tells receivers to, and says so
  (``Partial``, with the readings before it). Repeated measurements get ``_2``, ``_3``
  suffixes in order. Pressure is reported in Pa, mass in kg, conductivity in S/m, volume in
  l, flow in m3/s and rotational speed in 1/min (SenML units); the packet id, device-info
  objects and the embedded MAC are consumed, not reported.
- Ruuvi data format 5 / RAWv2 (docs.ruuvi.com), manufacturer 0x0499. Fields set to the
  documented "not available" value are left out. Acceleration is converted from mG to m/s2.
- iBeacon, Apple manufacturer 0x004C, type 0x02 length 0x15.
- Eddystone UID, URL and TLM (github.com/google/eddystone), service UUID 0xFEAA.
"""

from __future__ import annotations

import math
import struct
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Value = int | float | bool | str | bytes
Decoded = tuple[str, Value, str | None]
Format = Literal["bthome", "ruuvi", "ibeacon", "eddystone"]
FORMATS: tuple[Format, ...] = ("bthome", "ruuvi", "ibeacon", "eddystone")

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
RUUVI_COMPANY = 0x0499
APPLE_COMPANY = 0x004C
STANDARD_GRAVITY = 9.80665  # m/s2 per g


class DecodeError(ValueError):
    """The payload claims a known format but is malformed or truncated."""


class Unsupported(DecodeError):
    """A well-formed payload this gateway deliberately does not read (version, variant)."""


class Encrypted(Unsupported):
    """The payload is encrypted (BTHome with the encryption flag, Eddystone eTLM)."""


class Partial(DecodeError):
    """Only the start of the payload could be read (e.g. an object id from a newer BTHome
    version): ``readings`` holds what came before, which is valid and should be kept."""

    def __init__(self, message: str, readings: list[Decoded]) -> None:
        super().__init__(message)
        self.readings = readings


# -- BTHome v2 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Num:
    """A numeric BTHome object: little-endian integer of ``size`` bytes times num/den."""

    point: str
    size: int
    signed: bool
    num: int
    den: int
    unit: str | None


def _n(point: str, size: int, signed: bool, factor: str, unit: str | None) -> _Num:
    """Factor as a decimal string ("0.01", "0.35") -> exact num/den, so 2506 * 0.01 == 25.06."""
    if "." in factor:
        whole, frac = factor.split(".")
        return _Num(point, size, signed, int(whole + frac), 10 ** len(frac), unit)
    return _Num(point, size, signed, int(factor), 1, unit)


# Object id -> numeric sensor (https://bthome.io/format/, "Sensor data"). Units are SenML;
# where BTHome's unit is not a SenML unit the factor converts to one (noted per line).
_BTHOME_NUM: dict[int, _Num] = {
    0x01: _n("battery", 1, False, "1", "%EL"),
    0x02: _n("temperature", 2, True, "0.01", "Cel"),
    0x03: _n("humidity", 2, False, "0.01", "%RH"),
    0x04: _n("pressure", 3, False, "1", "Pa"),  # 0.01 hPa = 1 Pa
    0x05: _n("illuminance", 3, False, "0.01", "lx"),
    0x06: _n("mass", 2, False, "0.01", "kg"),
    0x07: _n("mass", 2, False, "0.0045359237", "kg"),  # 0.01 lb
    0x08: _n("dewpoint", 2, True, "0.01", "Cel"),
    0x09: _n("count", 1, False, "1", "count"),
    0x0A: _n("energy", 3, False, "0.001", "kWh"),
    0x0B: _n("power", 3, False, "0.01", "W"),
    0x0C: _n("voltage", 2, False, "0.001", "V"),
    0x0D: _n("pm2_5", 2, False, "1", "ug/m3"),
    0x0E: _n("pm10", 2, False, "1", "ug/m3"),
    0x12: _n("co2", 2, False, "1", "ppm"),
    0x13: _n("tvoc", 2, False, "1", "ug/m3"),
    0x14: _n("moisture", 2, False, "0.01", "%"),
    0x2E: _n("humidity", 1, False, "1", "%RH"),
    0x2F: _n("moisture", 1, False, "1", "%"),
    0x3D: _n("count", 2, False, "1", "count"),
    0x3E: _n("count", 4, False, "1", "count"),
    0x3F: _n("rotation", 2, True, "0.1", "deg"),
    0x40: _n("distance", 2, False, "1", "mm"),
    0x41: _n("distance", 2, False, "0.1", "m"),
    0x42: _n("duration", 3, False, "0.001", "s"),
    0x43: _n("current", 2, False, "0.001", "A"),
    0x44: _n("speed", 2, False, "0.01", "m/s"),
    0x45: _n("temperature", 2, True, "0.1", "Cel"),
    0x46: _n("uv_index", 1, False, "0.1", None),
    0x47: _n("volume", 2, False, "0.1", "l"),
    0x48: _n("volume", 2, False, "0.001", "l"),  # 1 mL
    0x49: _Num("volume_flow_rate", 2, False, 1, 3_600_000, "m3/s"),  # 0.001 m3/h, exactly 1/3600000 m3/s
    0x4A: _n("voltage", 2, False, "0.1", "V"),
    0x4B: _n("gas", 3, False, "0.001", "m3"),
    0x4C: _n("gas", 4, False, "0.001", "m3"),
    0x4D: _n("energy", 4, False, "0.001", "kWh"),
    0x4E: _n("volume", 4, False, "0.001", "l"),
    0x4F: _n("water", 4, False, "0.001", "l"),
    0x50: _n("timestamp", 4, False, "1", "s"),
    0x51: _n("acceleration", 2, False, "0.001", "m/s2"),
    0x52: _n("gyroscope", 2, False, "0.001", None),  # degrees per second: no SenML unit
    0x55: _n("volume_storage", 4, False, "0.001", "l"),
    0x56: _n("conductivity", 2, False, "0.0001", "S/m"),  # 1 uS/cm
    0x57: _n("temperature", 1, True, "1", "Cel"),
    0x58: _n("temperature", 1, True, "0.35", "Cel"),
    0x59: _n("count", 1, True, "1", "count"),
    0x5A: _n("count", 2, True, "1", "count"),
    0x5B: _n("count", 4, True, "1", "count"),
    0x5C: _n("power", 4, True, "0.01", "W"),
    0x5D: _n("current", 2, True, "0.001", "A"),
    0x5E: _n("direction", 2, False, "0.01", "deg"),
    0x5F: _n("precipitation", 2, False, "0.1", "mm"),
    0x60: _n("channel", 1, False, "1", None),
    0x61: _n("rotational_speed", 2, False, "1", "1/min"),  # rpm
    0x62: _n("speed", 4, True, "0.000001", "m/s"),
    0x63: _n("acceleration", 4, True, "0.000001", "m/s2"),
    0x64: _n("light_level", 1, False, "1", None),  # 0 dark, 1 twilight, 2 bright
    0x65: _n("settings_revision", 1, False, "1", None),
}

# Binary sensors: one byte, 0 or 1 (https://bthome.io/format/, "Binary Sensor data").
# Names that would collide with a numeric sensor say what True means.
_BTHOME_BIN: dict[int, str] = {
    0x0F: "generic_boolean",
    0x10: "power_on",
    0x11: "opening",
    0x15: "battery_low",
    0x16: "battery_charging",
    0x17: "carbon_monoxide",
    0x18: "cold",
    0x19: "connectivity",
    0x1A: "door",
    0x1B: "garage_door",
    0x1C: "gas_detected",
    0x1D: "heat",
    0x1E: "light",
    0x1F: "lock",  # True = unlocked, as in the spec
    0x20: "moisture_detected",
    0x21: "motion",
    0x22: "moving",
    0x23: "occupancy",
    0x24: "plug",
    0x25: "presence",
    0x26: "problem",
    0x27: "running",
    0x28: "safety",
    0x29: "smoke",
    0x2A: "sound",
    0x2B: "tamper",
    0x2C: "vibration",
    0x2D: "window",
}
_BUTTON_EVENTS = {
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
    0xFE: "hold_press",  # Shelly firmware before 1.0.20
}
# Command object 0x3B opcodes; step up/down carry the number of steps as their argument.
_COMMANDS = {0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down"}
_SKIP_SIZE = {0x00: 1, 0xF0: 2, 0xF1: 4, 0xF2: 3}  # packet id, device type id, firmware versions
MAC_FLAG = 0x02  # device info bit 1: the device's MAC address (6 bytes, reversed) precedes the objects


def _scaled(raw: int, num: int, den: int) -> int | float:
    if den == 1:
        return raw * num
    return raw * num / den  # one correctly rounded division: 2506 * 1 / 100 == 25.06


def decode_bthome(data: bytes) -> list[Decoded]:
    """BTHome v2 service data (after the UUID): the device info byte, then objects."""
    if not data:
        raise DecodeError("BTHome: empty service data")
    info = data[0]
    version = info >> 5
    if version != 2:
        raise Unsupported(f"BTHome version {version} (only v2 is read)")
    if info & 0x01:
        raise Encrypted("BTHome payload is encrypted (bindkey decryption is not supported)")
    start = 1
    if info & MAC_FLAG:
        if len(data) < 7:
            raise DecodeError("BTHome: MAC address truncated")
        start = 7
    out: list[Decoded] = []
    seen: dict[str, int] = {}

    def add(point: str, value: Value, unit: str | None) -> None:
        n = seen.get(point, 0) + 1
        seen[point] = n
        out.append((point if n == 1 else f"{point}_{n}", value, unit))

    i, end = start, len(data)
    while i < end:
        oid = data[i]
        i += 1
        spec = _BTHOME_NUM.get(oid)
        if spec is not None:
            if i + spec.size > end:
                raise DecodeError(f"BTHome: object 0x{oid:02X} truncated")
            raw = int.from_bytes(data[i : i + spec.size], "little", signed=spec.signed)
            i += spec.size
            add(spec.point, _scaled(raw, spec.num, spec.den), spec.unit)
        elif oid in _BTHOME_BIN:
            if i >= end:
                raise DecodeError(f"BTHome: object 0x{oid:02X} truncated")
            add(_BTHOME_BIN[oid], data[i] != 0, None)
            i += 1
        elif oid in _SKIP_SIZE:
            if i + _SKIP_SIZE[oid] > end:
                raise DecodeError(f"BTHome: object 0x{oid:02X} truncated")
            i += _SKIP_SIZE[oid]
        elif oid in (0x53, 0x54):  # text (UTF-8) and raw: a length byte, then that many bytes
            if i >= end or i + 1 + data[i] > end:
                raise DecodeError(f"BTHome: object 0x{oid:02X} truncated")
            blob = data[i + 1 : i + 1 + data[i]]
            i += 1 + data[i]
            if oid == 0x53:
                try:
                    add("text", blob.decode("utf-8"), None)
                except UnicodeDecodeError:
                    raise DecodeError("BTHome: text object is not UTF-8") from None
            else:
                add("raw", bytes(blob), None)
        elif oid == 0x3A:  # button event
            if i >= end:
                raise DecodeError("BTHome: button event truncated")
            event = data[i]
            i += 1
            if event:
                add("button", _BUTTON_EVENTS.get(event, f"event_0x{event:02x}"), None)
            else:
                seen["button"] = seen.get("button", 0) + 1  # "no event" still takes its slot
        elif oid == 0x3C:  # dimmer event: 1 rotate left, 2 rotate right, then the steps
            if i + 2 > end:
                raise DecodeError("BTHome: dimmer event truncated")
            event, steps = data[i], data[i + 1]
            i += 2
            if event in (1, 2):
                add("dimmer", -steps if event == 1 else steps, "count")
            else:
                seen["dimmer"] = seen.get("dimmer", 0) + 1
        elif oid == 0x3B:  # command: argument length (low 5 bits), opcode, arguments
            if i + 2 > end or i + 2 + (data[i] & 0x1F) > end:
                raise DecodeError("BTHome: command object truncated")
            nargs, opcode = data[i] & 0x1F, data[i + 1]
            args = data[i + 2 : i + 2 + nargs]
            i += 2 + nargs
            add("command", _COMMANDS.get(opcode, f"opcode_0x{opcode:02x}"), None)
            if opcode in (0x03, 0x04) and nargs == 1:
                add("command_steps", args[0] if opcode == 0x03 else -args[0], "count")
        else:  # unknown object id: the spec says to stop parsing here; say what was left unread
            raise Partial(
                f"BTHome: unknown object id 0x{oid:02X} at byte {i - 1}: {end - i + 1} byte(s) not read "
                "(an object of a newer BTHome version?)",
                out,
            )
    return out


# -- Ruuvi RAWv2 (data format 5) ----------------------------------------------------------

_RUUVI5 = struct.Struct(">BhHHhhhHBH6s")


def decode_ruuvi(data: bytes) -> list[Decoded]:
    """Ruuvi manufacturer data (after the company id 0x0499); data format 5 (RAWv2)."""
    if not data:
        raise DecodeError("Ruuvi: empty manufacturer data")
    if data[0] != 5:
        raise Unsupported(f"Ruuvi data format {data[0]} (only format 5, RAWv2, is read)")
    if len(data) != _RUUVI5.size:
        raise DecodeError(f"Ruuvi RAWv2: {len(data)} bytes, expected {_RUUVI5.size}")
    _fmt, temp, hum, pres, ax, ay, az, power, movement, seq, _mac = _RUUVI5.unpack(data)
    out: list[Decoded] = []
    if temp != -0x8000:
        out.append(("temperature", temp * 5 / 1000, "Cel"))  # 0.005 degC steps
    if hum != 0xFFFF:
        out.append(("humidity", hum * 25 / 10000, "%RH"))  # 0.0025 % steps
    if pres != 0xFFFF:
        out.append(("pressure", pres + 50000, "Pa"))
    for axis, raw in (("x", ax), ("y", ay), ("z", az)):
        if raw != -0x8000:
            out.append((f"acceleration_{axis}", round(raw * STANDARD_GRAVITY / 1000, 5), "m/s2"))  # mG
    battery, tx = power >> 5, power & 0x1F
    if battery != 0x7FF:
        out.append(("battery_voltage", (battery + 1600) / 1000, "V"))
    if tx != 0x1F:
        out.append(("tx_power", tx * 2 - 40, "dBm"))
    if movement != 0xFF:
        out.append(("movement_counter", movement, "count"))
    if seq != 0xFFFF:
        out.append(("measurement_sequence", seq, None))
    return out


# -- iBeacon ------------------------------------------------------------------------------


def decode_ibeacon(data: bytes) -> list[Decoded] | None:
    """Apple manufacturer data: an iBeacon frame, or None for any other Apple payload."""
    if len(data) < 2 or data[0] != 0x02:
        return None
    if data[1] != 0x15 or len(data) != 23:
        raise DecodeError(f"iBeacon: length byte 0x{data[1]:02X} with {len(data)} bytes, expected 0x15 and 23")
    beacon = uuidlib.UUID(bytes=bytes(data[2:18]))
    major, minor, power = struct.unpack(">HHb", data[18:23])
    return [
        ("ibeacon_uuid", str(beacon), None),
        ("ibeacon_major", major, None),
        ("ibeacon_minor", minor, None),
        ("tx_power_1m", power, "dBm"),
    ]


# -- Eddystone ----------------------------------------------------------------------------

_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_CODES = (".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/")
_URL_CODES += tuple(c[:-1] for c in _URL_CODES)  # 0x07..0x0d: the same without the slash


def decode_eddystone(data: bytes) -> list[Decoded]:
    """Eddystone service data (after the UUID 0xFEAA): a UID, URL, TLM or EID frame."""
    if not data:
        raise DecodeError("Eddystone: empty service data")
    frame = data[0]
    if frame == 0x00:  # UID: tx power, 10-byte namespace, 6-byte instance, optional 2 RFU bytes
        if len(data) not in (18, 20):
            raise DecodeError(f"Eddystone-UID: {len(data)} bytes, expected 18 or 20")
        return [
            ("eddystone_namespace", data[2:12].hex(), None),
            ("eddystone_instance", data[12:18].hex(), None),
            ("tx_power_0m", struct.unpack(">b", data[1:2])[0], "dBm"),
        ]
    if frame == 0x10:  # URL: tx power, scheme prefix, 0-17 encoded bytes
        if not 3 <= len(data) <= 20:
            raise DecodeError(f"Eddystone-URL: {len(data)} bytes, expected 3 to 20")
        if data[2] >= len(_URL_SCHEMES):
            raise DecodeError(f"Eddystone-URL: unknown scheme prefix 0x{data[2]:02X}")
        parts = [_URL_SCHEMES[data[2]]]
        for b in data[3:]:
            if b < len(_URL_CODES):
                parts.append(_URL_CODES[b])
            elif 0x21 <= b <= 0x7E:
                parts.append(chr(b))
            else:
                raise DecodeError(f"Eddystone-URL: byte 0x{b:02X} is reserved")
        return [("url", "".join(parts), None), ("tx_power_0m", struct.unpack(">b", data[1:2])[0], "dBm")]
    if frame == 0x20:  # TLM
        if len(data) < 2:
            raise DecodeError("Eddystone-TLM: truncated")
        if data[1] == 0x01:
            raise Encrypted("Eddystone eTLM is encrypted (not supported)")
        if data[1] != 0x00:
            raise Unsupported(f"Eddystone-TLM version {data[1]}")
        if len(data) != 14:
            raise DecodeError(f"Eddystone-TLM: {len(data)} bytes, expected 14")
        vbatt, temp, adv_cnt, sec_cnt = struct.unpack(">HhII", data[2:14])
        out: list[Decoded] = []
        if vbatt:  # 0: not supported (e.g. USB powered)
            out.append(("battery_voltage", vbatt / 1000, "V"))
        if temp != -0x8000:  # 0x8000: not supported
            out.append(("temperature", temp / 256, "Cel"))  # signed 8.8 fixed point
        out.append(("advertising_count", adv_cnt, "count"))
        out.append(("uptime", sec_cnt / 10, "s"))  # 0.1 s resolution
        return out
    if frame == 0x30:  # EID: a rotating identifier, no readings
        return []
    raise DecodeError(f"Eddystone: unknown frame type 0x{frame:02X}")


# -- an advertisement, every format at once -----------------------------------------------


def _uuid_key(key: str) -> str:
    key = key.lower()
    return f"0000{key}-0000-1000-8000-00805f9b34fb" if len(key) == 4 else key


def decode_advertisement(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    formats: Iterable[Format] = FORMATS,
) -> tuple[list[Decoded], list[DecodeError]]:
    """Readings from every recognised payload of one advertisement, and what failed to decode.

    Returns ``([], [])`` for an advertisement in none of ``formats``.
    """
    wanted = set(formats)
    readings: list[Decoded] = []
    problems: list[DecodeError] = []
    service = {_uuid_key(k): bytes(v) for k, v in service_data.items()}
    jobs: list[tuple[object, bytes]] = []
    if "bthome" in wanted and BTHOME_UUID in service:
        jobs.append((decode_bthome, service[BTHOME_UUID]))
    if "ruuvi" in wanted and RUUVI_COMPANY in manufacturer_data:
        jobs.append((decode_ruuvi, bytes(manufacturer_data[RUUVI_COMPANY])))
    if "ibeacon" in wanted and APPLE_COMPANY in manufacturer_data:
        jobs.append((decode_ibeacon, bytes(manufacturer_data[APPLE_COMPANY])))
    if "eddystone" in wanted and EDDYSTONE_UUID in service:
        jobs.append((decode_eddystone, service[EDDYSTONE_UUID]))
    for fn, payload in jobs:
        try:
            got = fn(payload)  # type: ignore[operator]
        except Partial as e:  # the readings before the unreadable part are good
            problems.append(e)
            got = e.readings
        except DecodeError as e:
            problems.append(e)
            continue
        if got:
            readings.extend(got)
    return readings, problems


# -- GATT values --------------------------------------------------------------------------

NUMERIC_STRUCT_CODES = frozenset("bBhHiIlLqQefd")


def check_struct_format(fmt: str) -> struct.Struct:
    """A struct format for exactly one number (e.g. "<h", ">I", "<f"); ValueError otherwise."""
    try:
        s = struct.Struct(fmt)
    except struct.error as e:
        raise ValueError(f"invalid struct format {fmt!r}: {e}") from None
    code = fmt.lstrip("@=<>!")
    if len(code) != 1 or code not in NUMERIC_STRUCT_CODES:
        raise ValueError(
            f"struct format {fmt!r} must hold exactly one number (one of {''.join(sorted(NUMERIC_STRUCT_CODES))})"
        )
    return s


def decode_struct(raw: bytes, fmt: str, scale: float = 1.0) -> int | float:
    """A characteristic value: one number packed with ``fmt``, times ``scale``."""
    s = check_struct_format(fmt)
    if len(raw) != s.size:
        raise DecodeError(f"characteristic value has {len(raw)} bytes, format {fmt!r} needs {s.size}")
    (value,) = s.unpack(raw)
    result = value if scale == 1 else value * scale
    if isinstance(result, float):
        if not math.isfinite(result):
            raise DecodeError(f"characteristic value {value} (times {scale}) is not a finite number")
        result = round(result, 12)  # 2506 * 0.01 -> 25.06, not 25.060000000000002
    return result  # type: ignore[no-any-return]
