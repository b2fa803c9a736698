"""The zigbee2mqtt driver: Zigbee2MQTT's MQTT API glued to the host's streaming contract.

setup() connects to the broker Zigbee2MQTT publishes to (NotReady naming it when it cannot);
run() subscribes to the base topic and waits: the retained ``bridge/devices`` names the devices
and what they expose (units, ranges, what may be set), each device's state messages become
readings of its node (IP3), ``availability`` and the bridge's own state go into node status.
A lost connection ends run() with PollError. write("NODE/PROPERTY", value) publishes ``set``.
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict
from typing import Any

from drivers.zigbee2mqtt import z2m
from drivers.zigbee2mqtt.config import Zigbee2MqttConfig
from gateway.broker import BrokerClient
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, PollError, Quality, Value
from gateway.logs import LogOnce

MAX_PENDING = 256  # state messages held for names bridge/devices has not listed yet
_POINT_OK = str.maketrans({c: "_" for c in " \t#+%&?\"'<>\\|*,;=[]{}()!@$^~`"})


class Zigbee2MqttDriver(Driver):
    """Follows one Zigbee2MQTT bridge; every Zigbee device is a node."""

    config: Zigbee2MqttConfig

    def __init__(self, config: Zigbee2MqttConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._devices: dict[str, z2m.Device] = {}  # friendly name -> device
        self._known = False  # bridge/devices has arrived
        self._pending: OrderedDict[str, tuple[bytes, bool]] = OrderedDict()
        self._online: set[str] = set()
        self._report_once = LogOnce(ctx.log)
        self._client: BrokerClient | None = None
        self._emit: Emit | None = None

    async def setup(self) -> None:
        self._client = BrokerClient(self.config.broker, self.ctx.instance, self._on_message, self.ctx.log)
        await self._client.connect()

    async def run(self, emit: Emit) -> None:
        assert self._client is not None
        self._emit = emit
        base = self.config.base_topic
        # one filter: overlapping ones get a message once per filter. States that come before the
        # retained bridge/devices wait for it (_pending)
        self._client.start([f"{base}/#"])
        await self._client.wait_lost()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._emit = None
        if client is not None:
            await client.close()

    # -- nodes ------------------------------------------------------------------------------

    def _wanted(self, device: z2m.Device) -> bool:
        if device.type == "Coordinator":
            return False
        patterns = self.config.devices
        return not patterns or any(
            fnmatch.fnmatchcase(device.friendly_name, p) or fnmatch.fnmatchcase(device.ieee, p.lower())
            for p in patterns
        )

    def _node(self, device: z2m.Device) -> str:
        names = self.config.node_names
        return (
            names.get(device.friendly_name) or names.get(device.ieee) or f"{self.config.node_prefix}{device.ieee[2:]}"
        )

    def _set_online(self, device: z2m.Device, online: bool, reason: str = "") -> None:
        node = self._node(device)
        if online:
            self._online.add(node)
        else:
            self._online.discard(node)
        self.ctx.node_status(node, online, reason)

    # -- messages ---------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if self._emit is None:
            return
        kind, name = z2m.classify(topic, self.config.base_topic, self._devices)
        try:
            if kind == "devices":
                self._devices_changed(z2m.parse_devices(payload))
            elif kind == "bridge_state":
                if not z2m.parse_online(payload):
                    for device in self._devices.values():
                        if self._node(device) in self._online:
                            self._set_online(device, False, "the Zigbee2MQTT bridge is offline")
            elif kind == "bridge_event":
                event, ieee, friendly = z2m.parse_event(payload)
                device = self._devices.get(friendly) or next(
                    (d for d in self._devices.values() if d.ieee == ieee), None
                )
                if event == "device_leave" and device is not None and self._wanted(device):
                    self._set_online(device, False, "left the Zigbee network")
            elif kind == "availability":
                self._availability(name, payload)
            elif kind == "state":
                self._state(name, payload, retained)
        except z2m.Z2mError as e:
            self.ctx.count("bad_messages")
            self._report_once(name or kind, f"bad:{kind}", f"{topic}: not read: {e}")

    def _devices_changed(self, devices: list[z2m.Device]) -> None:
        before = self._devices
        self._devices = {d.friendly_name: d for d in devices}
        self._known = True
        now = {d.ieee for d in devices}
        for old in before.values():
            if old.ieee not in now and self._node(old) in self._online:
                self._set_online(old, False, "removed from Zigbee2MQTT")
        pending, self._pending = self._pending, OrderedDict()
        for name, (payload, retained) in pending.items():
            self._state(name, payload, retained)

    def _lookup(self, name: str, payload: bytes, retained: bool) -> z2m.Device | None:
        device = self._devices.get(name)
        if device is not None:
            return device if self._wanted(device) else None
        if not self._known:  # bridge/devices not here yet: keep the latest message per name
            self._pending[name] = (payload, retained)
            self._pending.move_to_end(name)
            if len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
                self.ctx.count("unknown_device")
            return None
        self.ctx.count("unknown_device")
        self._report_once(name, "unknown", f"{name!r} is not in bridge/devices (ignored)")
        return None

    def _availability(self, name: str, payload: bytes) -> None:
        online = z2m.parse_online(payload)
        device = self._devices.get(name)
        if device is None or not self._wanted(device):
            return
        self._set_online(device, online, "" if online else "Zigbee2MQTT reports it offline")

    def _state(self, name: str, payload: bytes, retained: bool) -> None:
        state = z2m.parse_state(payload)
        device = self._lookup(name, payload, retained)
        emit = self._emit
        if device is None or emit is None:
            return
        node = self._node(device)
        if node not in self._online:
            self._set_online(device, True)
        # a retained state was published some time ago: its values are the last known, not new
        quality = Quality.UNCERTAIN if retained else Quality.GOOD
        self.ctx.count("states")
        for path, value, unit in z2m.flatten_state(state, device.exposes):
            if any(fnmatch.fnmatchcase(path, p) for p in self.config.exclude):
                continue
            point = path.translate(_POINT_OK).strip("_.")
            try:
                emit(point, value, unit=unit, node=node, quality=quality)
            except (TypeError, ValueError) as e:
                self.ctx.count("refused_values")
                self._report_once(name, f"refused:{path}", f"{path!r} not recorded: {e}")

    # -- commands ---------------------------------------------------------------------------

    async def write(self, point: str, value: Value) -> None:
        node, _, prop = point.partition("/")
        device = next((d for d in self._devices.values() if self._node(d) == node and self._wanted(d)), None)
        if device is None:
            raise ConfigError(f"{point!r}: no Zigbee device with node id {node!r} (write NODE/PROPERTY)")
        if not any(fnmatch.fnmatchcase(point, p) for p in self.config.writable):
            raise ConfigError(f"{point!r} is not writable (add it to writable)")
        try:
            payload_value: Any = z2m.set_value(device.exposes.get(prop), value)
        except z2m.Z2mError as e:
            raise ConfigError(f"{point!r}: {e}") from e
        if self._client is None:
            raise PollError("not connected to the broker")
        topic = f"{self.config.base_topic}/{device.friendly_name}/set"
        await self._client.publish(topic, z2m.encode_set(prop, payload_value))
        self.ctx.count("commands")
