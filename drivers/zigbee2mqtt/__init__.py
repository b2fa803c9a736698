"""zigbee2mqtt: Zigbee devices through a Zigbee2MQTT bridge's MQTT API.

Cheap to import: the manifest and the config schema only.
"""

from drivers.zigbee2mqtt.config import Zigbee2MqttConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="zigbee2mqtt",
    version="1.0.0",
    api_version=API_VERSION,
    description="Zigbee devices via Zigbee2MQTT: states with units from exposes, availability, set commands",
    config=Zigbee2MqttConfig,
    factory="drivers.zigbee2mqtt.driver:Zigbee2MqttDriver",
    kind="stream",
    extra=None,
    requires=(),
    writable=True,
)
