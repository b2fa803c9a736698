"""The zigbee2mqtt driver's options. Every option: a type, a default and a description; no I/O."""

from __future__ import annotations

import re

from gateway.broker import BrokerOptions
from gateway.driver_api import DriverConfig
from gateway.schema import Field, field_validator, model_validator

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class Zigbee2MqttConfig(DriverConfig):
    """Zigbee devices through a Zigbee2MQTT bridge: one node per device (IP3)."""

    broker: BrokerOptions = Field(default_factory=BrokerOptions, description="The broker Zigbee2MQTT publishes to.")
    base_topic: str = Field(
        default="zigbee2mqtt",
        pattern=r"^[^#+\s]{1,64}$",
        description="Zigbee2MQTT's base_topic (its mqtt.base_topic setting).",
    )
    devices: list[str] = Field(
        default_factory=list,
        description="Allow-list of friendly names or IEEE addresses (glob patterns); empty: every device.",
    )
    node_names: dict[str, str] = Field(
        default_factory=dict, description="Node id per friendly name or IEEE address (default: node_prefix + IEEE)."
    )
    node_prefix: str = Field(
        default="zb-", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", description="Prefix of derived node ids."
    )
    exclude: list[str] = Field(
        default_factory=lambda: ["update.*", "update_available", "last_seen"],
        description="State properties not recorded (glob patterns over dotted paths, e.g. update.*).",
    )
    writable: list[str] = Field(
        default_factory=list,
        description="What write() may set, as NODE/PROPERTY glob patterns (e.g. zb-*/state); the device's "
        "exposes must also allow it. Empty: nothing.",
    )

    @field_validator("node_names")
    @classmethod
    def _node_ids(cls, v: dict[str, str]) -> dict[str, str]:
        for key, node in v.items():
            if not _NODE_RE.match(node):
                raise ValueError(f"node id {node!r} for {key!r}: letters, digits and _.:- (at most 128)")
        return v

    @model_validator(mode="after")
    def _unique(self) -> Zigbee2MqttConfig:
        nodes = list(self.node_names.values())
        dupes = sorted({n for n in nodes if nodes.count(n) > 1})
        if dupes:
            raise ValueError(f"node_names gives two devices the same node id: {', '.join(dupes)}")
        return self
