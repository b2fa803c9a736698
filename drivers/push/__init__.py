"""push: readings devices push, as SenML (RFC 8428) over HTTP POST or MQTT, or plain values over MQTT.

Cheap to import: the manifest and the config schema only.
"""

from drivers.push.config import PushConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="push",
    version="1.0.0",
    api_version=API_VERSION,
    description="Devices that push: SenML JSON/CBOR over HTTP POST and MQTT, plain values over MQTT",
    config=PushConfig,
    factory="drivers.push.driver:PushDriver",
    kind="stream",
    # h11 (the HTTP parser) is needed by the http endpoint only; checked in setup (MissingExtra
    # names the extra), so an MQTT-only instance needs nothing beyond the core.
    extra="push",
    requires=(),
)
