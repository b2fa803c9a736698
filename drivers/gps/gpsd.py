"""gpsd's JSON protocol (https://gpsd.io/gpsd_json.html): the WATCH request, TPV and SKY reports.

``GpsdFramer.feed(bytes)`` -> report objects (bounded lines, invalid JSON counted and dropped);
``GpsdTracker.update(report)`` keeps the latest TPV and SKY and yields the same ``Fix`` as the
NMEA side. Values are type- and range-checked: gpsd is trusted software, but its socket is not.
This module never imports ``gateway``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from drivers.gps.nmea import Fix

WATCH = b'?WATCH={"enable":true,"json":true}\n'
"""Sent once after connecting: gpsd then streams VERSION, DEVICES, WATCH, TPV, SKY, ... lines."""

MAX_LINE = 64 * 1024
"""Longest report line kept (a SKY with many satellites is a few KB). Longer is dropped."""

# gpsd TPV "status" -> NMEA GGA quality (0 none, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 DR)
_STATUS_TO_QUALITY = {1: 1, 2: 2, 3: 4, 4: 5, 5: 6, 6: 6, 8: 8}


class GpsdError(ValueError):
    """A report line that is not usable JSON or not a report object."""


@dataclass(slots=True)
class GpsdCounters:
    reports: int = 0  # TPV and SKY objects accepted
    ignored: int = 0  # other classes (VERSION, DEVICES, WATCH, ...)
    garbage: int = 0  # lines that are not JSON objects with a class
    overlong: int = 0  # lines over MAX_LINE bytes
    invalid_fields: int = 0  # TPV/SKY with nonsense values


def parse_report(line: bytes) -> dict[str, Any]:
    """One JSON line -> the report object; ``GpsdError`` for anything else."""
    if len(line) > MAX_LINE:
        raise GpsdError("line too long")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise GpsdError(f"not JSON: {type(e).__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
        raise GpsdError("not a report object")
    return obj


class GpsdFramer:
    """Split gpsd's stream into report objects, bounded and never raising."""

    def __init__(self) -> None:
        self.counters = GpsdCounters()
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: drop until its end

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        buf = self._buf
        buf += data
        while (nl := buf.find(b"\n")) >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            if not line.strip():
                continue
            try:
                obj = parse_report(line)
            except GpsdError as e:
                if str(e) == "line too long":
                    self.counters.overlong += 1
                else:
                    self.counters.garbage += 1
                continue
            if obj["class"] in ("TPV", "SKY"):
                self.counters.reports += 1
                out.append(obj)
            else:
                self.counters.ignored += 1
        if len(buf) > MAX_LINE:
            self.counters.overlong += 1
            buf.clear()
            self._skipping = True
        return out


def _number(obj: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = obj.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise GpsdError(f"{obj.get('class')} {key}={v!r:.20} is not a number in [{lo}, {hi}]")
    return float(v)


class GpsdTracker:
    """The latest TPV and SKY, turned into a ``Fix`` like the NMEA tracker's."""

    def __init__(self) -> None:
        self.valid = False
        self.lat: float | None = None
        self.lon: float | None = None
        self.alt: float | None = None
        self.speed: float | None = None
        self.course: float | None = None
        self.quality = 0
        self.sats: int | None = None
        self.hdop: float | None = None
        self.last_fix: Fix | None = None

    def update(self, report: dict[str, Any]) -> Fix | None:
        """Apply one report; a TPV (one per epoch) returns the fix. ``GpsdError`` changes nothing."""
        if report.get("class") == "SKY":
            hdop = _number(report, "hdop", 0, 100)
            used = _number(report, "uSat", 0, 1000)
            if used is None:
                sats = report.get("satellites")
                if isinstance(sats, list):
                    used = float(sum(1 for s in sats[:1000] if isinstance(s, dict) and s.get("used") is True))
            if hdop is not None:
                self.hdop = hdop
            if used is not None:
                self.sats = int(used)
            return None
        if report.get("class") != "TPV":
            return None
        mode = _number(report, "mode", 0, 3)
        lat = _number(report, "lat", -90, 90)
        lon = _number(report, "lon", -180, 180)
        # gpsd >= 3.20 says altMSL/altHAE; older ones only "alt" (MSL). GGA altitude is MSL.
        alt = _number(report, "altMSL", -1e5, 1e7)
        if alt is None:
            alt = _number(report, "alt", -1e5, 1e7)
        speed = _number(report, "speed", 0, 1e5)
        course = _number(report, "track", 0, 360)
        status = _number(report, "status", 0, 10)
        self.valid = mode is not None and mode >= 2 and lat is not None and lon is not None
        if self.valid:
            self.lat, self.lon, self.alt = lat, lon, alt
            self.speed = None if speed is None else round(speed, 3)
            self.course = None if course is None else course % 360
            self.quality = _STATUS_TO_QUALITY.get(int(status or 1), 1)
        else:
            self.quality = 0
        return self.fix()

    def fix(self) -> Fix | None:
        """The current fix, or (none now) the last good one marked invalid; None before any."""
        if self.valid and self.lat is not None and self.lon is not None:
            self.last_fix = Fix(
                True, self.lat, self.lon, self.alt, self.speed, self.course, self.quality, self.sats, self.hdop
            )
            return self.last_fix
        if self.last_fix is None:
            return None
        last = self.last_fix
        return Fix(False, last.lat, last.lon, last.alt, None, None, 0, self.sats, self.hdop)
