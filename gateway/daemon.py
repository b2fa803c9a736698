"""The daemon: load the config, run the pipeline and the drivers, handle signals.

SIGTERM/SIGINT stop cleanly (drivers closed, pending readings flushed). SIGHUP re-reads the
config file: an invalid file is reported and the running config kept; a valid one restarts
only the driver instances whose sections changed (see gateway.config.apply).

A stop is bounded: every step waits a limited time (gateway.bounded), the whole shutdown has
``SHUTDOWN_DEADLINE``, and ``run_process`` (what ``sensegate run`` calls) exits even when a
task or a thread would not stop, well before systemd's ``TimeoutStopSec`` would SIGKILL it.

The file given with -c is also the trust anchor for remote config (gateway.remote): when a
signed pushed config is current, the daemon boots that one and the file is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.bounded import settle, stop_task
from gateway.config import ConfigInvalid, GatewayConfig, load_config
from gateway.config.apply import plan
from gateway.driver_api import Reading
from gateway.logs import set_level
from gateway.metrics import MetricsServer, status_line
from gateway.registry import Registry
from gateway.remote.agent import RemoteAgent
from gateway.remote.envelope import Rejected
from gateway.scheduler import NodeTracker, Sink, Supervisor
from gateway.service import Notifier
from gateway.sinks import JsonlSink

if TYPE_CHECKING:
    from gateway.keys import Signer
    from gateway.uplinks import Uplink

log = logging.getLogger("sensegate.daemon")
DEFAULT_CONFIG = "/etc/sensegate/sensegate.yaml"
# From SIGTERM to exit. systemd/sensegate.service has TimeoutStopSec=30s (then SIGKILL, and an
# unclean buffer); a test keeps these under it. The shutdown's steps share SHUTDOWN_DEADLINE;
# past HARD_EXIT_AFTER (a loop blocked for good), faulthandler dumps every thread and exits.
SHUTDOWN_DEADLINE = 20.0
HARD_EXIT_AFTER = 25.0
SIDE_CLOSE = 6.0  # metrics endpoint and remote config (together), background tasks: closed within this
LEFTOVER_WAIT = 1.0  # after the daemon returned: tasks and executor threads still running
PIPELINE_FLOOR = 3.0  # the pipeline's close (the buffer's last commit) gets at least this


class Pipeline(Protocol):
    """Everything between the drivers' emit and the network: takes readings, never blocks."""

    @property
    def sink(self) -> Sink:
        """Where drivers' readings go (``sink.put`` is called once per reading)."""

    @property
    def uplinks(self) -> list[Uplink]:
        """The uplinks carrying signed batches (none for JSON lines)."""

    def stats(self) -> dict[str, Any]:
        """Numbers for metrics and the status topic: ``buffer``, ``batches``, ``uplinks``."""

    @property
    def key(self) -> Signer | None:
        """The device key that signs batches now (it signs config statuses too); None when this
        pipeline signs nothing (JSON lines)."""

    async def rotate_key(self) -> dict[str, Any]:
        """Switch to a next device key now (the ``rotate_key`` command); only called when ``key``
        is not None."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class DirectPipeline:
    """Readings straight to JSON-lines uplinks, with no buffer (used when no uplink needs one)."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.sinks = [JsonlSink(u.path) for u in cfg.config.uplinks if u.type == "jsonl"]

    @property
    def sink(self) -> Sink:
        return self.sinks[0] if len(self.sinks) == 1 else self

    @property
    def uplinks(self) -> list[Uplink]:
        return []

    def stats(self) -> dict[str, Any]:
        return {}

    @property
    def key(self) -> Signer | None:
        return None  # JSON lines are not signed

    async def rotate_key(self) -> dict[str, Any]:
        raise RuntimeError("a JSON-lines pipeline has no device key")

    async def start(self) -> None:
        for s in self.sinks:
            s.open()

    def put(self, reading: Reading) -> None:
        for s in self.sinks:
            s.put(reading)

    async def close(self) -> None:
        for s in self.sinks:
            s.close()


def build_pipeline(cfg: GatewayConfig, nodes: NodeTracker) -> Pipeline:
    """The pipeline a config asks for."""
    if all(u.type == "jsonl" for u in cfg.config.uplinks):
        return DirectPipeline(cfg)
    from gateway.pipeline import BufferedPipeline  # the durable path; imported when used

    return BufferedPipeline(cfg, nodes)


