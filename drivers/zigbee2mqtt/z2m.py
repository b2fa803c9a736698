"""Zigbee2MQTT's MQTT API: topics, the bridge's device list and exposes, states, availability
and ``set`` commands; pure, never imports gateway.

Topics (zigbee2mqtt.io, guide/usage/mqtt_topics_and_messages.md), under the base topic
(``zigbee2mqtt`` by default): ``bridge/devices`` (retained: every device, with the capabilities
it ``exposes``), ``bridge/state`` (``online``/``offline``, or ``{"state": ...}``),
``bridge/event`` (joins, leaves), ``<friendly_name>`` (the device's state, a JSON object),
``<friendly_name>/availability`` (``online``/``offline`` in legacy mode, else
``{"state": "online"}``), ``<friendly_name>/set`` (commands). Friendly names may contain ``/``,
so a topic is matched against the known names.

Units: an expose's ``unit`` is converted to its SenML unit (``°C`` -> ``Cel``, ``hPa`` -> ``Pa``
x100, ``mV`` -> ``V`` /1000, ``kWh`` -> ``Wh`` x1000, ...); humidity and battery percentages
become ``%RH`` and ``%EL``; a unit with no SenML counterpart (``mired``, ``lqi``) is left off.
Everything here parses outside input: ``Z2mError`` and nothing else escapes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_PAYLOAD = 256 * 1024  # bridge/devices of a large network is the biggest message
MAX_DEVICES = 2000
MAX_LEAVES = 256
_IEEE_RE = re.compile(r"^0x[0-9a-fA-F]{16}$")

# z2m unit -> (SenML unit, factor)
_UNITS: dict[str, tuple[str, float]] = {
    "°C": ("Cel", 1),
    "°F": ("Cel", 0),  # 0: Fahrenheit, converted by formula
    "%": ("%", 1),
    "hPa": ("Pa", 100),
    "kPa": ("Pa", 1000),
    "Pa": ("Pa", 1),
    "lx": ("lx", 1),
    "ppm": ("ppm", 1),
    "µg/m³": ("ug/m3", 1),
    "mg/m³": ("ug/m3", 1000),
    "V": ("V", 1),
    "mV": ("V", 0.001),
    "A": ("A", 1),
    "mA": ("A", 0.001),
    "W": ("W", 1),
    "kW": ("W", 1000),
    "Wh": ("Wh", 1),
    "kWh": ("Wh", 1000),
    "Hz": ("Hz", 1),
    "dB": ("dB", 1),
    "dBm": ("dBm", 1),
    "s": ("s", 1),
    "min": ("s", 60),
    "h": ("s", 3600),
    "ms": ("s", 0.001),
    "mm": ("m", 0.001),
    "cm": ("m", 0.01),
    "m": ("m", 1),
    "°": ("deg", 1),
    "kg": ("kg", 1),
    "g": ("kg", 0.001),
    "L": ("l", 1),
    "m³": ("m3", 1),
    "m³/h": ("m3/s", 1 / 3600),
}
_PERCENT_UNITS = {"humidity": "%RH", "battery": "%EL"}


class Z2mError(ValueError):
    """A message we cannot read, or a command the device's exposes do not allow."""


@dataclass(frozen=True, slots=True)
class Expose:
    """One value a device publishes or accepts (a leaf of its ``exposes``)."""

    path: str  # "temperature", "color.x"
    kind: str  # numeric, binary, enum, text, list
    access: int = 1  # bit 0 published, bit 1 settable, bit 2 gettable
    unit: str | None = None  # SenML
    factor: float = 1.0  # z2m unit -> SenML unit (0: Fahrenheit)
    value_min: float | None = None
    value_max: float | None = None
    values: tuple[Any, ...] = ()  # enum values; binary on/off/toggle
    value_on: Any = None
    value_off: Any = None

    @property
    def settable(self) -> bool:
        return bool(self.access & 0b010)


@dataclass(frozen=True, slots=True)
class Device:
    """A device of ``bridge/devices``."""

    ieee: str  # 0x00158d00018255df
    friendly_name: str
    type: str = ""  # Coordinator, Router, EndDevice
    supported: bool = True
    model: str = ""
    exposes: dict[str, Expose] = field(default_factory=dict)


