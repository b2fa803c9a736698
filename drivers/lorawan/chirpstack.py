"""ChirpStack v4 MQTT integration: topics, events (JSON and Protobuf) and downlink commands; no gateway.

ChirpStack publishes each device event on ``application/<application id>/device/<DevEUI>/event/<type>``
and takes downlinks on ``application/<application id>/device/<DevEUI>/command/down``
(docs: chirpstack/integrations/mqtt.md, events.md). Its ``json`` setting picks the encoding of
both: the Protocol Buffers JSON mapping of ``integration.proto`` (lowerCamelCase names, bytes
in base64, enums by name, timestamps in RFC 3339) or the Protobuf binary encoding of the same
messages. The Protobuf side uses the generated classes of the ``chirpstack-api`` package
(imported only when that encoding is configured).

Events become the small dataclasses below, whichever the encoding. Everything here parses
outside input: ``EventError`` and nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

EVENTS = ("up", "join", "status", "ack", "txack", "log", "location")
MAX_PAYLOAD = 64 * 1024  # bytes of one event; ChirpStack's are a few hundred
MAX_FRAME = 242  # largest LoRaWAN FRMPayload (DR with the largest payload, no repeater)
_EUI_RE = re.compile(r"^[0-9a-fA-F]{16}$")
_TOPIC_RE = re.compile(r"^(?P<prefix>.+)/(?P<app>[^/]+)/device/(?P<eui>[^/]+)/event/(?P<event>[a-z]+)$")
_FRACTION_RE = re.compile(r"\.(\d+)")


class EventError(ValueError):
    """An event we cannot read: not JSON/Protobuf, a missing or mistyped field, an unknown type."""


@dataclass(frozen=True, slots=True)
class Event:
    """What every event carries: the device, the application and ChirpStack's timestamp."""

    kind: str
    dev_eui: str  # lower-case hex
    application_id: str
    device_name: str = ""
    time_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Uplink(Event):
    deduplication_id: str = ""
    dev_addr: str = ""
    f_cnt: int = 0
    f_port: int = 0
    dr: int = 0
    confirmed: bool = False
    data: bytes = b""
    object: dict[str, Any] | None = None
    rssi: int | None = None  # best gateway's
    snr: float | None = None  # the same gateway's
    gateways: int = 0
    frequency: int | None = None


@dataclass(frozen=True, slots=True)
class Join(Event):
    dev_addr: str = ""


@dataclass(frozen=True, slots=True)
class Status(Event):
    margin: int = 0
    external_power: bool = False
    battery: float | None = None  # percent; None when the device says it cannot measure


@dataclass(frozen=True, slots=True)
class Ack(Event):
    queue_item_id: str = ""
    acknowledged: bool = False
    f_cnt_down: int = 0


@dataclass(frozen=True, slots=True)
class TxAck(Event):
    queue_item_id: str = ""
    f_cnt_down: int = 0
    gateway_id: str = ""


@dataclass(frozen=True, slots=True)
class Log(Event):
    level: str = "INFO"
    code: str = "UNKNOWN"
    description: str = ""
    context: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Location(Event):
    lat: float = 0.0
    lon: float = 0.0
    alt: float | None = None


def parse_topic(topic: str, prefix: str = "application") -> tuple[str, str, str]:
    """``(application id, DevEUI lower-case, event type)`` of an event topic; EventError otherwise."""
    m = _TOPIC_RE.match(topic)
    if m is None or m["prefix"] != prefix:
        raise EventError(f"not a ChirpStack event topic: {topic[:120]!r}")
    if not _EUI_RE.match(m["eui"]):
        raise EventError(f"DevEUI {m['eui'][:40]!r} in the topic is not 16 hex digits")
    if m["event"] not in EVENTS:
        raise EventError(f"event type {m['event']!r} is not read")
    return m["app"], m["eui"].lower(), m["event"]


def down_topic(application_id: str, dev_eui: str, prefix: str = "application") -> str:
    """Where ChirpStack takes a device's downlinks."""
    return f"{prefix}/{application_id}/device/{dev_eui}/command/down"


def parse_time_ns(text: str) -> int:
    """An RFC 3339 timestamp (ChirpStack gives nanoseconds) as integer nanoseconds since the epoch."""
    if not isinstance(text, str) or len(text) > 64:
        raise EventError("time is not an RFC 3339 string")
    m = _FRACTION_RE.search(text)
    frac_ns = 0
    base = text
    if m is not None:
        digits = m.group(1)[:9]
        frac_ns = int(digits.ljust(9, "0"))
        base = text[: m.start()] + text[m.end() :]
    try:
        dt = datetime.fromisoformat(base.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"time {text!r} is not RFC 3339") from None
    if dt.tzinfo is None:
        raise EventError(f"time {text!r} has no time zone")
    return (int(dt.timestamp()) * 1_000_000_000) + frac_ns


# -- JSON (the Protobuf JSON mapping) -------------------------------------------------------------


