"""The thermal driver's options. Every option: a type, a default and a description."""

from __future__ import annotations

from gateway.driver_api import DriverConfig
from gateway.schema import Field


class ThermalConfig(DriverConfig):
    """Which thermal zones to read, and where the kernel lists them."""

    base_path: str = Field(default="/sys/class/thermal", description="The kernel's thermal class folder.")
    zones: list[str] = Field(
        default_factory=list,
        description="Zone types to read (e.g. cpu-thermal); empty reads every zone the kernel lists.",
    )
    critical: float = Field(
        default=85.0, description="Readings at or above this temperature (Cel) carry quality UNCERTAIN."
    )
