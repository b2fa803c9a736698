"""Run driver instances: schedule polls, apply timeouts, back off, log transitions once.

One ``InstanceRunner`` task per driver instance. A hung poll is cut off by its timeout, a
crashing driver is closed, backed off and set up again, and nothing one instance does can
hold up another: they share only the event loop and the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gateway.bounded import abandon, stop_task
from gateway.config.validate import Instance
from gateway.driver_api import (
    Blob,
    ConfigError,
    Driver,
    Location,
    Path,
    Quality,
    Reading,
    Value,
)
from gateway.edge.processor import EdgeProcessor
from gateway.edge.rules import ReportRule
from gateway.registry import load_driver_class

T = TypeVar("T")
_VALUE_TYPES = (float, int, bool, str, bytes, Location, Blob)
CLOSE_TIMEOUT = 5.0
# Stopping an instance: cancel, wait (its close, itself bounded by CLOSE_TIMEOUT, included),
# cancel again, wait, then leave the task behind. At most 7 s, whatever the driver does.
STOP_WAITS = (CLOSE_TIMEOUT + 1.0, 1.0)
MAX_INLINE = 64 * 1024  # str/bytes readings beyond this must be Blobs (uploaded apart from batches)
_POINT_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]{0,254}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][-:._A-Za-z0-9]{0,127}$")


class Sink(Protocol):
    """Where readings go: the durable buffer, or a JSON-lines writer. Must not block."""

    def put(self, reading: Reading) -> None: ...


class Clock(Protocol):
    """What the poll loop and the backoff wait on (the injection point for fake time in tests).

    The daemon uses ``LoopClock`` (the event loop's monotonic time). ``gateway.testing.FakeClock``
    lets a test step time instead. Timeouts (``timeout:``) always run on real loop time.
    """

    def time(self) -> float: ...

    async def sleep(self, delay: float) -> None: ...

    async def wait(self, event: asyncio.Event, delay: float) -> None:
        """Return when ``event`` is set or ``delay`` seconds have passed, whichever is first."""


class LoopClock:
    """The real clock: ``loop.time()``, ``asyncio.sleep`` and ``asyncio.timeout``."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    async def wait(self, event: asyncio.Event, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await event.wait()


class NodeTracker:
    """Online/offline state per node, with each transition logged once and observable."""

    def __init__(self) -> None:
        self.state: dict[str, bool] = {}
        self.reason: dict[str, str] = {}
        self.listeners: list[Callable[[str, bool, str], None]] = []
        self._log = logging.getLogger("sensegate.nodes")

    def set(self, node: str, online: bool, reason: str = "") -> None:
        """Record a node's state; log and notify only when it (or, while online, its reason) changes."""
        before = self.state.get(node)
        if before == online and (not online or self.reason.get(node, "") == reason):
            return
        self.state[node] = online
        self.reason[node] = reason
        if before == online:  # still online, with news: e.g. "frame counter gap: 3 uplinks lost"
            if reason:
                self._log.info("node %s: %s", node, reason)
        elif online and before is not None:
            self._log.info("node %s is back online", node)
        elif not online:
            self._log.warning("node %s is offline%s", node, f": {reason}" if reason else "")
        for listener in self.listeners:
            listener(node, online, reason)


@dataclass
class Stats:
    """Per-instance counters, read by metrics and status reports."""

    state: str = "starting"  # starting | running | unavailable | failed | stopped
    readings: int = 0
    polls: int = 0
    errors: int = 0
    timeouts: int = 0
    restarts: int = 0
    last_error: str = ""
    latency_sum: float = 0.0
    latency_max: float = 0.0
    latency_last: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)  # driver-specific event counters (ctx.count)


