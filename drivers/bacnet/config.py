"""The bacnet driver's options: the gateway's BACnet/IP port, and the devices with their points.

Validation does no I/O and needs no BACnet library: object and property names are checked here.
"""

from __future__ import annotations

import ipaddress

from drivers.bacnet import objects
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import Duration

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NODE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


def _host_port(text: str, what: str) -> str:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"{what} {text!r}: give an IPv4 address, optionally with :port") from None
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{what} {text!r}: the port must be 1..65535")
    return text


class PointOptions(Model):
    """One property of one object of a device."""

    name: str = Field(pattern=_NAME, description="Point name (the reading's name).")
    object: str = Field(description="Object as type:instance, e.g. analog-input:1, binary-output:3 (or AI:1).")
    property: str = Field(default="present-value", description="Property read, e.g. present-value.")
    cov: bool = Field(
        default=False, description="Subscribe to change-of-value notifications instead of polling (polled if refused)."
    )
    scale: float = Field(default=1.0, description="Reading = value * scale + offset (numbers only).")
    offset: float = Field(default=0.0, description="Added after scaling.")
    precision: int | None = Field(default=None, ge=0, le=12, description="Round scaled values to this many decimals.")
    unit: str | None = Field(default=None, description="SenML unit, e.g. Cel, %RH, Pa, W, Wh.")
    writable: bool = Field(default=False, description="Allow writes (commands) to this property.")
    priority: int | None = Field(
        default=16,
        ge=1,
        le=16,
        description="Write priority 1 (highest) .. 16 (lowest; 8 is manual operator); null: write without one.",
    )
    min: float | None = Field(default=None, description="Lowest value a write may set (reading units).")
    max: float | None = Field(default=None, description="Highest value a write may set (reading units).")

    @field_validator("object")
    @classmethod
    def _object(cls, v: str) -> str:
        kind, inst = objects.parse_object(v)
        return f"{kind}:{inst}"

    @field_validator("property")
    @classmethod
    def _property(cls, v: str) -> str:
        return objects.parse_property(v)

    def spec(self) -> objects.PointSpec:
        """The protocol module's view of this entry."""
        kind, inst = objects.parse_object(self.object)
        return objects.PointSpec(
            name=self.name,
            object_type=kind,
            instance=inst,
            property=self.property,
            cov=self.cov,
            scale=self.scale,
            offset=self.offset,
            precision=self.precision,
            unit=self.unit,
            writable=self.writable,
            priority=self.priority,
            min=self.min,
            max=self.max,
        )


class DeviceOptions(Model):
    """One BACnet device: a capillary node with its own identity (IP3)."""

    id: str = Field(pattern=_NODE, description="Node identity its readings and status carry.")
    instance: int = Field(ge=0, le=objects.MAX_INSTANCE, description="The device object's instance number.")
    address: str = Field(
        default="", description="Device IP[:port]; empty: found by Who-Is (the device answers with its address)."
    )
    points: list[PointOptions] = Field(min_length=1, description="The device's points.")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _host_port(v, "address") if v else v


class BacnetConfig(DriverConfig):
    """A BACnet/IP network: the gateway joins it as a client device and reads the listed devices."""

    address: str = Field(
        description="This gateway's interface address with prefix length, e.g. 192.168.1.10/24 "
        "(the prefix gives the broadcast address Who-Is uses).",
    )
    port: int = Field(default=47808, ge=1, le=65535, description="Local UDP port (BACnet/IP: 47808, 0xBAC0).")
    broadcast: str = Field(
        default="",
        description="Where Who-Is goes, IP:port (a directed broadcast or one device); empty: the local "
        "subnet's broadcast on port.",
    )
    device_instance: int = Field(
        default=4194302,
        ge=0,
        le=objects.MAX_INSTANCE,
        description="This gateway's own device instance (unique on the BACnet network).",
    )
    apdu_timeout: Duration = Field(default=1.0, gt=0, le=60, description="Longest wait for one reply.")
    retries: int = Field(default=1, ge=0, le=5, description="Extra attempts of a request that got no reply.")
    max_properties: int = Field(
        default=40, ge=1, le=500, description="Properties asked in one ReadPropertyMultiple (devices limit APDU size)."
    )
    cov_lifetime: Duration = Field(
        default=300.0, ge=10, le=86400, description="Lifetime of COV subscriptions; renewed at half of it."
    )
    cov_confirmed: bool = Field(default=False, description="Ask for confirmed COV notifications.")
    max_pending: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        description="COV notifications kept between two polls; beyond it the oldest are dropped and counted.",
    )
    report_unknown_devices: bool = Field(
        default=True, description="Log (once each) devices that answer Who-Is but are not configured: for wiring up."
    )
    devices: list[DeviceOptions] = Field(min_length=1, description="The devices read, each a node.")

    @field_validator("address")
    @classmethod
    def _local(cls, v: str) -> str:
        try:
            ipaddress.IPv4Interface(v)
        except ValueError:
            raise ValueError(
                f"address {v!r}: give this gateway's IPv4 address with its prefix, e.g. 192.168.1.10/24"
            ) from None
        if "/" not in v:
            raise ValueError(f"address {v!r}: add the prefix length, e.g. {v}/24")
        return v

    @field_validator("broadcast")
    @classmethod
    def _broadcast(cls, v: str) -> str:
        return _host_port(v, "broadcast") if v else v

    @model_validator(mode="after")
    def _check(self) -> BacnetConfig:
        ids: set[str] = set()
        instances: set[int] = set()
        for d in self.devices:
            if d.id in ids:
                raise ValueError(f"device id {d.id!r} appears twice")
            if d.instance in instances:
                raise ValueError(f"device instance {d.instance} appears twice")
            if d.instance == self.device_instance:
                raise ValueError(f"device {d.id}: instance {d.instance} is this gateway's own device_instance")
            ids.add(d.id)
            instances.add(d.instance)
            names: set[str] = set()
            for p in d.points:
                if p.name in names:
                    raise ValueError(f"device {d.id}: point {p.name!r} appears twice")
                names.add(p.name)
                if p.writable and p.property == "present-value" and p.object.split(":")[0] not in objects.COMMANDABLE:
                    raise ValueError(f"device {d.id}: point {p.name}: {p.object} is not commandable (not writable)")
        worst = len(self.devices) * (self.retries + 1) * self.apdu_timeout
        if worst > self.timeout:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must cover one unanswered request per device with its retries "
                f"({worst:g}s) so that silent devices cannot stall a poll: raise timeout or lower apdu_timeout"
            )
        return self
