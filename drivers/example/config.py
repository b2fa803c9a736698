"""The example driver's options. Every option: a type, a default and a description."""

from __future__ import annotations

from gateway.driver_api import DriverConfig
from gateway.schema import Field


class ExampleConfig(DriverConfig):
    """A thermometer reached over TCP (host, port) that also has a writable set-point."""

    # Common options (name, interval, timeout, node, path, enabled) come from DriverConfig.
    host: str = Field(default="127.0.0.1", description="Device address.")
    port: int = Field(ge=1, le=65535, description="Device TCP port.")
    unit: str = Field(default="Cel", description="SenML unit of the temperature reading.")
    setpoint_min: float = Field(default=5.0, description="Lowest set-point a write may ask for.")
    setpoint_max: float = Field(default=30.0, description="Highest set-point a write may ask for.")
