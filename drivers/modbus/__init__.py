"""modbus: Modbus RTU (RS-485) and TCP devices with YAML register maps, polled node by node.

Only the manifest and schema live here; pymodbus is imported by the driver module when an
instance is configured.
"""

from drivers.modbus.config import ModbusConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="modbus",
    version="1.0.0",
    api_version=API_VERSION,
    description="Modbus RTU/TCP devices: register maps, per-node status, writes",
    config=ModbusConfig,
    factory="drivers.modbus.driver:ModbusDriver",
    kind="poll",
    extra="modbus",
    requires=("pymodbus",),
    writable=True,
)
