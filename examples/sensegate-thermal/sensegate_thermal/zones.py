"""Reading the kernel's thermal sysfs files; never imports `gateway` (the protocol layer).

Each zone is a folder ``thermal_zoneN`` with ``type`` (a name such as ``cpu-thermal``) and
``temp`` (millidegrees Celsius as decimal text, e.g. ``48312\\n``).
"""

from __future__ import annotations

import math
import os
import re

MAX_FILE = 32
_ZONE = re.compile(r"^thermal_zone\d+$")
_POINT = re.compile(r"[^a-z0-9_]+")


class ProtocolError(ValueError):
    """A zone file holds something that is not a temperature."""


def parse_millidegrees(raw: bytes) -> float:
    """Celsius from a ``temp`` file's bytes; ProtocolError for anything else."""
    if len(raw) > MAX_FILE:
        raise ProtocolError(f"temp file too long ({len(raw)} bytes)")
    text = raw.decode("ascii", "replace").strip()
    if not re.fullmatch(r"-?\d{1,9}", text):
        raise ProtocolError(f"not a millidegree value: {text[:20]!r}")
    celsius = int(text) / 1000
    if not math.isfinite(celsius) or not -273.15 <= celsius <= 400:
        raise ProtocolError(f"temperature out of range: {celsius}")
    return celsius


def point_name(zone_type: str) -> str:
    """``cpu-thermal`` -> ``cpu_thermal``: a zone type as a reading's point name."""
    name = _POINT.sub("_", zone_type.strip().lower()).strip("_")
    return name or "zone"


def list_zones(base: str) -> list[tuple[str, str]]:
    """Blocking: (folder, type) of every zone, in the kernel's order."""
    found = []
    for entry in sorted(os.listdir(base), key=lambda e: (len(e), e)):
        if not _ZONE.match(entry):
            continue
        try:
            with open(os.path.join(base, entry, "type"), "rb") as f:
                zone_type = f.read(MAX_FILE).decode("ascii", "replace").strip()
        except OSError:
            continue  # a zone that vanished while listing
        found.append((entry, zone_type))
    return found


def read_temp(base: str, zone: str) -> bytes:
    """Blocking: the raw bytes of one zone's ``temp`` file."""
    with open(os.path.join(base, zone, "temp"), "rb") as f:
        return f.read(MAX_FILE + 1)
