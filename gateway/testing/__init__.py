"""Test kit for sensegate and driver authors: run drivers in the real scheduler, real services.

Use from any test suite (also out-of-tree drivers): ``from gateway.testing import ...``.
"""

from gateway.testing.harness import DriverHarness, make_instance, run_driver
from gateway.testing.procs import children, free_port, wait_port

__all__ = ["DriverHarness", "children", "free_port", "make_instance", "run_driver", "wait_port"]
