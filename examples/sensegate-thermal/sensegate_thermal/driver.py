"""The thermal driver: lists the zones and reads each ``temp`` file off the event loop."""

from __future__ import annotations

from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError, Quality

from sensegate_thermal import zones
from sensegate_thermal.config import ThermalConfig


class ThermalDriver(Driver):
    """One poll reads every selected zone; a zone that fails is skipped and counted."""

    config: ThermalConfig

    def __init__(self, config: ThermalConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._zones: list[tuple[str, str]] = []  # (folder, point name), found by setup
        self.failures = 0

    async def setup(self) -> None:
        try:
            listed = await self.ctx.run_blocking(zones.list_zones, self.config.base_path)
        except OSError as e:
            raise NotReady(f"no thermal zones at {self.config.base_path}: {e.strerror or e}") from e
        wanted = set(self.config.zones)
        unknown = wanted - {t for _, t in listed}
        if unknown and listed:
            have = ", ".join(sorted(t for _, t in listed))
            raise ConfigError(f"no thermal zone of type {', '.join(sorted(unknown))} (this machine has: {have})")
        self._zones = [(folder, zones.point_name(t)) for folder, t in listed if not wanted or t in wanted]
        if not self._zones:
            raise NotReady(f"no thermal zones listed under {self.config.base_path} yet")

    async def poll(self, emit: Emit) -> None:
        read = 0
        for folder, point in self._zones:
            try:
                raw = await self.ctx.run_blocking(zones.read_temp, self.config.base_path, folder)
                celsius = zones.parse_millidegrees(raw)
            except (OSError, zones.ProtocolError) as e:
                self.failures += 1
                self.ctx.log.debug("zone %s skipped: %s", folder, e)
                continue
            quality = Quality.UNCERTAIN if celsius >= self.config.critical else Quality.GOOD
            emit(point, celsius, unit="Cel", quality=quality)
            read += 1
        if not read:
            raise PollError("no thermal zone could be read")
