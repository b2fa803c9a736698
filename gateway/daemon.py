"""The daemon: load the config, run the pipeline and the drivers, handle signals.

SIGTERM/SIGINT stop cleanly (drivers closed, pending readings flushed). SIGHUP re-reads the
config file: an invalid file is reported and the running config kept; a valid one restarts
only the driver instances whose sections changed (see gateway.config.apply).

The file given with -c is also the trust anchor for remote config (gateway.remote): when a
signed pushed config is current, the daemon boots that one and the file is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Protocol

from gateway.config import ConfigInvalid, GatewayConfig, load_config
from gateway.config.apply import plan
from gateway.driver_api import Reading
from gateway.logs import set_level
from gateway.metrics import MetricsServer, status_line
from gateway.registry import Registry
from gateway.remote.agent import RemoteAgent
from gateway.remote.envelope import Rejected
from gateway.scheduler import NodeTracker, Supervisor
from gateway.service import Notifier
from gateway.sinks import JsonlSink

log = logging.getLogger("sensegate.daemon")
DEFAULT_CONFIG = "/etc/sensegate/sensegate.yaml"


class Pipeline(Protocol):
    """Everything between the drivers' emit and the network: takes readings, never blocks."""

    async def start(self) -> None: ...

    def put(self, reading: Reading) -> None: ...

    async def close(self) -> None: ...


class DirectPipeline:
    """Readings straight to JSON-lines uplinks, with no buffer (used when no uplink needs one)."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.sinks = [JsonlSink(u.path) for u in cfg.config.uplinks if u.type == "jsonl"]

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

    def request_stop(self) -> None:
        """Ask the daemon to stop (signal-safe: called from the loop)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Ask the daemon to re-read its config file."""
        self._reload.set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit status."""
        # ConfigInvalid propagates to the CLI; an instance whose driver does not load stays down alone
        boot = load_config(self.config_path, self.registry, broken_ok=True)
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
            await self.metrics.apply(cfg.config.metrics.enabled, cfg.config.metrics.listen)
            self.ready.set()
            self.notifier.ready(status_line(self))
            watchdog = asyncio.create_task(self.notifier.watchdog_loop(lambda: status_line(self)), name="watchdog")
            health = asyncio.create_task(self._health_loop(), name="health")
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
                    if self.cfg is not None:
                        await self.metrics.apply(self.cfg.config.metrics.enabled, self.cfg.config.metrics.listen)
                    self.notifier.ready(status_line(self))
        finally:
            self.notifier.stopping()
            if watchdog is not None:
                watchdog.cancel()
                health.cancel()
                await asyncio.gather(watchdog, health, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.metrics.close()
            await self.remote.close()
            await self._shutdown()
            self.notifier.close()
        log.info("sensegate stopped")
        return 0

    async def _health_loop(self) -> None:
        """Publish the health summary on the status topic of each MQTT uplink, periodically."""
        from gateway.metrics import summary

        while True:
            interval = self.cfg.config.metrics.status_interval if self.cfg is not None else 60.0
            if not interval:
                return
            await asyncio.sleep(interval)
            for up in getattr(self.pipeline, "uplinks", []):
                if hasattr(up, "publish_health"):
                    up.publish_health(summary(self))

    def _bootstrap_bytes(self) -> bytes:
        """The local config as read: the file and its drop-ins, in merge order."""
        from gateway.config.validate import config_files

        out = b""
        for f in config_files(self.config_path):
            try:
                out += f.read_bytes()
            except OSError:
                continue
        return out

    def _report_down(self, cfg: GatewayConfig) -> None:
        """One line per instance whose driver does not load (the others run)."""
        for d in cfg.down:
            log.error("driver instance %s is down: driver %r does not load: %s (the other %d instance(s) run; "
                      "`sensegate drivers` lists it, `sensegate driver list` shows installed drivers)",
                      d.name, d.driver, d.reason, len(cfg.instances))

    async def _start(self, cfg: GatewayConfig) -> None:
        self._report_down(cfg)
        self.cfg = cfg
        pipeline = build_pipeline(cfg, self.nodes)
        if self.remote is not None:
            self.remote.attach(pipeline)  # downlink hooks go on before the uplinks connect
        try:
            await pipeline.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await pipeline.close()
            raise
        self.pipeline = pipeline
        self.supervisor = Supervisor(cfg.config.gateway.id, self.pipeline, self.nodes)
        for inst in cfg.instances:
            self.supervisor.start(inst)

    async def _shutdown(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop_all()
        if self.pipeline is not None:
            await self.pipeline.close()
        self.supervisor = None
        self.pipeline = None

    async def reload(self) -> bool:
        """Re-read the config file and apply what changed; keep running on a bad file."""
        try:
            self.registry.refresh()  # drivers installed since the start are found
            new = load_config(self.config_path, self.registry, broken_ok=True)
            if self.remote is not None:
                new = self.remote.refresh_bootstrap(new, self._bootstrap_bytes())
        except (ConfigInvalid, Rejected) as e:
            log.error("reload refused, keeping the running config:\n%s", e)
            return False
        async with self.apply_lock:
            await self.apply_config(new)
        return True

    async def apply_config(self, new: GatewayConfig) -> None:
        """Run ``new``: restart only the instances whose sections changed (or all, with the pipeline)."""
        set_level(new.config.gateway.log_level)
        if self.cfg is None or self.supervisor is None or self.pipeline is None:
            await self._shutdown()  # an earlier apply failed half way: start from scratch
            await self._start(new)
            return
        p = plan(self.cfg, new)
        if p.restart_pipeline:
            log.info("reload: gateway, buffer or uplinks changed; restarting the pipeline")
            await self._shutdown()
            await self._start(new)
            return
        self._report_down(new)
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
