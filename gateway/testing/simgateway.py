"""Simulated gateways for fleet operations: many in one process, each the real daemon and remote agent.

A ``SimGateway`` is a real ``gateway.daemon.Daemon`` (the remote agent, its checks, staging, apply,
health gate, rollback, signed statuses and health summaries, all as on a gateway) with its own
identity, device key, state directory and MQTT connection. Only the durable buffer is left out:
its pipeline (``LightPipeline``) drops readings instead of storing and batching them, so a
hundred fit in one process on a small machine. Used by the rollout tests and the fleet benchmark.

A gateway can be made *broken*: its driver registry says the ``sim`` driver needs a library that
is not installed (as on a gateway whose package lacks an extra), so a config that starts a new
``sim`` instance fails its health gate there and rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.bounded import stop_task
from gateway.config import GatewayConfig
from gateway.daemon import Daemon
from gateway.driver_api import Reading
from gateway.keys import init_key
from gateway.registry import Registry
from gateway.scheduler import NodeTracker

SIM_DRIVER = {"driver": "sim", "name": "counter", "interval": "5s", "jitter": 0,
              "points": [{"name": "n", "pattern": "counter"}]}


class LightPipeline:
    """The MQTT uplinks and the device key of a pipeline, without the buffer: readings are counted
    and dropped. Enough for everything the remote agent and the health summary do."""

    def __init__(self, cfg: GatewayConfig, nodes: NodeTracker) -> None:
        from gateway.pipeline import make_uplink

        c = cfg.config
        self.cfg = cfg
        self.mode = c.uplink_mode
        self.uplinks = [make_uplink(u, c.gateway.id, nodes) for u in c.uplinks if u.type == "mqtt"]
        self.key: Any = None
        self.readings = 0

    async def start(self) -> None:
        from gateway.signing import open_device_key

        self.key = await open_device_key(self.cfg)
        for up in self.uplinks:
            await up.start()

    @property
    def sink(self) -> LightPipeline:
        return self  # readings are counted and dropped

    def put(self, reading: Reading) -> None:
        self.readings += 1

    async def rotate_key(self) -> dict[str, Any]:
        raise RuntimeError("a simulated gateway does not rotate its device key")

    def stats(self) -> dict[str, Any]:
        return {"buffer": {"readings": 0, "oldest_age_s": 0.0}, "batches": {"sent": 0, "acked": 0},
                "uplinks": {u.name: {"connected": u.connected} for u in self.uplinks}}

    async def close(self) -> None:
        for up in self.uplinks:
            await up.close()
        if self.key is not None:
            self.key.close()


class BrokenRegistry(Registry):
    """The installed drivers, except that ``sim`` needs a library this gateway does not have,
    also after the re-discovery a reload or a push makes."""

    MISSING = "sensegate_sim_hardware_lib"

    def refresh(self) -> None:
        super().refresh()
        sim = self.manifests["sim"]
        self.manifests = {**self.manifests, "sim": dataclasses.replace(sim, requires=(*sim.requires, self.MISSING))}


def broken_registry() -> Registry:
    """A registry in which the ``sim`` driver cannot load (see BrokenRegistry)."""
    reg = BrokenRegistry({}, [])
    reg.refresh()
    return reg


class SimGateway:
    """One simulated gateway: its files under ``root/<id>``, its daemon running in this loop."""

    def __init__(self, root: Path, gateway_id: str, url: str, ops_keys: list[str], groups: Iterable[str],
                 broken: bool = False, drivers: list[dict[str, Any]] | None = None,
                 uplink_timeout: str = "5s", driver_timeout: str = "5s", status_interval: str = "1h") -> None:
        self.id = gateway_id
        self.dir = root / gateway_id
        self.config = root / f"{gateway_id}.yaml"
        self.broken = broken
        if not (self.dir / "keys" / "device.key").exists():
            init_key(self.dir / "keys")
        doc = {"gateway": {"id": gateway_id, "state_dir": str(self.dir)},
               "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 2, "keepalive": 30}],
               "metrics": {"status_interval": status_interval},
               "remote": {"ops_keys": ops_keys, "groups": list(groups), "uplink_timeout": uplink_timeout,
                          "driver_timeout": driver_timeout},
               "drivers": drivers if drivers is not None else [dict(SIM_DRIVER)]}
        self.config.write_text(yaml.safe_dump(doc))
        self.daemon: Daemon | None = None
        self._task: asyncio.Task[int] | None = None

    @property
    def public_key(self) -> Path:
        return self.dir / "keys" / "device.pub.pem"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, registry: Registry | None = None) -> None:
        """Start the daemon and wait until it is ready and its uplink connected (bounded)."""
        d = Daemon(self.config, registry or (broken_registry() if self.broken else _registry()))
        d.build_pipeline = LightPipeline
        self.daemon = d
        self._task = asyncio.create_task(d.run(), name=f"sim:{self.id}")
        async with asyncio.timeout(30):
            while not (d.ready.is_set() and d.pipeline is not None
                       and all(u.connected for u in getattr(d.pipeline, "uplinks", []))):
                if self._task.done():
                    await self._task  # raises what stopped it
                    raise RuntimeError(f"simulated gateway {self.id} stopped at start")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop cleanly (the uplink says offline)."""
        d, task = self.daemon, self._task
        if d is None or task is None:
            return
        d.request_stop()
        await asyncio.wait({task}, timeout=30.0)
        self._task = None
        if not task.done():
            await stop_task(task, (5.0,))
            raise RuntimeError(f"simulated gateway {self.id} did not stop within 30 s")
        with contextlib.suppress(asyncio.CancelledError):
            await task


_REGISTRY: Registry | None = None


def _registry() -> Registry:
    """One discovery for every simulated gateway of the process (it reads every entry point)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry.discover()
    return _REGISTRY


async def start_all(gateways: Iterable[SimGateway], at_once: int = 10) -> None:
    """Start many, a few at a time (each start connects and signs its first statuses)."""
    todo = list(gateways)
    for i in range(0, len(todo), at_once):
        await asyncio.gather(*(g.start() for g in todo[i:i + at_once]))


async def stop_all(gateways: Iterable[SimGateway]) -> None:
    await asyncio.gather(*(g.stop() for g in gateways if g.running))
