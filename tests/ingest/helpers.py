"""Test equipment for the fleet ingest: real signed batches from the gateway's own buffer."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

from gateway.batcher import Batcher
from gateway.driver_api import Reading
from gateway.keys import init_key, load_private_key
from gateway.store import Store
from gateway.testing import SteppedClock
from tests.gateway.helpers import make_config

T0 = 1_795_000_000_000_000_000


class GatewayFeed:
    """One gateway: its own state directory, key and buffer, making batches with the daemon's code.
    Its clocks are ``clock`` (synchronised and true unless a test says otherwise); a reading is
    stamped every millisecond."""

    def __init__(self, root: Path, gateway: str = "gw-a", alg: str = "ed25519",
                 clock: SteppedClock | None = None) -> None:
        self.gateway = gateway
        self.clock = clock if clock is not None else SteppedClock(T0)
        self.state = root / gateway
        init_key(self.state / "keys", alg=alg)
        self.cfg = make_config(self.state, gateway={"id": gateway, "state_dir": str(self.state)}, batch={"alg": alg})
        self.key = load_private_key(self.state / "keys" / "device.key")
        self.pub = self.state / f"{gateway}.pub.pem"  # what provisioning hands ops to enrol
        shutil.copy(self.state / "keys" / "device.pub.pem", self.pub)
        self.topic = f"sensegate/{gateway}/batch"
        self.buffer: Store | None = None
        self.n = 0

    @property
    def batcher(self) -> Batcher:
        """The batch step with the key this feed signs with now (a test may swap ``key``)."""
        c = self.cfg.config
        return Batcher(self.key, c.gateway.id, c.batch)

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[GatewayFeed]:
        c = self.cfg.config
        self.buffer = Store(self.state / "buffer.db", c.gateway.id, c.buffer, c.batch, self.clock.watch())
        await self.buffer.open()
        try:
            yield self
        finally:
            await self.buffer.close()
            self.buffer = None

    async def batch(self, readings: int = 5, ack: bool = True) -> bytes:
        """The next signed batch holding ``readings`` new readings (acknowledged, as after a PUBACK)."""
        buf = self.buffer
        assert buf is not None, "use `async with feed.open()`"
        for _ in range(readings):
            self.n += 1
            self.clock.advance(1_000_000)
            buf.put(Reading(self.gateway, "t", self.clock.now_ns(), float(self.n), "Cel"))
        await buf.commit()
        b = await buf.make_batch(self.batcher)
        assert b is not None
        if ack:
            await buf.ack(b)
        return b.data

    async def batches(self, n: int, readings: int = 5) -> list[bytes]:
        return [await self.batch(readings) for _ in range(n)]


def now_ns() -> int:
    return time.time_ns()
