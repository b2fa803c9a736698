"""bacnet: BACnet/IP building controllers (air handlers, meters, lighting): Who-Is discovery,
ReadPropertyMultiple, COV subscriptions and writes with a priority.

Only the manifest and schema live here; bacpypes3 is imported by the driver module when an
instance is configured (about 8 MiB of resident memory: see README.md).
"""

from drivers.bacnet.config import BacnetConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="bacnet",
    version="1.0.0",
    api_version=API_VERSION,
    description="BACnet/IP devices: Who-Is discovery, ReadPropertyMultiple, COV, writes with priority",
    config=BacnetConfig,
    factory="drivers.bacnet.driver:BacnetDriver",
    kind="poll",
    extra="bacnet",
    requires=("bacpypes3",),
    writable=True,
)
