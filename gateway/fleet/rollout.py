"""Staged rollouts: a canary set first, then waves, each waiting for the gateways' outcomes.

A rollout sends one signed document per gateway (gateway/fleet/kinds.py), retained on that
gateway's own topic with an expiry, so a gateway offline now takes it when it returns; it is
reported as pending, by name. A wave ends when every gateway in it answered, went offline
(pending) or its time ran out (no answer: a failure). The rollout stops by itself when the
failures pass the threshold (any failure in the canary). Its state is a JSON file written after
every change (``~/.local/state/sensegate/rollouts/<id>.json``), so an interrupted operator picks it
up with `sensegate rollout status|resume|abort|rollback ID`. Answers clear the gateway's retained
document. A rollback sends a ``revert`` command to every gateway that took the new document: each
goes back to the config it ran before, through its own health gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway.fleet.progress import Progress
from gateway.fleet.view import FleetWatch, subscriptions
from gateway.mqtt import MqttSession
from gateway.remote.store import write_atomic

WAITING, SENT, PENDING, OK, FAILED, NO_ANSWER = "waiting", "sent", "pending", "ok", "failed", "no answer"
FINAL = (OK, FAILED)
QUIET = 0.3  # the retained burst after SUBSCRIBE is over when nothing came for this long
ACK_WAIT = 15.0  # for the broker's acknowledgement of the documents sent and cleared


@dataclass
class Entry:
    """One gateway in a rollout."""

    wave: int
    state: str = WAITING
    reason: str = ""
    sent_at: float | None = None
    answered_at: float | None = None
    previous_revision: int | None = None  # what it ran before (a config rollout's rollback goes back to it)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rollout:
    """A rollout's plan and progress, as kept in its state file."""

    id: str
    kind: dict[str, Any]
    group: str
    url: str
    waves: list[list[str]]  # waves[0] is the canary when canary is true
    canary: bool
    max_failures: int
    wave_timeout: float
    expires: int
    gateways: dict[str, Entry]
    state: str = "running"  # running | halted | waiting | done | aborted | rolled back | interrupted
    reason: str = ""
    wave: int = 0  # the wave being sent or awaited
    forgiven: int = 0  # failures accepted by a resume after a halt
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    parent: str = ""  # the rollout this one rolls back
    rollback: str = ""  # the rollout that rolled this one back
    path: str = ""

    # -- persistence -------------------------------------------------------------------------

    def save(self) -> None:
        self.updated = time.time()
        body = asdict(self)
        body.pop("path")
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, json.dumps(body, indent=1).encode())

    @classmethod
    def load(cls, directory: Path, rid: str) -> Rollout:
        path = directory / f"{rid}.json" if not rid.endswith(".json") else Path(rid)
        try:
            raw = json.loads(path.read_bytes())
            gws = {gw: Entry(**e) for gw, e in raw.pop("gateways").items()}
            return cls(**raw, gateways=gws, path=str(path))
        except FileNotFoundError:
            known = sorted(p.stem for p in directory.glob("*.json")) if directory.is_dir() else []
            raise RolloutError(f"no rollout {rid!r} in {directory} (known: {', '.join(known[-5:]) or 'none'})") \
                from None
        except (ValueError, TypeError, KeyError) as e:
            raise RolloutError(f"{path}: not a rollout state file ({e})") from None

    # -- figures -------------------------------------------------------------------------------

    def count(self, *states: str) -> int:
        return sum(1 for e in self.gateways.values() if e.state in states)

    def named(self, *states: str) -> list[str]:
        return sorted(g for g, e in self.gateways.items() if e.state in states)

    @property
    def failures(self) -> int:
        return self.count(FAILED, NO_ANSWER)


class RolloutError(Exception):
    """A rollout cannot be made, found or continued; the message says why."""


def new_id(kind: str) -> str:
    return f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan(members: list[str], online: set[str], canary: int, wave_size: int,
         chosen: list[str] | None = None) -> list[list[str]]:
    """Canary first (``chosen``, else the first ``canary`` online gateways by id), then waves of
    ``wave_size``, by id."""
    members = sorted(members)
    first = list(chosen) if chosen else [g for g in members if g in online][:canary] if canary else []
    rest = [g for g in members if g not in first]
    waves = [first] if first else []
    size = max(1, wave_size)
    waves += [rest[i:i + size] for i in range(0, len(rest), size)]
    return waves


