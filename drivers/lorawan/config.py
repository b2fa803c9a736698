"""The lorawan driver's options. Every option: a type, a default and a description; no I/O."""

from __future__ import annotations

import re
from typing import Literal

from gateway.broker import BrokerOptions
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import Duration

_EUI_RE = re.compile(r"^[0-9a-fA-F]{16}$")
_HEX_RE = re.compile(r"^([0-9a-fA-F]{2})*$")
_NAME_PATTERN = r"^[A-Za-z0-9][-:._A-Za-z0-9]{0,63}$"
Codec = Literal["object", "cayenne_lpp", "raw", "none"]  # codecs.CODECS, plus object and none
Metadata = Literal["rssi", "snr", "frame_counter", "data_rate", "frequency", "gateways", "f_port"]


class FieldMap(Model):
    """How one value of the decoded object becomes a point."""

    point: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][-:./_A-Za-z0-9]{0,127}$",
        description="Point name (default: the object path, made SenML-safe).",
    )
    unit: str | None = Field(default=None, description="SenML unit of the value after scale, e.g. Cel.")
    scale: float = Field(default=1.0, description="Multiplier applied to a numeric value.")


class Command(Model):
    """A named downlink a `write(NODE/NAME, value)` enqueues."""

    f_port: int = Field(ge=1, le=223, description="LoRaWAN FPort of the downlink.")
    data: str = Field(default="", description="Fixed payload as hex (the write's value must be true).")
    field: str = Field(default="", description="Object key the written number goes to; ChirpStack's codec encodes it.")
    min: float | None = Field(default=None, description="Lowest value a write may send (with field).")
    max: float | None = Field(default=None, description="Highest value a write may send (with field).")
    confirmed: bool = Field(default=False, description="Ask the device to acknowledge (an ack event follows).")

    @model_validator(mode="after")
    def _one_kind(self) -> Command:
        if bool(self.data) == bool(self.field):
            raise ValueError("a command has either data (fixed hex payload) or field (a value into the object)")
        if self.data and not _HEX_RE.match(self.data):
            raise ValueError(f"data {self.data[:20]!r} is not hex bytes")
        if len(self.data) > 2 * 242:
            raise ValueError("data is longer than a LoRaWAN frame (242 bytes)")
        return self


class Device(Model):
    """One LoRaWAN device (one node, interface point IP3)."""

    eui: str = Field(description="DevEUI, 16 hex digits.")
    node: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
        description="Node id (default: node_prefix + DevEUI).",
    )
    codec: Codec | None = Field(default=None, description="Payload codec for this device (default: codec).")
    fields: dict[str, FieldMap] = Field(
        default_factory=dict, description="Object path (a.b.c) -> point, unit, scale; others keep their path."
    )
    offline_after: Duration | None = Field(default=None, gt=0, description="Override of offline_after.")
    downlink: bool = Field(default=False, description="Allow raw downlinks: write(NODE/downlink, hex or bytes).")
    downlink_port: int = Field(default=1, ge=1, le=223, description="FPort of raw downlinks.")
    commands: dict[str, Command] = Field(default_factory=dict, description="Named downlinks: write(NODE/NAME, value).")

    @field_validator("eui")
    @classmethod
    def _eui(cls, v: str) -> str:
        if not _EUI_RE.match(v):
            raise ValueError(f"{v!r} is not a DevEUI (16 hex digits, e.g. 0101010101010101)")
        return v.lower()

    @field_validator("commands")
    @classmethod
    def _command_names(cls, v: dict[str, Command]) -> dict[str, Command]:
        for name in v:
            if not re.match(_NAME_PATTERN, name) or name == "downlink":
                raise ValueError(f"command name {name!r}: letters, digits, -:._ (and not 'downlink')")
        return v


class LorawanConfig(DriverConfig):
    """LoRaWAN devices through a ChirpStack v4 network server's MQTT integration."""

    broker: BrokerOptions = Field(default_factory=BrokerOptions, description="The broker ChirpStack publishes to.")
    application: str = Field(
        default="+",
        pattern=r"^(\+|[^/#+\s]{1,64})$",
        description="ChirpStack application id to follow, or + for every application.",
    )
    topic_prefix: str = Field(
        default="application",
        pattern=r"^[^#+\s]{1,64}$",
        description="First level of ChirpStack's event topic (its event_topic template).",
    )
    encoding: Literal["json", "protobuf"] = Field(
        default="json",
        description="ChirpStack's integration encoding (its mqtt json setting); protobuf needs "
        "pip install 'sensegate[lorawan]'.",
    )
    codec: Codec = Field(
        default="object",
        description="Payload codec: object (ChirpStack's decoded object), "
        "cayenne_lpp, raw (the bytes), none (metadata only).",
    )
    metadata: list[Metadata] = Field(
        default_factory=lambda: ["rssi", "snr", "frame_counter"],
        description="Radio metadata recorded per uplink: rssi (dBm, best gateway), snr (dB), frame_counter, "
        "data_rate, frequency (Hz), gateways (how many heard it), f_port.",
    )
    devices: list[Device] = Field(default_factory=list, description="Known devices and their options.")
    accept_unknown: bool = Field(
        default=True, description="Devices not listed become nodes too (node_prefix + DevEUI)."
    )
    node_prefix: str = Field(
        default="lora-", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", description="Prefix of derived node ids."
    )
    offline_after: Duration = Field(
        default=7200.0, gt=0, description="A node is offline after this long without an uplink."
    )
    max_frame_gap: int = Field(
        default=16384, ge=1, le=2**31, description="Larger frame-counter jumps are resets, not gaps."
    )

    @model_validator(mode="after")
    def _unique(self) -> LorawanConfig:
        euis = [d.eui for d in self.devices]
        if len(set(euis)) != len(euis):
            raise ValueError("a DevEUI is listed twice in devices")
        nodes = [d.node for d in self.devices if d.node]
        if len(set(nodes)) != len(nodes):
            raise ValueError("two devices have the same node id")
        return self
