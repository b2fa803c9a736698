"""The onewire driver: reads each sensor's sysfs file off the event loop and emits Celsius."""

from __future__ import annotations

import os
from collections import Counter

from drivers.onewire import w1
from drivers.onewire.config import OneWireConfig
from gateway.driver_api import Driver, DriverContext, Emit, NotReady, PollError, Quality


def _read_sensor(base: str, sensor_id: str, source: str) -> tuple[str, bytes]:
    """Blocking: the raw bytes of one sensor's file (~750 ms on hardware: a conversion runs)."""
    names = ("w1_slave", "temperature") if source == "auto" else (source,)
    for name in names:
        try:
            with open(os.path.join(base, sensor_id, name), "rb") as f:
                return name, f.read(w1.MAX_FILE + 1)
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"sensor {sensor_id} is not on the bus (unplugged?)")


def _discover(base: str, families: tuple[str, ...]) -> list[str]:
    """Blocking: ids of the sensors the kernel currently lists, sorted."""
    return sorted(e for e in os.listdir(base) if e[:2] in families and e[2:3] == "-")


class OneWireDriver(Driver):
    """One poll reads every sensor in turn; a failed sensor is skipped, counted and marked offline."""

    config: OneWireConfig

    def __init__(self, config: OneWireConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._names = {s.id: s.name or s.id for s in config.sensors}
        self._seen: set[str] = set()  # auto-discovered ids seen so far, to notice unplugging
        self.failures: Counter[str] = Counter()  # per sensor name: skipped readings (CRC, unplugged, garbage)
        self.bad: Counter[str] = Counter()  # per sensor name: 85 C power-on-reset readings (emitted as BAD)

    async def setup(self) -> None:
        if not await self.ctx.run_blocking(os.path.isdir, self.config.base_path):
            raise NotReady(
                f"no 1-Wire bus at {self.config.base_path}: enable it (dtoverlay=w1-gpio in config.txt) and reboot"
            )

    async def _sensor_ids(self) -> list[str]:
        if self.config.sensors:
            return [s.id for s in self.config.sensors]
        try:
            found = await self.ctx.run_blocking(_discover, self.config.base_path, tuple(self.config.families))
        except OSError as e:
            raise PollError(f"cannot list {self.config.base_path}: {e.strerror or e}") from e
        for gone in self._seen.difference(found):
            self._failed(gone, "unplugged")
        self._seen.update(found)
        return found

    def _failed(self, sensor_id: str, why: str) -> None:
        name = self._names.get(sensor_id, sensor_id)
        self.failures[name] += 1
        self.ctx.log.debug("sensor %s skipped: %s", name, why)
        if self.config.layout == "nodes":
            self.ctx.node_status(name, False, why)

    async def poll(self, emit: Emit) -> None:
        ids = await self._sensor_ids()
        if not ids:
            raise PollError(f"no 1-Wire sensors of families {', '.join(self.config.families)} found")
        ok = 0
        for sensor_id in ids:
            try:
                kind, raw = await self.ctx.run_blocking(
                    _read_sensor, self.config.base_path, sensor_id, self.config.source
                )
                mc = w1.parse_w1_slave(raw) if kind == "w1_slave" else w1.parse_temperature_file(raw)
            except FileNotFoundError:
                self._failed(sensor_id, "unplugged")
                continue
            except OSError as e:  # the kernel answers EIO for a failed read of `temperature`
                self._failed(sensor_id, f"read failed: {e.strerror or e}")
                continue
            except w1.W1Error as e:
                self._failed(sensor_id, str(e))
                continue
            ok += 1
            name = self._names.get(sensor_id, sensor_id)
            quality = Quality.GOOD
            if mc == w1.POWER_ON_RESET:  # conversion never ran: the value is the reset default
                quality = Quality.BAD
                self.bad[name] += 1
            if self.config.layout == "nodes":
                self.ctx.node_status(name, True)
                emit("temperature", mc / 1000, unit="Cel", node=name, quality=quality)
            else:
                emit(name, mc / 1000, unit="Cel", quality=quality)
        if ok == 0:
            raise PollError(f"none of {len(ids)} sensor(s) gave a reading")
