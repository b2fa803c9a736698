"""Shared helpers for the gateway tests: configs, keys, an in-process receiver over MQTT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from gateway.batcher import Batcher
from gateway.config import GatewayConfig, load_config_bytes
from gateway.driver_api import Reading
from gateway.keys import init_key, load_private_key
from gateway.mqtt import subscribe_forever
from gateway.receiver import KeyBindings, Receiver
from gateway.receiver.mqtt import receiver_settings, receiver_topics, topic_gateway
from gateway.registry import Registry
from gateway.store import Store
from gateway.testing import SteppedClock

REGISTRY = Registry.discover()
TESTDRIVERS = Path(__file__).parents[1] / "fixtures" / "sgtestdrivers"


def install_test_driver(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Register a test fixture as an installed distribution: a ``.dist-info`` with its
    ``sensegate.drivers`` entry points in ``site`` (which goes on the path with the fixture)."""
    info = site / f"{dist}-0.0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[sensegate.drivers]\n{lines}")


def make_config(state: Path, url: str = "", **sections: Any) -> GatewayConfig:
    """A validated config with a device key made under ``state``."""
    if not (state / "keys" / "device.key").exists():
        init_key(state / "keys", alg=sections.get("batch", {}).get("alg", "ed25519"))
    doc: dict[str, Any] = {"gateway": {"id": "gw-test", "state_dir": str(state)}}
    if url:
        doc["uplinks"] = [{"type": "mqtt", "url": url, "reconnect_max": 1}]
    doc.update(sections)
    return load_config_bytes(yaml.safe_dump(doc).encode(), REGISTRY, "test.yaml")


def sim_daemon_config(tmp: Path, url: str, gateway_id: str = "gw-kill") -> Path:
    """A config file for the real daemon: a fast sim driver (200 readings/s) and one MQTT uplink,
    state (and a new device key) under ``tmp/state``."""
    init_key(tmp / "state" / "keys")
    cfg = {
        "gateway": {"id": gateway_id, "state_dir": str(tmp / "state")},
        "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
        "drivers": [{"driver": "sim", "name": "fast", "interval": "10ms", "jitter": 0,
                     "points": [{"name": "n", "pattern": "counter"}, {"name": "t", "unit": "Cel"}]}],
    }
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def batcher_for(cfg: GatewayConfig) -> Batcher:
    """The batch step of a config made by ``make_config`` (its device key, its batch section)."""
    c = cfg.config
    return Batcher(load_private_key(Path(c.gateway.state_dir) / "keys" / "device.key"), c.gateway.id, c.batch)


def clock_store(state: Path, clock: SteppedClock, **batch: Any) -> tuple[Store, Batcher]:
    """A store (not opened) and its batch step, for a gateway whose clocks ``clock`` moves."""
    config = make_config(state, batch=batch or {"max_readings": 1000})
    c = config.config
    return Store(state / "buffer.db", c.gateway.id, c.buffer, c.batch, clock.watch()), batcher_for(config)


def put_stamped(store: Store, clock: SteppedClock, n: int, point: str = "n", every_ns: int = 10**8) -> None:
    """``n`` readings ``every_ns`` apart, stamped by the gateway's wall clock as the scheduler does."""
    for _ in range(n):
        clock.advance(every_ns)
        store.put(Reading("gw-test", point, clock.now_ns(), 1.0))


@contextlib.asynccontextmanager
async def pipeline(cfg: GatewayConfig) -> AsyncIterator[Any]:
    """A started BufferedPipeline, closed (with its drain) on exit."""
    from gateway.pipeline import BufferedPipeline
    from gateway.scheduler import NodeTracker

    p = BufferedPipeline(cfg, NodeTracker())
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@contextlib.asynccontextmanager
async def running_daemon(path: Path) -> AsyncIterator[Any]:
    """The real Daemon on ``path`` in this loop, ready; stopped (and checked to exit 0) after."""
    from gateway.daemon import Daemon

    d = Daemon(path)
    task = asyncio.create_task(d.run())
    ready = asyncio.create_task(d.ready.wait())
    await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        ready.cancel()
        await asyncio.gather(ready, return_exceptions=True)
        await task  # raises what stopped it
        raise AssertionError("daemon did not become ready")
    try:
        yield d
    finally:
        d.request_stop()
        assert await asyncio.wait_for(task, 30) == 0


async def until(cond: Any, within: float = 10.0) -> None:
    """Poll a condition that no event signals (uplink counters), with an overall limit."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


class MqttReceiver:
    """The library receiver subscribed over a real broker, in the test's loop."""

    def __init__(self, url: str, pub: Path, client_id: str = "test-receiver", blobs: bool = False,
                 gateway: str = "gw-test") -> None:
        self.rx = Receiver(KeyBindings.files(gateway, pub))
        self.blobs = blobs
        self.blob_states: dict[str, str] = {}  # sha256 hex -> last feed_blob answer
        self.readings: list[Any] = []
        self.statuses: list[str] = []
        self.boots: set[int] = set()  # boot counters seen in verified batch headers
        self.settings = receiver_settings(url, client_id=client_id)
        self.changed = asyncio.Event()
        self.connected = asyncio.Event()  # set once subscribed (a daemon started after it misses nothing)
        self._task: asyncio.Task[None] | None = None

    def _on(self, msg: Any) -> None:
        if "/blob/" in msg.topic:
            sha = msg.topic.rsplit("/", 1)[-1]
            self.blob_states[sha] = self.rx.feed_blob(sha, bytes(msg.payload))
        elif msg.topic.endswith("/batch"):
            res = self.rx.feed(bytes(msg.payload), topic_gateway(msg.topic))
            self.statuses.append(res.status)
            self.readings.extend(res.readings)
            if res.status == "ok":
                self.boots.add(res.header["bo"])
        self.changed.set()

    async def _run(self) -> None:
        await subscribe_forever(self.settings, receiver_topics(blobs=self.blobs), self._on, self.connected)

    async def wait_boot(self, boot: int, within: float = 20.0) -> None:
        """Wait for a verified batch signed during daemon run number ``boot``."""
        async with asyncio.timeout(within):
            while boot not in self.boots:
                self.changed.clear()
                await self.changed.wait()

    async def wait_readings(self, n: int, within: float = 20.0) -> list[Any]:
        async with asyncio.timeout(within):
            while len(self.readings) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.readings

    async def wait_numbered(self, n: int, within: float = 20.0) -> None:
        """Until reading numbers 1..n are each received or declared (dropped, or skipped after
        an unclean stop)."""
        async with asyncio.timeout(within):
            while True:
                s = self.rx.summary()
                if s.readings + s.dropped + s.skipped >= n:
                    return
                self.changed.clear()
                await self.changed.wait()

    @contextlib.asynccontextmanager
    async def running(self, within: float = 20.0) -> AsyncIterator[MqttReceiver]:
        """Subscribed (the broker acknowledged) before the body runs: a gateway started in it
        misses nothing. Without the wait a TLS handshake let the gateway publish first."""
        self._task = asyncio.create_task(self._run())
        try:
            subscribed = asyncio.create_task(self.connected.wait())
            await asyncio.wait({self._task, subscribed}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
            if not subscribed.done():
                subscribed.cancel()
                await asyncio.gather(subscribed, return_exceptions=True)
                if self._task.done():
                    self._task.result()  # raises what stopped it
                raise AssertionError(f"the receiver did not subscribe within {within:g} s")
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
