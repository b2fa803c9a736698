"""The daemon's remote side: take signed config pushes and commands from the MQTT downlink.

A push is checked completely (size, signature, target, revision, YAML, schema, every driver
section, identity) before anything is touched, staged on disk, applied by restarting only what
changed, and then held to a health gate: the uplinks must answer (every one of them in
``uplink_mode: all``), restarted drivers be running and a metrics endpoint listen within set
times. It then commits, or the previous config is put back. Each step ends in a retained
status message (docs/remote.md). Pushes come over the MQTT downlink and, with
``remote.coap_listen``, by CoAP PUT (gateway.remote.coap_resource).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.bounded import abandon, settle, stop_task
from gateway.config import ConfigInvalid, GatewayConfig
from gateway.config.apply import Plan, plan
from gateway.config.loader import LoadError, load_yaml
from gateway.config.validate import validate_document
from gateway.keyevents import EventRefused, OpsKeyring
from gateway.metrics import MetricsServer
from gateway.registry import Registry
from gateway.remote import topics
from gateway.remote.commands import CommandLog, Refused, execute, parse_command, peek_id
from gateway.remote.envelope import Rejected, group_target, load_trusted, open_signed
from gateway.remote.store import ConfigStore
from gateway.scheduler import Supervisor
from gateway.signedjson import seal_async
from gateway.uplinks import Downlink

if TYPE_CHECKING:
    from gateway.daemon import Pipeline

log = logging.getLogger("sensegate.remote")
QUEUE = 4  # config pushes waiting while one applies; more are refused as busy
MAX_COMMANDS = 16  # commands running at once
CLOSE_WAIT = 2.0  # at a stop, for the apply or command running, and for the CoAP server


class Host(Protocol):
    """What the agent needs from the daemon."""

    cfg: GatewayConfig | None
    pipeline: Pipeline | None
    supervisor: Supervisor | None
    apply_lock: asyncio.Lock
    metrics: MetricsServer

    async def apply_config(self, new: GatewayConfig) -> None: ...


def downlinks(pipeline: Pipeline | None) -> Iterator[Downlink]:
    """The receiving halves of the pipeline's uplinks (the MQTT ones)."""
    for up in pipeline.uplinks if pipeline is not None else []:
        if up.downlink is not None:
            yield up.downlink


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class RemoteAgent:
    """Remote config and commands for one daemon; inert when no ops key is trusted."""

    def __init__(self, host: Host, bootstrap: GatewayConfig, bootstrap_path: Path, registry: Registry) -> None:
        self.host = host
        self.registry = registry
        self.bootstrap_path = bootstrap_path
        self.bootstrap = bootstrap
        g = bootstrap.config.gateway
        self.gateway_id = g.id
        self.settings = bootstrap.config.remote
        root = Path(g.state_dir) / "remote"
        # the local files' ops keys, as rotated and revoked since by signed key events
        self.trusted = OpsKeyring(load_trusted(self.settings.ops_keys, bootstrap_path.parent), root / "opskeys.cbor")
        self.store = ConfigStore(root, self.settings.history)
        self.commands = CommandLog(root / "commands.json")
        self.revision: int | None = None  # the pushed revision running; None: the local file
        self.digest = ""  # SHA-256 of the running config's YAML
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._uplink_changed = asyncio.Event()
        self._unsent: dict[str, Any] | None = None  # a status no uplink could take yet
        self._pipeline: Pipeline | None = None  # the pipeline attached last: its device key signs the statuses
        self._statuses: set[asyncio.Task[None]] = set()  # being signed and sent, in order
        self._status_lock = asyncio.Lock()
        self._coap: Any = None  # CoapConfigServer when remote.coap_listen is set

    @property
    def enabled(self) -> bool:
        return bool(self.trusted)

    @property
    def targets(self) -> set[str]:
        return {self.gateway_id} | {group_target(g) for g in self.settings.groups}

    # -- boot ---------------------------------------------------------------------------

    def boot_config(self, bootstrap_bytes: bytes) -> GatewayConfig:
        """The config to start with: the current pushed one, else a good earlier one, else the file."""
        self.digest = sha256(bootstrap_bytes)
        if not self.enabled:
            log.info("remote config and commands are off: no trusted ops key (remote.ops_keys)")
            return self.bootstrap
        self.store.open()
        self.commands.open()
        choice = self.store.boot()
        tried = []
        if choice.revision is not None and choice.data is not None:
            tried.append((choice.revision, choice.data))
        tried += [c for c in self.store.candidates() if c[0] != choice.revision]
        for rev, data in tried:
            try:
                cfg = self.effective(data, rev)
            except (ConfigInvalid, Rejected) as e:
                log.error("pushed config revision %d no longer loads (%s); trying an earlier one", rev, e)
                continue
            if rev != choice.revision:
                self.store.fall_back(rev)
            self.revision, self.digest = rev, sha256(data)
            if choice.note:
                self._status("rolled_back", choice.note, self.store.state.highest)
            log.info("running pushed config revision %d", rev)
            return cfg
        if choice.revision is not None:
            self.store.fall_back(None)
            self._status("rolled_back", "no pushed config loads; running the local config file", choice.revision)
        elif choice.note:
            self._status("rolled_back", choice.note, self.store.state.highest)
        return self.bootstrap

    def refresh_bootstrap(self, bootstrap: GatewayConfig, bootstrap_bytes: bytes) -> GatewayConfig:
        """SIGHUP: re-read the trust anchor; keep running the pushed config if one is current."""
        self.bootstrap = bootstrap
        self.settings = bootstrap.config.remote
        self.trusted.reanchor(load_trusted(self.settings.ops_keys, self.bootstrap_path.parent))
        if self.revision is None or not self.enabled:
            self.revision, self.digest = None, sha256(bootstrap_bytes)
            return bootstrap
        data = self.store.read(self.revision)
        if data is None:
            self.revision, self.digest = None, sha256(bootstrap_bytes)
            return bootstrap
        log.info("reload: pushed config revision %d stays in effect (the local file is trust anchor and fallback)",
                 self.revision)
        return self.effective(data, self.revision)

    def effective(self, data: bytes, revision: int) -> GatewayConfig:
        """Validate pushed YAML and check it keeps identity, state and trust as the local file has them.

        Identity (``gateway.id``, ``site``, ``state_dir``, ``key_file``) left out of a pushed
        document comes from the local file, so one document can serve a whole group.
        """
        source = f"revision {revision}"
        try:
            doc = load_yaml(data)
        except LoadError as e:
            raise ConfigInvalid(e.problems, source) from None
        if isinstance(doc.data, dict):
            own = self.bootstrap.config.gateway
            section = doc.data.setdefault("gateway", {})
            if isinstance(section, dict):
                for k in ("id", "site", "state_dir", "key_file"):
                    section.setdefault(k, getattr(own, k))
        new = validate_document(doc, self.registry, source)
        a, b = self.bootstrap.config, new.config
        for what, x, y in (("gateway.id", a.gateway.id, b.gateway.id),
                           ("gateway.state_dir", a.gateway.state_dir, b.gateway.state_dir),
                           ("gateway.key_file", a.gateway.key_file, b.gateway.key_file)):
            if x != y:
                raise Rejected(f"{what} cannot be changed remotely ({x!r} here, {y!r} pushed)")
        if "remote" in b.model_fields_set and b.remote != a.remote:
            raise Rejected("the remote: section (trusted keys, groups, limits) can only be changed in the local file")
        if not any(u.type == "mqtt" for u in b.uplinks) and not a.remote.coap_listen:
            raise Rejected("the pushed config has no MQTT uplink and this gateway has no remote.coap_listen: "
                           "it would lock itself out")
        config = b.model_copy(update={"remote": a.remote})
        return GatewayConfig(config, new.instances, new.source)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, pipeline: Pipeline) -> None:
        """Hook a new pipeline's uplinks before they start: subscriptions, downlink, status flush."""
        if not self.enabled:
            return
        self._pipeline = pipeline
        for up in downlinks(pipeline):
            prefix = up.topic_prefix
            up.subscriptions = topics.subscriptions(prefix, self.gateway_id, list(self.settings.groups))
            up.on_downlink = self._downlink
            before = up.on_state

            def on_state(connected: bool, before: Callable[[bool], None] = before, up: Downlink = up) -> None:
                before(connected)
                if connected:
                    self._flush(up)

            up.on_state = on_state
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="remote-config")
        self._sync_coap()

    def _sync_coap(self) -> None:
        """Listen for CoAP pushes where ``remote.coap_listen`` says (it may have moved on SIGHUP)."""
        want = self.settings.coap_listen
        old = self._coap
        if (old.listen if old is not None else "") == want:
            return
        from gateway.remote.coap_resource import CoapConfigServer

        self._coap = new = CoapConfigServer(want, self._take_coap, int(self.settings.max_document_bytes)) \
            if want else None

        async def move() -> None:
            if old is not None:
                await settle(old.close(), CLOSE_WAIT, "closing the CoAP config server")
            if new is not None:
                await new.start()

        task = asyncio.create_task(move(), name="remote-coap")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take_coap(self, payload: bytes) -> bool:
        """A push PUT over CoAP joins the same queue as MQTT pushes; False when it is full."""
        try:
            self._queue.put_nowait(("coap:/sensegate/config", payload))
        except asyncio.QueueFull:
            return False
        return True

    async def close(self) -> None:
        """Stop taking pushes and commands (an apply in progress is cancelled: pending stays on disk).

        Bounded: a task that will not stop is left behind (gateway.bounded), logged once."""
        if self._statuses:  # the last statuses (e.g. rolled_back) still go out
            await asyncio.wait(set(self._statuses), timeout=1.0)
        tasks = [t for t in (self._worker, *self._tasks, *self._statuses) if t is not None]
        self._worker = None
        stopped = await asyncio.gather(*(stop_task(t, (CLOSE_WAIT,)) for t in tasks))
        for t, ok in zip(tasks, stopped, strict=True):
            if not ok:
                abandon(t, f"remote task {t.get_name()} would not stop", log)
        coap, self._coap = self._coap, None
        if coap is not None:
            await settle(coap.close(), CLOSE_WAIT, "closing the CoAP config server")

    def _downlink(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/config/set"):
            try:
                self._queue.put_nowait((topic, payload))
            except asyncio.QueueFull:
                log.warning("config push on %s refused: %d pushes already waiting", topic, QUEUE)
                self._status("rejected", "busy: too many pushes waiting; push again later", None)
        elif "/ops/keys/" in topic:
            self._ops_key_event(topic, payload)
        elif topic.endswith("/cmd/req"):
            if len(self._tasks) >= MAX_COMMANDS:
                self._result(peek_id(payload), {"status": "refused", "reason": "busy: too many commands running"})
                return
            task = asyncio.create_task(self._command(payload), name="remote-command")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _ops_key_event(self, topic: str, payload: bytes) -> None:
        """An ops key rotated or revoked (retained, so it comes again on every connect)."""
        try:
            ev = self.trusted.take(payload)
        except (EventRefused, OSError) as e:
            log.warning("ops key event on %s refused: %s", topic, e)
            return
        if ev is not None:
            log.warning("ops keys: %s; %d ops key(s) trusted now", ev.describe(), len(self.trusted))

    # -- status -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """What every status and ping reports about the running config."""
        cfg = self.host.cfg
        return {"running_revision": self.revision, "config_sha256": self.digest,
                "config_version": cfg.config.config_version if cfg is not None else None}

    def _publish(self, topic_of: Callable[[str], str], body: dict[str, Any], retain: bool) -> bool:
        """Publish on every connected downlink uplink; False if none took it."""
        payload = json.dumps(body).encode()
        sent = False
        for up in downlinks(self.host.pipeline):
            sent = up.publish(topic_of(up.topic_prefix), payload, retain=retain) or sent
        return sent

    def _status_topic(self, prefix: str) -> str:
        return topics.config_status(prefix, self.gateway_id)

    def _flush(self, up: Downlink) -> None:
        """A (re)connected uplink gets the status that could not be published (e.g. at boot)."""
        if self._unsent is not None:
            self._send(self._unsent)

    def _status(self, state: str, reason: str, revision: int | None) -> None:
        body = {"gateway": self.gateway_id, "state": state, "revision": revision, "reason": reason,
                **self.info(), "ts": round(time.time(), 3)}
        (log.info if state in ("received", "applied") else log.warning)(
            "config push%s: %s%s", f" revision {revision}" if revision else "", state, f": {reason}" if reason else "")
        self._send(body)

    def _send(self, body: dict[str, Any]) -> None:
        task = asyncio.create_task(self._send_signed(body), name="config-status")
        self._statuses.add(task)
        task.add_done_callback(self._statuses.discard)

    async def _send_signed(self, body: dict[str, Any]) -> None:
        """Sign a status with the device key (off the loop: it may be a token's) and publish it
        retained, in the order the statuses were made (gateway/signedjson.py)."""
        async with self._status_lock:
            key = self._pipeline.key if self._pipeline is not None else None
            payload = await seal_async(body, key, self.gateway_id, "config-status")
            sent = False
            for up in downlinks(self.host.pipeline):
                sent = up.publish(self._status_topic(up.topic_prefix), payload, retain=True) or sent
            self._unsent = None if sent else body
            if self._coap is not None:
                self._coap.status.update(payload)

    def _result(self, cmd_id: str, body: dict[str, Any]) -> None:
        body = {"gateway": self.gateway_id, "id": cmd_id, **body, "ts": round(time.time(), 3)}
        self._publish(lambda p: topics.command_result(p, self.gateway_id, cmd_id), body, retain=False)

    # -- config pushes ------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            topic, payload = await self._queue.get()
            try:
                await self.take_config(payload)
            except Exception:
                log.exception("config push from %s failed unexpectedly", topic)

    async def take_config(self, data: bytes) -> None:
        """Check, stage, apply, health-gate, then commit or roll back one pushed document."""
        s = self.settings
        digest = sha256(data)
        try:
            signed = open_signed(data, self.trusted, "config", self.targets, int(s.max_document_bytes))
        except Rejected as e:
            self._status("rejected", str(e), None)
            return
        rev = signed.revision
        if digest == self.store.state.seen:
            log.debug("config revision %d delivered again; already handled", rev)
            return
        if rev <= self.store.state.highest:
            self._status("rejected", f"revision {rev} is not newer than revision {self.store.state.highest} "
                         "(anti-rollback)", rev)
            return
        self._status("received", f"signed by ops key {signed.signer}", rev)
        try:
            new = self.effective(signed.payload, rev)
        except (ConfigInvalid, Rejected) as e:
            self.store.refuse(rev, digest)
            reason = str(e)
            if isinstance(e, ConfigInvalid):
                lines = reason.splitlines()
                reason = "invalid config: " + "; ".join(lines[:5]) + (f" (+{len(lines) - 5} more)" if len(lines) > 5
                                                                     else "")
            self._status("rejected", reason, rev)
            return
        async with self.host.apply_lock:
            old = self.host.cfg
            assert old is not None
            self.store.stage(rev, signed.payload, digest)
            p = plan(old, new)
            try:
                await self.host.apply_config(new)
                failure = await self._health(p, new)
            except Exception as e:  # a pipeline that cannot start, a key mismatch
                log.exception("apply of revision %d failed", rev)
                failure = f"apply failed: {e}"
            if failure is None:
                self.store.commit(rev)
                self.revision, self.digest = rev, sha256(signed.payload)
                self._status("applied", f"restarted: {self._describe(p)}", rev)
                return
            log.warning("revision %d failed its health gate (%s); rolling back", rev, failure)
            try:
                await self.host.apply_config(old)
            finally:
                self.store.rollback(rev)
            self._status("rolled_back", failure, rev)

    @staticmethod
    def _describe(p: Plan) -> str:
        if p.empty:
            return "nothing (no change)"
        parts = []
        if p.restart_pipeline:
            parts.append(f"pipeline ({', '.join(p.restart_for)} changed)")
        if p.metrics:
            parts.append("metrics")
        if p.log_level:
            parts.append("log level")
        if p.start:
            parts.append("drivers " + ", ".join(p.start))
        stopped = [n for n in p.stop if n not in p.start]
        if stopped:
            parts.append("stopped " + ", ".join(stopped))
        if p.retune and not p.restart_pipeline:
            parts.append("report rules of " + ", ".join(p.retune) + " (no restart)")
        return "; ".join(parts)

    async def _health(self, p: Plan, new: GatewayConfig) -> str | None:
        """None when the uplinks answer, restarted drivers came up and the metrics endpoint
        listens, each in time; else why not."""
        s = self.settings
        why = await self._uplinks_up(new)
        if why is not None:
            return why
        m = new.config.metrics
        if m.enabled and self.host.metrics.listen != m.listen:
            return f"the metrics endpoint did not start: {self.host.metrics.error or 'not listening on ' + m.listen}"
        # instances whose sections changed must come up; unchanged ones restarted with the pipeline
        # must only not fail (a device that was offline before is not the new config's fault)
        names = [i.name for i in new.instances] if p.restart_pipeline else list(p.start)
        strict = ("running",) if s.require_drivers_running else ("running", "unavailable")
        loose = ("running", "unavailable")

        def want(n: str) -> tuple[str, ...]:
            return strict if n in p.start else loose

        try:
            async with asyncio.timeout(s.driver_timeout):
                while True:
                    sup = self.host.supervisor
                    runners = [sup.runners[n] for n in names if sup is not None and n in sup.runners]
                    for r in runners:
                        if r.stats.state == "failed":
                            return f"driver instance {r.name} failed: {r.stats.last_error}"
                    if len(runners) == len(names) and all(r.stats.state in want(r.name) for r in runners):
                        return None
                    await asyncio.sleep(0.1)
        except TimeoutError:
            sup = self.host.supervisor
            late = [f"{n} ({sup.runners[n].stats.state}: {sup.runners[n].stats.last_error or 'no error'})"
                    for n in names if sup is not None and n in sup.runners
                    and sup.runners[n].stats.state not in want(n)]
            return f"driver instance(s) not up within {s.driver_timeout:g} s: {', '.join(late)}"

    async def _uplinks_up(self, new: GatewayConfig) -> str | None:
        """The uplink part of the health gate (docs/remote.md): with ``uplink_mode: all`` every
        uplink must answer (one that never does would hold every batch); with ``failover`` one
        must, and it must carry the MQTT downlink when pushes cannot come over CoAP."""
        s = self.settings
        ups = list(self.host.pipeline.uplinks) if self.host.pipeline is not None else []
        if not ups:  # JSON lines only: nothing to reach
            return None
        need_all = new.config.uplink_mode == "all"
        need_downlink = not s.coap_listen
        probes: dict[str, asyncio.Task[None]] = {}

        def missing() -> list[str]:
            if need_all:
                return [u.name for u in ups if not u.reachable]
            if need_downlink and not any(u.reachable for u in downlinks(self.host.pipeline)):
                return [u.name for u in downlinks(self.host.pipeline)] or ["an MQTT uplink"]
            return [] if any(u.reachable for u in ups) else [u.name for u in ups]

        try:
            async with asyncio.timeout(s.uplink_timeout):
                while late := missing():
                    for u in ups:  # nothing to send yet: ask the far end (a CoAP GET)
                        if u.connected and not u.reachable and (u.name not in probes or probes[u.name].done()):
                            probes[u.name] = asyncio.create_task(u.probe(), name=f"probe:{u.name}")
                    await asyncio.sleep(0.1)
        except TimeoutError:
            if need_all:
                return (f"uplink(s) {', '.join(late)} did not connect within {s.uplink_timeout:g} s "
                        "(uplink_mode all would hold every batch for them)")
            if need_downlink:
                return (f"the uplink did not connect within {s.uplink_timeout:g} s "
                        f"({', '.join(late)}; the gateway would be locked out)")
            return f"no uplink connected within {s.uplink_timeout:g} s ({', '.join(late)})"
        finally:
            for t in probes.values():
                t.cancel()
            await asyncio.gather(*probes.values(), return_exceptions=True)
        return None

    # -- commands -----------------------------------------------------------------------

    async def _command(self, data: bytes) -> None:
        cmd_id = "-"
        try:
            if not self.settings.commands:
                raise Rejected("commands are turned off here (remote.commands: false)")
            try:
                signed = open_signed(data, self.trusted, "command", self.targets, int(self.settings.max_document_bytes))
            except Rejected:
                with contextlib.suppress(Exception):
                    from gateway import cose

                    cmd_id = peek_id(cose.parse_sign1(data).payload)
                raise
            cmd_id = peek_id(signed.payload)  # a refusal of its body is answered under its id
            cmd = parse_command(signed.payload)
            cmd_id = cmd.id
            self.commands.take(cmd, time.time(), self.settings.max_command_ttl)
            log.info("command %s: %s %s (signed by %s)", cmd.id, cmd.op, cmd.args, signed.signer)
            result = await execute(cmd, self.host, self.info())
        except Refused as e:
            self._result(cmd_id, {"status": "refused", "reason": str(e)})
        except Rejected as e:
            log.warning("command %s refused: %s", cmd_id, e)
            self._result(cmd_id, {"status": "refused", "reason": str(e)})
        except Exception as e:
            log.warning("command %s failed: %s: %s", cmd_id, type(e).__name__, e)
            self._result(cmd_id, {"status": "failed", "reason": f"{type(e).__name__}: {e}"})
        else:
            self._result(cmd_id, {"status": "done", "result": result})
