"""Suite-wide guards: leaked threads or child processes fail the test that left them; warnings are
errors (pyproject.toml). Async tests run in a fresh loop, and fail if they leave tasks running,
through sensegate's own pytest plugin (gateway/testing/plugin.py), the runner every driver
package's tests get too."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from gateway.testing.procs import children

settings.register_profile("ci", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _no_leaks() -> Any:
    """Fail a test that leaves threads or child processes behind."""
    threads_before = set(threading.enumerate())
    kids_before = set(children())
    yield
    deadline = time.monotonic() + 5
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        kids = {p: c for p, c in children().items() if p not in kids_before}
        if not threads and not kids:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    problems = []
    if threads:
        problems.append("threads: " + ", ".join(t.name for t in threads))
    if kids:
        problems.append("child processes: " + "; ".join(f"{p} {c}" for p, c in kids.items()))
    pytest.fail("test leaked " + " and ".join(problems))


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private mosquitto on a free loopback port (persistence on), stopped after the test."""
    from hil.mosquitto import Mosquitto

    m = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    m.start()
    yield m
    m.stop()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SoftHSM2 token for the session (a process reads SOFTHSM2_CONF once, when the library
    starts): set for this process; child processes get ``softhsm.env()``."""
    from hil.softhsm import SoftHsm

    hsm = SoftHsm(tmp_path_factory.mktemp("softhsm")).start()
    before = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    yield hsm
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before
