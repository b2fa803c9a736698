"""rfid: tag reads from 125 kHz serial readers (EM4100 frames) and UHF readers (LLRP over TCP)."""

from drivers.rfid.config import RfidConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="rfid",
    version="1.0.0",
    api_version=API_VERSION,
    description="RFID readers: EM4100/RDM6300 frames over serial, UHF EPC reads over LLRP",
    config=RfidConfig,
    factory="drivers.rfid.driver:RfidDriver",
    kind="stream",
    extra="rfid",
    # pyserial is needed by source "serial" only; it is checked when such an instance opens its
    # port (MissingExtra names the extra). LLRP needs no library.
    requires=(),
)
