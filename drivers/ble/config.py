"""The ble driver's options. Every option: a type, a default and a description; no I/O."""

from __future__ import annotations

import re
from typing import Literal

from drivers.ble.decoders import FORMATS, Format, check_struct_format
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import Duration

_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
_MAC_PATTERN_RE = re.compile(r"^[0-9A-Fa-f:*?\[\]!-]{1,64}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_UUID16_RE = re.compile(r"^(0x)?[0-9A-Fa-f]{4}$")
_UUID128_RE = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")


def normalize_uuid(value: str) -> str:
    """ "2a6e", "0x2A6E" or a 128-bit UUID -> the lower-case 128-bit form bleak and BlueZ use."""
    if _UUID16_RE.match(value):
        return f"0000{value[-4:].lower()}-0000-1000-8000-00805f9b34fb"
    if _UUID128_RE.match(value):
        return value.lower()
    raise ValueError(f"{value!r} is not a UUID (use e.g. 2a6e or 00002a6e-0000-1000-8000-00805f9b34fb)")


class GattPoll(Model):
    """One characteristic read on a schedule: connect, read, disconnect."""

    address: str = Field(description="Device address, e.g. C4:7C:8D:6A:00:01.")
    characteristic: str = Field(description="Characteristic UUID: 16-bit (2a6e) or 128-bit.")
    point: str = Field(
        pattern=r"^[A-Za-z0-9][-:./_A-Za-z0-9]{0,63}$", description="Point name of the value, e.g. temperature."
    )
    format: str = Field(default="<h", description="Python struct format of the value, e.g. <h, <H, <i, <f.")
    scale: float = Field(default=1.0, description="Multiplier applied to the unpacked number.")
    unit: str | None = Field(default=None, description="SenML unit of the scaled value, e.g. Cel.")
    interval: Duration = Field(default=60.0, ge=1, description="Time between reads (e.g. 60s, 5m).")

    @field_validator("address")
    @classmethod
    def _mac(cls, v: str) -> str:
        if not _MAC_RE.match(v):
            raise ValueError(f"{v!r} is not a Bluetooth address like C4:7C:8D:6A:00:01")
        return v.upper()

    @field_validator("characteristic")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return normalize_uuid(v)

    @field_validator("format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        check_struct_format(v)
        return v


class BleConfig(DriverConfig):
    """Passive BLE advertisement scanning (BTHome v2, Ruuvi RAWv2, iBeacon, Eddystone) plus
    optional GATT reads; every advertising device is a capillary node (IP3)."""

    adapter: str = Field(default="hci0", pattern=r"^hci[0-9]{1,3}$", description="BlueZ adapter, e.g. hci0.")
    scan_mode: Literal["auto", "passive", "active"] = Field(
        default="auto",
        description="passive: listen only (needs BlueZ advertisement monitors, bluetoothd --experimental); "
        "active: also send scan requests; auto: passive when BlueZ supports it, else active.",
    )
    formats: list[Format] = Field(default_factory=lambda: list(FORMATS), description="Advertisement formats to decode.")
    addresses: list[str] = Field(
        default_factory=list,
        description="Allow-list of device addresses or glob patterns (C4:7C:8D:*). "
        "With no addresses and no names, any device advertising a known format is taken.",
    )
    names: list[str] = Field(
        default_factory=list, description="Allow-list of advertised-name glob patterns, e.g. 'Ruuvi *'."
    )
    node_names: dict[str, str] = Field(
        default_factory=dict, description="Node id per device address (default: node_prefix + address digits)."
    )
    node_prefix: str = Field(
        default="ble-", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$|^$", description="Prefix of derived node ids."
    )
    rssi: bool = Field(default=True, description="Record each advertisement's RSSI as point 'rssi' (dBm).")
    dedup_window: Duration = Field(
        default=10.0, ge=0, description="Drop an advertisement repeating the last one from a device within this time."
    )
    offline_after: Duration = Field(
        default=300.0, gt=0, description="A node is reported offline after this long without an advertisement."
    )
    max_nodes: int = Field(default=256, ge=1, le=10000, description="Most devices tracked at once (memory bound).")
    gatt: list[GattPoll] = Field(default_factory=list, description="Characteristics to read on a schedule.")
    gatt_timeout: Duration = Field(default=20.0, gt=0, description="Longest one GATT connect+read+disconnect may take.")

    @field_validator("addresses")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if not _MAC_PATTERN_RE.match(p):
                raise ValueError(f"{p!r} is not an address or address pattern like C4:7C:8D:*")
        return [p.upper() for p in v]

    @field_validator("node_names")
    @classmethod
    def _node_names(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for address, node in v.items():
            if not _MAC_RE.match(address):
                raise ValueError(f"node_names key {address!r} is not a Bluetooth address like C4:7C:8D:6A:00:01")
            if not _NODE_RE.match(node):
                raise ValueError(f"node id {node!r} may use letters, digits and _.:- (at most 128)")
            out[address.upper()] = node
        return out

    @model_validator(mode="after")
    def _unique_nodes(self) -> BleConfig:
        nodes = list(self.node_names.values())
        dupes = sorted({n for n in nodes if nodes.count(n) > 1})
        if dupes:
            raise ValueError(f"node_names gives two devices the same node id: {', '.join(dupes)}")
        if not self.formats and not self.gatt:
            raise ValueError("nothing to do: formats is empty and no gatt reads are configured")
        return self
