"""The rfid driver's options: a 125 kHz serial reader or a UHF reader speaking LLRP."""

from __future__ import annotations

from typing import Literal

from gateway.driver_api import DriverConfig
from gateway.schema import Field, model_validator
from gateway.units import Duration


class RfidConfig(DriverConfig):
    """Tag reads as events: point ``tag`` = the tag id (EM4100) or EPC (UHF) in upper-case hex."""

    source: Literal["serial", "llrp"] = Field(
        default="serial", description="serial: EM4100 frames (RDM6300, ID-12 class) from `port`; llrp: a UHF reader."
    )
    port: str = Field(default="", description="serial: the reader's serial device, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, ge=300, le=921600, description="serial: line speed (RDM6300: 9600).")
    host: str = Field(default="", description="llrp: the reader's address.")
    llrp_port: int = Field(default=5084, ge=1, le=65535, description="llrp: the reader's LLRP TCP port.")
    rospec_id: int = Field(default=1, ge=1, le=2**32 - 1, description="llrp: id of the ROSpec the driver installs.")
    keepalive: Duration = Field(
        default=10.0,
        ge=0,
        description="llrp: ask the reader for a KEEPALIVE this often; 3 missed ones drop the connection. 0: off.",
    )
    dedup_window: Duration = Field(
        default=1.0,
        ge=0,
        description="Report a tag again only after it has been out of the field this long; 0 reports every read.",
    )
    point: str = Field(
        default="tag", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Point name of tag events."
    )

    @model_validator(mode="after")
    def _check(self) -> RfidConfig:
        if self.source == "serial" and not self.port:
            raise ValueError("source 'serial' needs `port` (e.g. /dev/ttyUSB0)")
        if self.source == "llrp" and not self.host:
            raise ValueError("source 'llrp' needs `host` (the reader's address)")
        return self
