"""example: a fully commented template driver; copy this folder to start a new one.

This file is what the host imports first (through the entry point named in setup.cfg), so it
must stay cheap: the manifest and the config schema only, never the hardware library.
"""

from drivers.example.config import ExampleConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    # One name everywhere: folder = manifest name = YAML `driver:` value = logger name.
    name="example",
    # Your driver's own version (semver); shown by `sensegate drivers`.
    version="1.0.0",
    # The driver-API version you wrote against; the host refuses versions it does not know.
    api_version=API_VERSION,
    description="Template: a thermometer speaking a line protocol over TCP",
    # The schema of this driver's YAML options (validated before anything runs).
    config=ExampleConfig,
    # Imported only when an instance is configured, so unused drivers cost no memory.
    factory="drivers.example.driver:ExampleDriver",
    # "poll": the host calls poll() every interval. "stream": the host calls run() once.
    kind="poll",
    # Hardware libraries: list their import names in `requires` and the pip extra that
    # installs them in `extra`; a missing one gives "pip install 'sensegate[EXTRA]'".
    extra=None,
    requires=(),
    writable=True,
)
