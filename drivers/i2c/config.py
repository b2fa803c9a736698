"""The i2c driver's options."""

from __future__ import annotations

from typing import Literal

from gateway.driver_api import DriverConfig
from gateway.schema import Field

Oversampling = Literal[0, 1, 2, 4, 8, 16]


class I2cConfig(DriverConfig):
    """One BME280 on a Linux I2C bus (/dev/i2c-<bus>)."""

    chip: Literal["bme280"] = Field(default="bme280", description="Sensor type on the bus (BME280 only, for now).")
    bus: int = Field(default=1, ge=0, le=255, description="I2C bus number: /dev/i2c-<bus> (1 on a Raspberry Pi).")
    address: int = Field(default=0x76, ge=0x03, le=0x77, description="7-bit I2C address: 0x76 (SDO low) or 0x77.")
    oversampling_temperature: Literal[1, 2, 4, 8, 16] = Field(
        default=1, description="Temperature oversampling (1..16); it cannot be 0: the others need it."
    )
    oversampling_pressure: Oversampling = Field(default=1, description="Pressure oversampling; 0 skips pressure.")
    oversampling_humidity: Oversampling = Field(default=1, description="Humidity oversampling; 0 skips humidity.")
    compensation: Literal["float", "integer"] = Field(
        default="float",
        description="Datasheet formulas: float (section 8.1) or integer (4.2.3: 0.01 C, 1/256 Pa, 1/1024 %RH steps).",
    )