class Backoff:
    """Exponential backoff with jitter, reset after a success: the n-th wait is
    ``min(initial * 2**(n-1), maximum)`` plus a random 0..``initial``, so that gateways cut off
    together do not all come back in the same second."""

    def __init__(self, initial: float = 1.0, maximum: float = 60.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt."""
        self.attempt += 1
        doubled = self.initial * 2.0 ** min(self.attempt - 1, 1000)  # (no float overflow, however long)
        return min(doubled, self.maximum) + random.uniform(0.0, self.initial)

    def reset(self) -> None:
        """Start again from the shortest wait."""
        self.attempt = 0


class _Context:
    """The DriverContext the host hands each instance."""

    def __init__(self, instance: str, logger: logging.Logger, nodes: NodeTracker, stats: Stats) -> None:
        self.instance = instance
        self.log = logger
        self._nodes = nodes
        self._events = stats.extra
        self.cut = False  # set when the instance was left behind at a stop: its reports no longer count

    def node_status(self, node: str, online: bool, reason: str = "") -> None:
        if not self.cut:
            self._nodes.set(node, online, reason)

    def count(self, event: str, n: int = 1) -> None:
        self._events[event] = self._events.get(event, 0) + n

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class InstanceRunner:
    """Supervises one driver instance from setup to close."""

    FAILURES_BEFORE_REOPEN = 3

    def __init__(
        self,
        inst: Instance,
        gateway_id: str,
        sink: Sink,
        nodes: NodeTracker,
        backoff: tuple[float, float] = (1.0, 60.0),
        clock: Clock | None = None,
        stop_waits: tuple[float, ...] = STOP_WAITS,
    ) -> None:
        self.inst = inst
        self.clock: Clock = clock or LoopClock()
        self.name = inst.name
        self.stats = Stats()
        self.nodes = nodes
        self._sink = sink
        # one name everywhere: the logger is named after the driver, then the instance
        self._log = logging.getLogger(f"sensegate.driver.{inst.manifest.name}.{inst.name}")
        self._ctx = _Context(inst.name, self._log, nodes, self.stats)
        self._backoff = Backoff(*backoff)
        self._lock = asyncio.Lock()  # one call at a time into the driver
        self._driver: Driver | None = None
        self._task: asyncio.Task[None] | None = None
        self._available: bool | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.stop_waits = stop_waits
        cfg = inst.config
        self._node = cfg.node or gateway_id
        self._path = Path.IP3 if cfg.path == "ip3" else Path.IP2
        self.emit, self._route, self._cut_emit = self._make_emit()
        self.edge: EdgeProcessor | None = None
        self._set_edge(cfg.report)

    def _make_emit(self) -> tuple[Callable[..., None], Callable[[EdgeProcessor | None], None],
                                  Callable[[], None]]:
        """The driver's emit; the switch that puts edge processing in front of the sink (or takes
        it away); and the cut that makes emit refuse readings once the instance was left behind
        at a stop (so a task that would not stop cannot feed a closed pipeline)."""
        sink_put = self._sink.put
        admit: Callable[..., bool] | None = None  # the instance's report rules, if it has any
        log = self._log
        stats = self.stats
        default_node = self._node
        path = self._path
        instance = self.name
        time_ns = time.time_ns
        isfinite = math.isfinite
        good_names: set[str] = set()  # point names already checked (SenML name rules, RFC 8428 4.5.1)
        good_nodes: set[str] = set()  # node ids already checked

        def check_names(node: str | None, point: str) -> None:
            if point not in good_names:
                if not isinstance(point, str) or not _POINT_RE.match(point):
                    raise ValueError(f"point name {point!r} is not allowed: letters, digits and -:./_ only, "
                                     "starting with a letter or digit")
                if len(good_names) < 100_000:
                    good_names.add(point)
            if node is not None and node not in good_nodes:
                if not isinstance(node, str) or not _NODE_RE.match(node):
                    raise ValueError(f"node id {node!r} is not allowed: letters, digits and -:._ only, "
                                     "starting with a letter or digit")
                if len(good_nodes) < 100_000:
                    good_nodes.add(node)

        def emit(
            point: str,
            value: Value,
            *,
            unit: str | None = None,
            node: str | None = None,
            ts_ns: int | None = None,
            quality: Quality = Quality.GOOD,
        ) -> None:
            if not isinstance(value, _VALUE_TYPES):
                raise TypeError(f"reading {point!r}: unsupported value type {type(value).__name__}")
            if type(value) is float and not isfinite(value):
                raise ValueError(f"reading {point!r}: value {value} is not finite; emit quality=BAD instead")
            if point not in good_names or (node is not None and node not in good_nodes):
                check_names(node, point)
            if type(value) in (str, bytes) and len(value) > MAX_INLINE:  # type: ignore[arg-type]
                raise ValueError(f"reading {point!r}: {len(value)} bytes inline; emit a Blob for large data")  # type: ignore[arg-type]
            ts = ts_ns or time_ns()
            if admit is None or admit(node, point, ts, value, unit, quality):
                if node is None:
                    sink_put(Reading(default_node, point, ts, value, unit, quality, path, instance))
                else:  # a driver that names a node relays it over a capillary network
                    sink_put(Reading(node, point, ts, value, unit, quality, Path.IP3, instance))
            stats.readings += 1

        refused = 0

        def refuse(reading: Reading) -> None:
            nonlocal refused
            refused += 1
            if refused == 1:  # once: a driver that catches the cancellation may keep trying
                log.warning("%s: refused a reading emitted after the instance was stopped (%s/%s); "
                            "cancelling it again", instance, reading.node, reading.point)
            raise asyncio.CancelledError(f"driver instance {instance!r} was stopped")

        def route(edge: EdgeProcessor | None) -> None:
            nonlocal admit
            admit = edge.admit if edge is not None else None

        def cut() -> None:
            nonlocal sink_put, admit
            sink_put = refuse
            admit = None  # every reading reaches the refusal

        return emit, route, cut

    def start(self) -> None:
        """Start the supervising task."""
        self._task = asyncio.create_task(self._main(), name=f"driver:{self.name}")

    async def stop(self) -> bool:
        """Cancel the task and close the driver, in bounded time (``stop_waits``); safe to call twice.

        A task that will not stop (a driver, or a library under it, swallowing cancellation) is
        cancelled again, then left behind: logged once with where it is stuck, its readings
        refused and its node reports ignored from then on. Returns False in that case."""
        task, self._task = self._task, None
        self._stopping = True  # a swallowed cancellation is honoured at the poll loop's next turn
        self._wake.set()
        stopped = True
        if task is not None:
            try:
                stopped = await stop_task(task, self.stop_waits)
            except asyncio.CancelledError:  # the caller gave up waiting: the task must not run on unsupervised
                self._leave_behind()
                self._flush_edge()
                raise
            if not stopped:
                self._leave_behind()
                self.stats.last_error = "would not stop"
                abandon(task, f"driver instance {self.name} ({self.inst.manifest.name}) would not stop: cancelled "
                        f"{len(self.stop_waits)} times in {sum(self.stop_waits):.3g} s; its readings are refused "
                        "from now on", self._log)
        self._flush_edge()
        self.stats.state = "stopped"
        return stopped

    def _leave_behind(self) -> None:
        self._cut_emit()
        self._ctx.cut = True

    def _flush_edge(self) -> None:
        """Report the open aggregation windows (partial): what the driver emitted reaches the buffer."""
        if self.edge is not None:
            self.edge.close()

    def _set_edge(self, rules: list[ReportRule]) -> None:
        """Put the instance's report rules in front of the sink, or take them away."""
        self._flush_edge()
        if not rules:
            self.edge = None
        elif self.edge is None:
            self.edge = EdgeProcessor(rules, self._sink.put, self._node, self._path, self.name, self._log)
        else:
            self.edge.retune(rules)
        self._route(self.edge)

    def retune(self, inst: Instance) -> None:
        """Take a config that differs from the running one only in its report rules, without a restart."""
        self.inst = inst
        self._set_edge(inst.config.report)
        self._log.info("%s: report rules changed (%d rules); open windows reported, every point starts afresh",
                       self.name, len(inst.config.report))

    def _honour_stop(self) -> None:
        """Raise the cancellation a driver (or a library under it) may have swallowed."""
        if self._stopping:
            self._log.debug("%s: a cancellation was swallowed under the driver; stopping now", self.name)
            raise asyncio.CancelledError(f"driver instance {self.name!r} is stopping")

    def poll_now(self) -> None:
        """Ask for an extra poll as soon as the current one (if any) finishes."""
        self._wake.set()

    async def write(self, point: str, value: Value) -> None:
        """Pass an actuation to the driver, in turn with polls."""
        if self._driver is None or self.stats.state not in ("running", "unavailable"):
            raise ConfigError(f"driver instance {self.name!r} is not running ({self.stats.state})")
        async with self._lock, asyncio.timeout(self.inst.config.timeout):
            await self._driver.write(point, value)

    # -- internals ---------------------------------------------------------------------

    def _set_available(self, ok: bool, why: str = "") -> None:
        if ok:
            self.stats.state = "running"
            if self._available is False:
                self._log.info("%s recovered", self.name)
            self._backoff.reset()
        else:
            self.stats.state = "unavailable"
            self.stats.last_error = why
            if self._available is not False:
                self._log.warning("%s unavailable: %s", self.name, why)
        self._available = ok

    async def _close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await driver.close()
        except Exception as e:  # close must not take the host down either
            self._log.debug("%s close failed: %r", self.name, e)

    async def _main(self) -> None:
        try:
            # a driver's libraries (asyncua, bacpypes3, pysnmp ...) take seconds to import: in a
            # thread, so the loop keeps polling the other drivers and answering stop meanwhile
            cls = await asyncio.to_thread(load_driver_class, self.inst.manifest)
        except ConfigError as e:
            self._fatal(str(e))
            return
        except Exception as e:
            self._fatal(f"cannot load driver: {type(e).__name__}: {e}")
            return
        try:
            while True:
                self._honour_stop()
                try:
                    self._driver = cls(self.inst.config, self._ctx)
                    async with self._lock, asyncio.timeout(self.inst.config.timeout):
                        await self._driver.setup()
                    if self.inst.manifest.kind == "stream":
                        self._set_available(True)
                        await self._driver.run(self.emit)
                        raise ConnectionError("stream ended")
                    await self._poll_loop()
                except ConfigError as e:
                    self._fatal(str(e))
                    return
                except TimeoutError:
                    self.stats.errors += 1
                    self.stats.timeouts += 1
                    self._set_available(False, f"timed out after {self.inst.config.timeout:g}s")
                except Exception as e:
                    self.stats.errors += 1
                    self._set_available(False, _describe(e))
                await self._close()
                self.stats.restarts += 1
                await self.clock.sleep(self._backoff.next())
        finally:
            await self._close()

    def _fatal(self, why: str) -> None:
        self.stats.state = "failed"
        self.stats.last_error = why
        self._log.error("%s stopped: %s", self.name, why)

    async def _poll_loop(self) -> None:
        """Poll on schedule until too many polls in a row fail (then the caller reopens)."""
        clock = self.clock
        cfg = self.inst.config
        driver = self._driver
        assert driver is not None
        failures = 0
        next_at = clock.time()
        while True:
            self._honour_stop()
            start = clock.time()
            try:
                async with self._lock, asyncio.timeout(cfg.timeout):
                    await driver.poll(self.emit)
            except ConfigError:
                raise
            except Exception as e:
                failures += 1
                self.stats.errors += 1
                if isinstance(e, TimeoutError):
                    self.stats.timeouts += 1
                    why = f"poll timed out after {cfg.timeout:g}s"
                else:
                    why = _describe(e)
                self._set_available(False, why)
                if failures >= self.FAILURES_BEFORE_REOPEN:
                    raise
            else:
                if failures or self._available is not True:
                    self._set_available(True)
                failures = 0
            took = clock.time() - start
            s = self.stats
            s.polls += 1
            s.latency_last = took
            s.latency_sum += took
            s.latency_max = max(s.latency_max, took)
            spread = cfg.jitter * cfg.interval
            next_at += cfg.interval + (random.uniform(-spread / 2, spread / 2) if spread else 0.0)
            now = clock.time()
            if next_at < now:  # overran: skip missed ticks rather than burst
                next_at = now
            self._honour_stop()  # (stop() sets _wake too, but it is cleared here)
            self._wake.clear()
            await clock.wait(self._wake, next_at - now)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Supervisor:
    """All instance runners of one config."""

    def __init__(self, gateway_id: str, sink: Sink, nodes: NodeTracker | None = None) -> None:
        self.gateway_id = gateway_id
        self.sink = sink
        self.nodes = nodes or NodeTracker()
        self.runners: dict[str, InstanceRunner] = {}

    def start(self, inst: Instance) -> InstanceRunner:
        """Start one instance."""
        runner = InstanceRunner(inst, self.gateway_id, self.sink, self.nodes)
        self.runners[inst.name] = runner
        runner.start()
        return runner

    def retune(self, inst: Instance) -> None:
        """Apply new report rules to a running instance (its driver keeps running)."""
        self.runners[inst.name].retune(inst)

    async def stop(self, name: str) -> None:
        """Stop one instance (bounded: see InstanceRunner.stop)."""
        runner = self.runners.pop(name, None)
        if runner is not None:
            await runner.stop()

    async def stop_all(self) -> None:
        """Stop every instance, concurrently (bounded: see InstanceRunner.stop)."""
        runners = list(self.runners.values())
        self.runners.clear()
        await asyncio.gather(*(r.stop() for r in runners))
