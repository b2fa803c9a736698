"""The device's wire protocol, kept apart from the host: this module never imports `gateway`.

Requests are ASCII lines: ``READ`` answers ``T=<float>``, ``SET <float>`` answers ``OK`` or
``ERR <text>``. Parsing outside input is where drivers break, so it is strict and tested.
"""

from __future__ import annotations

import math

MAX_LINE = 64


class ProtocolError(ValueError):
    """The device answered something we do not understand."""


def encode_read() -> bytes:
    return b"READ\n"


def encode_set(value: float) -> bytes:
    return f"SET {value:.2f}\n".encode()


def parse_temperature(line: bytes) -> float:
    """The temperature in a ``T=<float>`` reply; ProtocolError for anything else."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"reply too long ({len(line)} bytes)")
    text = line.strip().decode("ascii", "replace")
    if not text.startswith("T="):
        raise ProtocolError(f"unexpected reply {text[:20]!r}")
    try:
        value = float(text[2:])
    except ValueError:
        raise ProtocolError(f"not a number: {text[2:20]!r}") from None
    if not math.isfinite(value) or not -273.15 <= value <= 1000:
        raise ProtocolError(f"temperature out of range: {value}")
    return value


def parse_ack(line: bytes) -> None:
    """Accept ``OK``; raise ProtocolError with the device's reason for ``ERR ...``."""
    text = line.strip().decode("ascii", "replace")[:MAX_LINE]
    if text != "OK":
        raise ProtocolError(f"device refused: {text!r}")
