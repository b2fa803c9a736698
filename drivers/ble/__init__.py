"""ble: BLE advertisement sensors (BTHome v2, Ruuvi, iBeacon, Eddystone) and GATT reads via bleak.

Cheap to import: the manifest and the config schema only; bleak is imported by the driver.
"""

from drivers.ble.config import BleConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="ble",
    version="1.0.0",
    api_version=API_VERSION,
    description="BLE advertisement sensors (BTHome v2, Ruuvi RAWv2, iBeacon, Eddystone) and GATT reads, via BlueZ",
    config=BleConfig,
    factory="drivers.ble.driver:BleDriver",
    kind="stream",
    extra="ble",
    requires=("bleak",),
)
