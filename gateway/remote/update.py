"""Signed agent updates on the gateway: verify, download in chunks, install beside, restart, prove healthy.

Opt-in (``remote.allow_agent_update``). A manifest signed by a release key (``remote.release_keys``,
never the ops keys that sign configs) names the version, the bundle's size, SHA-256 and the hash
of each chunk. The chunks are retained on the broker under ``<prefix>/updates/<sha256>/<index>``
(one copy for the whole fleet); the gateway reads them on a connection of its own, checks each,
then the whole, installs the release in a venv beside the running agent (gateway/remote/releases.py),
records a trial, stops cleanly and starts the launcher again, which runs the new version. That
version must be healthy within ``remote.update_health_timeout``: the uplinks connected and every
driver instance that ran before running again. Then it stays; otherwise it goes back by itself.
A version below the floor (``remote.min_agent_version``, or the highest floor a release declared)
is refused. Every step ends in a retained, signed status on ``<prefix>/<gw>/agent/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.mqtt import MqttError, MqttSession
from gateway.remote import releases, topics
from gateway.remote.envelope import Rejected, cbor_map, load_trusted, open_signed
from gateway.remote.gate import downlinks
from gateway.remote.releases import AgentState, ReleaseError, Trial, version_key
from gateway.signedjson import seal_async

log = logging.getLogger("sensegate.update")
MAX_CHUNK = 512 * 1024  # below the downlink's MQTT 5 Maximum Packet Size (1 MiB)
DOWNLOAD_TIMEOUT = 900.0
FINAL = ("healthy", "rolled_back", "refused", "failed")
SEEN = 16  # manifests remembered as handled


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a signed update says about its bundle."""

    version: str
    fmt: str  # wheels | deb
    size: int
    sha256: str
    chunk: int
    chunks: list[str]
    floor: str
    name: str

    @classmethod
    def parse(cls, payload: bytes) -> Manifest:
        m = cbor_map(payload, "the update manifest")
        try:
            got = cls(str(m["version"]), str(m["format"]), int(m["size"]), str(m["sha256"]), int(m["chunk"]),
                      [str(c) for c in m["chunks"]], str(m.get("floor") or ""), str(m.get("name") or ""))
        except (KeyError, TypeError, ValueError) as e:
            raise Rejected(f"the update manifest lacks or garbles {e}") from None
        try:
            version_key(got.version)
            if got.floor:
                version_key(got.floor)
        except ValueError as e:
            raise Rejected(str(e)) from None
        if got.fmt not in ("wheels", "deb"):
            raise Rejected(f"unknown bundle format {got.fmt!r} (wheels or deb)")
        if not 1024 <= got.chunk <= MAX_CHUNK or len(got.chunks) != -(-got.size // got.chunk) or got.size < 1:
            raise Rejected("the manifest's chunking does not add up")
        if len(got.sha256) != 64 or any(len(c) != 64 for c in got.chunks):
            raise Rejected("the manifest's hashes are not SHA-256")
        return got


class AgentUpdater:
    """The agent-update side of the remote agent (one per daemon)."""

    def __init__(self, agent: Any, root: Path) -> None:
        self.agent = agent  # gateway.remote.agent.RemoteAgent
        self.root = root
        self.state = AgentState()
        self.keys: dict[bytes, Any] = {}
        self.busy = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._last: dict[str, Any] | None = None

    @property
    def settings(self) -> Any:
        return self.agent.settings

    def open(self) -> None:
        """Read the state, the release keys; start watching a trial of this version."""
        self.keys = load_trusted(self.settings.release_keys, self.agent.bootstrap_path.parent)
        self.state = AgentState.load(self.root)
        out = self.state.outcome
        if out is not None and not out.get("reported"):
            self._last = {"state": out["state"], "version": out.get("version"), "reason": out.get("reason", "")}
        t = self.state.trial
        if t is not None and t.version == __version__:
            self._spawn(self._watch_trial(t), "agent-trial")

    def describe(self) -> dict[str, Any]:
        """For the health summary: what runs, and the last update's outcome."""
        st = self.state
        upd: dict[str, Any] | None = None
        if st.trial is not None:
            upd = {"state": "trial", "version": st.trial.version}
        elif st.outcome is not None:
            upd = {k: st.outcome.get(k) for k in ("state", "version", "reason")}
        return {"version": __version__, "release": st.current or "installed", "floor": self._floor(),
                "updates": bool(self.settings.allow_agent_update), "update": upd}

    def _floor(self) -> str:
        floors = [f for f in (self.settings.min_agent_version, self.state.floor) if f]
        return max(floors, key=version_key) if floors else ""

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        from gateway.bounded import stop_task

        for t in list(self._tasks):
            await stop_task(t, (2.0,))

    # -- statuses -------------------------------------------------------------------------------

    def status(self, state: str, version: str | None, reason: str = "") -> None:
        body = {"gateway": self.agent.gateway_id, "state": state, "version": version, "running_version": __version__,
                "reason": reason, "ts": round(time.time(), 3)}
        (log.warning if state in ("refused", "failed", "rolled_back") else log.info)(
            "agent update%s: %s%s", f" {version}" if version else "", state, f": {reason}" if reason else "")
        self._last = {"state": state, "version": version, "reason": reason}
        self._spawn(self._send(body), "agent-status")
        health = getattr(self.agent.host, "health", None)
        if health is not None and state in FINAL:
            health.soon()  # the fleet view shows the outcome at once

    async def _send(self, body: dict[str, Any]) -> None:
        key = getattr(self.agent.board.pipeline, "key", None)
        payload = await seal_async(body, key, self.agent.gateway_id, "agent-status")
        for up in downlinks(self.agent.host.pipeline):
            up.publish(topics.agent_status(up.topic_prefix, self.agent.gateway_id), payload, retain=True)

    def flush(self) -> None:
        """At a connect: an outcome the launcher recorded (a rollback at start) is reported once."""
        out = self.state.outcome
        if out is not None and not out.get("reported"):
            out["reported"] = True
            with contextlib.suppress(OSError):
                self.state.save(self.root)
            self.status(out["state"], out.get("version"), out.get("reason", ""))

    # -- taking an update -------------------------------------------------------------------------

    def take(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a retained manifest cleared by its rollout
        digest = hashlib.sha256(payload).hexdigest()
        if digest in self.state.seen:
            log.debug("agent update manifest %s delivered again; already handled", digest[:12])
            return
        if self.busy:
            self.status("refused", None, "busy: an update is already in progress")
            return
        self.state.seen = [*self.state.seen[-(SEEN - 1):], digest]
        with contextlib.suppress(OSError):
            self.state.save(self.root)
        self.busy = True
        self._spawn(self._take(topic, payload), "agent-update")

    async def _take(self, topic: str, payload: bytes) -> None:
        version: str | None = None
        try:
            s = self.settings
            try:
                signed = open_signed(payload, self.keys, "agent", self.agent.targets, int(s.max_document_bytes))
            except Rejected as e:
                raise Rejected(f"not a valid release signature: {e} (updates must be signed by a key in "
                               "remote.release_keys)") from None
            m = Manifest.parse(signed.payload)
            version = m.version
            self._check(m)
            self.status("received", m.version, f"signed by release key {signed.signer}; {m.size} bytes")
            bundle = await self._download(topic, m)
            self.status("installing", m.version)
            wheels = await asyncio.to_thread(releases.unpack, bundle, m.fmt, bundle.parent / f"wheels-{m.version}")
            await asyncio.to_thread(releases.install, self.root, m.version, wheels)
            await self._switch(m)
        except Rejected as e:
            self.status("refused", version, str(e))
        except (ReleaseError, OSError, MqttError, TimeoutError) as e:
            self.status("failed", version, str(e) or type(e).__name__)
        finally:
            self.busy = False

    def _check(self, m: Manifest) -> None:
        s = self.settings
        if not s.allow_agent_update:
            raise Rejected("agent updates are off on this gateway (remote.allow_agent_update: false)")
        floor = self._floor()
        if floor and version_key(m.version) < version_key(floor):
            raise Rejected(f"version {m.version} is below the minimum version {floor} (a downgrade this far is "
                           "refused)")
        if m.version == __version__:
            raise Rejected(f"version {m.version} is already running")
        if m.size > s.max_update_bytes:
            raise Rejected(f"the bundle of {m.size} bytes is over remote.max_update_bytes ({int(s.max_update_bytes)})")

    async def _download(self, topic: str, m: Manifest) -> Path:
        """Read the chunks retained under ``<prefix>/updates/<sha256>/`` and check each and the whole."""
        up = next(iter(downlinks(self.agent.host.pipeline)), None)
        if up is None:
            raise ReleaseError("no MQTT uplink to download the update over")
        prefix = up.topic_prefix
        d = self.root / "downloads"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{m.sha256}.bundle"
        parts: dict[int, bytes] = {}
        done = asyncio.Event()
        bad: list[str] = []

        def on_message(msg: Any) -> None:
            try:
                i = int(msg.topic.rsplit("/", 1)[1])
            except ValueError:
                return
            data = bytes(msg.payload)
            if not 0 <= i < len(m.chunks) or not data:
                return
            if hashlib.sha256(data).hexdigest() != m.chunks[i]:
                bad.append(f"chunk {i} does not match its hash in the signed manifest")
                done.set()
                return
            parts[i] = data
            if len(parts) == len(m.chunks):
                done.set()

        settings = dataclasses.replace(up.settings, client_id=f"{up.settings.client_id}-update")
        session = MqttSession(settings, on_message=on_message)
        await session.connect()
        try:
            session.client.subscribe(topics.update_chunks(prefix, m.sha256), qos=1)
            async with asyncio.timeout(DOWNLOAD_TIMEOUT):
                await done.wait()
        except TimeoutError:
            raise ReleaseError(f"only {len(parts)} of {len(m.chunks)} chunks came within {DOWNLOAD_TIMEOUT:g} s "
                               f"(retained under {topics.update_chunks(prefix, m.sha256)})") from None
        finally:
            await session.close()
        if bad:
            raise Rejected(bad[0])
        data = b"".join(parts[i] for i in range(len(m.chunks)))
        if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.sha256:
            raise Rejected("the bundle does not match the size and SHA-256 of the signed manifest")
        await asyncio.to_thread(path.write_bytes, data)
        return path

    async def _switch(self, m: Manifest) -> None:
        """Record the trial, make the new release current, and restart into it through the launcher."""
        host = self.agent.host
        sup = host.supervisor
        running = sorted(n for n, r in (getattr(sup, "runners", None) or {}).items() if r.stats.state == "running")
        st = self.state
        now = time.time()
        st.trial = Trial(m.version, st.current, now, now + float(self.settings.update_health_timeout),
                         baseline={"drivers": running})
        st.current = m.version
        st.factory = str(releases.factory_info(self.root).get("version") or __version__)
        if m.floor and (not st.floor or version_key(m.floor) > version_key(st.floor)):
            st.floor = m.floor
        st.outcome = None
        st.save(self.root)
        self.status("restarting", m.version, f"installed beside {__version__}; restarting into it")
        await asyncio.sleep(0.5)  # the status goes out before the connection closes
        host.restart_into(releases.factory_argv())

    # -- the trial of a new version ----------------------------------------------------------------

    async def _watch_trial(self, t: Trial) -> None:
        """This version is on trial: healthy by the deadline (uplinks connected, the drivers that ran
        before running) and it stays; otherwise back to the previous version."""
        host = self.agent.host
        want = set(t.baseline.get("drivers") or [])
        why = "not checked"
        while time.time() < t.deadline:
            ups = list(downlinks(host.pipeline))
            sup = host.supervisor
            runners = getattr(sup, "runners", None) or {}
            down = sorted(n for n in want if n not in runners or runners[n].stats.state != "running")
            if not ups or not all(u.connected for u in ups):
                why = "the uplink is not connected"
            elif down:
                why = "driver instance(s) not running: " + ", ".join(
                    f"{n} ({runners[n].stats.state}: {runners[n].stats.last_error or 'no error'})" if n in runners
                    else f"{n} (not configured)" for n in down)
            else:
                self._commit(t)
                return
            await asyncio.sleep(0.5)
        self._revert(t, f"version {t.version} was not healthy within {self.settings.update_health_timeout:g} s: {why}")

    def _commit(self, t: Trial) -> None:
        st = self.state
        st.trial = None
        st.outcome = {"state": "healthy", "version": t.version, "reason": "", "ts": time.time(), "reported": True}
        st.save(self.root)
        releases.prune(self.root, [t.version, t.previous])
        self.status("healthy", t.version, f"running {t.version}; {t.previous or 'the installed agent'} kept "
                    "to go back to")

    def _revert(self, t: Trial, reason: str) -> None:
        st = self.state
        st.current, st.trial = t.previous, None
        st.outcome = {"state": "rolled_back", "version": t.version, "reason": reason, "ts": time.time(),
                      "reported": False}
        st.save(self.root)
        log.error("agent update: %s; going back to %s", reason, t.previous or "the installed agent")
        self.agent.host.restart_into(releases.factory_argv())
