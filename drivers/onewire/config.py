"""The onewire driver's options."""

from __future__ import annotations

from typing import Literal

from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, model_validator
from gateway.units import Duration

SENSOR_ID = r"^[0-9a-f]{2}-[0-9a-f]{12}$"


class Sensor(Model):
    """One configured sensor: its 1-Wire id and the name its readings carry."""

    id: str = Field(pattern=SENSOR_ID, description="1-Wire id as in sysfs, e.g. 28-0316a2791aff.")
    name: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        description="Node name (layout: nodes) or point name (layout: points); defaults to the id.",
    )


class OneWireConfig(DriverConfig):
    """Temperature sensors on the Linux 1-Wire bus (w1-gpio + w1_therm kernel modules)."""

    interval: Duration = Field(default=30.0, gt=0, description="Poll period (each sensor read takes ~750 ms).")
    timeout: Duration = Field(
        default=15.0, gt=0, description="Longest one poll of all sensors may take (~0.75 s per sensor on hardware)."
    )
    base_path: str = Field(
        default="/sys/bus/w1/devices", description="The 1-Wire sysfs devices folder (tests point it at a fake tree)."
    )
    sensors: list[Sensor] = Field(
        default_factory=list, description="Sensors to read, with names; empty: every sensor found (auto-discovery)."
    )
    families: list[str] = Field(
        default_factory=lambda: ["28"],
        description="Auto-discovery: 1-Wire family codes to read (28 = DS18B20, 10 = DS18S20, 22 = DS1822).",
    )
    layout: Literal["nodes", "points"] = Field(
        default="nodes",
        description="nodes: each sensor is a capillary node (IP3) with point 'temperature' and its own "
        "online/offline status; points: each sensor is a point of this instance's node.",
    )
    source: Literal["auto", "w1_slave", "temperature"] = Field(
        default="auto",
        description="File read per sensor: w1_slave (with the CRC check line), temperature (newer kernels), "
        "auto: w1_slave when present, else temperature.",
    )

    @model_validator(mode="after")
    def _check(self) -> OneWireConfig:
        names = [s.name or s.id for s in self.sensors]
        if len(set(names)) != len(names):
            raise ValueError("sensor names (or ids) must be unique")
        if not all(len(f) == 2 and all(c in "0123456789abcdef" for c in f) for f in self.families):
            raise ValueError("families are two lowercase hex digits, e.g. '28'")
        return self
