"""Simulated GNSS receiver for drivers/gps: NMEA 0183 over a real pty, driving along a route.

Each epoch (``period`` seconds) it writes GGA, GSA, GSV, RMC and VTG for its position on the
route, like a u-blox receiver in NMEA mode. Faults for tests and demos:

- ``garbage = True``: noise between sentences (wrong-baud bytes, cut and corrupted sentences);
- ``no_fix = True``: the receiver loses the sky (GGA quality 0, RMC status V, GSA mode 1);
- ``silent = True``: nothing is sent (the line stays up);
- ``unplug()`` / ``plug()``: the port path disappears (the driver's read fails) and comes back.

``hold_at(i)`` parks the receiver on waypoint ``i`` (speed 0) so a test can expect exact
coordinates; ``nmea_log(...)`` renders epochs as text for gpsfake.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random

from hil.devices.pty import PtyDevice

Waypoint = tuple[float, float, float]  # lat, lon (decimal degrees), altitude (m)

DEFAULT_ROUTE: list[Waypoint] = [
    (21.028511, 105.804817, 12.0),  # Hanoi, a few blocks apart
    (21.030000, 105.806000, 14.5),
    (21.032000, 105.802000, 11.0),
]


def nmea(body: str) -> bytes:
    """``body`` framed as a sentence: ``$body*CS\\r\\n``."""
    cs = 0
    for ch in body.encode("ascii"):
        cs ^= ch
    return f"${body}*{cs:02X}\r\n".encode("ascii")


def _coord(value: float, lon: bool) -> tuple[str, str]:
    hemi = ("E" if value >= 0 else "W") if lon else ("N" if value >= 0 else "S")
    v = abs(value)
    deg = int(v)
    minutes = round((v - deg) * 60, 5)
    if minutes >= 60:
        deg, minutes = deg + 1, 0.0
    return f"{deg:03d}{minutes:08.5f}" if lon else f"{deg:02d}{minutes:08.5f}", hemi


def epoch(
    when: dt.datetime,
    lat: float,
    lon: float,
    alt: float,
    knots: float = 0.0,
    course: float = 0.0,
    *,
    fix: bool = True,
    talker: str = "GN",
    sats: int = 8,
    hdop: float = 0.9,
) -> list[bytes]:
    """The sentences one receiver epoch produces, in u-blox order (GGA, GSA, GSV, RMC, VTG)."""
    hms = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
    date = when.strftime("%d%m%y")
    if fix:
        la, ns = _coord(lat, lon=False)
        lo, ew = _coord(lon, lon=True)
        gga = f"{talker}GGA,{hms},{la},{ns},{lo},{ew},1,{sats:02d},{hdop:.1f},{alt:.1f},M,-20.0,M,,"
        gsa = f"{talker}GSA,A,3,01,02,12,14,15,18,22,24,,,,,1.6,{hdop:.1f},1.3"
        rmc = f"{talker}RMC,{hms},A,{la},{ns},{lo},{ew},{knots:.3f},{course:.1f},{date},,,A"
        vtg = f"{talker}VTG,{course:.1f},T,,M,{knots:.3f},N,{knots * 1.852:.3f},K,A"
    else:
        gga = f"{talker}GGA,{hms},,,,,0,00,99.99,,,,,,"
        gsa = f"{talker}GSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"
        rmc = f"{talker}RMC,{hms},V,,,,,,,{date},,,N"
        vtg = f"{talker}VTG,,T,,M,,N,,K,N"
    gsv = "GPGSV,1,1,04,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45"
    return [nmea(s) for s in (gga, gsa, gsv, rmc, vtg)]


def _distance(a: Waypoint, b: Waypoint) -> float:
    """Metres between two waypoints (equirectangular: plenty for a few km)."""
    k = 111_320.0
    dy = (b[0] - a[0]) * k
    dx = (b[1] - a[1]) * k * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.hypot(dx, dy)


def _bearing(a: Waypoint, b: Waypoint) -> float:
    dy = b[0] - a[0]
    dx = (b[1] - a[1]) * math.cos(math.radians((a[0] + b[0]) / 2))
    return math.degrees(math.atan2(dx, dy)) % 360


class Route:
    """A closed loop through waypoints, driven at constant speed."""

    def __init__(self, waypoints: list[Waypoint]) -> None:
        if len(waypoints) < 2:
            raise ValueError("a route needs at least two waypoints")
        self.waypoints = waypoints
        self.legs = [(a, b, _distance(a, b)) for a, b in zip(waypoints, waypoints[1:] + waypoints[:1], strict=True)]
        self.length = sum(d for _, _, d in self.legs)

    def at(self, distance: float) -> tuple[Waypoint, float]:
        """Position and course after ``distance`` metres along the loop."""
        d = distance % self.length if self.length else 0.0
        for a, b, leg in self.legs:
            if d <= leg and leg > 0:
                f = d / leg
                pos = (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f)
                return pos, _bearing(a, b)
            d -= leg
        return self.waypoints[0], 0.0


def nmea_log(route: list[Waypoint], epochs: int, knots: float = 10.0, period: float = 1.0) -> bytes:
    """``epochs`` epochs along ``route`` as one NMEA text (a gpsfake log)."""
    r = Route(route)
    t0 = dt.datetime(2024, 5, 1, 8, 0, 0, tzinfo=dt.UTC)
    out: list[bytes] = []
    for i in range(epochs):
        pos, course = r.at(i * period * knots * 1852 / 3600)
        out += epoch(t0 + dt.timedelta(seconds=i * period), *pos, knots, course)
    return b"".join(out)


class NmeaGps(PtyDevice):
    """A receiver on a pty at ``path``, sending one epoch every ``period`` seconds."""

    task_name = "nmea-gps-sim"

    def __init__(
        self,
        route: list[Waypoint] | None = None,
        *,
        knots: float = 10.0,
        period: float = 0.05,
        talker: str = "GN",
        path: str | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(path)
        self.route = Route(route or DEFAULT_ROUTE)
        self.knots = knots
        self.period = period
        self.talker = talker
        self.garbage = False
        self.no_fix = False
        self.silent = False
        self.epochs = 0  # epochs sent
        self.last: tuple[Waypoint, float, float] | None = None  # last position sent, knots, course
        self._held: int | None = None
        self._distance = 0.0
        self._rng = random.Random(seed)
        self._t0 = dt.datetime(2024, 5, 1, 8, 0, 0, tzinfo=dt.UTC)

    def hold_at(self, index: int | None) -> None:
        """Park on waypoint ``index`` (speed 0); ``None`` drives on."""
        self._held = index

    def _noise(self) -> bytes:
        kind = self._rng.randrange(4)
        if kind == 0:  # wrong baud rate: high-bit junk
            return bytes(self._rng.randrange(0x80, 0x100) for _ in range(self._rng.randrange(5, 60)))
        if kind == 1:  # a sentence cut short, then the next one starts
            return b"$GNGGA,0800"
        if kind == 2:  # a corrupted checksum
            return nmea("GNGGA,080000.00,0000.00000,N,00000.00000,E,1,08,0.9,0.0,M,,,,")[:-4] + b"00\r\n"
        return b"\r\n\x00\xff$$$\n"

    def _next_epoch(self) -> list[bytes]:
        when = self._t0 + dt.timedelta(seconds=self.epochs * self.period)
        if self._held is not None:
            pos, knots, course = self.route.waypoints[self._held], 0.0, 0.0
        else:
            self._distance += self.knots * 1852 / 3600 * self.period
            pos, course = self.route.at(self._distance)
            knots = self.knots
        self.epochs += 1
        if not self.no_fix:
            self.last = (pos, knots, round(course, 1))
        return epoch(when, *pos, knots, course, fix=not self.no_fix, talker=self.talker)

    async def _run(self) -> None:
        while True:
            if not self.silent and self.port.plugged:
                for s in self._next_epoch():
                    if self.garbage:
                        self.port.write(self._noise())
                    self.port.write(s)
            await asyncio.sleep(self.period)
