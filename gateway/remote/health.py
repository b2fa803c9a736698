"""The fleet's view of one gateway: what the health summary adds for ops, and its signed publication.

``extras(daemon)`` is what gateway.metrics.summary() adds for the fleet view: the running config
(revision and whether it was pushed or is the local file), the gateway's groups, which driver
instances are expected absent, the clock (adjtimex, as `sensegate doctor` reads it), the disk left
in the state directory, and the agent's version and update state.

``HealthPublisher`` signs the summary with the device key (gateway/signedjson.py, kind
``heartbeat``) and publishes it retained on ``<prefix>/<gw>/status`` (where the last will says
``offline``) and on ``<prefix>/<gw>/health`` (which the will leaves alone: the last health and
last-seen time of a gateway that vanished). It publishes every ``metrics.status_interval`` and
at every connect, so a broker that lost its retained messages has them again at once. This one
message is also the gateway's heartbeat (gateway/heartbeat.py): the summary's ``issued`` says
how far the buffer has numbered, and a clean stop of a pipeline publishes a last one, ``offline``,
with the final numbers (``farewell``), in place of the plain offline status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from gateway import heartbeat
from gateway.bounded import stop_task
from gateway.signedjson import seal_async

log = logging.getLogger("sensegate.health")
KIND = heartbeat.KIND
CLOSE_WAIT = 2.0
START_WAIT = 10.0  # a connect during a pipeline start: the publication waits this long for the drivers
CLOCK_EVERY = 30.0  # seconds between two adjtimex readings


_clock_cache: tuple[float, dict[str, Any]] = (-CLOCK_EVERY, {})


def clock() -> dict[str, Any]:
    """The kernel's clock discipline (adjtimex, read-only): synchronised, error bound, offset.
    Read at most every CLOCK_EVERY s (the summary is also made for each watchdog ping and scrape)."""
    global _clock_cache
    at, last = _clock_cache
    if time.monotonic() - at < CLOCK_EVERY:
        return last
    from gateway.clock import kernel_clock

    try:
        c = kernel_clock()
        got: dict[str, Any] = {"synchronised": c.synchronised, "max_error_s": c.max_error_s, "offset_s": c.offset_s}
    except OSError as e:
        got = {"synchronised": None, "error": str(e)}
    _clock_cache = (time.monotonic(), got)
    return got


def disk(path: str) -> dict[str, Any]:
    """Space left where the buffer and state live."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        return {"path": path, "error": e.strerror or str(e)}
    return {"path": path, "free_bytes": st.f_bavail * st.f_frsize, "total_bytes": st.f_blocks * st.f_frsize}


def extras(daemon: Any) -> dict[str, Any]:
    """What the fleet view needs beyond the metrics (added to gateway.metrics.summary)."""
    cfg = getattr(daemon, "cfg", None)
    remote = getattr(daemon, "remote", None)
    out: dict[str, Any] = {"clock": clock()}
    if cfg is not None:
        out["disk"] = disk(cfg.config.gateway.state_dir)
        out["groups"] = list(cfg.config.remote.groups)
        out["status_interval"] = cfg.config.metrics.status_interval
    if remote is not None:
        info = remote.info()
        # beside the summary's own running-config block (gateway/metrics.py), which says which
        # revision and from where: what the remote side adds is the hash and the last push
        out["config"] = {"sha256": info["config_sha256"], "last_push": remote.last_push()}
        out["absent"] = sorted(remote.wiring.absent(cfg))
    updater = getattr(remote, "updater", None)
    if updater is not None:
        out["agent"] = updater.describe()
    return out


def plain(value: Any) -> Any:
    """JSON-safe: tuples as lists, odd types as text, NaN and infinities as null (a NaN would not
    compare equal to itself, and the signed copy would look altered)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


class HealthPublisher:
    """Signs and publishes the health summary on the status and health topics of every MQTT uplink."""

    def __init__(self, daemon: Any, summary: Callable[[Any], dict[str, Any]]) -> None:
        self.daemon = daemon
        self.summary = summary
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.published = 0
        self._closed = False

    def attach(self, pipeline: Any) -> None:
        """Publish at once whenever one of the pipeline's MQTT uplinks (re)connects, and the last
        word when the pipeline closes."""
        pipeline.last_word = lambda: self.farewell(pipeline)
        for up in getattr(pipeline, "uplinks", []):
            if up.downlink is None:  # CoAP: no retained status to refresh
                continue
            before = up.on_state

            def on_state(connected: bool, before: Callable[[bool], None] = before, up: Any = up) -> None:
                before(connected)
                if connected:
                    self.soon(pipeline, [up])

            up.on_state = on_state

    def soon(self, pipeline: Any = None, uplinks: list[Any] | None = None) -> None:
        """Publish from a task of its own (a connect, a config applied); nothing once closed."""
        if self._closed:
            return
        task = asyncio.create_task(self._when_started(pipeline, uplinks), name="health-publish")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _when_started(self, pipeline: Any, uplinks: list[Any] | None) -> None:
        # a connect during the pipeline's start: wait (bounded) until the daemon runs it with its
        # drivers and they are past "starting" (loaded and set up, or failed), so the retained
        # summary a fleet view holds until the next interval does not show them all starting
        for _ in range(int(START_WAIT / 0.1)):
            if pipeline is None or (self.daemon.pipeline is pipeline and self._drivers_started()):
                break
            await asyncio.sleep(0.1)
        await self.publish(uplinks, pipeline)

    def _drivers_started(self) -> bool:
        supervisor = self.daemon.supervisor
        return supervisor is not None and all(r.stats.state != "starting" for r in supervisor.runners.values())

    async def publish(self, uplinks: list[Any] | None = None, pipeline: Any = None, state: str = "online") -> int:
        """Sign the summary once and publish it on each connected MQTT uplink; how many took it."""
        async with self._lock:
            pipeline = pipeline or getattr(self.daemon, "pipeline", None)
            ups = [u for u in (uplinks or getattr(pipeline, "uplinks", [])) if u.downlink is not None]
            cfg = getattr(self.daemon, "cfg", None)
            if not ups or not any(u.connected for u in ups) or cfg is None:
                return 0
            health = self.summary(self.daemon)
            if pipeline is not None and pipeline is not getattr(self.daemon, "pipeline", None):
                issued = pipeline.stats().get("issued")  # a pipeline closing on a reload: its own numbers
                health.pop("issued", None)
                if issued is not None:
                    health["issued"] = issued
            gw = cfg.config.gateway.id
            body = heartbeat.status(state, gw, ups[0].boot, plain(health))
            payload = await seal_async(body, getattr(pipeline, "key", None), gw, KIND)
            sent = sum(1 for up in ups if up.publish_health(payload, state))
            self.published += sent
            return sent

    async def farewell(self, pipeline: Any) -> int:
        """The clean stop's last heartbeat: ``offline``, with the numbers the pipeline ends on
        (called by the pipeline after its last acknowledgements are recorded, before its uplinks
        close; the uplinks then send no plain offline status)."""
        return await self.publish(None, pipeline, state="offline")

    async def close(self) -> None:
        """Stop the publications started by connects (bounded); start no more."""
        self._closed = True
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await stop_task(t, (CLOSE_WAIT,))
