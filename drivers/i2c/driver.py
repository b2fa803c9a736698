"""The i2c driver: a BME280 in forced mode, one measurement per poll, bus calls off the loop."""

from __future__ import annotations

import asyncio

from drivers.i2c import bme280
from drivers.i2c.config import I2cConfig
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError

STATUS_RETRIES = 20  # status checks after the datasheet's maximum measurement time
STATUS_WAIT = 0.002


class I2cDriver(Driver):
    """Reads one BME280: chip id and calibration at setup, a forced measurement per poll.

    The bus comes from ``open_bus()``, the one place that touches smbus2. A fake SMBus for tests
    and demos is plugged in by overriding it (``hil/devices/i2c_bme280.py``), never from YAML.
    """

    config: I2cConfig

    def __init__(self, config: I2cConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._bus: bme280.SMBusLike | None = None
        self._chip: bme280.Bme280 | None = None

    def open_bus(self) -> bme280.SMBusLike:
        """Blocking: open /dev/i2c-<bus>. Override to plug in another bus (a fake SMBus)."""
        import smbus2

        bus: bme280.SMBusLike = smbus2.SMBus(self.config.bus)
        return bus

    async def setup(self) -> None:
        cfg = self.config
        where = f"0x{cfg.address:02x} on I2C bus {cfg.bus}"
        try:
            self._bus = await self.ctx.run_blocking(self.open_bus)
        except FileNotFoundError as e:
            raise NotReady(f"no /dev/i2c-{cfg.bus}: enable I2C (raspi-config, or dtparam=i2c_arm=on) and reboot") from e
        except PermissionError as e:
            raise NotReady(f"no permission to open /dev/i2c-{cfg.bus}: run as root or in group 'i2c'") from e
        except OSError as e:
            raise NotReady(f"cannot open I2C bus {cfg.bus}: {e.strerror or e}") from e
        chip = bme280.Bme280(
            self._bus, cfg.address, cfg.oversampling_temperature, cfg.oversampling_pressure, cfg.oversampling_humidity
        )
        try:
            await self.ctx.run_blocking(chip.init)
        except bme280.Bme280Error as e:  # something else sits at that address: retrying will not help
            raise ConfigError(str(e)) from e
        except OSError as e:  # nothing answers (wiring, power, wrong address)
            raise NotReady(f"no device answers at {where}: {e.strerror or e}") from e
        self._chip = chip

    async def poll(self, emit: Emit) -> None:
        chip = self._chip
        assert chip is not None and chip.calibration is not None
        try:
            wait = await self.ctx.run_blocking(chip.start_forced)
            await asyncio.sleep(wait)
            for _ in range(STATUS_RETRIES):
                raw = await self.ctx.run_blocking(chip.read_if_ready)
                if raw is not None:
                    break
                await asyncio.sleep(STATUS_WAIT)
            else:
                raise PollError("the BME280 did not finish its measurement")
        except OSError as e:
            raise PollError(f"I2C transfer failed: {e.strerror or e}") from e
        except bme280.Bme280Error as e:
            raise PollError(str(e)) from e
        m = bme280.compensate(chip.calibration, raw, self.config.compensation)
        emit("temperature", m.temperature, unit="Cel")
        if m.pressure is not None:
            emit("pressure", m.pressure, unit="Pa")
        if m.humidity is not None:
            emit("humidity", m.humidity, unit="%RH")

    async def close(self) -> None:
        bus, self._bus, self._chip = self._bus, None, None
        close = getattr(bus, "close", None)
        if close is not None:
            await self.ctx.run_blocking(close)
