"""The lorawan driver: ChirpStack's MQTT integration glued to the host's streaming contract.

setup() connects to the broker ChirpStack publishes to (NotReady naming it when it cannot);
run() subscribes to the device events and then only waits: events arrive in the broker
client's callback, each device (DevEUI) is a capillary node (IP3), and a timer marks nodes
offline after ``offline_after`` without an uplink. The connection dropping ends run() with
PollError (the host closes, backs off and sets up again). write() enqueues a downlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

from drivers.lorawan import chirpstack as cs
from drivers.lorawan.codecs import CODECS, CodecError, Partial, Position, flatten_object, point_name
from drivers.lorawan.config import Device, LorawanConfig
from drivers.lorawan.frames import FrameCounters
from gateway.broker import BrokerClient
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, Location, MissingExtra, PollError, Value
from gateway.logs import LogOnce

_HEX_RE = re.compile(r"^([0-9a-fA-F]{2})*$")


class LorawanDriver(Driver):
    """Follows a ChirpStack application; every device is a node."""

    config: LorawanConfig

    def __init__(self, config: LorawanConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._devices = {d.eui: d for d in config.devices}
        self._by_node = {self._node(d.eui): d.eui for d in config.devices}
        self._frames = FrameCounters(max_gap=config.max_frame_gap)
        self._apps: dict[str, str] = {}  # DevEUI -> application id, learnt from its events
        self._last_up: dict[str, float] = {}  # DevEUI -> monotonic time of its last uplink
        self._online: set[str] = set()
        self._last_dedup: dict[str, str] = {}
        self._log_once = LogOnce(ctx.log)
        self._client: BrokerClient | None = None
        self._emit: Emit | None = None
        self._parse = cs.parse_json if config.encoding == "json" else cs.parse_protobuf

    # -- lifecycle --------------------------------------------------------------------------

    async def setup(self) -> None:
        if self.config.encoding == "protobuf":
            try:
                cs.protobuf_module()
            except ImportError as e:
                raise MissingExtra("lorawan", "chirpstack-api", "lorawan") from e
        self._client = BrokerClient(self.config.broker, self.ctx.instance, self._on_message, self.ctx.log)
        await self._client.connect()

    async def run(self, emit: Emit) -> None:
        assert self._client is not None
        self._emit = emit
        app, prefix = self.config.application, self.config.topic_prefix
        self._client.start([f"{prefix}/{app}/device/+/event/{event}" for event in cs.EVENTS])
        lost = asyncio.ensure_future(self._client.wait_lost())
        try:
            while True:
                wait = self._next_offline(time.monotonic())
                done, _ = await asyncio.wait({lost}, timeout=wait)
                if done:
                    lost.result()  # raises PollError
                self._sweep(time.monotonic())
        finally:
            lost.cancel()
            with contextlib.suppress(asyncio.CancelledError, PollError):
                await lost

    async def close(self) -> None:
        client, self._client = self._client, None
        self._emit = None
        if client is not None:
            await client.close()

    # -- events -----------------------------------------------------------------------------

    def _node(self, eui: str) -> str:
        device = self._devices.get(eui)
        return (device.node if device is not None and device.node else "") or f"{self.config.node_prefix}{eui}"

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        emit = self._emit
        if emit is None:
            return
        try:
            app, eui, kind = cs.parse_topic(topic, self.config.topic_prefix)
        except cs.EventError as e:
            self.ctx.count("bad_topic")
            self._report_once("-", "topic", str(e))
            return
        if eui not in self._devices and not self.config.accept_unknown:
            self.ctx.count("unlisted_device")
            self._report_once(eui, "unlisted", f"device {eui} is not in devices and accept_unknown is false (ignored)")
            return
        try:
            event = self._parse(kind, payload, app, eui)
        except cs.EventError as e:
            self.ctx.count("bad_event")
            self._report_once(eui, f"bad:{kind}", f"{kind} event not read: {e}")
            return
        self._apps[eui] = event.application_id or app
        node = self._node(eui)
        ts = event.time_ns
        if isinstance(event, cs.Uplink):
            self._uplink(event, node, emit)
        elif isinstance(event, cs.Join):
            self._frames.forget(eui)
            self._heard(eui)
            self.ctx.node_status(node, True, f"joined (DevAddr {event.dev_addr})" if event.dev_addr else "joined")
            self.ctx.count("joins")
        elif isinstance(event, cs.Status):
            if event.battery is not None:
                emit("battery", event.battery, unit="%EL", node=node, ts_ns=ts)
            emit("margin", event.margin, unit="dB", node=node, ts_ns=ts)
            emit("external_power", event.external_power, node=node, ts_ns=ts)
            battery = (
                "external power"
                if event.external_power
                else (f"battery {event.battery:g} %" if event.battery is not None else "battery level unknown")
            )
            self._heard(eui)
            self.ctx.node_status(node, True, f"status: {battery}, link margin {event.margin} dB")
        elif isinstance(event, cs.Ack):
            if event.acknowledged:
                self.ctx.count("downlinks_acknowledged")
            else:
                self.ctx.count("downlinks_not_acknowledged")
                self.ctx.node_status(
                    node,
                    eui in self._online,
                    f"downlink {event.queue_item_id or '?'} (FCntDown {event.f_cnt_down}) not acknowledged",
                )
        elif isinstance(event, cs.TxAck):
            self.ctx.count("downlinks_sent")
        elif isinstance(event, cs.Log):
            self.ctx.count(f"log_{event.level.lower()}")
            if event.level in ("WARNING", "ERROR"):
                self._report_once(
                    eui, f"log:{event.code}", f"ChirpStack {event.level}: {event.code}: {event.description}"
                )
        elif isinstance(event, cs.Location):
            emit("location", Location(lat=event.lat, lon=event.lon, alt=event.alt), node=node, ts_ns=ts)

    def _uplink(self, up: cs.Uplink, node: str, emit: Emit) -> None:
        eui = up.dev_eui
        if up.deduplication_id and self._last_dedup.get(eui) == up.deduplication_id:
            self.ctx.count("duplicate_events")  # the broker delivered the same event again
            return
        seen = self._frames.seen(eui, up.f_cnt)
        if seen.step == "repeat" and not up.deduplication_id:
            self.ctx.count("duplicate_events")
            return
        self._last_dedup[eui] = up.deduplication_id
        if len(self._last_dedup) > 10_000:
            self._last_dedup.pop(next(iter(self._last_dedup)))
        self.ctx.count("uplinks")
        came_back = self._heard(eui)
        if seen.step == "gap":
            self.ctx.count("frames_lost", seen.lost)
            self.ctx.node_status(
                node, True, f"frame counter gap: {seen.lost} uplink(s) lost ({seen.previous} -> {up.f_cnt})"
            )
        elif seen.step == "reset":
            self.ctx.count("frame_counter_resets")
            self.ctx.node_status(node, True, f"frame counter reset ({seen.previous} -> {up.f_cnt})")
        elif came_back:
            self.ctx.node_status(node, True)
        ts = up.time_ns
        for point, value, unit in self._decode(up, eui):
            try:
                emit(point, value, unit=unit, node=node, ts_ns=ts)
            except (TypeError, ValueError) as e:  # a decoded name or value the host refuses
                self.ctx.count("refused_values")
                self._report_once(eui, f"refused:{point}", f"value of {point!r} not recorded: {e}")
        meta = self.config.metadata
        if "rssi" in meta and up.rssi is not None:
            emit("rssi", up.rssi, unit="dBm", node=node, ts_ns=ts)
        if "snr" in meta and up.snr is not None:
            emit("snr", up.snr, unit="dB", node=node, ts_ns=ts)
        if "frame_counter" in meta:
            emit("frame_counter", up.f_cnt, node=node, ts_ns=ts)
        if "data_rate" in meta:
            emit("data_rate", up.dr, node=node, ts_ns=ts)
        if "frequency" in meta and up.frequency:
            emit("frequency", up.frequency, unit="Hz", node=node, ts_ns=ts)
        if "gateways" in meta:
            emit("gateways", up.gateways, unit="count", node=node, ts_ns=ts)
        if "f_port" in meta:
            emit("f_port", up.f_port, node=node, ts_ns=ts)

    def _decode(self, up: cs.Uplink, eui: str) -> list[tuple[str, Value, str | None]]:
        device = self._devices.get(eui)
        codec = (device.codec if device is not None else None) or self.config.codec
        if codec == "none" or (codec != "object" and up.f_port == 0):  # FPort 0: MAC commands only
            return []
        if codec == "object":
            if up.object is None:
                return []
            try:
                leaves = flatten_object(up.object)
            except CodecError as e:
                self.ctx.count("undecodable_payloads")
                self._report_once(eui, "object", f"decoded object not read: {e}")
                return []
            return self._map_object(leaves, device)
        try:
            decoded = CODECS[codec](up.data, up.f_port)
        except Partial as e:
            self.ctx.count("partly_decoded_payloads")
            self._report_once(eui, f"codec:{codec}", f"{e}; the values before it are kept")
            decoded = e.readings
        except CodecError as e:
            self.ctx.count("undecodable_payloads")
            self._report_once(eui, f"codec:{codec}", f"payload not decoded: {e}")
            return []
        return [
            (p, Location(lat=v.lat, lon=v.lon, alt=v.alt) if isinstance(v, Position) else v, u) for p, v, u in decoded
        ]

    def _map_object(self, leaves: list[tuple[str, Any]], device: Device | None) -> list[tuple[str, Value, str | None]]:
        fields = device.fields if device is not None else {}
        out: list[tuple[str, Value, str | None]] = []
        for path, value in leaves:
            spec = fields.get(path)
            name = (spec.point if spec is not None and spec.point else None) or point_name(path)
            if name is None:
                continue
            if spec is not None and spec.scale != 1 and isinstance(value, int | float) and not isinstance(value, bool):
                value = round(value * spec.scale, 12)
            out.append((name, value, spec.unit if spec is not None else None))
        return out

    # -- online / offline -------------------------------------------------------------------

    def _heard(self, eui: str) -> bool:
        """Note an uplink; True when the node was offline (or never seen) before."""
        self._last_up[eui] = time.monotonic()
        back = eui not in self._online
        self._online.add(eui)
        return back

    def _limit(self, eui: str) -> float:
        device = self._devices.get(eui)
        return (
            device.offline_after if device is not None and device.offline_after else None
        ) or self.config.offline_after

    def _next_offline(self, now: float) -> float:
        pending = [self._last_up[e] + self._limit(e) - now for e in self._online]
        return max(0.01, min(pending)) if pending else self.config.offline_after

    def _sweep(self, now: float) -> None:
        for eui in list(self._online):
            silent = now - self._last_up[eui]
            if silent >= self._limit(eui):
                self._online.discard(eui)
                self.ctx.node_status(self._node(eui), False, f"no uplink for {silent:.0f}s")

    # -- downlinks --------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        node, _, name = point.rpartition("/")
        eui = self._by_node.get(node) or (
            node[len(self.config.node_prefix) :] if node.startswith(self.config.node_prefix) else ""
        )
        device = self._devices.get(eui)
        if device is None:
            raise ConfigError(f"{point!r}: write NODE/downlink or NODE/COMMAND for a device listed in devices")
        if name == "downlink":
            if not device.downlink:
                raise ConfigError(f"{node}: raw downlinks are not allowed (set downlink: true for {eui})")
            if isinstance(value, str) and _HEX_RE.match(value):
                data = bytes.fromhex(value)
            elif isinstance(value, bytes):
                data = value
            else:
                raise ConfigError(f"{point}: the value must be hex text or bytes")
            await self._enqueue(eui, device.downlink_port, data=data, confirmed=False)
            return
        command = device.commands.get(name)
        if command is None:
            known = ", ".join(sorted(device.commands)) or "none"
            raise ConfigError(f"{node}: no command {name!r} (commands: {known}; raw: downlink)")
        if command.data:
            if value is not True:
                raise ConfigError(f"{point}: a fixed command is sent with the value true")
            await self._enqueue(eui, command.f_port, data=bytes.fromhex(command.data), confirmed=command.confirmed)
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{point}: the value must be a number")
        if (command.min is not None and value < command.min) or (command.max is not None and value > command.max):
            raise ConfigError(f"{point}: {value} outside [{command.min}, {command.max}]")
        await self._enqueue(eui, command.f_port, obj={command.field: value}, confirmed=command.confirmed)

    async def _enqueue(
        self, eui: str, f_port: int, *, data: bytes | None = None, obj: dict[str, Any] | None = None, confirmed: bool
    ) -> None:
        app = self._apps.get(eui) or (self.config.application if self.config.application != "+" else "")
        if not app:
            raise PollError(f"application of device {eui} not known yet (no event seen): set application")
        if self._client is None:
            raise PollError("not connected to the broker")
        try:
            payload = cs.encode_downlink(
                eui, f_port, data=data, obj=obj, confirmed=confirmed, encoding=self.config.encoding
            )
        except ValueError as e:
            raise ConfigError(str(e)) from e
        await self._client.publish(cs.down_topic(app, eui, self.config.topic_prefix), payload)
        self.ctx.count("downlinks_enqueued")

    def _report_once(self, device: str, kind: str, message: str) -> None:
        """One log line per device and kind of problem, not one per event."""
        self._log_once(device, kind, f"{device}: {message}")
