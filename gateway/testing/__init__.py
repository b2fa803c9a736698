"""Test kit for sensegate and driver authors: run drivers in the real scheduler, real services.

Use from any test suite (also out-of-tree drivers): ``from gateway.testing import ...``.
The pytest plugin (``gateway.testing.plugin``, loaded automatically where sensegate is
installed) adds fixtures: ``run_driver``, ``driver_harness``, ``fake_clock``,
``recording_sink``, ``pty_pair``, ``modbus_sim``. See docs/drivers.md, "Testing a driver".
"""

from gateway.testing.asserts import ANY, assert_reading, find_readings, wait_reading, wait_until
from gateway.testing.clock import FakeClock, SteppedClock
from gateway.testing.devices import SerialPair, modbus_sim, serial_pair
from gateway.testing.harness import DriverHarness, make_instance, run_driver
from gateway.testing.procs import children, free_port, wait_port

__all__ = [
    "ANY",
    "DriverHarness",
    "FakeClock",
    "SerialPair",
    "SteppedClock",
    "assert_reading",
    "children",
    "find_readings",
    "free_port",
    "make_instance",
    "modbus_sim",
    "run_driver",
    "serial_pair",
    "wait_port",
    "wait_reading",
    "wait_until",
]
