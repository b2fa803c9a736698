"""bacpypes3 on the host's event loop: a BACnet/IP client application that discovers devices
(Who-Is / I-Am), reads properties (ReadPropertyMultiple, ReadProperty), subscribes to COV and
writes with a priority.

Values leave this module as plain Python values or ``objects.Refused``, so the rest of the
driver never touches bacpypes3's types. Each client owns its own application and UDP port:
two driver instances share nothing. Never imports ``gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

from bacpypes3.apdu import (
    ConfirmedCOVNotificationRequest,
    ErrorRejectAbortNack,
    IAmRequest,
    SimpleAckPDU,
    SubscribeCOVRequest,
    UnconfirmedCOVNotificationRequest,
    WhoIsRequest,
)
from bacpypes3.app import Application
from bacpypes3.basetypes import BinaryPV, PropertyIdentifier
from bacpypes3.constructeddata import AnyAtomic
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.networkport import NetworkPortObject
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import (
    BitString,
    Boolean,
    CharacterString,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    Real,
    Unsigned,
)
from bacpypes3.vendor import get_vendor_info

from drivers.bacnet.objects import Refused

Ref = tuple[str, int, str]  # object type, instance, property
IAmHandler = Callable[[int, str], None]  # device instance, "ip:port"
CovHandler = Callable[[str, int, tuple[str, int], list[tuple[str, Any]]], None]


class BacnetError(Exception):
    """A request failed: refused, rejected or aborted by the device."""


class NoResponse(BacnetError):
    """The device did not answer within the APDU timeout and retries."""


class Unsupported(BacnetError):
    """The device does not implement the service (e.g. ReadPropertyMultiple)."""


def primitive(value: Any) -> Any:
    """A bacpypes3 property value -> bool, int, float, str, or Refused."""
    if isinstance(value, ErrorRejectAbortNack) or type(value).__name__ == "ErrorType":
        return Refused(_reason(value))
    if isinstance(value, AnyAtomic):
        value = value.get_value()
    if isinstance(value, Boolean):
        return bool(value)
    if isinstance(value, BinaryPV):
        return str(value) == "active"
    if isinstance(value, Enumerated):
        return str(value)
    if isinstance(value, Real | Double):
        return float(value)
    if isinstance(value, Unsigned | Integer):
        return int(value)
    if isinstance(value, CharacterString):
        return str(value)
    if isinstance(value, BitString):
        return str(value)  # set bit names joined by ";" (e.g. status-flags "in-alarm;fault")
    if isinstance(value, Null):
        return Refused("null value")
    if isinstance(value, bool | int | float | str):
        return value
    return Refused(f"unsupported value type {type(value).__name__}")


def _reason(err: Any) -> str:
    for attrs in (("errorClass", "errorCode"), ("apduAbortRejectReason",), ("reason",)):
        parts = [str(getattr(err, a)) for a in attrs if getattr(err, a, None) is not None]
        if parts:
            return "/".join(parts)
    return type(err).__name__


def _object_id(kind: str, instance: int) -> ObjectIdentifier:
    return ObjectIdentifier(f"{kind},{instance}")


class _App(Application):  # type: ignore[misc]
    """bacpypes3's application, telling its owner about I-Ams and COV notifications."""

    on_iam: IAmHandler | None = None
    on_cov: CovHandler | None = None

    async def do_IAmRequest(self, apdu: IAmRequest) -> None:
        with contextlib.suppress(Exception):
            if self.on_iam is not None:
                self.on_iam(int(apdu.iAmDeviceIdentifier[1]), str(apdu.pduSource))
        await super().do_IAmRequest(apdu)

    def _notified(self, apdu: Any) -> None:
        if self.on_cov is None:
            return
        kind, inst = apdu.monitoredObjectIdentifier
        kind = str(kind)
        values: list[tuple[str, Any]] = []
        cls = get_vendor_info(0).get_object_class(apdu.monitoredObjectIdentifier[0])
        for pv in apdu.listOfValues or ():
            prop = pv.propertyIdentifier
            datatype = cls.get_property_type(prop) if cls is not None else None
            try:
                raw = primitive(pv.value.cast_out(datatype)) if datatype is not None else Refused("unknown property")
            except Exception as e:  # a value that does not decode as its property's type
                raw = Refused(f"undecodable {prop}: {type(e).__name__}")
            values.append((str(prop), raw))
        self.on_cov(str(apdu.pduSource), int(apdu.subscriberProcessIdentifier), (kind, int(inst)), values)

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: UnconfirmedCOVNotificationRequest) -> None:
        self._notified(apdu)

    async def do_ConfirmedCOVNotificationRequest(self, apdu: ConfirmedCOVNotificationRequest) -> None:
        self._notified(apdu)
        await self.response(SimpleAckPDU(context=apdu))