Kind = Literal["devices", "bridge_state", "bridge_event", "bridge", "state", "availability", "command", "unknown"]


def classify(topic: str, base: str, names: Container[str]) -> tuple[Kind, str]:
    """What a topic under ``base`` carries, and the friendly name it is about (if any)."""
    if not topic.startswith(base + "/"):
        return "unknown", ""
    rest = topic[len(base) + 1 :]
    if rest == "bridge/devices":
        return "devices", ""
    if rest == "bridge/state":
        return "bridge_state", ""
    if rest == "bridge/event":
        return "bridge_event", ""
    if rest.startswith("bridge/"):
        return "bridge", ""
    if rest in names:
        return "state", rest
    for suffix, kind in (("/availability", "availability"), ("/set", "command"), ("/get", "command")):
        if rest.endswith(suffix):
            return kind, rest[: -len(suffix)]  # type: ignore[return-value]
    if "/set/" in rest:
        return "command", rest.split("/set/", 1)[0]
    return "state", rest


def _json(payload: bytes, what: str) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise Z2mError(f"{what} of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise Z2mError(f"{what} is not JSON: {str(e)[:80]}") from None


def parse_online(payload: bytes) -> bool:
    """``online``/``offline`` (legacy) or ``{"state": "online"}``: True when online."""
    text = payload.strip()
    if text in (b"online", b"offline"):
        return text == b"online"
    doc = _json(payload, "availability")
    state = doc.get("state") if isinstance(doc, dict) else None
    if state not in ("online", "offline"):
        raise Z2mError(f"availability {payload[:40]!r} is neither online nor offline")
    return state == "online"


def _expose_leaves(items: Any, prefix: str, out: dict[str, Expose], depth: int = 0) -> None:
    if not isinstance(items, list) or depth > 4:
        return
    for item in items[:256]:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        prop = item.get("property")
        features = item.get("features")
        if isinstance(features, list):  # composite (nested under its property) or a specific type
            nested = f"{prefix}{prop}." if kind == "composite" and isinstance(prop, str) else prefix
            _expose_leaves(features, nested, out, depth + 1)
            continue
        if not isinstance(prop, str) or not prop or kind not in ("numeric", "binary", "enum", "text", "list"):
            continue
        path = prefix + prop
        raw_unit = item.get("unit") if isinstance(item.get("unit"), str) else None
        unit, factor = _UNITS.get(raw_unit, (None, 1.0)) if raw_unit else (None, 1.0)
        if unit == "%":
            unit = _PERCENT_UNITS.get(prop, "%")
        values: tuple[Any, ...] = ()
        if kind == "enum" and isinstance(item.get("values"), list):
            values = tuple(v for v in item["values"] if isinstance(v, str | int | float | bool))
        if kind == "binary":
            values = tuple(item[k] for k in ("value_on", "value_off", "value_toggle") if k in item)
        access = item.get("access", 1)
        out.setdefault(
            path,
            Expose(
                path=path,
                kind=kind,
                access=access if isinstance(access, int) else 1,
                unit=unit,
                factor=factor,
                value_min=_number(item.get("value_min")),
                value_max=_number(item.get("value_max")),
                values=values,
                value_on=item.get("value_on"),
                value_off=item.get("value_off"),
            ),
        )


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def parse_devices(payload: bytes) -> list[Device]:
    """``bridge/devices``: every device with the leaves of its exposes (the coordinator included)."""
    doc = _json(payload, "bridge/devices")
    if not isinstance(doc, list):
        raise Z2mError("bridge/devices is not a list")
    if len(doc) > MAX_DEVICES:
        raise Z2mError(f"bridge/devices lists {len(doc)} devices (at most {MAX_DEVICES})")
    out = []
    for entry in doc:
        if not isinstance(entry, dict):
            raise Z2mError("bridge/devices holds a non-object")
        ieee, name = entry.get("ieee_address"), entry.get("friendly_name")
        if not isinstance(ieee, str) or not _IEEE_RE.match(ieee):
            raise Z2mError(f"bridge/devices: ieee_address {str(ieee)[:24]!r} is not 0x + 16 hex digits")
        if not isinstance(name, str) or not name or len(name) > 256:
            raise Z2mError(f"bridge/devices: device {ieee} has no friendly_name")
        definition = entry.get("definition")
        exposes: dict[str, Expose] = {}
        model = ""
        if isinstance(definition, dict):
            _expose_leaves(definition.get("exposes"), "", exposes)
            model = str(definition.get("model") or "")[:64]
        out.append(
            Device(
                ieee=ieee.lower(),
                friendly_name=name,
                type=str(entry.get("type") or "")[:32],
                supported=bool(entry.get("supported", True)),
                model=model,
                exposes=exposes,
            )
        )
    return out


def parse_state(payload: bytes) -> dict[str, Any]:
    """A device's state message: a JSON object."""
    doc = _json(payload, "state")
    if not isinstance(doc, dict):
        raise Z2mError("state is not a JSON object")
    return doc


def parse_event(payload: bytes) -> tuple[str, str, str]:
    """``bridge/event``: (type, ieee address, friendly name)."""
    doc = _json(payload, "bridge/event")
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(data, dict) or not isinstance(doc.get("type"), str):
        raise Z2mError("bridge/event is not {type, data}")
    return (
        doc["type"][:32],
        str(data.get("ieee_address") or "")[:24].lower(),
        str(data.get("friendly_name") or "")[:256],
    )


def convert(value: float, expose: Expose | None) -> float:
    """A number in its expose's unit -> the SenML unit."""
    if expose is None or expose.factor == 1:
        return value
    if expose.factor == 0:  # Fahrenheit
        return round((value - 32) * 5 / 9, 9)
    return round(value * expose.factor, 9)


def flatten_state(state: dict[str, Any], exposes: dict[str, Expose]) -> list[tuple[str, Any, str | None]]:
    """``(path, value, SenML unit)`` of every number, boolean and text in a state, in SenML units."""
    out: list[tuple[str, Any, str | None]] = []

    def walk(value: Any, path: str, depth: int) -> None:
        if len(out) >= MAX_LEAVES:
            return
        if isinstance(value, bool | str):
            out.append((path, value[:256] if isinstance(value, str) else value, None))
        elif isinstance(value, int | float):
            if math.isfinite(value):
                expose = exposes.get(path)
                out.append((path, convert(value, expose), expose.unit if expose is not None else None))
        elif isinstance(value, dict) and depth < 4:
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else str(key), depth + 1)

    walk(state, "", 0)
    return out


