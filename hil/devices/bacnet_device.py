"""Simulated device for drivers/bacnet: a real BACnet/IP device built with bacpypes3 on loopback.

BACnet/IP finds devices with Who-Is broadcasts on UDP 47808. On loopback every device gets its
own address (127.0.0.2, 127.0.0.3, ...) on one shared port, and also listens on that port's
broadcast address 127.255.255.255 (SO_REUSEPORT), so a Who-Is sent there reaches them all; the
client uses another port (bacpypes3 short-circuits 127.x on its own port). The device answers
Who-Is, ReadProperty(Multiple), WriteProperty with a priority array, and SubscribeCOV with real
notifications when a value changes (``set()``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bacpypes3.app import Application
from bacpypes3.basetypes import EngineeringUnits, Reliability
from bacpypes3.local.analog import AnalogInputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryOutputObject
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.primitivedata import CharacterString

BROADCAST = "127.255.255.255"


def air_handler_objects() -> dict[str, Any]:
    """The objects of an air-handling unit controller: a temperature, a set-point, a fan, a mode."""
    return {
        "supply_temp": AnalogInputObject(
            objectIdentifier=("analog-input", 1),
            objectName="supply-temp",
            presentValue=21.5,
            units=EngineeringUnits.degreesCelsius,
            covIncrement=0.1,
        ),
        "setpoint": AnalogValueObjectCmd(
            objectIdentifier=("analog-value", 2),
            objectName="setpoint",
            presentValue=20.0,
            units=EngineeringUnits.degreesCelsius,
            covIncrement=0.0,
        ),
        "fan": BinaryOutputObject(objectIdentifier=("binary-output", 3), objectName="fan", presentValue="inactive"),
        "mode": MultiStateValueObject(
            objectIdentifier=("multi-state-value", 4),
            objectName="mode",
            presentValue=2,
            numberOfStates=3,
            stateText=[CharacterString("off"), CharacterString("heat"), CharacterString("cool")],
        ),
    }


class BacnetDevice:
    """One BACnet/IP device (bacpypes3 application) at ``host``:``port`` on loopback."""

    def __init__(self, instance: int, host: str = "127.0.0.2", name: str = "") -> None:
        self.instance = instance
        self.host = host
        self.name = name or f"ahu-{instance}"
        self.port = 0
        self.objects = air_handler_objects()
        self._app: Application | None = None

    async def start(self, port: int) -> None:
        """Start answering on ``host:port`` (and the loopback broadcast address on ``port``)."""
        self.port = port
        device = DeviceObject(
            objectIdentifier=("device", self.instance),
            objectName=self.name,
            vendorIdentifier=999,
        )
        net = NetworkPortObject(
            f"{self.host}/8:{port}", objectIdentifier=("network-port", 1), objectName="NetworkPort-1"
        )
        self._app = Application.from_object_list([device, net, *self.objects.values()])
        for link in self._app.link_layers.values():
            tasks = list(getattr(link.server, "_transport_tasks", ()))
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set(self, name: str, value: Any) -> None:
        """Change a present value as the device's own logic would (COV subscribers are told)."""
        self.objects[name].presentValue = value

    def get(self, name: str, prop: str = "presentValue") -> Any:
        return getattr(self.objects[name], prop)

    def set_fault(self, name: str, fault: bool = True) -> None:
        """A broken sensor wire: reliability no-sensor, which raises the fault status flag."""
        self.objects[name].reliability = Reliability.noSensor if fault else Reliability.noFaultDetected

    async def stop(self) -> None:
        app, self._app = self._app, None
        if app is not None:
            pending = [t for link in app.link_layers.values() for t in getattr(link.server, "_transport_tasks", ())]
            for t in pending:
                t.cancel()
            app.close()
            await asyncio.gather(*pending, return_exceptions=True)
            with contextlib.suppress(Exception):
                for _ in range(3):
                    await asyncio.sleep(0)


class BacnetNetwork:
    """Several devices on one loopback BACnet/IP "network" (one UDP port, one address each)."""

    def __init__(self, instances: list[int]) -> None:
        self.devices = [BacnetDevice(inst, host=f"127.0.0.{i + 2}") for i, inst in enumerate(instances)]
        self.port = 0

    async def start(self, port: int) -> None:
        self.port = port
        try:
            for d in self.devices:
                await d.start(port)
        except BaseException:
            await self.stop()
            raise

    @property
    def broadcast(self) -> str:
        return f"{BROADCAST}:{self.port}"

    async def stop(self) -> None:
        for d in self.devices:
            await d.stop()
