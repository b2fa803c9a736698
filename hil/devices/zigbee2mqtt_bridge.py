"""Simulated Zigbee2MQTT bridge on a real broker: its documented topics and payloads.

It publishes what Zigbee2MQTT documents (zigbee2mqtt.io, guide/usage/mqtt_topics_and_messages.md,
exposes.md, configuration/device-availability.md): ``bridge/state`` and ``bridge/devices``
(retained; the documentation's example devices, with exposes in the documented format),
device states (the documentation's example payloads), ``<name>/availability`` (legacy
``online``/``offline`` or ``{"state": ...}``, retained), ``bridge/event``; and it takes
``<name>/set`` commands the way Zigbee2MQTT does: the device's state changes and is published.

Try it: ``python -m hil.devices.zigbee2mqtt_bridge`` (a private mosquitto; watch with
mosquitto_sub -t 'zigbee2mqtt/#' -v).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from gateway.mqtt import MqttSession, MqttSettings

_STATE = {
    "type": "binary",
    "name": "state",
    "property": "state",
    "value_on": "ON",
    "value_off": "OFF",
    "value_toggle": "TOGGLE",
    "access": 7,
}
_LINKQUALITY = {
    "type": "numeric",
    "name": "linkquality",
    "property": "linkquality",
    "unit": "lqi",
    "value_min": 0,
    "value_max": 255,
    "access": 1,
}

# The bridge/devices example of the documentation (my_plug, my_bulb, my_sensor, the coordinator)
# with exposes written in the documented exposes format, and the documentation's climate sensor.
DEVICES: list[dict[str, Any]] = [
    {
        "ieee_address": "0x00158d00018255df",
        "type": "Router",
        "network_address": 29159,
        "supported": True,
        "friendly_name": "my_plug",
        "definition": {
            "model": "ZNCZ02LM",
            "vendor": "Xiaomi",
            "description": "Mi power plug ZigBee",
            "options": [],
            "exposes": [
                {"type": "switch", "features": [_STATE]},
                {"type": "numeric", "name": "power", "property": "power", "unit": "W", "access": 5},
                {"type": "numeric", "name": "energy", "property": "energy", "unit": "kWh", "access": 5},
                {"type": "numeric", "name": "voltage", "property": "voltage", "unit": "V", "access": 5},
                _LINKQUALITY,
            ],
        },
        "endpoints": {
            "1": {
                "bindings": [],
                "configured_reportings": [],
                "clusters": {"input": ["genOnOff", "genBasic"], "output": []},
            }
        },
        "power_source": "Mains (single phase)",
        "date_code": "02-28-2017",
        "model_id": "lumi.plug",
        "scenes": [{"id": 3, "name": "Chill scene"}],
        "interviewing": False,
        "interview_completed": True,
    },
    {
        "ieee_address": "0x90fd9ffffe6494fc",
        "type": "Router",
        "network_address": 57440,
        "supported": True,
        "friendly_name": "my_bulb",
        "definition": {
            "model": "LED1624G9",
            "vendor": "IKEA",
            "description": "TRADFRI LED bulb E14/E26/E27 600 lumen, dimmable, color, opal white",
            "options": [],
            "exposes": [
                {
                    "type": "light",
                    "features": [
                        _STATE,
                        {
                            "type": "numeric",
                            "name": "brightness",
                            "property": "brightness",
                            "value_min": 0,
                            "value_max": 254,
                            "access": 7,
                        },
                        {
                            "type": "numeric",
                            "name": "color_temp",
                            "property": "color_temp",
                            "unit": "mired",
                            "access": 7,
                        },
                        {
                            "type": "composite",
                            "name": "color_xy",
                            "property": "color",
                            "features": [
                                {"type": "numeric", "name": "x", "property": "x", "access": 7},
                                {"type": "numeric", "name": "y", "property": "y", "access": 7},
                            ],
                        },
                    ],
                },
                {
                    "type": "enum",
                    "name": "effect",
                    "property": "effect",
                    "values": ["blink", "breathe", "okay"],
                    "access": 2,
                },
                _LINKQUALITY,
            ],
        },
        "power_source": "Mains (single phase)",
        "software_build_id": "1.3.009",
        "model_id": "TRADFRI bulb E27 CWS opal 600lm",
        "date_code": "20180410",
        "interviewing": False,
        "interview_completed": True,
    },
    {
        "ieee_address": "0x00169a00022256da",
        "type": "Router",
        "network_address": 22160,
        "supported": False,
        "friendly_name": "my_sensor",
        "definition": None,
        "power_source": "Battery",
        "date_code": "04-28-2019",
        "model_id": None,
        "interviewing": False,
        "interview_completed": True,
    },
    {
        "ieee_address": "0x00124b00120144ae",
        "type": "Coordinator",
        "network_address": 0,
        "supported": False,
        "friendly_name": "Coordinator",
        "definition": None,
        "power_source": None,
        "date_code": None,
        "model_id": None,
        "interviewing": False,
        "interview_completed": True,
    },
    {
        "ieee_address": "0x00158d0001d8e1d2",
        "type": "EndDevice",
        "network_address": 4321,
        "supported": True,
        "friendly_name": "garden/climate",
        "definition": {
            "model": "WSDCGQ01LM",
            "vendor": "Xiaomi",
            "description": "MiJia temperature & humidity sensor",
            "options": [],
            "exposes": [
                {"type": "numeric", "name": "battery", "property": "battery", "unit": "%", "access": 1},
                {"type": "numeric", "name": "temperature", "property": "temperature", "unit": "°C", "access": 1},
                {"type": "numeric", "name": "humidity", "property": "humidity", "unit": "%", "access": 1},
                {"type": "numeric", "name": "pressure", "property": "pressure", "unit": "hPa", "access": 1},
                _LINKQUALITY,
            ],
        },
        "power_source": "Battery",
        "interviewing": False,
        "interview_completed": True,
    },
]

# Example states of the documentation (and of each device's exposes).
STATES: dict[str, dict[str, Any]] = {
    "my_plug": {"state": "ON", "power": 12.5, "energy": 1.23, "voltage": 230, "linkquality": 120},
    "my_bulb": {
        "state": "ON",
        "brightness": 215,
        "color_temp": 325,
        "color": {"x": 0.4573, "y": 0.41},
        "linkquality": 90,
    },
    "my_sensor": {"occupancy": True},
    "garden/climate": {"temperature": 27.34, "humidity": 44.72, "pressure": 1013.2, "battery": 91, "linkquality": 42},
}


class SimulatedZigbee2Mqtt:
    """A Zigbee2MQTT bridge with the documentation's devices, on a real broker."""

    def __init__(
        self,
        broker_url: str,
        base_topic: str = "zigbee2mqtt",
        legacy_availability: bool = True,
        client_id: str = "zigbee2mqtt-sim",
    ) -> None:
        self.url = broker_url
        self.base = base_topic
        self.legacy = legacy_availability
        self.client_id = client_id
        self.devices = copy.deepcopy(DEVICES)
        self.states = copy.deepcopy(STATES)
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.published = 0
        self._session: MqttSession | None = None

    async def start(self) -> None:
        session = MqttSession(
            MqttSettings.from_url(self.url, client_id=self.client_id, protocol="5"),
            on_message=self._on_set,
            will=(f"{self.base}/bridge/state", self._availability_payload(False)),
        )
        await session.connect()
        self._session = session
        session.client.subscribe(f"{self.base}/+/set", qos=1)
        session.client.subscribe(f"{self.base}/+/+/set", qos=1)
        self.publish("bridge/state", self._availability_payload(True), retain=True)
        self.publish_devices()

    async def stop(self) -> None:
        """Stop as Zigbee2MQTT does: bridge/state offline, then disconnect."""
        session, self._session = self._session, None
        if session is not None:
            session.client.publish(f"{self.base}/bridge/state", self._availability_payload(False), qos=1, retain=True)
            await session.close()

    def _availability_payload(self, online: bool) -> bytes:
        word = "online" if online else "offline"
        return word.encode() if self.legacy else json.dumps({"state": word}).encode()

    def publish(self, sub_topic: str, payload: bytes | dict[str, Any] | list[Any], retain: bool = False) -> None:
        assert self._session is not None, "start() first"
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._session.client.publish(f"{self.base}/{sub_topic}", body, qos=1, retain=retain)
        self.published += 1

    def publish_devices(self) -> None:
        self.publish("bridge/devices", self.devices, retain=True)

    def report(self, name: str, **changes: Any) -> None:
        """A device reports its state (Zigbee2MQTT publishes the whole state)."""
        self.states[name].update(changes)
        self.publish(name, self.states[name])

    def availability(self, name: str, online: bool) -> None:
        self.publish(f"{name}/availability", self._availability_payload(online), retain=True)

    def leave(self, name: str) -> None:
        """The device leaves the network: an event, and bridge/devices without it."""
        dev = next(d for d in self.devices if d["friendly_name"] == name)
        self.publish(
            "bridge/event",
            {"type": "device_leave", "data": {"ieee_address": dev["ieee_address"], "friendly_name": name}},
        )
        self.devices.remove(dev)
        self.publish_devices()

    def _on_set(self, msg: Any) -> None:
        name = str(msg.topic)[len(self.base) + 1 : -len("/set")]
        if name not in self.states:
            return
        try:
            command = json.loads(msg.payload)
        except ValueError:
            return  # Zigbee2MQTT logs "Invalid JSON" and ignores it
        if not isinstance(command, dict):
            return
        self.commands.append((name, command))
        self.report(name, **{k: v for k, v in command.items() if k != "effect"})


async def _demo() -> None:  # pragma: no cover - manual use
    import tempfile
    from pathlib import Path

    from hil.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        bridge = SimulatedZigbee2Mqtt(broker.url)
        await bridge.start()
        print(f"Zigbee2MQTT on {broker.url}; Ctrl-C to stop")
        try:
            n = 0
            while True:
                n += 1
                bridge.report("garden/climate", temperature=20 + n % 10 / 10)
                await asyncio.sleep(1)
        finally:
            await bridge.stop()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_demo())
