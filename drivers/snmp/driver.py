"""The snmp driver: polls one agent's OIDs (GET, GETBULK walks) and receives traps.

Traps arrive between polls (the trap receiver is a UDP endpoint on the host's loop); they are
queued, bounded, and handed to the host at the next poll with the time they arrived, so the
host keeps owning time and calls this instance one call at a time. A poll whose agent does not
answer fails (the host marks the instance unavailable once, and reopens after three).
"""

from __future__ import annotations

import time

from drivers.pending import Pending
from drivers.snmp import client, oids
from drivers.snmp.config import SnmpConfig
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError

SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)  # snmpTrapOID.0 (RFC 3418)
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)


class SnmpDriver(Driver):
    """One agent: ``oids`` polled each interval, ``traps`` received and emitted at each poll."""

    config: SnmpConfig

    def __init__(self, config: SnmpConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._specs = config.specs()
        self._scalars = [s for s in self._specs if not s.walk]
        self._walks = [s for s in self._specs if s.walk]
        self._by_oid = {s.oid: s for s in self._scalars}
        c = config
        self._creds = client.Credentials(
            version=c.version, community=c.community, user=c.user, auth_protocol=c.auth_protocol,
            auth_key=c.auth_key, priv_protocol=c.priv_protocol, priv_key=c.priv_key, context=c.context,
        )
        self._client: client.SnmpClient | None = None
        self._traps: client.TrapReceiver | None = None
        self._pending: Pending[tuple[int, tuple[str, int], list[client.Binding]]] = Pending(
            c.traps.max_pending if c.traps else 1
        )
        self.bad_values = 0

    async def setup(self) -> None:
        c = self.config
        if c.oids:
            self._client = client.SnmpClient(c.host, c.port, self._creds, c.request_timeout, c.retries)
            try:
                await self._client.open()
            except client.SnmpError as e:
                raise NotReady(str(e)) from e
        if c.traps is not None:
            t = c.traps
            communities = t.communities or ([c.community] if c.version == "v2c" else [])
            engine_ids = [oids.parse_engine_id(e) for e in t.engine_ids]
            self._traps = client.TrapReceiver(self._on_trap)
            try:
                v3 = self._creds if c.version == "v3" else None
                await self._traps.open(t.address, t.port, communities, v3, engine_ids)
            except PermissionError as e:
                raise ConfigError(
                    f"cannot listen for traps on UDP {t.address}:{t.port}: {e.strerror} (ports below 1024 need "
                    "root or CAP_NET_BIND_SERVICE; or use a port above 1024)"
                ) from e
            except OSError as e:
                raise NotReady(f"cannot listen for traps on UDP {t.address}:{t.port}: {e.strerror or e}") from e
            self.ctx.log.info("receiving SNMP traps on UDP %s:%d", t.address, self._traps.port)

    @property
    def trap_port(self) -> int:
        """The UDP port traps are received on (useful with ``port: 0``)."""
        return self._traps.port if self._traps else 0

    def _on_trap(self, source: tuple[str, int], bindings: list[client.Binding]) -> None:
        self._pending.add((time.time_ns(), source, bindings))

    async def poll(self, emit: Emit) -> None:
        self._drain_traps(emit)
        if self._client is None:
            return
        try:
            for i in range(0, len(self._scalars), self.config.max_oids_per_request):
                chunk = self._scalars[i : i + self.config.max_oids_per_request]
                for oid, kind, raw in await self._client.get([s.oid for s in chunk]):
                    spec = self._by_oid.get(oid)
                    if spec is not None:
                        self._emit(emit, spec, spec.name, kind, raw)
            for spec in self._walks:
                c = self.config
                rows, truncated = await self._client.walk(spec.oid, c.max_repetitions, c.max_walk_rows)
                if truncated:
                    self.ctx.log.debug("%s: walk stopped at %d rows (max_walk_rows)", spec.name, len(rows))
                for oid, kind, raw in rows:
                    self._emit(emit, spec, f"{spec.name}.{oids.suffix(spec.oid, oid)}", kind, raw)
        except client.SnmpError as e:
            raise PollError(str(e)) from e

    def _emit(self, emit: Emit, spec: oids.PointSpec, name: str, kind: str, raw: object, **kw: object) -> None:
        try:
            value = oids.convert(spec, kind, raw)  # type: ignore[arg-type]
        except oids.BadValue as e:
            self.bad_values += 1
            self.ctx.log.debug("%s", e)
            return
        emit(name, value, unit=spec.unit_for(kind), **kw)  # type: ignore[arg-type]

    def _drain_traps(self, emit: Emit) -> None:
        self._pending.report(self.ctx.log, emit, "snmp.traps_dropped", "SNMP trap(s)", "traps.max_pending")
        if self._traps is not None and self._traps.malformed:
            emit("snmp.traps_malformed", self._traps.malformed)
        host = self.config.host
        for ts, (addr, _port), bindings in self._pending.drain():
            node = None if addr == host or not addr else addr
            trap_oid = next((raw for oid, kind, raw in bindings if oid == SNMP_TRAP_OID and kind == "oid"), None)
            emit("trap", str(trap_oid) if trap_oid else "unknown", node=node, ts_ns=ts)
            for oid, kind, raw in bindings:
                if oid in (SNMP_TRAP_OID, SYS_UPTIME):
                    continue
                spec, name = self._name_of(oid)
                if spec is not None:
                    self._emit(emit, spec, name, kind, raw, node=node, ts_ns=ts)

    def _name_of(self, oid: oids.Oid) -> tuple[oids.PointSpec | None, str]:
        """The configured point a trap variable belongs to (exact OID, or below a walked one)."""
        spec = self._by_oid.get(oid)
        if spec is not None:
            return spec, spec.name
        for w in self._walks:
            index = oids.suffix(w.oid, oid)
            if index is not None:
                return w, f"{w.name}.{index}"
        return None, ""

    async def close(self) -> None:
        c, self._client = self._client, None
        t, self._traps = self._traps, None
        if c is not None:
            await c.close()
        if t is not None:
            await t.close()
