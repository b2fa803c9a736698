"""The push driver's options. Every option: a type, a default and a description; no I/O."""

from __future__ import annotations

import re
from typing import Literal

from gateway.broker import BrokerOptions
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import ByteSize, Duration

_TEMPLATE_RE = re.compile(r"\{(\d+)\}")


class HttpOptions(Model):
    """The HTTP endpoint devices POST SenML to."""

    listen: str = Field(
        default="127.0.0.1:8080",
        pattern=r"^(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):\d{1,5}$",
        description="Address and port; 0.0.0.0:8080 for devices on the network (default: loopback).",
    )
    path: str = Field(default="/senml", pattern=r"^/[-/._~A-Za-z0-9]{0,127}$", description="Path packs are POSTed to.")
    token_file: str = Field(
        default="",
        description="File with a bearer token devices must send (Authorization: Bearer ...); "
        "empty: no authentication (trusted network only).",
    )
    max_body: ByteSize = Field(
        default=64 * 1024, ge=64, le=16 * 1024 * 1024, description="Largest body accepted (e.g. 64KiB)."
    )
    timeout: Duration = Field(default=10.0, gt=0, le=300, description="Longest one request may take to arrive.")
    max_connections: int = Field(default=64, ge=1, le=10000, description="Connections served at once.")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("listen")
    @classmethod
    def _port(cls, v: str) -> str:
        if not 0 <= int(v.rpartition(":")[2]) <= 65535:
            raise ValueError(f"port of {v!r} is not 0..65535")
        return v


class Subscription(Model):
    """One MQTT topic filter and how its messages become readings."""

    topic: str = Field(pattern=r"^[^\s]{1,256}$", description="Topic filter, e.g. sensors/+/senml.")
    format: Literal["senml", "senml_json", "senml_cbor", "value"] = Field(
        default="senml",
        description="senml (JSON or CBOR, by the first byte), senml_json, senml_cbor, or value "
        "(the payload is one number, true/false or text).",
    )
    node: str = Field(default="", description="Node of the readings; {N} is the topic's level N (0 first), e.g. {1}.")
    point: str = Field(default="", description="Point name for format value; {N} as in node.")
    unit: str | None = Field(default=None, description="SenML unit for format value.")

    @model_validator(mode="after")
    def _value_needs_point(self) -> Subscription:
        if self.format == "value" and not self.point:
            raise ValueError("format: value needs a point (a name, or a template like {2})")
        levels = self.topic.split("/")
        for template in (self.node, self.point):
            for n in _TEMPLATE_RE.findall(template):
                if int(n) >= len(levels):
                    raise ValueError(f"{{{n}}} refers to topic level {n}; {self.topic!r} has {len(levels)} levels")
        return self


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic matches both MQTT topic filters (the broker would send it twice)."""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:
            return False
        if p != q and "+" not in (p, q):
            return False
    return True


class MqttOptions(Model):
    """Devices that publish to a (local) broker."""

    broker: BrokerOptions = Field(default_factory=BrokerOptions, description="The broker devices publish to.")
    subscriptions: list[Subscription] = Field(
        min_length=1, description="Topic filters and their formats; no two may match one topic."
    )

    @model_validator(mode="after")
    def _disjoint(self) -> MqttOptions:
        topics = [s.topic for s in self.subscriptions]
        for i, a in enumerate(topics):
            for b in topics[i + 1 :]:
                if filters_overlap(a, b):
                    raise ValueError(f"topic filters {a!r} and {b!r} overlap: a message would be taken twice")
        return self


class PushConfig(DriverConfig):
    """Readings pushed by devices: SenML over HTTP POST and/or MQTT, or plain values over MQTT."""

    http: HttpOptions | None = Field(default=None, description="Accept SenML POSTs (JSON and CBOR).")
    mqtt: MqttOptions | None = Field(default=None, description="Subscribe to devices' MQTT topics.")
    node_separator: str = Field(
        default="/",
        pattern=r"^[/:]?$",
        description="A SenML name is node + separator + point when it holds the separator (the last one); "
        "otherwise the node is the subscription's, else the instance's. Empty: names are points.",
    )
    nodes: list[str] = Field(default_factory=list, description="Allow-list of node ids (glob patterns); empty: any.")
    max_nodes: int = Field(default=1000, ge=1, le=100_000, description="Most distinct nodes taken (memory bound).")
    max_records: int = Field(default=1000, ge=1, le=100_000, description="Most records in one pack.")
    max_rate: float = Field(
        default=2000.0,
        ge=0,
        description="Records per second taken on average (0: no limit); "
        "beyond it HTTP answers 429 and MQTT messages are dropped and counted.",
    )
    max_future: Duration = Field(
        default=300.0,
        ge=0,
        description="How far ahead of the gateway's clock a record's time may be before the pack is refused.",
    )
    offline_after: Duration = Field(
        default=0.0, ge=0, description="A node is offline after this long without a reading (0: never)."
    )

    @model_validator(mode="after")
    def _something(self) -> PushConfig:
        if self.http is None and self.mqtt is None:
            raise ValueError("nothing to do: configure http, mqtt or both")
        return self
