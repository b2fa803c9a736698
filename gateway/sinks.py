"""Sinks that take readings straight from the drivers, without the durable buffer.

``JsonlSink`` writes each reading as one JSON object per line (to stdout or a file): handy
for debugging a driver (`sensegate run` with a jsonl uplink and no buffer) and in tests.
``RecordingSink`` keeps readings in memory, for tests and the driver test kit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
from dataclasses import asdict
from typing import IO, Any

from gateway.driver_api import Blob, Location, Quality, Reading


def reading_to_json(r: Reading) -> dict[str, Any]:
    """A reading as a JSON-friendly dict (the form `sensegate receive` also writes)."""
    out: dict[str, Any] = {"node": r.node, "point": r.point, "t_ns": r.ts_ns}
    v = r.value
    if isinstance(v, bool):
        out["vb"] = v
    elif isinstance(v, int | float):
        out["v"] = v
    elif isinstance(v, str):
        out["vs"] = v
    elif isinstance(v, bytes):
        out["vd"] = base64.urlsafe_b64encode(v).rstrip(b"=").decode()
    elif isinstance(v, Blob):
        out["blob"] = {"sha256": hashlib.sha256(v.data).hexdigest(), "size": len(v.data), "type": v.content_type}
    elif isinstance(v, Location):
        out["loc"] = {k: x for k, x in asdict(v).items() if x is not None}
    if r.unit:
        out["u"] = r.unit
    if r.quality != Quality.GOOD:
        out["q"] = r.quality.name.lower()
    out["path"] = f"ip{int(r.path)}"
    if r.instance:
        out["instance"] = r.instance
    return out


class JsonlSink:
    """Write readings as JSON lines; flushed once per event-loop turn, not per reading."""

    def __init__(self, path: str = "-") -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._pending: list[str] = []
        self._scheduled = False

    def open(self) -> None:
        """Open the target (append mode for files)."""
        if self.path == "-":
            self._fh = sys.stdout
        else:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)

    def put(self, reading: Reading) -> None:
        self._pending.append(json.dumps(reading_to_json(reading), separators=(",", ":")))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write what is pending."""
        self._scheduled = False
        if self._fh is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._fh.write("\n".join(lines) + "\n")
            self._fh.flush()
        except BrokenPipeError:  # `sensegate run | head` must not crash the daemon
            self._fh = None

    def close(self) -> None:
        """Flush and close (stdout is left open)."""
        self.flush()
        if self._fh is not None and self._fh is not sys.stdout:
            self._fh.close()
        self._fh = None


class RecordingSink:
    """Keep readings in memory and let a test wait for them."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self._changed = asyncio.Event()

    def put(self, reading: Reading) -> None:
        self.readings.append(reading)
        self._changed.set()

    def points(self, point: str | None = None, node: str | None = None) -> list[Reading]:
        """Readings filtered by point and/or node."""
        return [r for r in self.readings if (point is None or r.point == point) and (node is None or r.node == node)]

    async def wait_for(self, count: int, within: float = 10.0, **filters: str) -> list[Reading]:
        """Wait until at least ``count`` readings (matching filters) have arrived."""
        async with asyncio.timeout(within):
            while True:
                got = self.points(**filters)
                if len(got) >= count:
                    return got
                self._changed.clear()
                await self._changed.wait()