class BacnetClient:
    """One BACnet/IP client device on ``address``/``port`` (the host serialises polls)."""

    def __init__(
        self,
        address: str,
        port: int,
        device_instance: int,
        apdu_timeout: float,
        retries: int,
        on_iam: IAmHandler,
        on_cov: CovHandler,
    ) -> None:
        self.local = f"{address}:{port}"
        self._address, self._port = address, port
        self._device_instance = device_instance
        self._apdu_timeout, self._retries = apdu_timeout, retries
        self._on_iam, self._on_cov = on_iam, on_cov
        self._app: _App | None = None

    async def open(self) -> None:
        """Bind the UDP port (OSError when it cannot) and start the application."""
        host = self._address.split("/", 1)[0]
        # bacpypes3 retries a failed bind forever in a task of its own: find out here instead
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind((host, self._port))
        device = DeviceObject(
            objectIdentifier=("device", self._device_instance),
            objectName=f"sensegate-{self._device_instance}",
            vendorIdentifier=999,
            apduTimeout=int(self._apdu_timeout * 1000),
            numberOfApduRetries=self._retries,
        )
        port = NetworkPortObject(self.local, objectIdentifier=("network-port", 1), objectName="NetworkPort-1")
        app = _App.from_object_list([device, port])
        app.on_iam, app.on_cov = self._on_iam, self._on_cov
        self._app = app
        for link in app.link_layers.values():  # wait until bacpypes3's endpoints exist
            server = getattr(link, "server", None)
            tasks = list(getattr(server, "_transport_tasks", ()))
            if tasks:
                await asyncio.gather(*tasks)

    def _need(self) -> _App:
        if self._app is None:
            raise BacnetError("not open")
        return self._app

    def who_is(self, destination: str | None, low: int | None = None, high: int | None = None) -> None:
        """Send a Who-Is (to ``ip:port``, or the local broadcast); answers come to ``on_iam``."""
        req = WhoIsRequest(destination=Address(destination) if destination else Address("*"))
        if low is not None and high is not None:
            req.deviceInstanceRangeLowLimit, req.deviceInstanceRangeHighLimit = low, high
        self._need().request(req)

    async def _ask(self, what: str, coro: Any) -> Any:
        try:
            res = await coro
        except ErrorRejectAbortNack as e:
            raise self._error(what, e) from None
        if isinstance(res, ErrorRejectAbortNack):
            raise self._error(what, res)
        return res

    @staticmethod
    def _error(what: str, e: Any) -> BacnetError:
        reason = _reason(e)
        low = reason.lower()
        if "timeout" in low or "no-response" in low or "noresponse" in low:
            return NoResponse(f"{what}: no answer ({reason})")
        if "unrecognized-service" in low or "unrecognizedservice" in low:
            return Unsupported(f"{what}: {reason}")
        return BacnetError(f"{what}: {reason}")

    async def read_many(self, device: str, refs: Sequence[Ref]) -> list[Any]:
        """ReadPropertyMultiple of ``refs``; one value (or Refused) per ref, in order."""
        params: list[Any] = []
        for kind, inst, prop in refs:
            params += [_object_id(kind, inst), [PropertyIdentifier(prop)]]
        res = await self._ask(
            f"read-property-multiple to {device}", self._need().read_property_multiple(Address(device), params)
        )
        got = {(str(o[0]), int(o[1]), str(p)): primitive(v) for o, p, _i, v in res}
        return [got.get(r, Refused("missing from the reply")) for r in refs]

    async def read_one(self, device: str, ref: Ref) -> Any:
        """ReadProperty of one ref; a refusal is a Refused value, not an error."""
        kind, inst, prop = ref
        try:
            v = await self._ask(
                f"read-property to {device}", self._need().read_property(Address(device), _object_id(kind, inst), prop)
            )
        except NoResponse:
            raise
        except BacnetError as e:
            return Refused(str(e).split(": ", 1)[-1])
        return primitive(v)

    async def subscribe(
        self, device: str, kind: str, inst: int, process_id: int, lifetime: int, confirmed: bool
    ) -> None:
        """SubscribeCOV (or renew it); BacnetError when the device refuses."""
        req = SubscribeCOVRequest(
            subscriberProcessIdentifier=process_id,
            monitoredObjectIdentifier=_object_id(kind, inst),
            issueConfirmedNotifications=confirmed,
            lifetime=lifetime,
            destination=Address(device),
        )
        await self._ask(f"subscribe-cov to {device}", self._need().request(req))

    async def write(self, device: str, ref: Ref, value: Any, priority: int | None) -> None:
        """WriteProperty; None relinquishes the priority slot (writes NULL)."""
        kind, inst, prop = ref
        v = Null(()) if value is None else value
        await self._ask(
            f"write-property to {device}",
            self._need().write_property(Address(device), _object_id(kind, inst), prop, v, priority=priority),
        )

    async def close(self) -> None:
        app, self._app = self._app, None
        if app is None:
            return
        pending = []
        for link in app.link_layers.values():
            server = getattr(link, "server", None)
            pending += [t for t in getattr(server, "_transport_tasks", ()) if not t.done()]
        for t in pending:
            t.cancel()
        app.close()
        await asyncio.gather(*pending, return_exceptions=True)
        for _ in range(3):  # bacpypes3 completes cancelled requests on the next turns
            await asyncio.sleep(0)
