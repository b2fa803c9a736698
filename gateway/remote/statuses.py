"""The gateway's answers to ops: retained, signed config statuses and command results.

Each config status is signed with the device key (gateway/signedjson.py, off the loop: it may be
a token's) and published retained on ``<prefix>/<gw>/config/status``, in the order the statuses
were made. The latest one is kept on disk (``<state_dir>/remote/status.json``) and published
again, marked ``republished``, at every connect: a broker that lost its retained messages has it
back at once, and no one takes it for a new answer. A status no uplink could take (at boot) goes
out at the next connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.remote import topics
from gateway.remote.gate import downlinks
from gateway.remote.store import write_atomic
from gateway.signedjson import seal_async

log = logging.getLogger("sensegate.remote")


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object kept by the agent, or None when absent or damaged."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


class StatusBoard:
    """Publishes one gateway's config statuses and command results on its downlink uplinks."""

    def __init__(self, gateway_id: str, host: Any, info: Callable[[], dict[str, Any]], last_file: Path) -> None:
        self.gateway_id = gateway_id
        self.host = host
        self.info = info
        self.last_file = last_file
        self.pipeline: Any = None  # the pipeline attached last: its device key signs the statuses
        self.coap: Any = None  # the CoAP config server, which serves the latest status too
        self.tasks: set[asyncio.Task[None]] = set()  # being signed and sent, in order
        self._lock = asyncio.Lock()
        self._unsent: dict[str, Any] | None = None  # a status no uplink could take yet
        self._last: dict[str, Any] | None = None

    def open(self) -> None:
        self._last = read_json(self.last_file)

    def _topic(self, prefix: str) -> str:
        return topics.config_status(prefix, self.gateway_id)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def flush(self, up: Any) -> None:
        """A (re)connected uplink gets the status that could not be published (e.g. at boot), else
        the latest one again."""
        if self._unsent is not None:
            self._spawn(self._send_signed(self._unsent), "config-status")
        elif self._last is not None:
            self._spawn(self._republish(up, self._last), "config-status-again")

    async def _republish(self, up: Any, body: dict[str, Any]) -> None:
        async with self._lock:
            again = {**body, "republished": round(time.time(), 3)}
            payload = await seal_async(again, getattr(self.pipeline, "key", None), self.gateway_id, "config-status")
            up.publish(self._topic(up.topic_prefix), payload, retain=True)

    def last_push(self) -> dict[str, Any] | None:
        """The latest push outcome, for the health summary."""
        b = self._last
        return None if b is None else {k: b.get(k) for k in ("state", "revision", "reason", "ts")}

    def status(self, state: str, reason: str, revision: int | None) -> None:
        """Make, log and send one config status."""
        body = {"gateway": self.gateway_id, "state": state, "revision": revision, "reason": reason,
                **self.info(), "ts": round(time.time(), 3)}
        (log.info if state in ("received", "applied") else log.warning)(
            "config push%s: %s%s", f" revision {revision}" if revision else "", state, f": {reason}" if reason else "")
        self._spawn(self._send_signed(body), "config-status")

    async def _send_signed(self, body: dict[str, Any]) -> None:
        async with self._lock:
            payload = await seal_async(body, getattr(self.pipeline, "key", None), self.gateway_id, "config-status")
            sent = False
            for up in downlinks(self.host.pipeline):
                sent = up.publish(self._topic(up.topic_prefix), payload, retain=True) or sent
            self._unsent = None if sent else body
            self._last = body
            if self.coap is not None:
                self.coap.status.update(payload)
            try:
                await asyncio.to_thread(write_atomic, self.last_file, json.dumps(body).encode())
            except OSError as e:
                log.warning("cannot keep the latest config status in %s: %s", self.last_file, e)
            health = getattr(self.host, "health", None)
            if health is not None and body["state"] in ("applied", "rolled_back", "reverted"):
                health.soon()  # the fleet view shows the new running config at once

    def result(self, cmd_id: str, body: dict[str, Any]) -> None:
        """A command's result on ``<prefix>/<gw>/cmd/res/<id>`` (not retained)."""
        payload = json.dumps({"gateway": self.gateway_id, "id": cmd_id, **body, "ts": round(time.time(), 3)}).encode()
        for up in downlinks(self.host.pipeline):
            up.publish(topics.command_result(up.topic_prefix, self.gateway_id, cmd_id), payload, retain=False)