class Daemon:
    """One running gateway."""

    def __init__(self, config_path: str | Path, registry: Registry | None = None) -> None:
        self.config_path = Path(config_path)
        self.registry = registry or Registry.discover()
        self.cfg: GatewayConfig | None = None
        self.nodes = NodeTracker()
        self.pipeline: Pipeline | None = None
        self.supervisor: Supervisor | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.apply_lock = asyncio.Lock()  # one apply at a time: SIGHUP, remote push, restart command
        self.remote: RemoteAgent | None = None
        self.ready = asyncio.Event()
        self.notifier = Notifier()  # sd_notify; a no-op outside systemd
        self.metrics = MetricsServer(self)
        self.hard_exit_after: float | None = None  # set by run_process: the process's last resort
        self._closing: asyncio.Task[None] | None = None  # the shutdown of the drivers and the pipeline
        self._stop_at: float | None = None  # loop time of the stop request
        self._health: asyncio.Task[None] | None = None  # publishes the health summary (metrics.status_interval)

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal-safe: called from the loop)."""
        if self._stop.is_set():
            return
        self._stop_at = asyncio.get_running_loop().time()
        if self.hard_exit_after is not None:
            # should the loop itself be wedged, the stop still ends (with every thread's stack)
            faulthandler.dump_traceback_later(self.hard_exit_after, exit=True)
        self._stop.set()

    def request_reload(self) -> None:
        """Ask the daemon to re-read its config file."""
        self._reload.set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit status."""
        boot = load_config(self.config_path, self.registry)  # ConfigInvalid propagates to the CLI
        self.remote = RemoteAgent(self, boot, self.config_path, self.registry)
        cfg = self.remote.boot_config(self._bootstrap_bytes())
        set_level(cfg.config.gateway.log_level)
        loop = asyncio.get_running_loop()
        for sig, handler in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(sig, handler)
        watchdog: asyncio.Task[None] | None = None
        try:
            await self._start(cfg)
            log.info("sensegate started: gateway %s, %d driver instance(s)", cfg.config.gateway.id, len(cfg.instances))
            await self._apply_metrics(cfg)
            self.ready.set()
            self.notifier.ready(status_line(self))
            watchdog = asyncio.create_task(self.notifier.watchdog_loop(lambda: status_line(self)), name="watchdog")
            while not self._stop.is_set():
                stop = asyncio.ensure_future(self._stop.wait())
                reload = asyncio.ensure_future(self._reload.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                reload.cancel()
                if self._reload.is_set() and not self._stop.is_set():
                    self._reload.clear()
                    self.notifier.reloading()
                    await self.reload()
                    self.notifier.ready(status_line(self))
        finally:
            self.notifier.stopping()
            deadline = (self._stop_at or loop.time()) + SHUTDOWN_DEADLINE
            health, self._health = self._health, None
            for task in (watchdog, health):
                if task is not None:
                    await stop_task(task, (SIDE_CLOSE,))
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await asyncio.gather(settle(self.metrics.close(), SIDE_CLOSE, "closing the metrics endpoint"),
                                 settle(self.remote.close(), SIDE_CLOSE, "closing remote config"))
            await self._shutdown(deadline)
            self.notifier.close()
        log.info("sensegate stopped")
        return 0

    async def _apply_metrics(self, cfg: GatewayConfig) -> None:
        """The metrics section: the endpoint starts, stops or moves; the status timer restarts."""
        m = cfg.config.metrics
        await self.metrics.apply(m.enabled, m.listen)
        if self._health is not None:
            await stop_task(self._health, (SIDE_CLOSE,))
        self._health = asyncio.create_task(self._health_loop(m.status_interval), name="health")

    async def _health_loop(self, interval: float) -> None:
        """Publish the health summary on the status topic of each MQTT uplink, every ``interval`` s."""
        from gateway.metrics import summary

        while interval:
            await asyncio.sleep(interval)
            pipeline = self.pipeline
            if pipeline is not None and pipeline.uplinks:
                health = summary(self)  # with "issued": this is the heartbeat (gateway/heartbeat.py)
                for up in pipeline.uplinks:
                    await up.publish_health(health, pipeline.key)

    def _bootstrap_bytes(self) -> bytes:
        try:
            return self.config_path.read_bytes()
        except OSError:
            return b""

    async def _start(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        pipeline = build_pipeline(cfg, self.nodes)
        if self.remote is not None:
            self.remote.attach(pipeline)  # downlink hooks go on before the uplinks connect
        try:
            await pipeline.start()
        except BaseException:
            await settle(pipeline.close(), SHUTDOWN_DEADLINE, "closing a pipeline that did not start")
            raise
        self.pipeline = pipeline
        self.supervisor = Supervisor(cfg.config.gateway.id, self.pipeline.sink, self.nodes)
        for inst in cfg.instances:
            self.supervisor.start(inst)

    async def _shutdown(self, deadline: float | None = None) -> None:
        """Stop the drivers, then close the pipeline (which commits what they emitted), by ``deadline``.

        Runs to its end in a task of its own even when the caller is cancelled (an apply cancelled
        by a stop), so a pipeline is never left half closed; a later call waits for it first."""
        if self._closing is not None and not self._closing.done():
            await asyncio.shield(self._closing)
        if self.supervisor is None and self.pipeline is None:
            return
        self._closing = asyncio.create_task(self._close_parts(deadline), name="daemon-shutdown")
        await asyncio.shield(self._closing)

    async def _close_parts(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + SHUTDOWN_DEADLINE
        supervisor, pipeline = self.supervisor, self.pipeline
        self.supervisor = None
        self.pipeline = None
        if supervisor is not None:
            await supervisor.stop_all()  # bounded by each runner's own waits (scheduler.STOP_WAITS)
        if pipeline is not None:
            # the buffer's close commits what the drivers emitted: it gets its time even when the
            # steps before took theirs (HARD_EXIT_AFTER still bounds the whole)
            within = max(deadline - loop.time(), PIPELINE_FLOOR)
            await settle(pipeline.close(), within, "closing the pipeline (buffer and uplinks)")

    async def reload(self) -> bool:
        """Re-read the config file and apply what changed; keep running on a bad file."""
        try:
            new = load_config(self.config_path, self.registry)
            if self.remote is not None:
                new = self.remote.refresh_bootstrap(new, self._bootstrap_bytes())
        except (ConfigInvalid, Rejected) as e:
            log.error("reload refused, keeping the running config:\n%s", e)
            return False
        async with self.apply_lock:
            await self.apply_config(new)
        return True

    async def apply_config(self, new: GatewayConfig) -> None:
        """Run ``new``: every section that changed takes effect as gateway.config.apply.APPLY says
        (only the instances whose sections changed restart, or all of them with the pipeline)."""
        set_level(new.config.gateway.log_level)
        if self.cfg is None or self.supervisor is None or self.pipeline is None:
            await self._shutdown()  # an earlier apply failed half way: start from scratch
            await self._start(new)
            await self._apply_metrics(new)
            return
        p = plan(self.cfg, new)
        if p.metrics:
            await self._apply_metrics(new)
        if p.restart_pipeline:
            log.info("reload: %s changed; restarting the pipeline", ", ".join(p.restart_for))
            await self._shutdown()
            await self._start(new)
            return
        for name in p.stop:
            await self.supervisor.stop(name)
        for name in p.start:
            self.supervisor.start(new.instance(name))
        self.cfg = new
        log.info(
            "reload: %d instance(s) restarted, %d stopped, %d unchanged",
            len([n for n in p.start if n in p.stop]),
            len([n for n in p.stop if n not in p.start]),
            len(p.keep),
        )


def run_process(config_path: str | Path) -> int:
    """Run the daemon in this process until it is stopped: ``asyncio.run`` with every wait of
    the exit bounded.

    ``asyncio.run`` waits without a limit for the tasks left at the end and for the default
    executor's threads, and the interpreter joins every executor thread at exit: one driver
    task that swallows its cancellation, or one thread stuck in a blocking call, would keep the
    process alive until systemd kills it. Here what is left gets ``LEFTOVER_WAIT``; whatever
    still runs after that is named in the log and the process exits without waiting for it
    (the buffer was closed and committed before; nothing stored is at risk)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    daemon = Daemon(config_path)
    daemon.hard_exit_after = HARD_EXIT_AFTER
    status = 1
    left: list[str] = []
    try:
        status = loop.run_until_complete(daemon.run())
    finally:
        try:
            left = loop.run_until_complete(_leftovers(LEFTOVER_WAIT))
        finally:
            if left:
                log.error("exiting with %s still running (they would not stop)", ", ".join(left))
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(status)
            faulthandler.cancel_dump_traceback_later()
            asyncio.set_event_loop(None)
            loop.close()
    return status


async def _leftovers(within: float) -> list[str]:
    """Cancel the tasks still running and shut the default executor down, each for at most
    ``within`` s; the names of the tasks and non-daemon threads still running after that."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=within)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.warning("task %s ended with %r", t.get_name(), t.exception())
    gens = asyncio.ensure_future(loop.shutdown_asyncgens())
    pool = asyncio.ensure_future(loop.shutdown_default_executor())
    await asyncio.wait({gens, pool}, timeout=within)
    end = loop.time() + within  # threads a finished shutdown joined may take a moment to be gone
    while (threads := _threads()) and loop.time() < end:  # noqa: ASYNC110 (a thread's end sets no event)
        await asyncio.sleep(0.01)
    stuck = [t.get_name() for t in tasks if not t.done()]
    stuck += [what for what, f in (("closing async generators", gens), ("the default executor", pool)) if not f.done()]
    return stuck + [f"thread {n}" for n in threads]


def _threads() -> list[str]:
    """Threads the interpreter would wait for at exit."""
    return [t.name for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive() and not t.daemon]
