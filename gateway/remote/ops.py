"""The operator's side: sign and push configs and commands, wait for the gateways' answers.

Used by `sensegate config push`, `sensegate command` and `sensegate status`, and by tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway.keys import PrivateKey
from gateway.mqtt import MqttError, MqttSession, MqttSettings
from gateway.remote import topics
from gateway.remote.envelope import encode_command, group_target, sign

FINAL = ("rejected", "applied", "rolled_back")


@dataclass
class Broker:
    """Where to reach the gateways: connection settings and the topic prefix."""

    settings: MqttSettings
    prefix: str = "sensegate"

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> Broker:
        """mqtt://HOST:PORT[/PREFIX] (the same form `sensegate receive` takes)."""
        prefix = urlsplit(url).path.strip("/") or "sensegate"
        kw.setdefault("client_id", f"sensegate-ops-{secrets.token_hex(4)}")
        return cls(MqttSettings.from_url(url, protocol="3.1.1", **kw), prefix)


@dataclass
class Answers:
    """Messages collected by one exchange, by gateway."""

    by_gateway: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: list[dict[str, Any]] = field(default_factory=list)
    timed_out: bool = False


async def exchange(broker: Broker, subscribe: list[str], publish: tuple[str, bytes, bool] | None,
                   accept: Callable[[str, dict[str, Any]], str], done: Callable[[Answers], bool],
                   within: float, live_only: bool = True, tick: float | None = None) -> Answers:
    """Subscribe, publish once, and collect answers until ``done`` or ``within`` seconds.

    ``accept(topic, body)`` says what a message is: "final" (an answer), "progress" or "" (ignore).
    With ``live_only`` retained messages (answers to earlier requests) are skipped; ``tick``
    re-checks ``done`` at least that often.
    """
    answers = Answers()
    changed = asyncio.Event()

    def on_message(msg: Any) -> None:
        if live_only and msg.retain:
            return
        try:
            body = json.loads(bytes(msg.payload))
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        kind = accept(msg.topic, body)
        if kind == "final":
            answers.by_gateway[str(body.get("gateway", msg.topic))] = body
        elif kind == "progress":
            answers.progress.append(body)
        changed.set()

    session = MqttSession(broker.settings, on_message=on_message)
    await session.connect()
    try:
        await session.subscribe_each(subscribe)  # QoS 0, one at a time: nothing past the broker's queue limit
        if publish is not None:
            session.client.publish(publish[0], publish[1], qos=1, retain=publish[2])
        try:
            async with asyncio.timeout(within):
                while not done(answers):
                    changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(tick):
                            await changed.wait()
        except TimeoutError:
            answers.timed_out = True
    finally:
        await session.close()
    return answers


def _target_topic(prefix: str, to: str | None, group: str | None, kind: str) -> tuple[str, str]:
    if to:
        return to, (topics.config_set if kind == "config" else topics.command_request)(prefix, to)
    assert group
    return group_target(group), (topics.group_config_set if kind == "config" else topics.group_command_request)(
        prefix, group)


async def push_config(broker: Broker, key: PrivateKey, yaml_bytes: bytes, *, to: str | None = None,
                      group: str | None = None, revision: int | None = None, expect: int = 1,
                      within: float = 60.0, retain: bool = False, raw: bytes | None = None) -> tuple[int, Answers]:
    """Sign and push a config (or push ``raw`` as it is); wait for ``expect`` gateways' final status."""
    rev = revision if revision is not None else int(time.time() * 1000)  # newer than any earlier push
    target, topic = _target_topic(broker.prefix, to, group, "config")
    doc = raw if raw is not None else sign(key, "config", target, yaml_bytes, revision=rev)

    def accept(t: str, body: dict[str, Any]) -> str:
        if to and body.get("gateway") != to:
            return ""
        if body.get("revision") not in (rev, None):  # None: refused before its revision could be trusted
            return ""
        if body.get("republished") and body.get("revision") != rev:  # an earlier answer, sent again at a connect
            return ""
        return "final" if body.get("state") in FINAL else "progress"

    status = topics.config_status(broker.prefix, to or "+")
    answers = await exchange(broker, [status], (topic, doc, retain), accept,
                             lambda a: len(a.by_gateway) >= expect, within)
    return rev, answers


async def send_command(broker: Broker, key: PrivateKey, op: str, args: dict[str, Any], *, to: str | None = None,
                       group: str | None = None, ttl: float = 60.0, expect: int = 1, within: float = 30.0,
                       cmd_id: str | None = None, raw: bytes | None = None) -> tuple[str, bytes, Answers]:
    """Sign and send a command (or re-send ``raw``, as a replay test does); wait for results."""
    cid = cmd_id or f"c{int(time.time())}-{secrets.token_hex(4)}"
    target, topic = _target_topic(broker.prefix, to, group, "command")
    doc = raw if raw is not None else sign(key, "command", target, encode_command(cid, op, args, time.time() + ttl))
    res = topics.command_result(broker.prefix, to or "+", cid)
    answers = await exchange(broker, [res], (topic, doc, False), lambda t, b: "final" if b.get("id") == cid else "",
                             lambda a: len(a.by_gateway) >= expect, within)
    return cid, doc, answers


async def gateway_status(broker: Broker, gateways: list[str], within: float = 2.0) -> dict[str, dict[str, Any]]:
    """The retained online status and config status of gateways (all seen, when none named)."""
    out: dict[str, dict[str, Any]] = {}

    def accept(t: str, body: dict[str, Any]) -> str:
        parts = t.split("/")
        gw = parts[-3] if t.endswith("/config/status") else parts[-2]
        if gateways and gw not in gateways:
            return ""
        entry = out.setdefault(gw, {})
        entry["config" if t.endswith("/config/status") else "online"] = body
        return "progress"

    loop = asyncio.get_running_loop()
    online_at: list[float] = []

    def done(a: Answers) -> bool:
        if not gateways or not all("online" in out.get(g, {}) for g in gateways):
            return False
        if all("config" in out[g] for g in gateways):
            return True
        if not online_at:
            online_at.append(loop.time())
        return loop.time() - online_at[0] > 0.5  # a gateway never pushed to has no config status

    subs = [topics.config_status(broker.prefix, "+"), f"{broker.prefix}/+/status"]
    await exchange(broker, subs, None, accept, done, within, live_only=False, tick=0.1)
    return out


async def publish_retained(broker: Broker, topic: str, payload: bytes, within: float = 30.0) -> bool:
    """Publish one retained message (QoS 1) and wait for the broker's acknowledgement."""
    acked = asyncio.Event()
    mids: set[int] = set()

    def on_publish(mid: int) -> None:
        if mid in mids:
            acked.set()

    session = MqttSession(broker.settings, on_publish=on_publish)
    try:
        async with asyncio.timeout(within):
            await session.connect()
            info = session.client.publish(topic, payload, qos=1, retain=True)
            mids.add(info.mid)
            if not info.is_published():
                await acked.wait()
    except (TimeoutError, OSError, MqttError):
        return False
    finally:
        await session.close()
    return True
