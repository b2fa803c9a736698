"""The bacnet driver: Who-Is discovery, ReadPropertyMultiple polls, COV subscriptions, writes.

One instance joins one BACnet/IP network as a client device. Each configured device is a node
(IP3). Every poll: COV notifications that arrived since the last poll are emitted (with their
arrival time), devices not found yet are asked for again with Who-Is, each found device is read
with ReadPropertyMultiple (ReadProperty for devices without it), and COV subscriptions are made
or renewed at half their lifetime. The host owns time: nothing here runs between calls except
bacpypes3's UDP reception, which only queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.bacnet import client, objects
from drivers.bacnet.config import BacnetConfig
from drivers.pending import Pending
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError, Quality, Value

STATUS = "status-flags"
BACNET_PORT = ":47808"


def _norm(address: str) -> str:
    """One spelling per device address (bacpypes3 leaves the standard port out)."""
    return address.removesuffix(BACNET_PORT)


Key = tuple[str, int]  # object type, instance


@dataclass
class _Device:
    """Runtime state of one configured device."""

    id: str
    instance: int
    points: list[objects.PointSpec]
    address: str = ""
    fixed: bool = False
    rpm: bool = True  # ReadPropertyMultiple works (else ReadProperty per point)
    subscribed: dict[Key, float] = field(default_factory=dict)  # object -> monotonic time of (re)subscription
    no_cov: set[Key] = field(default_factory=set)  # objects whose COV subscription was refused: polled

    def polled(self) -> list[objects.PointSpec]:
        return [p for p in self.points if not (p.cov and (p.object_type, p.instance) in self.subscribed)]

    def cov_objects(self) -> set[Key]:
        return {(p.object_type, p.instance) for p in self.points if p.cov} - self.no_cov


class BacnetDriver(Driver):
    """Reads the configured devices; ``write("<device id>/<point>", value)`` commands with a priority."""

    config: BacnetConfig

    def __init__(self, config: BacnetConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self.devices: dict[str, _Device] = {}
        for d in config.devices:
            self.devices[d.id] = _Device(
                d.id, d.instance, [p.spec() for p in d.points], address=d.address, fixed=bool(d.address)
            )
        self._by_instance = {d.instance: d for d in self.devices.values()}
        self._client: client.BacnetClient | None = None
        self._pending: Pending[tuple[int, str, tuple[str, int], list[tuple[str, Any]]]] = Pending(
            config.max_pending
        )
        self._unknown_told: set[int] = set()
        self._process_id = 1 + (config.device_instance % 4194303)
        self._found = asyncio.Event()
        self.bad_values = 0

    async def setup(self) -> None:
        c = self.config
        log = logging.getLogger("bacpypes3")
        if log.level == logging.NOTSET:  # bacpypes3 logs a traceback per undecodable packet: we count
            log.setLevel(logging.CRITICAL)
        port = c.port
        for d in self.devices.values():
            d.address = _norm(d.address)
        self._client = client.BacnetClient(
            c.address, port, c.device_instance, c.apdu_timeout, c.retries, self._on_iam, self._on_cov
        )
        try:
            await self._client.open()
        except PermissionError as e:
            raise ConfigError(f"cannot use UDP {c.address}:{port}: {e.strerror}") from e
        except OSError as e:
            raise NotReady(f"cannot open BACnet/IP on {c.address} port {port}: {e.strerror or e}") from e
        self._discover()
        # answers to the first Who-Is come within one APDU timeout: wait for them (bounded) so
        # that the first poll does not report devices offline that are merely being found
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(c.apdu_timeout):
                while any(not d.address for d in self.devices.values()):
                    self._found.clear()
                    await self._found.wait()

    # -- events between polls ------------------------------------------------------------------

    def _on_iam(self, instance: int, address: str) -> None:
        address = _norm(address)
        d = self._by_instance.get(instance)
        if d is None:
            if (
                self.config.report_unknown_devices
                and instance not in self._unknown_told
                and len(self._unknown_told) < 1000
            ):
                self._unknown_told.add(instance)
                self.ctx.log.info("BACnet device %d at %s answered Who-Is (not configured)", instance, address)
            return
        self._found.set()
        if not d.fixed and d.address != address:
            if d.address:
                self.ctx.log.info("device %s (instance %d) moved to %s", d.id, instance, address)
            d.address = address
            d.subscribed.clear()

    def _on_cov(self, source: str, process_id: int, obj: tuple[str, int], values: list[tuple[str, Any]]) -> None:
        if process_id != self._process_id:
            return
        self._pending.add((time.time_ns(), source, obj, values))

    def _discover(self) -> None:
        missing = [d for d in self.devices.values() if not d.address]
        if not missing or self._client is None:
            return
        low, high = min(d.instance for d in missing), max(d.instance for d in missing)
        self._client.who_is(self.config.broadcast or None, low, high)

    # -- polling -------------------------------------------------------------------------------

    async def poll(self, emit: Emit) -> None:
        if self._client is None:
            raise PollError("not set up")
        self._drain(emit)
        self._discover()
        answered = 0
        problems: list[str] = []
        for d in self.devices.values():
            if not d.address:
                why = f"device instance {d.instance} did not answer Who-Is"
                self.ctx.node_status(d.id, False, why)
                problems.append(f"{d.id}: {why}")
                continue
            try:
                await self._read(d, emit)
                await self._subscribe(d)
            except client.BacnetError as e:
                self.ctx.node_status(d.id, False, str(e))
                problems.append(f"{d.id}: {e}")
                if isinstance(e, client.NoResponse) and not d.fixed:
                    d.address = ""  # ask Who-Is again: it may have a new address
                d.subscribed.clear()
                continue
            answered += 1
            self.ctx.node_status(d.id, True)
        if not answered:
            raise PollError(f"no BACnet device answered ({'; '.join(problems)})")

    async def _read(self, d: _Device, emit: Emit) -> None:
        assert self._client is not None
        points = d.polled()
        refs: list[client.Ref] = []
        for p in points:
            refs.append((p.object_type, p.instance, p.property))
            if p.property == "present-value":
                refs.append((p.object_type, p.instance, STATUS))
        refs = list(dict.fromkeys(refs))
        values: dict[client.Ref, Any] = {}
        step = self.config.max_properties
        for i in range(0, len(refs), step):
            chunk = refs[i : i + step]
            if d.rpm:
                try:
                    values.update(zip(chunk, await self._client.read_many(d.address, chunk), strict=True))
                    continue
                except client.Unsupported:
                    self.ctx.log.info("device %s has no ReadPropertyMultiple: reading property by property", d.id)
                    d.rpm = False
            for ref in chunk:
                values[ref] = await self._client.read_one(d.address, ref)
        for p in points:
            status = values.get((p.object_type, p.instance, STATUS)) if p.property == "present-value" else None
            self._emit(emit, d, p, values.get((p.object_type, p.instance, p.property)), status, None)

    def _emit(self, emit: Emit, d: _Device, p: objects.PointSpec, raw: Any, status: Any, ts: int | None) -> None:
        try:
            value = objects.convert(p, raw)
        except objects.BadValue as e:
            self.bad_values += 1
            self.ctx.log.debug("%s/%s", d.id, e)
            return
        quality = Quality.GOOD
        if isinstance(status, str):
            if "fault" in status:
                quality = Quality.BAD
            elif "out-of-service" in status or "overridden" in status:
                quality = Quality.UNCERTAIN
        emit(p.name, value, unit=p.unit, node=d.id, ts_ns=ts, quality=quality)

    async def _subscribe(self, d: _Device) -> None:
        assert self._client is not None
        now = time.monotonic()
        lifetime = int(self.config.cov_lifetime)
        for key in sorted(d.cov_objects()):
            at = d.subscribed.get(key)
            if at is not None and now - at < lifetime / 2:
                continue
            try:
                await self._client.subscribe(
                    d.address, key[0], key[1], self._process_id, lifetime, self.config.cov_confirmed
                )
            except client.NoResponse:
                raise
            except client.BacnetError as e:
                self.ctx.log.info("device %s refused COV on %s:%d (%s): polling it", d.id, key[0], key[1], e)
                d.no_cov.add(key)
                d.subscribed.pop(key, None)
                continue
            d.subscribed[key] = now

    def _drain(self, emit: Emit) -> None:
        self._pending.report(self.ctx.log, emit, "bacnet.cov_dropped", "COV notification(s)", "max_pending")
        by_address = {d.address: d for d in self.devices.values() if d.address}
        for ts, source, obj, values in self._pending.drain():
            d = by_address.get(_norm(source))
            if d is None or obj not in d.subscribed:
                continue  # a notification for nothing we subscribed to (stale or forged)
            got = dict(values)
            for p in d.points:
                if p.cov and (p.object_type, p.instance) == obj and p.property in got:
                    self._emit(emit, d, p, got[p.property], got.get(STATUS), ts)

    # -- writes --------------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        """Write ``"<device id>/<point>"`` (a bare point name when there is one device);
        ``"relinquish"`` writes NULL at the point's priority (gives control back)."""
        dev_id, _, name = point.rpartition("/")
        if not dev_id and len(self.devices) == 1:
            dev_id = next(iter(self.devices))
        d = self.devices.get(dev_id)
        if d is None:
            raise ConfigError(
                f"unknown device in {point!r} (write '<device>/<point>'; devices: {', '.join(self.devices)})"
            )
        p = next((q for q in d.points if q.name == name), None)
        if p is None:
            raise ConfigError(f"device {dev_id} has no point {name!r}")
        if not p.writable:
            raise ConfigError(f"{dev_id}/{name} is not writable")
        try:
            raw = objects.encode_write(p, value)
        except ValueError as e:
            raise ConfigError(f"write to {dev_id}/{name} refused: {e}") from e
        if self._client is None or not d.address:
            raise PollError(f"device {dev_id} is not reachable now")
        try:
            await self._client.write(d.address, (p.object_type, p.instance, p.property), raw, p.priority)
        except client.BacnetError as e:
            raise PollError(f"{dev_id}/{name}: {e}") from e

    async def close(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            await c.close()
