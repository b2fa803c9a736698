"""opcua: OPC UA servers (PLCs, SCADA, building and water controllers) read as a client:
browse paths, polling, data change subscriptions, Basic256Sha256 security, writes.

Only the manifest and schema live here; asyncua is imported by the driver module when an
instance is configured (about 26 MiB of resident memory: see README.md).
"""

from drivers.opcua.config import OpcUaConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="opcua",
    version="1.0.0",
    api_version=API_VERSION,
    description="OPC UA servers: browse paths, polling, data change subscriptions, security, writes",
    config=OpcUaConfig,
    factory="drivers.opcua.driver:OpcUaDriver",
    kind="poll",
    extra="opcua",
    requires=("asyncua",),
    writable=True,
)
