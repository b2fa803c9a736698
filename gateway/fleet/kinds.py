"""What a rollout sends and how it reads the answers: a config push, a command, a revert, an agent update.

Each kind signs one document per gateway (addressed to that gateway alone, so waves can be cut
out of a group), says on which topic it goes (retained: a gateway offline now takes it when it
connects, until the document's expiry) and turns a gateway's message into an outcome: ``ok``,
``failed`` (with the gateway's reason) or nothing (progress, or not an answer to this rollout).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.keys import PrivateKey
from gateway.remote import topics
from gateway.remote.envelope import encode_command, sign

OK, FAILED = "ok", "failed"


@dataclass(frozen=True)
class Answer:
    """A gateway's final answer to a rollout's document."""

    gateway: str
    outcome: str  # ok | failed
    reason: str
    extra: dict[str, Any]


class Kind(Protocol):
    """One kind of rolled-out document."""

    name: str
    retained_answers: bool  # answers stay on the broker (config statuses): a later `rollout status` reads them

    def describe(self) -> str: ...

    def topic(self, prefix: str, gateway: str) -> str: ...

    def document(self, key: PrivateKey, gateway: str, expires: int) -> bytes: ...

    def answer_filters(self, prefix: str) -> list[str]: ...

    def answer(self, prefix: str, topic: str, body: dict[str, Any], sent_at: float | None) -> Answer | None: ...


def _gateway_of(prefix: str, topic: str) -> str:
    return topic[len(prefix) + 1:].split("/", 1)[0]


@dataclass
class ConfigKind:
    """A config push at one revision; the answer is the gateway's config status for it."""

    yaml: bytes
    revision: int
    label: str = ""
    name: str = "config"
    retained_answers: bool = True

    def describe(self) -> str:
        return f"config {self.label or ''} revision {self.revision}".replace("  ", " ")

    def topic(self, prefix: str, gateway: str) -> str:
        return topics.config_set(prefix, gateway)

    def document(self, key: PrivateKey, gateway: str, expires: int) -> bytes:
        return sign(key, "config", gateway, self.yaml, revision=self.revision, expires=expires)

    def answer_filters(self, prefix: str) -> list[str]:
        return [topics.config_status(prefix, "+")]

    def answer(self, prefix: str, topic: str, body: dict[str, Any], sent_at: float | None) -> Answer | None:
        gw = str(body.get("gateway") or _gateway_of(prefix, topic))
        state, rev = body.get("state"), body.get("revision")
        if rev == self.revision:
            if state == "applied":
                return Answer(gw, OK, str(body.get("reason", "")), {"running_revision": body.get("running_revision")})
            if state in ("rejected", "rolled_back"):
                return Answer(gw, FAILED, f"{state.replace('_', ' ')}: {body.get('reason', '')}", {})
            return None
        # refused before its revision could be trusted (expired, bad signature): a live answer only
        if rev is None and state == "rejected" and not body.get("republished") and sent_at is not None \
                and float(body.get("ts") or 0) >= sent_at - 5:
            return Answer(gw, FAILED, f"rejected: {body.get('reason', '')}", {})
        return None


@dataclass
class CommandKind:
    """A command (or a revert: a rollout's rollback); the answer is the command's result."""

    op: str
    args: dict[str, Any]
    cmd_id: str
    ttl: float
    name: str = "command"
    retained_answers: bool = False
    per_gateway_args: dict[str, dict[str, Any]] | None = None  # a revert's from/to differ per gateway

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"command {self.op}{' ' + shown if shown else ''} (id {self.cmd_id})"

    def topic(self, prefix: str, gateway: str) -> str:
        return topics.command_request(prefix, gateway)

    def document(self, key: PrivateKey, gateway: str, expires: int) -> bytes:
        args = {**self.args, **((self.per_gateway_args or {}).get(gateway) or {})}
        exp = min(expires, int(time.time() + self.ttl)) if expires else int(time.time() + self.ttl)
        return sign(key, "command", gateway, encode_command(self.cmd_id, self.op, args, exp))

    def answer_filters(self, prefix: str) -> list[str]:
        return [topics.command_result(prefix, "+", self.cmd_id)]

    def answer(self, prefix: str, topic: str, body: dict[str, Any], sent_at: float | None) -> Answer | None:
        if body.get("id") != self.cmd_id:
            return None
        gw = str(body.get("gateway") or _gateway_of(prefix, topic))
        status = body.get("status")
        if status == "done":
            return Answer(gw, OK, "done", {"result": body.get("result")})
        if status in ("refused", "failed"):
            return Answer(gw, FAILED, f"{status}: {body.get('reason', '')}", {})
        return None


def kind_to_json(kind: Any) -> dict[str, Any]:
    """What the state file keeps to sign the documents of later waves again."""
    if isinstance(kind, ConfigKind):
        return {"name": "config", "yaml": base64.b64encode(kind.yaml).decode(), "revision": kind.revision,
                "label": kind.label}
    if isinstance(kind, CommandKind):
        return {"name": "command", "op": kind.op, "args": kind.args, "cmd_id": kind.cmd_id, "ttl": kind.ttl,
                "per_gateway_args": kind.per_gateway_args}
    from gateway.fleet.agentkind import AgentKind

    if isinstance(kind, AgentKind):
        return kind.to_json()
    raise TypeError(f"unknown rollout kind {kind!r}")


def kind_from_json(raw: dict[str, Any]) -> Any:
    name = raw.get("name")
    if name == "config":
        return ConfigKind(base64.b64decode(raw["yaml"]), int(raw["revision"]), str(raw.get("label", "")))
    if name == "command":
        return CommandKind(str(raw["op"]), dict(raw.get("args") or {}), str(raw["cmd_id"]), float(raw["ttl"]),
                           per_gateway_args=raw.get("per_gateway_args"))
    if name == "agent":
        from gateway.fleet.agentkind import AgentKind

        return AgentKind.from_json(raw)
    raise ValueError(f"unknown rollout kind {name!r}")
