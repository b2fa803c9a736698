"""Run one driver instance in the real scheduler with a recording sink."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.config.validate import Instance
from gateway.driver_api import Manifest
from gateway.scheduler import Clock, InstanceRunner, NodeTracker
from gateway.sinks import RecordingSink


def make_instance(manifest: Manifest, **options: Any) -> Instance:
    """Validate options against the driver's schema, as a config file would be."""
    options.setdefault("driver", manifest.name)
    cfg = manifest.config.model_validate(options)
    return Instance(cfg.name or manifest.name, manifest, cfg)


@dataclass
class DriverHarness:
    """A running instance: its runner (stats, write, poll_now), sink and node states."""

    runner: InstanceRunner
    sink: RecordingSink
    nodes: NodeTracker


@contextlib.asynccontextmanager
async def run_driver(
    manifest: Manifest,
    gateway_id: str = "gw-test",
    backoff: tuple[float, float] = (0.05, 0.2),
    clock: Clock | None = None,
    **options: Any,
) -> AsyncIterator[DriverHarness]:
    """Start an instance under the real InstanceRunner; stop and close it on exit.

    ``options`` are the instance's YAML options (validated by the driver's schema);
    ``clock`` (a ``FakeClock``) puts the poll schedule and the restart backoff on fake time.
    """
    inst = make_instance(manifest, **options)
    sink = RecordingSink()
    nodes = NodeTracker()
    runner = InstanceRunner(inst, gateway_id, sink, nodes, backoff=backoff, clock=clock)
    runner.start()
    try:
        yield DriverHarness(runner, sink, nodes)
    finally:
        await runner.stop()
