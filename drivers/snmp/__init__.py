"""snmp: SNMP v2c and v3 agents (UPSs, PDUs, switches, environment monitors): polled OIDs and traps.

Only the manifest and schema live here; pysnmp is imported by the driver module when an
instance is configured (about 10 MiB of resident memory: see README.md).
"""

from drivers.snmp.config import SnmpConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="snmp",
    version="1.0.0",
    api_version=API_VERSION,
    description="SNMP v2c/v3 agents: polled OIDs (GET, GETBULK walks) with types and scaling, traps",
    config=SnmpConfig,
    factory="drivers.snmp.driver:SnmpDriver",
    kind="poll",
    extra="snmp",
    requires=("pysnmp",),
)
