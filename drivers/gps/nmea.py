"""NMEA 0183 from a GNSS receiver: framing, checksums and the five sentences a position needs.

Written here rather than taken from pynmea2 because the driver needs three things pynmea2 does
not give: a bounded byte-stream framer (a wrong baud rate produces endless bytes with no line
end), one exception type for every malformed input (pynmea2 raises several, and ``ValueError``
/ ``IndexError`` leak through from its field accessors), and strict numbers (``float("nan")``
is a valid Python float but not a valid NMEA field). The subset is small: GGA, RMC, GSA, VTG,
GSV from the GP, GN, GL, GA, BD (and GB, GQ, GI) talkers.

``NmeaFramer.feed(bytes)`` -> sentences; ``Tracker.update(sentence)`` merges them into the
receiver's current ``Fix``. Nothing here raises on outside input except ``NmeaError`` from
``parse_sentence``, which the framer catches and counts. This module never imports ``gateway``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_SENTENCE = 120
"""Longest line accepted, in bytes (NMEA says 82; some receivers run longer). Longer is garbage."""

TALKERS = frozenset({"GP", "GN", "GL", "GA", "BD", "GB", "GQ", "GI"})
"""GPS, multi-GNSS, GLONASS, Galileo, BeiDou (two spellings), QZSS, NavIC."""

SENTENCES = frozenset({"GGA", "RMC", "GSA", "VTG", "GSV"})
KNOT = 1852 / 3600  # m/s

_NUMBER = re.compile(r"^[-+]?\d{1,9}(?:\.\d{1,9})?$")
_UNSIGNED = re.compile(r"^\d{1,9}(?:\.\d{1,9})?$")
_INT = re.compile(r"^\d{1,4}$")
_LAT = re.compile(r"^(\d{2})(\d{2}(?:\.\d{1,9})?)$")
_LON = re.compile(r"^(\d{3})(\d{2}(?:\.\d{1,9})?)$")
_TIME = re.compile(r"^(?:[01]\d|2[0-3])[0-5]\d[0-6]\d(?:\.\d{1,6})?$|^$")
_PROPRIETARY = re.compile(r"^P[A-Z0-9]{2,8}$")
_HEX2 = re.compile(rb"^[0-9A-Fa-f]{2}$")


class NmeaError(ValueError):
    """A line that is not a well-formed, correctly check-summed NMEA sentence."""


@dataclass(slots=True, frozen=True)
class Sentence:
    """One parsed sentence: talker (``GN``), type (``GGA``) and its raw text fields."""

    talker: str
    kind: str
    fields: tuple[str, ...]


def checksum(body: bytes) -> int:
    """XOR of every byte between ``$`` and ``*``."""
    c = 0
    for b in body:
        c ^= b
    return c


def parse_sentence(line: bytes, *, require_checksum: bool = True) -> Sentence:
    """One line (without CR/LF) -> Sentence; ``NmeaError`` for anything malformed."""
    if len(line) > MAX_SENTENCE:
        raise NmeaError(f"sentence too long ({len(line)} bytes)")
    if not line.startswith(b"$"):
        raise NmeaError("does not start with '$'")
    star = line.rfind(b"*")
    if star >= 0:
        body, given = line[1:star], line[star + 1 :]
        if not _HEX2.match(given):
            raise NmeaError("malformed checksum field")
        if int(given, 16) != checksum(body):
            raise NmeaError(f"checksum mismatch (got {given.decode()}, computed {checksum(body):02X})")
    elif require_checksum:
        raise NmeaError("no checksum")
    else:
        body = line[1:]
    if not body.isascii() or any(b < 0x20 for b in body):
        raise NmeaError("non-printable bytes in sentence")
    text = body.decode("ascii")
    parts = text.split(",")
    address = parts[0]
    if _PROPRIETARY.match(address):  # $PUBX, $PMTK...: vendor sentences, passed on to be ignored
        return Sentence("P", address[1:], tuple(parts[1:]))
    if len(address) != 5 or not address.isalpha() or not address.isupper():
        raise NmeaError(f"bad address field {address[:8]!r}")
    return Sentence(address[:2], address[2:], tuple(parts[1:]))


@dataclass(slots=True)
class Counters:
    """What the framer saw: parsed sentences and every kind of rejected input."""

    sentences: int = 0  # well-formed sentences of a supported talker and type
    ignored: int = 0  # well-formed but another talker/type (e.g. $PUBX, GLL, ZDA)
    checksum_errors: int = 0
    garbage: int = 0  # lines that are not sentences (noise, wrong baud rate, cut lines)
    overlong: int = 0  # over MAX_SENTENCE bytes without a line end: discarded
    invalid_fields: int = 0  # good checksum, but a field is nonsense (lat 95, hdop "x")


class NmeaFramer:
    """Split a byte stream into sentences, with a bounded buffer, resyncing on ``$``."""

    def __init__(self, *, require_checksum: bool = True) -> None:
        self.require_checksum = require_checksum
        self.counters = Counters()
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Sentence]:
        """Sentences completed by ``data``; rejected lines are counted, never raised."""
        out: list[Sentence] = []
        buf = self._buf
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            self._line(line, out)
        if len(buf) > MAX_SENTENCE:  # no line end in sight: keep at most a fresh sentence start
            self.counters.overlong += 1
            start = buf.rfind(b"$")
            if start >= 0 and len(buf) - start <= MAX_SENTENCE:
                del buf[:start]
            else:
                buf.clear()
        return out

    def _line(self, line: bytes, out: list[Sentence]) -> None:
        line = line.rstrip(b"\r")
        start = line.rfind(b"$")  # a sentence cut short by a new one: keep the new one
        if start < 0:
            if line.strip():
                self.counters.garbage += 1
            return
        if start > 0:
            self.counters.garbage += 1
            line = line[start:]
        try:
            s = parse_sentence(line, require_checksum=self.require_checksum)
        except NmeaError as e:
            if str(e).startswith("checksum mismatch"):
                self.counters.checksum_errors += 1
            elif str(e).startswith("sentence too long"):
                self.counters.overlong += 1
            else:
                self.counters.garbage += 1
            return
        if s.talker in TALKERS and s.kind in SENTENCES:
            self.counters.sentences += 1
            out.append(s)
        else:
            self.counters.ignored += 1


# -- fields -------------------------------------------------------------------------------


def _num(text: str) -> float | None:
    if not text:
        return None
    if not _NUMBER.match(text):
        raise NmeaError(f"not a number: {text[:12]!r}")
    return float(text)


def _unsigned(text: str) -> float | None:
    if not text:
        return None
    if not _UNSIGNED.match(text):
        raise NmeaError(f"not an unsigned number: {text[:12]!r}")
    return float(text)


def _int(text: str) -> int | None:
    if not text:
        return None
    if not _INT.match(text):
        raise NmeaError(f"not an integer: {text[:12]!r}")
    return int(text)


def _coord(value: str, hemi: str, lon: bool) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` with N/S/E/W -> signed decimal degrees (8 decimals)."""
    if not value and not hemi:
        return None
    m = (_LON if lon else _LAT).match(value)
    if m is None:
        raise NmeaError(f"bad {'longitude' if lon else 'latitude'} {value[:14]!r}")
    deg, minutes = int(m.group(1)), float(m.group(2))
    limit = 180 if lon else 90
    if minutes >= 60 or deg + minutes / 60 > limit:
        raise NmeaError(f"{'longitude' if lon else 'latitude'} out of range: {value!r}")
    if hemi not in ("EW" if lon else "NS") or len(hemi) != 1:
        raise NmeaError(f"bad hemisphere {hemi[:3]!r}")
    result = round(deg + minutes / 60, 8)
    return -result if hemi in ("S", "W") else result


