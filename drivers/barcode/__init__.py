"""barcode: serial barcode/QR scanners, one string reading per scanned code."""

from drivers.barcode.config import BarcodeConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="barcode",
    version="1.0.0",
    api_version=API_VERSION,
    description="Barcode/QR scanners on a serial port: line-terminated codes",
    config=BarcodeConfig,
    factory="drivers.barcode.driver:BarcodeDriver",
    kind="stream",
    extra="barcode",
    requires=("serial",),
)
