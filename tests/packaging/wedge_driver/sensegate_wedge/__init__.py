"""wedge: a test-only driver that blocks the event loop once, when its trigger file appears."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.driver_api import API_VERSION, Driver, DriverConfig, Emit, Manifest
from gateway.schema import Field


class WedgeConfig(DriverConfig):
    """Where the trigger file is looked for (the service can delete it there) and how long to block."""

    trigger: str = Field(default="/var/lib/sensegate/wedge", description="File whose appearance wedges the loop.")
    block_s: float = Field(default=3600.0, description="Seconds the loop is blocked.")


def _take(trigger: Path) -> bool:
    """Delete the trigger file if it is there: the restarted daemon must not wedge again."""
    try:
        trigger.unlink()
    except FileNotFoundError:
        return False
    return True


class WedgeDriver(Driver):
    """Emits a counter; on the poll that finds the trigger file, deletes it and blocks the loop."""

    config: WedgeConfig
    count = 0

    async def poll(self, emit: Emit) -> None:
        if await self.ctx.run_blocking(_take, Path(self.config.trigger)):
            self.ctx.log.warning("wedging the event loop for %.0f s (test driver)", self.config.block_s)
            time.sleep(self.config.block_s)  # noqa: ASYNC251 -- the point: a blocked loop
        self.count += 1
        emit("count", self.count)


MANIFEST = Manifest(
    name="wedge",
    version="1.0.0",
    api_version=API_VERSION,
    description="Test only: blocks the event loop once when its trigger file appears",
    config=WedgeConfig,
    factory="sensegate_wedge:WedgeDriver",
)