def _get(d: Mapping[str, Any], camel: str, default: Any = None) -> Any:
    """A field by its JSON name, or by its proto name (parsers must accept both)."""
    if camel in d:
        return d[camel]
    snake = re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)
    return d.get(snake, default)


def _int(d: Mapping[str, Any], name: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    v = _get(d, name, 0)
    if isinstance(v, str) and re.fullmatch(r"-?\d{1,20}", v):  # 64-bit values may come as strings
        v = int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise EventError(f"{name} is not an integer in [{lo}, {hi}]: {str(v)[:40]!r}")
    return v


def _num(d: Mapping[str, Any], name: str) -> float | None:
    v = _get(d, name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise EventError(f"{name} is not a finite number: {str(v)[:40]!r}")
    return v


def _str(d: Mapping[str, Any], name: str, limit: int = 256) -> str:
    v = _get(d, name, "")
    if not isinstance(v, str) or len(v) > limit:
        raise EventError(f"{name} is not a string of at most {limit} characters")
    return v


def _bool(d: Mapping[str, Any], name: str) -> bool:
    v = _get(d, name, False)
    if not isinstance(v, bool):
        raise EventError(f"{name} is not true or false")
    return v


def _bytes(d: Mapping[str, Any], name: str) -> bytes:
    v = _get(d, name, "")
    if not isinstance(v, str) or len(v) > 4 * MAX_PAYLOAD:
        raise EventError(f"{name} is not base64 text")
    try:
        text = v.replace("-", "+").replace("_", "/")  # the JSON mapping accepts URL-safe base64 too
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise EventError(f"{name} is not valid base64") from None


def _obj(d: Mapping[str, Any], name: str) -> dict[str, Any]:
    v = _get(d, name) or {}
    if not isinstance(v, dict):
        raise EventError(f"{name} is not an object")
    return v


def _common(kind: str, doc: Mapping[str, Any], app: str, eui: str) -> dict[str, Any]:
    info = _obj(doc, "deviceInfo")
    dev_eui = _str(info, "devEui", 32).lower() if _get(info, "devEui") else eui
    if dev_eui != eui:
        raise EventError(f"deviceInfo.devEui {dev_eui!r} does not match the topic's {eui!r}")
    app_id = _str(info, "applicationId") or app
    raw_time = _get(doc, "time")
    return {
        "kind": kind,
        "dev_eui": eui,
        "application_id": app_id,
        "device_name": _str(info, "deviceName"),
        "time_ns": parse_time_ns(raw_time) if raw_time else None,
    }


def _best_rx(rx_info: Any) -> tuple[int | None, float | None, int]:
    """RSSI and SNR of the gateway that heard the uplink best, and how many heard it."""
    if not isinstance(rx_info, list):
        raise EventError("rxInfo is not a list")
    best: tuple[int, float | None] | None = None
    for rx in rx_info[:256]:
        if not isinstance(rx, dict):
            raise EventError("rxInfo holds a non-object")
        rssi = _int(rx, "rssi", -1000, 1000) if _get(rx, "rssi") is not None else None
        snr = _num(rx, "snr")
        if rssi is not None and (best is None or rssi > best[0]):
            best = (rssi, snr)
    return (best[0], best[1], len(rx_info)) if best else (None, None, len(rx_info))


def event_from_dict(kind: str, doc: Any, app: str, eui: str) -> Event:
    """One event from its JSON-mapping document (also what the Protobuf path converts to)."""
    if not isinstance(doc, dict):
        raise EventError("event is not a JSON object")
    base = _common(kind, doc, app, eui)
    if kind == "up":
        rssi, snr, gateways = _best_rx(_get(doc, "rxInfo", []))
        tx = _obj(doc, "txInfo")
        obj = _get(doc, "object")
        if obj is not None and not isinstance(obj, dict):
            raise EventError("object is not a JSON object")
        data = _bytes(doc, "data")
        if len(data) > MAX_FRAME:
            raise EventError(f"data has {len(data)} bytes; a LoRaWAN frame carries at most {MAX_FRAME}")
        return Uplink(
            **base,
            deduplication_id=_str(doc, "deduplicationId"),
            dev_addr=_str(doc, "devAddr", 16),
            f_cnt=_int(doc, "fCnt"),
            f_port=_int(doc, "fPort", 0, 255),
            dr=_int(doc, "dr", 0, 15),
            confirmed=_bool(doc, "confirmed"),
            data=data,
            object=obj,
            rssi=rssi,
            snr=snr,
            gateways=gateways,
            frequency=_int(tx, "frequency") or None,
        )
    if kind == "join":
        return Join(**base, dev_addr=_str(doc, "devAddr", 16))
    if kind == "status":
        unavailable = _bool(doc, "batteryLevelUnavailable")
        battery = _num(doc, "batteryLevel")
        return Status(
            **base,
            margin=_int(doc, "margin", -1000, 1000),
            external_power=_bool(doc, "externalPowerSource"),
            battery=None if unavailable or battery is None else battery,
        )
    if kind == "ack":
        return Ack(
            **base,
            queue_item_id=_str(doc, "queueItemId"),
            acknowledged=_bool(doc, "acknowledged"),
            f_cnt_down=_int(doc, "fCntDown"),
        )
    if kind == "txack":
        return TxAck(
            **base,
            queue_item_id=_str(doc, "queueItemId"),
            f_cnt_down=_int(doc, "fCntDown"),
            gateway_id=_str(doc, "gatewayId", 32),
        )
    if kind == "log":
        context = _obj(doc, "context")
        return Log(
            **base,
            level=_enum(doc, "level", LOG_LEVELS),
            code=_enum(doc, "code", LOG_CODES),
            description=_str(doc, "description", 1024),
            context={str(k)[:64]: str(v)[:256] for k, v in list(context.items())[:32]},
        )
    if kind == "location":
        loc = _obj(doc, "location")
        lat, lon, alt = _num(loc, "latitude"), _num(loc, "longitude"), _num(loc, "altitude")
        if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise EventError("location has no valid latitude/longitude")
        return Location(**base, lat=lat, lon=lon, alt=alt)
    raise EventError(f"event type {kind!r} is not read")


LOG_LEVELS = ("INFO", "WARNING", "ERROR")
LOG_CODES = (
    "UNKNOWN",
    "DOWNLINK_PAYLOAD_SIZE",
    "UPLINK_CODEC",
    "DOWNLINK_CODEC",
    "OTAA",
    "UPLINK_F_CNT_RESET",
    "UPLINK_MIC",
    "UPLINK_F_CNT_RETRANSMISSION",
    "DOWNLINK_GATEWAY",
    "RELAY_NEW_END_DEVICE",
    "F_CNT_DOWN",
    "EXPIRED",
)  # integration.proto's LogCode, in number order


def _enum(d: Mapping[str, Any], name: str, names: tuple[str, ...]) -> str:
    v = _get(d, name, names[0])
    if isinstance(v, int) and not isinstance(v, bool):
        return names[v] if 0 <= v < len(names) else f"{name.upper()}_{v}"
    if not isinstance(v, str) or len(v) > 64:
        raise EventError(f"{name} is not an enum name")
    return v


def parse_json(kind: str, payload: bytes, app: str, eui: str) -> Event:
    """An event in ChirpStack's JSON encoding."""
    if len(payload) > MAX_PAYLOAD:
        raise EventError(f"event of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise EventError(f"not JSON: {str(e)[:80]}") from None
    return event_from_dict(kind, doc, app, eui)


# -- Protobuf ---------------------------------------------------------------------------------------

MESSAGES = {  # event type -> integration.proto message
    "up": "UplinkEvent",
    "join": "JoinEvent",
    "status": "StatusEvent",
    "ack": "AckEvent",
    "txack": "TxAckEvent",
    "log": "LogEvent",
    "location": "LocationEvent",
}


def protobuf_module() -> Any:
    """chirpstack-api's generated ``integration_pb2``; ImportError when the package is missing."""
    from chirpstack_api.integration import integration_pb2

    return integration_pb2


def parse_protobuf(kind: str, payload: bytes, app: str, eui: str) -> Event:
    """An event in ChirpStack's Protobuf encoding, through the same checks as JSON."""
    if len(payload) > MAX_PAYLOAD:
        raise EventError(f"event of {len(payload)} bytes (at most {MAX_PAYLOAD})")
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    pb = protobuf_module()
    msg = getattr(pb, MESSAGES[kind])()
    try:
        msg.ParseFromString(payload)
        doc = json_format.MessageToDict(msg)  # the JSON mapping: one reader for both encodings
    except (DecodeError, ValueError, TypeError, RecursionError) as e:
        raise EventError(f"not a {MESSAGES[kind]}: {str(e)[:80]}") from None
    return event_from_dict(kind, doc, app, eui)


# -- downlinks ----------------------------------------------------------------------------------------


def encode_downlink(
    dev_eui: str,
    f_port: int,
    *,
    data: bytes | None = None,
    obj: Mapping[str, Any] | None = None,
    confirmed: bool = False,
    encoding: str = "json",
) -> bytes:
    """A DownlinkCommand for ``command/down``: ``data`` (ChirpStack encrypts it) or an ``object``
    its device-profile codec encodes."""
    if not 1 <= f_port <= 223:
        raise ValueError(f"f_port {f_port} is not in 1..223 (application ports)")
    if data is not None and len(data) > MAX_FRAME:
        raise ValueError(f"downlink of {len(data)} bytes; a LoRaWAN frame carries at most {MAX_FRAME}")
    doc: dict[str, Any] = {"devEui": dev_eui, "confirmed": confirmed, "fPort": f_port}
    if data is not None:
        doc["data"] = base64.b64encode(data).decode()
    if obj is not None:
        doc["object"] = dict(obj)
    if encoding == "json":
        return json.dumps(doc).encode()
    from google.protobuf import json_format

    return bytes(json_format.ParseDict(doc, protobuf_module().DownlinkCommand()).SerializeToString())
