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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.bounded import abandon, settle, stop_task
from gateway.config import ConfigInvalid, GatewayConfig
from gateway.config.apply import Plan, plan
from gateway.config.loader import LoadError, load_yaml
from gateway.config.validate import validate_document
from gateway.keyevents import EventRefused
from gateway.metrics import MetricsServer
from gateway.registry import Registry
from gateway.remote import gate, topics
from gateway.remote.commands import CommandLog, Refused, execute, parse_command, peek_id
from gateway.remote.envelope import Rejected, gateway_ops_keys, group_target, load_trusted, open_signed
from gateway.remote.gate import describe, downlinks
from gateway.remote.releases import agent_dir
from gateway.remote.statuses import StatusBoard
from gateway.remote.store import ConfigStore
from gateway.remote.update import AgentUpdater
from gateway.remote.wiring import Wiring
from gateway.scheduler import Supervisor
from gateway.uplinks import Downlink

if TYPE_CHECKING:
    from gateway.daemon import Pipeline

log = logging.getLogger("sensegate.remote")
QUEUE = 4  # config pushes waiting while one applies; more are refused as busy
MAX_COMMANDS = 16  # commands running at once
WIRING_TICK = 2.0  # how often expected-absent instances are checked for their first run
CLOSE_WAIT = 2.0  # at a stop, for the apply or command running, and for the CoAP server


class Host(Protocol):
    """What the agent needs from the daemon."""

    cfg: GatewayConfig | None
    pipeline: Pipeline | None
    supervisor: Supervisor | None
    apply_lock: asyncio.Lock
    metrics: MetricsServer

    async def apply_config(self, new: GatewayConfig) -> None: ...


