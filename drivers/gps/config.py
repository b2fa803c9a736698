"""The gps driver's options: where the receiver is (serial NMEA or gpsd) and how often to report."""

from __future__ import annotations

from typing import Literal

from gateway.driver_api import DriverConfig
from gateway.schema import Field, model_validator
from gateway.units import Duration


class GpsConfig(DriverConfig):
    """A GNSS receiver read as NMEA 0183 from a serial port, or through a gpsd daemon."""

    # `interval` (from DriverConfig) is the reporting rate: at most one location per interval,
    # plus one at once whenever the receiver gains or loses its fix.
    source: Literal["serial", "gpsd"] = Field(
        default="serial", description="serial: NMEA 0183 from `port`; gpsd: JSON from a gpsd daemon."
    )
    port: str = Field(default="", description="serial: the receiver's serial device, e.g. /dev/ttyACM0.")
    baudrate: int = Field(
        default=9600, ge=300, le=921600, description="serial: line speed (NMEA is often 4800 or 9600)."
    )
    require_checksum: bool = Field(
        default=True, description="serial: drop sentences without a *HH checksum (some old receivers omit it)."
    )
    gpsd_host: str = Field(default="127.0.0.1", description="gpsd: daemon address.")
    gpsd_port: int = Field(default=2947, ge=1, le=65535, description="gpsd: daemon TCP port.")
    silence_timeout: Duration = Field(
        default=10.0,
        ge=0,
        description="Reopen the source when it sends nothing for this long (receivers talk every second); 0: never.",
    )
    point: str = Field(
        default="location",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Point name of the location readings.",
    )

    @model_validator(mode="after")
    def _check(self) -> GpsConfig:
        if self.source == "serial" and not self.port:
            raise ValueError("source 'serial' needs `port` (e.g. /dev/ttyACM0)")
        return self
