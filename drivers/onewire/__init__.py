"""onewire: DS18B20 (and other w1_therm) temperature sensors through the Linux 1-Wire sysfs tree."""

from drivers.onewire.config import OneWireConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="onewire",
    version="1.0.0",
    api_version=API_VERSION,
    description="DS18B20 1-Wire temperature sensors via the kernel's w1 sysfs files",
    config=OneWireConfig,
    factory="drivers.onewire.driver:OneWireDriver",
    kind="poll",
    extra=None,  # the kernel does the bus work; we only read files
    requires=(),
)
