"""sim: generated data (constant, counter, sine, random walk, step) for demos, tests and benchmarks."""

from drivers.sim.config import SimConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="sim",
    version="1.0.0",
    api_version=API_VERSION,
    description="Simulated points: constant, counter, sine, random walk, step",
    config=SimConfig,
    factory="drivers.sim.driver:SimDriver",
)
