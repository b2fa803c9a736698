"""thermal: the Linux thermal zones (SoC and board temperatures) of the gateway itself.

An example of a driver shipped as its own package: the host finds it through the
``sensegate.drivers`` entry point in pyproject.toml. This file stays cheap: the manifest
and the config schema only.
"""

from gateway.driver_api import API_VERSION, Manifest

from sensegate_thermal.config import ThermalConfig

MANIFEST = Manifest(
    name="thermal",
    version="0.1.0",
    api_version=API_VERSION,
    description="Gateway temperatures from the Linux thermal zones (/sys/class/thermal)",
    config=ThermalConfig,
    factory="sensegate_thermal.driver:ThermalDriver",
    kind="poll",
)
