"""lorawan: LoRaWAN devices through a ChirpStack v4 network server's MQTT integration.

Cheap to import: the manifest and the config schema only.
"""

from drivers.lorawan.config import LorawanConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="lorawan",
    version="1.0.0",
    api_version=API_VERSION,
    description="LoRaWAN devices via ChirpStack's MQTT integration (JSON or Protobuf): uplinks, joins, downlinks",
    config=LorawanConfig,
    factory="drivers.lorawan.driver:LorawanDriver",
    kind="stream",
    # chirpstack-api is needed for encoding: protobuf only; checked in setup (MissingExtra names
    # the extra), so a JSON integration needs nothing beyond the core.
    extra="lorawan",
    requires=(),
    writable=True,
)
