"""i2c: Bosch BME280 temperature/pressure/humidity sensors on a Linux I2C bus, through smbus2."""

from drivers.i2c.config import I2cConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="i2c",
    version="1.0.0",
    api_version=API_VERSION,
    description="BME280 temperature, pressure and humidity over I2C (smbus2)",
    config=I2cConfig,
    factory="drivers.i2c.driver:I2cDriver",
    kind="poll",
    extra="i2c",
    requires=("smbus2",),
)