def _get(fields: tuple[str, ...], i: int) -> str:
    return fields[i] if i < len(fields) else ""


@dataclass(slots=True, frozen=True)
class Fix:
    """The receiver's state: position fields are from the latest sentence that carried them."""

    valid: bool  # the receiver says it has a position fix
    lat: float
    lon: float
    alt: float | None = None  # metres above mean sea level (GGA)
    speed: float | None = None  # m/s
    course: float | None = None  # degrees true
    quality: int = 0  # GGA fix quality: 0 none, 1 GPS, 2 DGPS, 4 RTK, 5 float RTK, 6 dead reckoning
    sats: int | None = None  # satellites used in the fix (GGA)
    hdop: float | None = None


@dataclass
class Tracker:
    """Merge GGA/RMC/GSA/VTG/GSV into one picture of the receiver's fix."""

    valid: bool = False
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    speed: float | None = None
    course: float | None = None
    quality: int = 0
    sats: int | None = None
    hdop: float | None = None
    in_view: dict[str, int] = field(default_factory=dict)  # talker -> satellites in view (GSV)
    last_fix: Fix | None = None  # the latest valid fix, kept while the receiver has none
    _epoch: str | None = None  # UTC time field of the epoch being assembled
    _seen: set[str] = field(default_factory=set)  # GGA/RMC seen in this epoch
    _reported: bool = False

    def update(self, s: Sentence) -> Fix | None:
        """Apply one sentence; returns the fix when it completes a receiver epoch.

        An epoch is complete when both its GGA and RMC (same UTC time) have arrived, or, for a
        receiver that sends only one of them, when the next epoch begins (one epoch late).
        A sentence whose fields are nonsense raises ``NmeaError`` and changes nothing.
        """
        f = s.fields
        if s.kind in ("GGA", "RMC"):
            when = _get(f, 0)
            if not _TIME.match(when):
                raise NmeaError(f"{s.kind} time {when[:12]!r}")
            done: Fix | None = None
            if when != self._epoch or s.kind in self._seen:  # a new epoch begins
                if self._epoch is not None and not self._reported:
                    done = self.fix()
                self._epoch, self._seen, self._reported = when, set(), False
            if s.kind == "GGA":
                self._gga(f)
            else:
                self._rmc(f)
            self._seen.add(s.kind)
            if self.valid:
                self.fix()  # keeps last_fix current
            if not self._reported and len(self._seen) == 2:
                self._reported = True
                return self.fix()
            return done
        if s.kind == "VTG":
            self._vtg(f)
        elif s.kind == "GSA":
            self._gsa(f)
        elif s.kind == "GSV" and s.talker in TALKERS:
            self.in_view[s.talker] = self._gsv(f)  # bounded: keys are the known talkers only
        return None

    def fix(self) -> Fix | None:
        """The current fix, or (no fix now) the last good one marked invalid; None before any."""
        if self.valid and self.lat is not None and self.lon is not None:
            self.last_fix = Fix(
                True, self.lat, self.lon, self.alt, self.speed, self.course, self.quality or 1, self.sats, self.hdop
            )
            return self.last_fix
        if self.last_fix is None:
            return None
        last = self.last_fix
        return Fix(False, last.lat, last.lon, last.alt, None, None, 0, self.sats, self.hdop)

    def _gga(self, f: tuple[str, ...]) -> None:
        lat = _coord(_get(f, 1), _get(f, 2), lon=False)
        lon = _coord(_get(f, 3), _get(f, 4), lon=True)
        quality = _int(_get(f, 5))
        sats = _int(_get(f, 6))
        hdop = _unsigned(_get(f, 7))
        alt = _num(_get(f, 8))
        if quality is None or quality > 9:
            raise NmeaError("GGA without a valid fix quality")
        self.quality = quality
        self.valid = quality > 0 and lat is not None and lon is not None
        if self.valid:
            self.lat, self.lon, self.alt = lat, lon, alt
        self.sats, self.hdop = sats, hdop

    def _rmc(self, f: tuple[str, ...]) -> None:
        status = _get(f, 1)
        if status not in ("A", "V"):
            raise NmeaError(f"RMC status {status[:3]!r}")
        lat = _coord(_get(f, 2), _get(f, 3), lon=False)
        lon = _coord(_get(f, 4), _get(f, 5), lon=True)
        knots = _unsigned(_get(f, 6))
        course = _unsigned(_get(f, 7))
        if course is not None and course >= 360:
            raise NmeaError(f"course {course} out of range")
        self.valid = status == "A" and lat is not None and lon is not None
        if self.valid:
            self.lat, self.lon = lat, lon
            if not self.quality:
                self.quality = 2 if _get(f, 11) == "D" else 1
            self.speed = None if knots is None else round(knots * KNOT, 3)
            self.course = course
        else:
            self.quality = 0

    def _vtg(self, f: tuple[str, ...]) -> None:
        if _get(f, 1) == "T":  # NMEA 2.3+: 054.7,T,034.4,M,005.5,N,010.2,K[,mode]
            course, knots, kmh = _unsigned(_get(f, 0)), _unsigned(_get(f, 4)), _unsigned(_get(f, 6))
        else:  # old form: 054.7,034.4,005.5,010.2
            course, knots, kmh = _unsigned(_get(f, 0)), _unsigned(_get(f, 2)), _unsigned(_get(f, 3))
        if course is not None and course >= 360:
            raise NmeaError(f"course {course} out of range")
        if self.valid:
            if kmh is not None:
                self.speed = round(kmh / 3.6, 3)
            elif knots is not None:
                self.speed = round(knots * KNOT, 3)
            if course is not None:
                self.course = course

    def _gsa(self, f: tuple[str, ...]) -> None:
        mode = _int(_get(f, 1))
        if mode not in (1, 2, 3):
            raise NmeaError(f"GSA fix type {_get(f, 1)[:3]!r}")
        for i in range(2, 14):
            _int(_get(f, i))  # PRNs: validated, not kept
        hdop = _unsigned(_get(f, 15))
        if mode == 1:
            self.valid = False
            self.quality = 0
        if hdop is not None:
            self.hdop = hdop

    def _gsv(self, f: tuple[str, ...]) -> int:
        total, number, in_view = _int(_get(f, 0)), _int(_get(f, 1)), _int(_get(f, 2))
        if total is None or number is None or in_view is None or not 1 <= number <= total:
            raise NmeaError("GSV header malformed")
        return in_view