def set_value(expose: Expose | None, value: Any) -> Any:
    """The value a ``set`` sends for ``expose``; Z2mError when the device's exposes do not allow it."""
    if expose is None:
        raise Z2mError("the device does not expose it")
    if not expose.settable:
        raise Z2mError(f"{expose.path} is not settable (access {expose.access})")
    if "." in expose.path:
        raise Z2mError(f"{expose.path} is part of a composite value; set the whole {expose.path.split('.')[0]}")
    if expose.kind == "binary":
        if isinstance(value, bool) and expose.value_on is not None and expose.value_off is not None:
            return expose.value_on if value else expose.value_off
        if value in expose.values:
            return value
        raise Z2mError(f"{expose.path} takes {', '.join(map(str, expose.values))} (or true/false)")
    if expose.kind == "numeric":
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise Z2mError(f"{expose.path} takes a number")
        if (expose.value_min is not None and value < expose.value_min) or (
            expose.value_max is not None and value > expose.value_max
        ):
            raise Z2mError(f"{expose.path}: {value} outside [{expose.value_min}, {expose.value_max}]")
        return value
    if expose.kind == "enum":
        if value not in expose.values:
            raise Z2mError(f"{expose.path} takes one of {', '.join(map(str, expose.values))}")
        return value
    if expose.kind == "text":
        if not isinstance(value, str) or len(value) > 256:
            raise Z2mError(f"{expose.path} takes text (at most 256 characters)")
        return value
    raise Z2mError(f"{expose.path} ({expose.kind}) cannot be set with one value")


def encode_set(prop: str, value: Any) -> bytes:
    """The payload of ``<friendly_name>/set``."""
    return json.dumps({prop: value}).encode()


def names_of(devices: Iterable[Device]) -> set[str]:
    return {d.friendly_name for d in devices}
