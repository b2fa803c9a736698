"""The fleet as the gateways report it: one row per gateway from its retained, signed messages.

Read from the broker: ``<prefix>/<gw>/status`` (online, or the last will's offline),
``<prefix>/<gw>/health`` (the last signed health summary, kept when the will fires) and
``<prefix>/<gw>/config/status`` (the last push outcome). With bound keys (``--trust``) each
summary's signature is checked (gateway/signedjson.py); a row says whether it was.
Used by `sensegate fleet status`, the fleet web page and rollouts (group membership).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gateway.mqtt import MqttSession

QUIET = 0.3  # retained messages come in a burst after SUBSCRIBE: done when none came for this long
STALE_INTERVALS = 3  # a gateway online but silent for this many status intervals is shown as stale


@dataclass
class Row:
    """One gateway in the fleet view."""

    gateway: str
    state: str = "unknown"  # online | offline | stale | unknown
    last_seen: float | None = None  # the last health summary's time
    groups: list[str] = field(default_factory=list)
    version: str = ""
    revision: int | None = None
    source: str = ""  # pushed | local file
    last_push: dict[str, Any] | None = None
    drivers_up: int = 0
    drivers_total: int = 0
    down: dict[str, str] = field(default_factory=dict)  # instance -> state: reason
    absent: list[str] = field(default_factory=list)  # expected absent, not wired yet
    buffered: int | None = None
    oldest_age_s: float | None = None
    last_ack: int | None = None
    last_ack_at: float | None = None
    clock_synced: bool | None = None
    clock_offset_s: float | None = None
    disk_free: int | None = None
    agent: dict[str, Any] | None = None
    verified: bool | str | None = None  # None: not checked; True; or why not
    verdict: str = ""  # the ingest ledger's completeness verdict, where an ingest runs

    @property
    def healthy(self) -> bool:
        """Online, every driver up (expected-absent ones aside), and verified when checked."""
        return self.state == "online" and not self.down and self.verified in (None, True)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        return out


def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _num(v: Any) -> float | None:
    """A finite number from outside input, else None (bools, text, NaN and the like are no numbers)."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (float("inf"), float("-inf")):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    n = _num(v)
    return int(n) if n is not None and abs(n) < 2**63 else None


def _texts(v: Any) -> list[str]:
    return [str(x) for x in v if isinstance(x, str | int)] if isinstance(v, list) else []


def row_from(gateway: str, seen: dict[str, Any], now: float, trust: Any = None) -> Row:
    """Build a row from what was retained for one gateway (``status``, ``health``, ``config``).

    Everything here is outside input (any client may publish on an unprotected broker): a value of
    the wrong type is shown as unknown, never trusted, never a crash."""
    from gateway.signedjson import check

    r = Row(gateway)
    status, health_msg = _map(seen.get("status")) or None, _map(seen.get("health")) or None
    if trust is not None and health_msg is not None:
        got = check(health_msg, trust, gateway, "heartbeat")
        r.verified = True if got.verified else got.reason
        health_msg = got.body
    # the newest summary: the status topic's (online) or the health topic's
    newest = max((m for m in (status, health_msg) if m and isinstance(m.get("health"), dict)),
                 key=lambda m: _num(m.get("ts")) or 0, default=None)
    if status is not None:
        r.state = "online" if status.get("state") == "online" else "offline"
    h = _map(newest["health"]) if newest else {}
    if newest is not None:
        r.last_seen = _num(newest.get("ts")) or None
        interval = _num(h.get("status_interval")) or 60.0
        if r.state == "online" and r.last_seen and interval > 0 and now - r.last_seen > STALE_INTERVALS * interval:
            r.state = "stale"
    r.groups = _texts(h.get("groups"))
    r.version = str(h.get("version") or "")[:64]
    cfg = _map(h.get("config"))
    r.revision, r.source = _int(cfg.get("revision")), str(cfg.get("source") or "")[:32]
    r.last_push = _map(cfg.get("last_push")) or None
    r.absent = _texts(h.get("absent"))
    for name, d in sorted(_map(h.get("drivers")).items()):
        if name in r.absent:
            continue
        d = _map(d)
        r.drivers_total += 1
        if d.get("state") == "running":
            r.drivers_up += 1
        else:
            r.down[name] = f"{d.get('state')}: {d.get('last_error') or 'no error'}"
    buf, bat = _map(h.get("buffer")), _map(h.get("batches"))
    r.buffered, r.oldest_age_s = _int(buf.get("readings")), _num(buf.get("oldest_age_s"))
    r.last_ack, r.last_ack_at = _int(bat.get("last_acked")), _num(bat.get("last_acked_at"))
    clk = _map(h.get("clock"))
    synced = clk.get("synchronised")
    r.clock_synced, r.clock_offset_s = synced if isinstance(synced, bool) else None, _num(clk.get("offset_s"))
    r.disk_free = _int(_map(h.get("disk")).get("free_bytes"))
    r.agent = _map(h.get("agent")) or None
    cs = seen.get("config")
    if r.last_push is None and isinstance(cs, dict):
        r.last_push = {k: cs.get(k) for k in ("state", "revision", "reason", "ts")}
    return r


def topic_parts(prefix: str, topic: str) -> tuple[str, str] | None:
    """(gateway, kind) for a fleet-view topic, else None."""
    rest = topic[len(prefix) + 1:] if topic.startswith(prefix + "/") else ""
    parts = rest.split("/")
    if len(parts) == 2 and parts[1] in ("status", "health") and parts[0] not in ("ops", "group"):
        return parts[0], parts[1]
    if len(parts) == 3 and parts[1:] == ["config", "status"] and parts[0] not in ("ops", "group"):
        return parts[0], "config"
    return None


def subscriptions(prefix: str) -> list[str]:
    return [f"{prefix}/+/status", f"{prefix}/+/health", f"{prefix}/+/config/status"]


class FleetWatch:
    """The latest retained messages per gateway, kept up to date by one subscription."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen: dict[str, dict[str, Any]] = {}
        self.last_message = 0.0
        self.changed = asyncio.Event()

    def on_message(self, msg: Any) -> None:
        where = topic_parts(self.prefix, msg.topic)
        if where is None:
            return
        gw, kind = where
        if not msg.payload:  # a retained message cleared
            self.seen.get(gw, {}).pop(kind, None)
            return
        try:
            body = json.loads(bytes(msg.payload))
        except ValueError:
            return
        if isinstance(body, dict):
            self.seen.setdefault(gw, {})[kind] = body
            self.last_message = time.monotonic()
            self.changed.set()

    def rows(self, trust: Any = None, group: str | None = None) -> list[Row]:
        now = time.time()
        rows = [row_from(gw, seen, now, trust) for gw, seen in sorted(self.seen.items())]
        return [r for r in rows if not group or group in r.groups]


async def snapshot(broker: Any, within: float = 5.0) -> FleetWatch:
    """Everything retained for the fleet view, read once (done when the burst of retained messages ends)."""
    watch = FleetWatch(broker.prefix)
    session = MqttSession(broker.settings, on_message=watch.on_message)
    await session.connect()
    try:
        await session.subscribe_each(subscriptions(broker.prefix), within=within)
        start = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    await asyncio.sleep(0.05)
                    last = watch.last_message or start
                    if time.monotonic() - last > QUIET and time.monotonic() - start > QUIET:
                        break
    finally:
        await session.close()
    return watch
