"""The sensegate pytest plugin (entry point ``pytest11``: loaded wherever sensegate is installed).

Gives any test suite, including an out-of-tree driver's, what sensegate's own tests use:

* ``async def test_...`` runs in a fresh event loop, and fails if it leaves tasks running
  (skipped for tests marked ``asyncio``/``anyio``, so pytest-asyncio users keep theirs).
  asyncio's debug mode is off, as in the daemon, unless asked for the usual way
  (``PYTHONASYNCIODEBUG=1`` or ``python -X dev -m pytest``): it slows a suite down and, on a
  loaded machine, logs slow callbacks that are nobody's fault;
* fixtures: ``run_driver`` / ``driver_harness`` (a driver in the real scheduler with a
  recording sink), ``fake_clock``, ``recording_sink``, ``pty_pair`` (a serial line on a real
  pseudo-terminal), ``modbus_sim`` (pymodbus's simulator on loopback or a pty).

Assertion helpers live in ``gateway.testing`` (``assert_reading``, ``wait_reading``,
``wait_until``). Disable the plugin with ``-p no:sensegate``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.sinks import RecordingSink
from gateway.testing.clock import FakeClock
from gateway.testing.devices import SerialPair, serial_pair
from gateway.testing.devices import modbus_sim as _modbus_sim
from gateway.testing.harness import run_driver as _run_driver

LEFTOVER_WAIT = 10.0  # seconds a test's leftover tasks get to end once cancelled, and the loop to close


async def _guarded(coro: Any) -> None:
    await coro
    me = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if leftover:
        names = ", ".join(t.get_name() + ":" + repr(t.get_coro()) for t in leftover)
        for t in leftover:
            t.cancel()
        _, stuck = await asyncio.wait(leftover, timeout=LEFTOVER_WAIT)  # bounded: one may swallow its cancel
        also = f"; still running {LEFTOVER_WAIT:g} s after being cancelled: {sorted(t.get_name() for t in stuck)}"
        pytest.fail(f"test left asyncio tasks running: {names}" + (also if stuck else ""))


def _close(runner: asyncio.Runner) -> None:
    """Close the test's loop, bounded: Runner.close() cancels what is left and waits for it (and
    for the default executor) with no limit, so a task that swallows its cancellation, or a
    thread stuck in a blocking call, would hang the whole suite instead of failing one test."""
    loop = runner.get_loop()
    timer = loop.call_later(LEFTOVER_WAIT, loop.stop)  # run_until_complete then raises RuntimeError
    try:
        runner.close()
    except RuntimeError as e:
        raise pytest.fail.Exception(f"the test's event loop did not close within {LEFTOVER_WAIT:g} s "
                                    f"(a task or executor thread would not stop): {e}") from e
    finally:
        timer.cancel()


@pytest.hookimpl()
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests in their own event loop (unless another plugin owns them); debug
    mode as the environment says (``asyncio.Runner()`` honours PYTHONASYNCIODEBUG and -X dev)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    if pyfuncitem.get_closest_marker("asyncio") or pyfuncitem.get_closest_marker("anyio"):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    runner = asyncio.Runner()
    try:
        runner.run(_guarded(pyfuncitem.obj(**kwargs)))
    finally:
        _close(runner)
    return True


@pytest.fixture
def run_driver() -> Callable[..., Any]:
    """``async with run_driver(MANIFEST, **options) as h:`` -> ``h.runner``, ``h.sink``, ``h.nodes``."""
    return _run_driver


@pytest.fixture
def driver_harness() -> Callable[..., Any]:
    """The same as ``run_driver`` (the name the driver docs use)."""
    return _run_driver


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock the test steps: ``run_driver(..., clock=fake_clock)``, ``await fake_clock.tick()``."""
    return FakeClock()


@pytest.fixture
def recording_sink() -> RecordingSink:
    """An in-memory sink with ``readings``, ``points()`` and ``await wait_for(n)``."""
    return RecordingSink()


@pytest.fixture
def pty_pair() -> Iterator[SerialPair]:
    """A serial line: the driver opens ``pty_pair.path``; the test writes and reads the other end."""
    pair = serial_pair()
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def modbus_sim() -> Callable[..., Any]:
    """``async with modbus_sim([Slave(1)], "tcp") as sim:`` (skips without pymodbus)."""
    pytest.importorskip("pymodbus", reason="the Modbus simulator needs pymodbus: pip install 'sensegate[modbus]'")
    return _modbus_sim
