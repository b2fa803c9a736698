"""Signed downlink commands: parse, refuse replays and expired ones, run them on the drivers.

Operations map onto the driver contract: ``write`` (Modbus register/coil, any writable point)
is ``runner.write(point, value)``, bounded by what the driver's config marks writable and its
min/max; ``snapshot`` is ``write("snapshot", True)`` on a camera; ``poll`` re-reads at once;
``restart`` stops and starts one instance; ``log_level`` changes the daemon's log level;
``ping`` answers with the running config's revision and hash; ``rotate_key`` makes a new device
key and switches to it at the next batch (gateway/devicekey.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cbor2

from gateway.config.validate import GatewayConfig
from gateway.driver_api import ConfigError
from gateway.logs import set_level
from gateway.remote.envelope import MAX_UINT, Rejected, cbor_map, check_numbers
from gateway.remote.store import write_atomic
from gateway.remote.topics import COMMAND_ID
from gateway.scheduler import InstanceRunner, Supervisor

if TYPE_CHECKING:
    from gateway.daemon import Pipeline

log = logging.getLogger("sensegate.remote")
OPS = ("ping", "write", "snapshot", "poll", "restart", "log_level", "rotate_key", "revert")
ROTATE_TIMEOUT = 60.0  # a token that takes longer: the switch finishes later, the answer says so
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_REMEMBERED = 10_000


class Refused(Rejected):
    """A well-formed command the gateway will not carry out (unknown instance, point not writable)."""


@dataclass(frozen=True)
class Command:
    """One verified command."""

    id: str
    op: str
    args: dict[str, Any]
    expires: float


class Host(Protocol):
    """What commands need from the daemon."""

    cfg: GatewayConfig | None
    supervisor: Supervisor | None
    pipeline: Pipeline | None
    apply_lock: asyncio.Lock


def peek_id(payload: bytes) -> str:
    """The id a command claims, if it is usable as a topic level (for answering refusals)."""
    try:
        body = cbor2.loads(payload)
    except Exception:
        return "-"
    cid = body.get("id") if isinstance(body, dict) else None
    return cid if isinstance(cid, str) and COMMAND_ID.match(cid) else "-"


def parse_command(payload: bytes) -> Command:
    """Decode and check a command's CBOR map: id, op, args, exp."""
    body = cbor_map(payload, "command (a map with id, op, args and exp)")
    cid, op, args, exp = body.get("id"), body.get("op"), body.get("args", {}), body.get("exp")
    if not isinstance(cid, str) or not COMMAND_ID.match(cid):
        raise Rejected("command id must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if op not in OPS:
        raise Rejected(f"unknown operation {op!r} (known: {', '.join(OPS)})")
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise Rejected("args must be a map with text keys")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise Rejected("command needs an expiry (exp, Unix seconds)")
    if not (math.isfinite(exp) and 0 <= exp <= MAX_UINT):  # NaN would pass every expiry check
        raise Rejected(f"expiry (exp) must be a finite time in Unix seconds, not {exp!r}")
    check_numbers(args, "args")
    return Command(cid, op, args, float(exp))


class CommandLog:
    """Ids of commands already taken, kept (on disk) until they expire: a replay is refused."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, float] = {}

    def open(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes())
            self.ids = {str(k): float(v) for k, v in raw.items() if math.isfinite(float(v))}
        except FileNotFoundError:
            self.ids = {}
        except (ValueError, TypeError, AttributeError) as e:
            log.error("command log %s is unreadable (%s); starting a new one", self.path, e)
            self.ids = {}

    def take(self, cmd: Command, now: float, max_ttl: float) -> None:
        """Refuse an expired, too-long-lived or already-seen command; else record it durably."""
        if not math.isfinite(cmd.expires):  # parse_command refuses it too; a NaN passes every check below
            raise Rejected(f"expiry {cmd.expires!r} is not a finite time")
        if cmd.expires <= now:
            raise Rejected(f"expired {now - cmd.expires:.0f} s ago")
        if cmd.expires > now + max_ttl:
            raise Rejected(f"expires {cmd.expires - now:.0f} s ahead, beyond remote.max_command_ttl ({max_ttl:g} s)")
        self.ids = {k: v for k, v in self.ids.items() if v > now}
        if cmd.id in self.ids:
            raise Rejected(f"replayed: command id {cmd.id!r} was already taken")
        if len(self.ids) >= MAX_REMEMBERED:
            raise Rejected(f"{MAX_REMEMBERED} unexpired commands are already remembered; use shorter expiries")
        self.ids[cmd.id] = cmd.expires
        write_atomic(self.path, json.dumps(self.ids).encode())  # before acting: a crash cannot re-run it


def _runner(host: Host, args: Mapping[str, Any]) -> InstanceRunner:
    name = args.get("instance")
    sup = host.supervisor
    if not isinstance(name, str) or sup is None or name not in sup.runners:
        known = ", ".join(sorted(sup.runners)) if sup is not None else ""
        raise Refused(f"no driver instance {name!r} (running: {known or 'none'})")
    return sup.runners[name]


async def execute(cmd: Command, host: Host, info: Mapping[str, Any]) -> dict[str, Any]:
    """Carry out one command; Refused for a request the config does not allow."""
    a = cmd.args
    if cmd.op == "ping":
        return {"pong": True, **info, "ts": round(time.time(), 3)}
    if cmd.op == "log_level":
        level = a.get("level")
        if level not in LOG_LEVELS:
            raise Refused(f"level must be one of {', '.join(LOG_LEVELS)}")
        set_level(str(level))
        log.info("log level set to %s by command %s", level, cmd.id)
        return {"log_level": level}
    if cmd.op == "rotate_key":
        pipeline = host.pipeline
        if pipeline is None or pipeline.key is None:
            raise Refused("this gateway signs no batches (no mqtt or coap uplink): there is no device key to rotate")
        async with asyncio.timeout(ROTATE_TIMEOUT), host.apply_lock:  # no pipeline restart meanwhile
            result = await pipeline.rotate_key()
        log.warning("device key rotated by command %s: now %s", cmd.id, result["fingerprint"])
        return result
    runner = _runner(host, a)
    if cmd.op == "poll":
        runner.poll_now()
        return {"instance": runner.name, "poll": "requested"}
    if cmd.op == "restart":
        async with host.apply_lock:
            assert host.supervisor is not None and host.cfg is not None
            await host.supervisor.stop(runner.name)
            host.supervisor.start(host.cfg.instance(runner.name))
        return {"instance": runner.name, "restarted": True}
    point = a.get("point", "snapshot" if cmd.op == "snapshot" else None)
    value = True if cmd.op == "snapshot" else a.get("value")
    if not isinstance(point, str) or not point:
        raise Refused("write needs a point")
    if not isinstance(value, bool | int | float | str):
        raise Refused("write needs a value: true/false, a number or text")
    try:
        await runner.write(point, value)
    except ConfigError as e:
        raise Refused(str(e)) from None
    return {"instance": runner.name, "point": point, "value": value, "written": True}
