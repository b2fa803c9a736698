"""gps: GNSS position from NMEA 0183 over a serial port, or from a gpsd daemon."""

from drivers.gps.config import GpsConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="gps",
    version="1.0.0",
    api_version=API_VERSION,
    description="GNSS receiver: NMEA 0183 (GGA/RMC/GSA/VTG/GSV) over serial, or gpsd JSON (TPV/SKY)",
    config=GpsConfig,
    factory="drivers.gps.driver:GpsDriver",
    kind="stream",
    extra="gps",
    # pyserial is needed by source "serial" only; it is checked when such an instance opens its
    # port (MissingExtra names the extra), so a gpsd-only gateway does not need it.
    requires=(),
)