def _name(revision: int | None) -> str:
    return "the local config file" if revision is None else f"revision {revision}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


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
        self.trusted = gateway_ops_keys(self.settings.ops_keys, bootstrap_path.parent, g.state_dir)
        self.store = ConfigStore(root, self.settings.history)
        self.commands = CommandLog(root / "commands.json")
        self.wiring = Wiring(root / "wired.json")  # expected-absent instances that came up once
        self.updater = AgentUpdater(self, agent_dir(g.state_dir))
        self.revision: int | None = None  # the pushed revision running; None: the local file
        self.digest = ""  # SHA-256 of the running config's YAML
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE)
        self._worker: asyncio.Task[None] | None = None
        self._wiring_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._uplink_changed = asyncio.Event()
        self.board = StatusBoard(self.gateway_id, host, self.info, root / "status.json")
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
        self.wiring.open()
        if not self.enabled:
            log.info("remote config and commands are off: no trusted ops key (remote.ops_keys)")
            return self.bootstrap
        self.store.open()
        self.commands.open()
        self.updater.open()
        self.board.open()
        choice = self.store.boot()
        tried = []
        if choice.revision is not None and choice.data is not None:
            tried.append((choice.revision, choice.data))
        tried += [c for c in self.store.candidates() if c[0] != choice.revision]
        for rev, data in tried:
            try:
                cfg = self.effective(data, rev, broken_ok=True)
            except (ConfigInvalid, Rejected) as e:
                log.error("pushed config revision %d no longer loads (%s); trying an earlier one", rev, e)
                continue
            if rev != choice.revision:
                self.store.fall_back(rev)
            self.revision, self.digest = rev, sha256(data)
            if choice.note:
                self.board.status("rolled_back", choice.note, self.store.state.highest)
            log.info("running pushed config revision %d", rev)
            return cfg
        if choice.revision is not None:
            self.store.fall_back(None)
            self.board.status("rolled_back", "no pushed config loads; running the local config file", choice.revision)
        elif choice.note:
            self.board.status("rolled_back", choice.note, self.store.state.highest)
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
        return self.effective(data, self.revision, broken_ok=True)

    def effective(self, data: bytes, revision: int, broken_ok: bool = False) -> GatewayConfig:
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
        self.registry.refresh()  # a driver installed since the start is found
        # a new push naming a driver that does not load is refused; a running one keeps its other instances
        new = validate_document(doc, self.registry, source, broken_ok)
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
        return GatewayConfig(config, new.instances, new.source, new.down)

    # -- wiring -------------------------------------------------------------------------

    def attach(self, pipeline: Pipeline) -> None:
        """Hook a new pipeline's uplinks before they start: subscriptions, downlink, status flush."""
        if not self.enabled:
            return
        self.board.pipeline = pipeline
        for up in downlinks(pipeline):
            prefix = up.topic_prefix
            up.subscriptions = topics.subscriptions(prefix, self.gateway_id, list(self.settings.groups))
            up.on_downlink = self._downlink
            before = up.on_state

            def on_state(connected: bool, before: Callable[[bool], None] = before, up: Downlink = up) -> None:
                before(connected)
                if connected:
                    self.board.flush(up)
                    self.updater.flush()

            up.on_state = on_state
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="remote-config")
            self._wiring_task = asyncio.create_task(self._watch_wiring(), name="remote-wiring")
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
        self.board.coap = new

        async def move() -> None:
            if old is not None:
                await settle(old.close(), CLOSE_WAIT, "closing the CoAP config server")
            if new is not None:
                await new.start()

        self._spawn(move(), "remote-coap")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_wiring(self) -> None:
        """Notice the first run of an expected-absent instance (health.expect_absent) soon after it
        happens; idle while none is pending."""
        while True:
            await asyncio.sleep(WIRING_TICK)
            if self.wiring.absent(self.host.cfg):
                self.wiring.observe(self.host.cfg, self.host.supervisor)

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
        if self.board.tasks:  # the last statuses (e.g. rolled_back) still go out
            await asyncio.wait(set(self.board.tasks), timeout=1.0)
        tasks = [t for t in (self._worker, self._wiring_task, *self._tasks, *self.board.tasks) if t is not None]
        self._worker = self._wiring_task = None
        stopped = await asyncio.gather(*(stop_task(t, (CLOSE_WAIT,)) for t in tasks))
        for t, ok in zip(tasks, stopped, strict=True):
            if not ok:
                abandon(t, f"remote task {t.get_name()} would not stop", log)
        await self.updater.close()
        coap, self._coap = self._coap, None
        self.board.coap = None
        if coap is not None:
            await settle(coap.close(), CLOSE_WAIT, "closing the CoAP config server")

    def _downlink(self, topic: str, payload: bytes) -> None:
        if not payload and (topic.endswith("/config/set") or topic.endswith("/cmd/req")):
            return  # a retained push or command cleared by its rollout: nothing to take
        if topic.endswith("/agent/set"):
            self.updater.take(topic, payload)
        elif topic.endswith("/config/set"):
            try:
                self._queue.put_nowait((topic, payload))
            except asyncio.QueueFull:
                log.warning("config push on %s refused: %d pushes already waiting", topic, QUEUE)
                self.board.status("rejected", "busy: too many pushes waiting; push again later", None)
        elif "/ops/keys/" in topic:
            self._ops_key_event(topic, payload)
        elif topic.endswith("/cmd/req"):
            if len(self._tasks) >= MAX_COMMANDS:
                self.board.result(peek_id(payload), {"status": "refused", "reason": "busy: too many commands running"})
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

    def last_push(self) -> dict[str, Any] | None:
        """The latest push outcome, for the health summary."""
        return self.board.last_push()

    def info(self) -> dict[str, Any]:
        """What every status and ping reports about the running config."""
        cfg = self.host.cfg
        return {"running_revision": self.revision, "config_sha256": self.digest,
                "config_version": cfg.config.config_version if cfg is not None else None}

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
        if digest == self.store.state.seen:  # a retained push delivered again at a connect
            log.debug("config push %s delivered again; already handled", digest[:12])
            return
        try:
            signed = open_signed(data, self.trusted, "config", self.targets, int(s.max_document_bytes))
        except Rejected as e:
            self.board.status("rejected", str(e), None)
            return
        rev = signed.revision
        if rev <= self.store.state.highest:
            self.store.refuse(rev, digest)  # a retained copy delivered again is then ignored quietly
            self.board.status("rejected", f"revision {rev} is not newer than revision {self.store.state.highest} "
                         "(anti-rollback)", rev)
            return
        self.board.status("received", f"signed by ops key {signed.signer}", rev)
        try:
            new = self.effective(signed.payload, rev)
        except (ConfigInvalid, Rejected) as e:
            self.store.refuse(rev, digest)
            reason = str(e)
            if isinstance(e, ConfigInvalid):
                lines = reason.splitlines()
                reason = "invalid config: " + "; ".join(lines[:5]) + (f" (+{len(lines) - 5} more)" if len(lines) > 5
                                                                     else "")
            self.board.status("rejected", reason, rev)
            return
        async with self.host.apply_lock:
            self.store.stage(rev, signed.payload, digest)
            try:
                failure, p = await self._apply_gated(new, f"revision {rev}")
            except BaseException:  # the old config would not start again either, or a stop: pending stays clear
                self.store.rollback(rev)
                raise
            if failure is None:
                self.store.commit(rev)
                self.revision, self.digest = rev, sha256(signed.payload)
                self.board.status("applied", f"restarted: {describe(p)}", rev)
            else:
                self.store.rollback(rev)
                self.board.status("rolled_back", failure, rev)

    async def _apply_gated(self, new: GatewayConfig, what: str) -> tuple[str | None, Plan]:
        """Apply ``new`` and hold it to the health gate; put the running config back if it fails.
        The caller holds the apply lock and records the outcome."""
        old = self.host.cfg
        assert old is not None
        p = plan(old, new)
        try:
            await self.host.apply_config(new)
            failure = await gate.check(self.host, self.settings, self.wiring, p, new)
        except Exception as e:  # a pipeline that cannot start, a key mismatch
            log.exception("apply of %s failed", what)
            failure = f"apply failed: {e}"
        if failure is not None:
            log.warning("%s failed its health gate (%s); rolling back", what, failure)
            await self.host.apply_config(old)
        return failure, p

    async def revert(self, args: dict[str, Any]) -> dict[str, Any]:
        """Go back from revision ``from`` to the config that ran before it (``to``: an earlier pushed
        revision kept here, or null for the local file), through the same health gate: a rollout's
        rollback. Refused unless ``from`` is what runs now (nothing newer is ever undone)."""
        frm, to = args.get("from"), args.get("to")
        if self.revision is None or frm != self.revision:
            raise Refused(f"running {_name(self.revision)}, not revision {frm}: nothing to revert")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool)):
            raise Refused("to must be a revision number or null (the local config file)")
        if to is None:
            new, data = self.bootstrap, _read(self.bootstrap_path)
        else:
            kept = self.store.read(to)
            if kept is None:
                raise Refused(f"revision {to} is no longer kept here (remote.history); push it again instead")
            new, data = self.effective(kept, to), kept
        async with self.host.apply_lock:
            self.store.mark_pending(to)
            try:
                failure, p = await self._apply_gated(new, f"the revert to {_name(to)}")
            except BaseException:
                self.store.rollback(frm)
                raise
            if failure is not None:
                self.store.rollback(frm)
                self.board.status("rolled_back", f"revert to {_name(to)} failed: {failure}", frm)
                raise Refused(f"the revert to {_name(to)} failed its health gate: {failure}")
            self.store.commit(to)
            self.revision, self.digest = to, sha256(data)
            self.board.status("reverted", f"back on {_name(to)} (from revision {frm}); restarted: {describe(p)}", frm)
        return {"reverted": True, "from": frm, "running_revision": to}

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
            result = await (self.revert(cmd.args) if cmd.op == "revert" else execute(cmd, self.host, self.info()))
        except Refused as e:
            self.board.result(cmd_id, {"status": "refused", "reason": str(e)})
        except Rejected as e:
            log.warning("command %s refused: %s", cmd_id, e)
            self.board.result(cmd_id, {"status": "refused", "reason": str(e)})
        except Exception as e:
            log.warning("command %s failed: %s: %s", cmd_id, type(e).__name__, e)
            self.board.result(cmd_id, {"status": "failed", "reason": f"{type(e).__name__}: {e}"})
        else:
            self.board.result(cmd_id, {"status": "done", "result": result})
