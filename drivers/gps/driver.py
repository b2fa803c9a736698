"""The gps driver: glue between the NMEA/gpsd parsers and the host's streaming contract."""

from __future__ import annotations

import asyncio
from typing import Any

from drivers.gps import gpsd, nmea
from drivers.gps.config import GpsConfig
from gateway.driver_api import Driver, DriverContext, Emit, Location, NotReady, PollError, Quality
from gateway.serial_stream import SerialStream


class GpsDriver(Driver):
    """Streams locations: at most one per ``interval``, and one at once on gaining or losing the fix.

    Without a fix the reading carries the last good position with ``fix=0`` and quality
    UNCERTAIN (speed and course dropped); before the first fix nothing is emitted.
    """

    config: GpsConfig

    def __init__(self, config: GpsConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._emit: Emit | None = None
        self._last_emit: float | None = None  # loop time of the last reading
        self._last_valid: bool | None = None
        self._serial: SerialStream | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = nmea.NmeaFramer(require_checksum=config.require_checksum)
        self._tracker = nmea.Tracker()
        self._gpsd_framer = gpsd.GpsdFramer()
        self._gpsd_tracker = gpsd.GpsdTracker()
        self.invalid_fields = 0  # sentences/reports with a good frame but nonsense values

    @property
    def counters(self) -> dict[str, int]:
        """What the parsers saw since this instance started (for tests and status)."""
        c: Any = self._framer.counters if self.config.source == "serial" else self._gpsd_framer.counters
        out = {k: getattr(c, k) for k in c.__slots__}
        out["invalid_fields"] = self.invalid_fields
        return out

    async def setup(self) -> None:
        cfg = self.config
        if cfg.source == "serial":
            self._serial = SerialStream(
                cfg.port, cfg.baudrate, self._on_nmea, idle_timeout=cfg.silence_timeout, driver="gps", extra="gps"
            )
            await self._serial.open()
            return
        try:
            self._reader, self._writer = await asyncio.open_connection(cfg.gpsd_host, cfg.gpsd_port)
            self._writer.write(gpsd.WATCH)
            await self._writer.drain()
        except OSError as e:
            raise NotReady(f"cannot connect to gpsd at {cfg.gpsd_host}:{cfg.gpsd_port}: {e.strerror or e}") from e

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        if self._serial is not None:
            await self._serial.run()  # returns only by raising PollError
            return
        assert self._reader is not None
        idle = self.config.silence_timeout or None
        while True:
            try:
                async with asyncio.timeout(idle):
                    data = await self._reader.read(16384)
            except TimeoutError:
                raise PollError(f"gpsd sent nothing for {idle:g}s") from None
            except OSError as e:
                raise PollError(f"gpsd connection lost: {e.strerror or e}") from e
            if not data:
                raise PollError("gpsd closed the connection")
            for report in self._gpsd_framer.feed(data):
                try:
                    fix = self._gpsd_tracker.update(report)
                except gpsd.GpsdError as e:
                    self._invalid(str(e))
                    continue
                self._maybe_emit(fix)

    def _on_nmea(self, data: bytes) -> None:
        for sentence in self._framer.feed(data):
            try:
                fix = self._tracker.update(sentence)
            except nmea.NmeaError as e:
                self._invalid(f"{sentence.talker}{sentence.kind}: {e}")
                continue
            self._maybe_emit(fix)

    def _invalid(self, why: str) -> None:
        self.invalid_fields += 1
        if self.invalid_fields == 1 or self.invalid_fields % 1000 == 0:  # not a line per bad sentence
            self.ctx.log.warning(
                "%s: dropped invalid data (%d so far): %s", self.ctx.instance, self.invalid_fields, why
            )

    def _maybe_emit(self, fix: nmea.Fix | None) -> None:
        if fix is None or self._emit is None:
            return
        now = asyncio.get_running_loop().time()
        due = self._last_emit is None or now - self._last_emit >= self.config.interval
        if not due and fix.valid == self._last_valid:
            return
        self._last_emit, self._last_valid = now, fix.valid
        loc = Location(
            lat=fix.lat,
            lon=fix.lon,
            alt=fix.alt,
            speed=fix.speed,
            course=fix.course,
            fix=fix.quality if fix.valid else 0,
            sats=fix.sats,
            hdop=fix.hdop,
        )
        self._emit(self.config.point, loc, quality=Quality.GOOD if fix.valid else Quality.UNCERTAIN)

    async def close(self) -> None:
        serial, self._serial = self._serial, None
        if serial is not None:
            serial.close()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