class Runner:
    """Carries a rollout out over one MQTT session (answers and the fleet's online states)."""

    def __init__(self, ro: Rollout, kind: Any, broker: Any, key: Any, progress: Progress) -> None:
        self.ro = ro
        self.kind = kind
        self.broker = broker
        self.key = key
        self.out = progress
        self.watch = FleetWatch(broker.prefix)
        self.changed = asyncio.Event()
        self._session: MqttSession | None = None
        self._unacked: set[int] = set()
        self._acked = asyncio.Event()

    # -- messages ------------------------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        self.watch.on_message(msg)
        try:
            body = json.loads(bytes(msg.payload)) if msg.payload else None
        except ValueError:
            return
        if isinstance(body, dict):
            self._take(msg.topic, body)
        self.changed.set()

    def _take(self, topic: str, body: dict[str, Any]) -> None:
        gw_guess = str(body.get("gateway") or "")
        entry = self.ro.gateways.get(gw_guess)
        sent_at = entry.sent_at if entry else None
        ans = self.kind.answer(self.broker.prefix, topic, body, sent_at)
        if ans is None or ans.gateway not in self.ro.gateways:
            return
        e = self.ro.gateways[ans.gateway]
        if e.state in FINAL or (e.state == WAITING and not self.kind.retained_answers):
            return  # answered already (a retained command delivered again is refused as a replay)
        e.state, e.reason, e.answered_at, e.extra = ans.outcome, ans.reason, time.time(), ans.extra
        if e.state == FAILED:
            self.out.failure(ans.gateway, ans.reason)
        self._clear(ans.gateway)

    def online(self, gw: str) -> bool:
        st = self.watch.seen.get(gw, {}).get("status")
        return bool(st and st.get("state") == "online")

    # -- publishing ------------------------------------------------------------------------------

    def _on_publish(self, mid: int) -> None:
        self._unacked.discard(mid)
        if not self._unacked:
            self._acked.set()

    def _publish(self, topic: str, payload: bytes) -> None:
        assert self._session is not None
        info = self._session.client.publish(topic, payload, qos=1, retain=True)
        self._unacked.add(info.mid)
        self._acked.clear()

    async def _flush(self) -> None:
        """Wait (bounded) until the broker acknowledged every document sent or cleared."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_WAIT):
                while self._unacked:
                    await self._acked.wait()

    def _clear(self, gw: str) -> None:
        """The gateway answered: its retained document is no longer needed on the broker."""
        if self._session is not None:
            self._publish(self.kind.topic(self.broker.prefix, gw), b"")

    def _finish(self) -> None:
        """Nothing more will take it: what the kind left on the broker goes (an update's chunks)."""
        finish = getattr(self.kind, "finish", None)
        if finish is not None and self._session is not None:
            finish(self.broker.prefix, self._publish)

    def _send(self, gw: str) -> None:
        e = self.ro.gateways[gw]
        self._publish(self.kind.topic(self.broker.prefix, gw), self.kind.document(self.key, gw, self.ro.expires))
        e.sent_at = time.time()
        e.state = SENT if self.online(gw) else PENDING
        if e.state == PENDING:
            e.reason = "offline: takes it when it returns"

    # -- the run ---------------------------------------------------------------------------------

    async def _settle(self) -> None:
        """Wait for the burst of retained messages that follows SUBSCRIBE."""
        start = time.monotonic()
        last = -1.0
        while time.monotonic() - start < 5.0:
            await asyncio.sleep(QUIET)
            if self.watch.last_message == last:
                break
            last = self.watch.last_message

    @contextlib.asynccontextmanager
    async def _connected(self) -> AsyncIterator[None]:
        """One session, subscribed to the fleet's states and this kind's answers, the retained burst read."""
        session = MqttSession(self.broker.settings, on_message=self._on_message, on_publish=self._on_publish)
        await session.connect()
        self._session = session
        try:
            prefix = self.broker.prefix
            await session.subscribe_each([*subscriptions(prefix), *self.kind.answer_filters(prefix)])
            await self._settle()
            yield
        finally:
            self._session = None
            await session.close()

    async def run(self, wait_pending: float = 0.0) -> int:
        """Send the remaining waves and wait for their answers; the exit status (docs/fleet.md)."""
        async with self._connected():
            return await self._run(wait_pending)

    async def _run(self, wait_pending: float) -> int:
        ro = self.ro
        try:
            prepare = getattr(self.kind, "prepare", None)
            if prepare is not None and ro.wave < len(ro.waves):
                prepare(self.broker.prefix, self._publish)  # an update's chunks, before any manifest
                await self._flush()
            ro.state = "running"
            ro.save()
            while ro.wave < len(ro.waves):
                if not await self._wave(ro.wave):
                    ro.state, ro.reason = "halted", self._halt_reason()
                    ro.save()
                    self.out.halted(ro)
                    await self._flush()
                    return 1
                ro.wave += 1
                ro.save()
            if wait_pending and ro.count(PENDING, SENT):
                self.out.waiting(ro, wait_pending)
                await self._until(lambda: not ro.count(PENDING, SENT), wait_pending)
            ro.state = "waiting" if ro.count(PENDING, SENT) else "done"
            ro.save()
            if ro.state == "done":
                self._finish()
            self.out.finished(ro)
            await self._flush()
            return 3 if ro.state == "waiting" else 1 if ro.failures else 0
        except asyncio.CancelledError:
            ro.state, ro.reason = "interrupted", f"interrupted in wave {ro.wave + 1}"
            ro.save()
            raise

    async def _until(self, done: Any, within: float) -> bool:
        """Wait until ``done()`` (checked at every message and every second) or ``within`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while not done():
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.changed.wait()
                    self._refresh_pending()
                    self.out.tick(self.ro)
                return True
        return bool(done())

    def _refresh_pending(self) -> None:
        """A pending gateway that came back is awaited again. (One that goes offline after it was sent
        is still awaited: it may be restarting into what it took, as an agent update does.)"""
        for gw, e in self.ro.gateways.items():
            if e.state == PENDING and self.online(gw):
                e.state, e.reason = SENT, ""

    async def _wave(self, index: int) -> bool:
        """Send one wave and wait for it; False when the rollout must stop."""
        ro = self.ro
        wave = ro.waves[index]
        is_canary = ro.canary and index == 0
        self.out.wave_start(ro, index, is_canary)
        started = time.monotonic()
        for gw in wave:
            if ro.gateways[gw].state == WAITING:
                self._send(gw)
        ro.save()
        await self._flush()

        def answered() -> bool:
            return all(ro.gateways[g].state in (*FINAL, PENDING) for g in wave)

        await self._until(answered, ro.wave_timeout)
        for gw in wave:
            e = ro.gateways[gw]
            if e.state == SENT and not self.online(gw):
                e.state, e.reason = PENDING, "went offline before it answered: takes it when it returns"
            elif e.state == SENT:
                e.state, e.reason = NO_ANSWER, f"no answer within {ro.wave_timeout:g} s while online"
                self.out.failure(gw, e.reason)
        self.out.wave_end(ro, index, time.monotonic() - started)
        limit = 0 if is_canary else ro.max_failures + ro.forgiven
        return ro.failures <= limit

    def _halt_reason(self) -> str:
        ro = self.ro
        bad = ro.named(FAILED, NO_ANSWER)
        where = "the canary" if ro.canary and ro.wave == 0 else f"wave {ro.wave + (0 if ro.canary else 1)}"
        return (f"stopped after {where}: {len(bad)} failure(s) (threshold {ro.max_failures}"
                f"{', 0 in the canary' if ro.canary else ''}): " + "; ".join(
                    f"{g}: {ro.gateways[g].reason}" for g in bad[:5]) + (" ..." if len(bad) > 5 else ""))

    async def refresh(self, within: float = 5.0) -> None:
        """Read what is retained now (config statuses answer pending gateways) and update the file."""
        async with self._connected():
            if within > 0 and self.ro.count(PENDING, SENT):
                await self._until(lambda: not self.ro.count(PENDING, SENT), within)
            self._refresh_pending()
            if self.ro.state == "waiting" and not self.ro.count(PENDING, SENT):
                self.ro.state = "done"
                self._finish()
            self.ro.save()
            await self._flush()

    async def abort(self) -> None:
        """Clear the retained documents not yet taken; nothing more is sent."""
        async with self._connected():
            for gw, e in self.ro.gateways.items():
                if e.state in (SENT, PENDING):
                    self._clear(gw)
                    e.state, e.reason = "skipped", "aborted before it answered"
                elif e.state == WAITING:
                    e.state, e.reason = "skipped", "aborted before it was sent"
            self.ro.state, self.ro.reason = "aborted", "aborted by the operator"
            self._finish()
            self.ro.save()
            await self._flush()
