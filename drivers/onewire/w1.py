"""Parsing the kernel's w1_therm files; never imports `gateway`.

``w1_slave`` holds two lines, the scratchpad with the kernel's CRC verdict and the value in
milli-degrees Celsius::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

The newer ``temperature`` file holds just ``23125``. 85000 (85 C) is the DS18B20's power-on
reset value: the conversion never ran (power glitch, parasite power too weak).
"""

from __future__ import annotations

import re

MAX_FILE = 256
POWER_ON_RESET = 85000  # milli-degrees
MIN_MC, MAX_MC = -55000, 125000  # DS18B20 range
_CRC_LINE = re.compile(r"^(?:[0-9a-f]{2} ){9}: crc=[0-9a-f]{2} (YES|NO)$")
_T_LINE = re.compile(r"^(?:[0-9a-f]{2} ){9}t=(-?\d{1,6})$")
_PLAIN = re.compile(r"^(-?\d{1,6})$")


class W1Error(ValueError):
    """The file does not hold a usable reading."""


class CrcError(W1Error):
    """The kernel read the scratchpad but its CRC did not match (noise, long cable, bad contact)."""


def _text(raw: bytes) -> str:
    if len(raw) > MAX_FILE:
        raise W1Error(f"file too long ({len(raw)} bytes)")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise W1Error("file is not ASCII") from None


def _checked(mc: int) -> int:
    if not MIN_MC <= mc <= MAX_MC:
        raise W1Error(f"temperature {mc / 1000:g} C outside the sensor's range")
    return mc


def parse_w1_slave(raw: bytes) -> int:
    """Milli-degrees Celsius from a ``w1_slave`` file; CrcError for "NO", W1Error otherwise."""
    lines = _text(raw).strip().splitlines()
    if len(lines) != 2:
        raise W1Error(f"expected 2 lines, got {len(lines)}")
    crc = _CRC_LINE.match(lines[0].strip())
    if crc is None:
        raise W1Error("malformed CRC line")
    if crc.group(1) != "YES":
        raise CrcError("CRC check failed")
    t = _T_LINE.match(lines[1].strip())
    if t is None:
        raise W1Error("malformed t= line")
    return _checked(int(t.group(1)))


def parse_temperature_file(raw: bytes) -> int:
    """Milli-degrees Celsius from a ``temperature`` file."""
    m = _PLAIN.match(_text(raw).strip())
    if m is None:
        raise W1Error("malformed temperature file")
    return _checked(int(m.group(1)))
