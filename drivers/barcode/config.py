"""The barcode driver's options: the scanner's port and how its output is framed and decoded."""

from __future__ import annotations

from typing import Literal

from drivers.barcode.protocol import parse_terminator
from gateway.driver_api import DriverConfig
from gateway.schema import Field, field_validator


class BarcodeConfig(DriverConfig):
    """A serial (or USB-CDC) barcode/QR scanner: one string reading per scanned code."""

    port: str = Field(description="The scanner's serial device, e.g. /dev/ttyACM0.")
    baudrate: int = Field(default=9600, ge=300, le=921600, description="Line speed.")
    terminator: str = Field(
        default="CRLF",
        description="What ends a code: CR, LF, CRLF, TAB, ETX, EOT, a byte like 0x03, or one ASCII character.",
    )
    prefix: str = Field(default="", max_length=32, description="Stripped from the start of a code when present.")
    suffix: str = Field(default="", max_length=32, description="Stripped from the end of a code when present.")
    max_length: int = Field(
        default=4096, ge=1, le=65536, description="Longest code in bytes (affixes included); longer ones are dropped."
    )
    invalid_utf8: Literal["replace", "latin-1", "drop"] = Field(
        default="replace",
        description="Codes that are not UTF-8: replace bad bytes with U+FFFD, decode as latin-1, or drop the code.",
    )
    strip_whitespace: bool = Field(default=True, description="Strip spaces, tabs, CR and LF around each code.")
    point: str = Field(
        default="code", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Point name of code readings."
    )

    @field_validator("terminator")
    @classmethod
    def _terminator(cls, v: str) -> str:
        parse_terminator(v)  # raises ValueError with the accepted forms
        return v
