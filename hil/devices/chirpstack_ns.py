"""Simulated ChirpStack v4 network server, as its MQTT integration shows it, on a real broker.

It publishes ChirpStack's documented event payloads (the JSON examples of the ChirpStack docs,
chirpstack/integrations/events.md, in ``DOCUMENTED``) for its devices, with the frame counter,
FRMPayload, decoded object and radio metadata of each uplink filled in, to
``application/<app>/device/<DevEUI>/event/<type>``: JSON, or the same messages in Protobuf
(chirpstack-api's classes, through the Protocol Buffers JSON mapping ChirpStack's JSON follows).
It takes downlinks on ``.../command/down`` as ChirpStack does (the DevEUI of the payload must
match the topic's), records them, and answers with ``txack`` (and ``ack`` for confirmed ones),
the way ChirpStack reports a downlink leaving a gateway and being acknowledged by the device.

Try it: ``python -m hil.devices.chirpstack_ns`` (a private mosquitto, a device uplinking
Cayenne LPP every second; watch with mosquitto_sub -t 'application/#' -v).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drivers.lorawan.chirpstack import MESSAGES  # event type -> integration.proto message name
from gateway.mqtt import MqttSession, MqttSettings

APPLICATION_ID = "17c82e96-be03-4f38-aef3-f83d48582d97"

_DEVICE_INFO = {
    "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
    "tenantName": "ChirpStack",
    "applicationId": APPLICATION_ID,
    "applicationName": "Test application",
    "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
    "deviceProfileName": "Test device-profile",
    "deviceName": "Test device",
    "devEui": "0101010101010101",
    "tags": {"key": "value"},
}

# The JSON examples of ChirpStack's event documentation (chirpstack-docs, src/chirpstack/
# integrations/events.md), verbatim apart from layout. Tests use them as vectors too.
DOCUMENTED: dict[str, dict[str, Any]] = {
    "up": {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2022-07-18T09:34:15.775023242+00:00",
        "deviceInfo": {k: v for k, v in _DEVICE_INFO.items()},
        "devAddr": "00189440",
        "dr": 1,
        "fPort": 1,
        "data": "qg==",
        "rxInfo": [
            {
                "gatewayId": "0016c001f153a14c",
                "uplinkId": 4217106255,
                "rssi": -36,
                "snr": 10.5,
                "context": "E3OWOQ==",
                "metadata": {"region_name": "eu868", "region_common_name": "EU868"},
            }
        ],
        "txInfo": {
            "frequency": 867100000,
            "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 11, "codeRate": "CR_4_5"}},
        },
    },
    "status": {
        "deduplicationId": "bf2a9746-1c8b-49be-a92e-f0b89c8534e4",
        "time": "2022-07-18T09:35:06.927172638+00:00",
        "deviceInfo": {k: v for k, v in _DEVICE_INFO.items() if k != "tags"},
        "margin": 10,
        "batteryLevel": 88.3,
    },
    "join": {
        "deduplicationId": "c9dbe358-2578-4fb7-b295-66b44edc45a6",
        "time": "2022-07-18T09:33:28.823500726+00:00",
        "deviceInfo": dict(_DEVICE_INFO),
        "devAddr": "00189440",
    },
    "ack": {
        "deduplicationId": "856a03e7-80f6-4c26-b971-9dcb34a59c2e",
        "time": "2022-07-18T09:38:49.235700766+00:00",
        "deviceInfo": dict(_DEVICE_INFO),
        "queueItemId": "1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
        "acknowledged": True,
        "fCntDown": 3,
    },
    "txack": {
        "downlinkId": 3461958127,
        "time": "2022-07-18T09:37:48.929184085+00:00",
        "deviceInfo": dict(_DEVICE_INFO),
        "queueItemId": "42cb6459-a640-46ec-9623-bdff39dc4736",
        "fCntDown": 2,
        "gatewayId": "0016c001f153a14c",
        "txInfo": {
            "frequency": 867900000,
            "power": 14,
            "modulation": {
                "lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5", "polarizationInversion": True}
            },
            "timing": {"delay": {"delay": "1s"}},
            "context": "ICYVGw==",
        },
    },
    "log": {
        "time": "2022-07-18T09:39:57.311414029+00:00",
        "deviceInfo": dict(_DEVICE_INFO),
        "level": "ERROR",
        "code": "UPLINK_MIC",
        "description": "MIC of join-request is invalid, make sure keys are correct",
        "context": {"deduplication_id": "4e91db13-5ce3-4c8c-ab0f-dfc626cf0771"},
    },
    "location": {
        "deduplicationId": "63d870b9-b769-4d88-8b33-8e43f58851a7",
        "time": "2022-07-18T09:55:11.059481003+00:00",
        "deviceInfo": dict(_DEVICE_INFO),
        "location": {"latitude": 37.344214, "longitude": -8.839375, "altitude": 2},
    },
}



def to_protobuf(kind: str, doc: dict[str, Any]) -> bytes:
    """The Protobuf encoding of an event given in ChirpStack's JSON (chirpstack-api's classes)."""
    from chirpstack_api.integration import integration_pb2
    from google.protobuf import json_format

    msg = getattr(integration_pb2, MESSAGES[kind])()
    return bytes(json_format.ParseDict(doc, msg, ignore_unknown_fields=False).SerializeToString())


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class SimDevice:
    """One end device: its identity and uplink frame counter."""

    eui: str
    name: str
    f_cnt: int = 0
    f_cnt_down: int = 0
    dev_addr: str = "00189440"


@dataclass
class Downlink:
    """A DownlinkCommand ChirpStack took from command/down, as JSON-mapping fields."""

    topic: str
    command: dict[str, Any]
    queue_item_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.command.get("data", ""))


class SimulatedChirpStack:
    """ChirpStack's MQTT integration for a set of simulated devices, on a real broker."""

    def __init__(
        self,
        broker_url: str,
        application_id: str = APPLICATION_ID,
        encoding: str = "json",
        client_id: str = "chirpstack-sim",
    ) -> None:
        self.url = broker_url
        self.application_id = application_id
        self.encoding = encoding
        self.client_id = client_id
        self.devices: dict[str, SimDevice] = {}
        self.downlinks: list[Downlink] = []
        self.downlink_arrived = asyncio.Event()
        self.ack_confirmed = True  # what the device does with a confirmed downlink
        self.published = 0
        self._session: MqttSession | None = None

    async def start(self) -> None:
        settings = MqttSettings.from_url(self.url, client_id=self.client_id, protocol="5")
        self._session = MqttSession(settings, on_message=self._on_command)
        await self._session.connect()
        self._session.client.subscribe(f"application/{self.application_id}/device/+/command/down", qos=1)

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def add_device(self, eui: str, name: str = "Test device") -> SimDevice:
        dev = self.devices[eui.lower()] = SimDevice(eui.lower(), name)
        return dev

    # -- events ---------------------------------------------------------------------------

    def _doc(self, kind: str, dev: SimDevice) -> dict[str, Any]:
        doc = copy.deepcopy(DOCUMENTED[kind])
        doc["time"] = _now()
        doc["deviceInfo"].update(devEui=dev.eui, deviceName=dev.name, applicationId=self.application_id)
        if "deduplicationId" in doc:
            doc["deduplicationId"] = str(uuid.uuid4())
        return doc

    def publish_doc(self, kind: str, eui: str, doc: dict[str, Any] | bytes) -> None:
        """Publish one event document (or raw bytes, for hostile tests) on the device's event topic."""
        assert self._session is not None, "start() first"
        topic = f"application/{self.application_id}/device/{eui}/event/{kind}"
        if isinstance(doc, bytes):
            payload = doc
        elif self.encoding == "json":
            payload = json.dumps(doc).encode()
        else:
            payload = to_protobuf(kind, doc)
        self._session.client.publish(topic, payload, qos=1)
        self.published += 1

    def uplink(
        self,
        eui: str,
        data: bytes,
        *,
        f_port: int = 1,
        obj: dict[str, Any] | None = None,
        rssi: int = -36,
        snr: float = 10.5,
        skip: int = 0,
        f_cnt: int | None = None,
    ) -> int:
        """An uplink event; ``skip`` frames are lost on the air first (the counter jumps). Its FCnt."""
        dev = self.devices[eui]
        dev.f_cnt = f_cnt if f_cnt is not None else dev.f_cnt + skip
        doc = self._doc("up", dev)
        doc.update(fCnt=dev.f_cnt, fPort=f_port, data=base64.b64encode(data).decode(), devAddr=dev.dev_addr)
        if doc["fCnt"] == 0:
            del doc["fCnt"]  # the JSON mapping leaves default values out, as ChirpStack's does
        if obj is not None:
            doc["object"] = obj
        doc["rxInfo"][0].update(rssi=rssi, snr=snr)
        self.publish_doc("up", eui, doc)
        sent = dev.f_cnt
        dev.f_cnt += 1
        return sent

    def join(self, eui: str) -> None:
        """The device (re)joined: the next uplink counts from 0."""
        dev = self.devices[eui]
        dev.f_cnt = 0
        self.publish_doc("join", eui, self._doc("join", dev))

    def status(self, eui: str, battery: float | None = 88.3, margin: int = 10) -> None:
        doc = self._doc("status", self.devices[eui])
        doc["margin"] = margin
        if battery is None:
            doc.pop("batteryLevel")
            doc["batteryLevelUnavailable"] = True
        else:
            doc["batteryLevel"] = battery
        self.publish_doc("status", eui, doc)

    def log(self, eui: str, level: str = "ERROR", code: str = "UPLINK_MIC", description: str = "") -> None:
        doc = self._doc("log", self.devices[eui])
        doc.update(level=level, code=code, description=description or doc["description"])
        self.publish_doc("log", eui, doc)

    def location(self, eui: str, lat: float, lon: float, alt: float = 2.0) -> None:
        doc = self._doc("location", self.devices[eui])
        doc["location"] = {"latitude": lat, "longitude": lon, "altitude": alt}
        self.publish_doc("location", eui, doc)

    # -- downlinks ------------------------------------------------------------------------

    def _on_command(self, msg: Any) -> None:
        topic = str(msg.topic)
        eui = topic.split("/")[3]
        try:
            if self.encoding == "json":
                command = json.loads(msg.payload)
            else:
                from chirpstack_api.integration import integration_pb2
                from google.protobuf import json_format

                pb = integration_pb2.DownlinkCommand()
                pb.ParseFromString(bytes(msg.payload))
                command = json_format.MessageToDict(pb)
        except Exception:  # ChirpStack logs and drops what it cannot decode
            return
        if command.get("devEui") != eui or eui not in self.devices:
            return  # ChirpStack refuses a payload whose DevEUI is not the topic's
        down = Downlink(topic, command)
        self.downlinks.append(down)
        self.downlink_arrived.set()
        dev = self.devices[eui]
        dev.f_cnt_down += 1
        txack = self._doc("txack", dev)
        txack.update(queueItemId=down.queue_item_id, fCntDown=dev.f_cnt_down)
        self.publish_doc("txack", eui, txack)
        if command.get("confirmed"):
            ack = self._doc("ack", dev)
            ack.update(queueItemId=down.queue_item_id, fCntDown=dev.f_cnt_down, acknowledged=self.ack_confirmed)
            self.publish_doc("ack", eui, ack)


async def _demo() -> None:  # pragma: no cover - manual use
    import tempfile
    from pathlib import Path

    from hil.mosquitto import Mosquitto

    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp)) as broker:
        ns = SimulatedChirpStack(broker.url)
        await ns.start()
        ns.add_device("0101010101010101", "parking-7")
        print(f"ChirpStack integration on {broker.url}; Ctrl-C to stop")
        try:
            while True:
                ns.uplink("0101010101010101", bytes.fromhex("03670110056700FF"))
                await asyncio.sleep(1)
        finally:
            await ns.stop()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_demo())
