"""The ble driver: bleak's BlueZ scanner and GATT client glued to the host's contract.

setup() checks the adapter over D-Bus (NotReady naming it when BlueZ, the adapter or its power
is missing) and starts a passive (or active) scan; run() then only waits: advertisements arrive
in bleak's callback, a D-Bus watch notices the adapter going away (PollError naming it, the host
closes, backs off and sets up again), and a timer marks silent nodes offline and runs the
configured GATT reads. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from drivers.ble.config import BleConfig, GattPoll
from drivers.ble.decoders import DecodeError, Encrypted, Partial, Unsupported, decode_advertisement, decode_struct
from drivers.ble.nodes import NodeBook
from gateway.driver_api import Driver, DriverContext, Emit, NotReady, PollError
from gateway.logs import LogOnce

BLUEZ = "org.bluez"
ADAPTER_IFACE = "org.bluez.Adapter1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"
OBJECT_MANAGER_IFACE = "org.freedesktop.DBus.ObjectManager"
# Passive scanning needs BlueZ advertisement-monitor patterns; matching the usual Flags values
# lets every LE advertiser through (the same trick Home Assistant's bluetooth stack uses).
PASSIVE_PATTERNS = [OrPattern(0, AdvertisementDataType.FLAGS, bytes([f])) for f in (0x02, 0x04, 0x05, 0x06, 0x1A)]
NO_RSSI = -127  # bleak's value when BlueZ did not report one
UNSEEN_RETRY = 5.0  # seconds between GATT attempts while the device has not been heard yet


class BleDriver(Driver):
    """Scans advertisements on one adapter; each advertising device is a capillary node (IP3)."""

    config: BleConfig

    def __init__(self, config: BleConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._adapter_path = f"/org/bluez/{config.adapter}"
        self._book = NodeBook(
            addresses=config.addresses,
            names=config.names,
            node_names=config.node_names,
            prefix=config.node_prefix,
            dedup_window=config.dedup_window,
            offline_after=config.offline_after,
            max_nodes=config.max_nodes,
        )
        self._gatt_addresses = {g.address for g in config.gatt}
        self._devices: dict[str, BLEDevice] = {}  # last BLEDevice of each GATT address, for connecting
        self._gatt_due: dict[int, float] = {}
        self._emit: Emit | None = None
        self._bus: MessageBus | None = None
        self._bus_watch: asyncio.Future[None] | None = None
        self._scanner: BleakScanner | None = None
        self._gone: asyncio.Event | None = None
        self._gone_reason = ""
        self._log_once = LogOnce(ctx.log)
        self.mode = ""  # the scan mode in use: passive or active

    # -- lifecycle --------------------------------------------------------------------

    async def setup(self) -> None:
        adapter = self.config.adapter
        self._gone = asyncio.Event()
        self._gone_reason = ""
        try:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except Exception as e:  # dbus_fast raises OSError, ValueError, AuthError...
            raise NotReady(f"Bluetooth adapter {adapter}: no D-Bus system bus ({type(e).__name__}: {e})") from e
        self._bus.add_message_handler(self._on_signal)
        for rule in (
            f"type='signal',interface='{OBJECT_MANAGER_IFACE}',member='InterfacesRemoved'",
            f"type='signal',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
            f"path='{self._adapter_path}'",
            f"type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='{BLUEZ}'",
        ):
            await self._dbus(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", [rule]
            )
        reply = await self._call(BLUEZ, "/", OBJECT_MANAGER_IFACE, "GetManagedObjects")
        if reply.message_type == MessageType.ERROR:
            raise NotReady(f"Bluetooth adapter {adapter}: BlueZ (bluetoothd) is not running ({reply.error_name})")
        interfaces: dict[str, Any] = reply.body[0].get(self._adapter_path, {})
        if ADAPTER_IFACE not in interfaces:
            raise NotReady(f"Bluetooth adapter {adapter} not found (see `bluetoothctl list`)")
        if not interfaces[ADAPTER_IFACE].get("Powered") or not interfaces[ADAPTER_IFACE]["Powered"].value:
            raise NotReady(f"Bluetooth adapter {adapter} is powered off")
        monitors = MONITOR_MANAGER_IFACE in interfaces
        mode = self.config.scan_mode
        if mode == "auto":
            mode = "passive" if monitors else "active"
            if not monitors:
                self._report_once(
                    "-",
                    "no-monitors",
                    f"BlueZ on {adapter} has no advertisement monitors "
                    "(start bluetoothd with --experimental for passive scanning): scanning actively",
                )
        elif mode == "passive" and not monitors:
            raise NotReady(
                f"Bluetooth adapter {adapter}: passive scanning needs BlueZ advertisement monitors "
                "(bluetoothd --experimental, BlueZ >= 5.56); or set scan_mode: auto"
            )
        self.mode = mode
        bluez: dict[str, Any] = {"adapter": adapter}
        if mode == "passive":
            bluez["or_patterns"] = PASSIVE_PATTERNS
        scanner = BleakScanner(self._on_advert, scanning_mode=mode, bluez=bluez)  # type: ignore[arg-type]
        try:
            await scanner.start()
        except BleakError as e:
            raise NotReady(f"Bluetooth adapter {adapter}: cannot start {mode} scan: {e}") from e
        self._scanner = scanner
        watch = asyncio.ensure_future(self._bus.wait_for_disconnect())
        watch.add_done_callback(self._bus_lost)
        self._bus_watch = watch

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        assert self._gone is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, g in enumerate(self.config.gatt):
            self._gatt_due[i] = start + min(g.interval, 1.0)  # first read soon after the first sighting
        while True:
            now = loop.time()
            wait = self._book.next_deadline(now)
            if self._gatt_due:
                wait = min(wait, min(self._gatt_due.values()) - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.01)):
                    await self._gone.wait()
            if self._gone.is_set():
                raise PollError(f"Bluetooth adapter {self.config.adapter} {self._gone_reason}")
            now = loop.time()
            for node, silent in self._book.sweep(now):
                self.ctx.node_status(node, False, f"no advertisement for {silent:.0f}s")
            for i, g in enumerate(self.config.gatt):
                if self._gatt_due[i] <= now:
                    attempted = await self._gatt_read(g, emit)
                    # not heard yet: look again soon rather than a whole interval later
                    self._gatt_due[i] = loop.time() + (g.interval if attempted else min(g.interval, UNSEEN_RETRY))

    async def close(self) -> None:
        watch, self._bus_watch = self._bus_watch, None
        if watch is not None:  # not cancelled: that would cancel dbus_fast's own disconnect future
            watch.remove_done_callback(self._bus_lost)
        scanner, self._scanner = self._scanner, None
        if scanner is not None:
            try:
                await scanner.stop()
            except Exception as e:  # the adapter may be gone already: nothing left to stop
                self.ctx.log.debug("stopping the scan on %s failed: %r", self.config.adapter, e)
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch  # done: the bus is disconnected
        if self._gone_reason:  # we cannot hear anyone any more: say so for every node
            for node in self._book.online_nodes():
                self.ctx.node_status(node, False, f"adapter {self.config.adapter} {self._gone_reason}")
        self._emit = None

    # -- advertisements ---------------------------------------------------------------

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback: decode, de-duplicate and emit; never raises."""
        try:
            self._handle_advert(device, adv)
        except Exception as e:  # a bug must not kill the scanner: log once per device, count
            self.ctx.count("decode_errors")
            self._report_once(device.address, "crash", f"advertisement handling failed: {type(e).__name__}: {e}")

    def _handle_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        emit = self._emit
        if emit is None:
            return
        address = device.address.upper()
        if address in self._gatt_addresses:
            self._devices[address] = device
        name = adv.local_name or device.name
        listed = self._book.listed(address, name)
        if not listed and not self._book.open:
            return
        readings, problems = decode_advertisement(adv.manufacturer_data, adv.service_data, self.config.formats)
        for p in problems:
            self._decode_problem(address, p)
        if not readings and not listed:
            return  # open mode takes only devices that advertise something we can read
        self.ctx.count("adverts")
        payload = (tuple(sorted(adv.manufacturer_data.items())), tuple(sorted(adv.service_data.items())))
        heard = self._book.heard(address, payload, time.monotonic())
        if heard.forgotten:
            self.ctx.node_status(heard.forgotten, False, f"forgotten: more than {self.config.max_nodes} devices")
        if heard.came_online:
            self.ctx.node_status(heard.node, True)
        if heard.duplicate:
            self.ctx.count("duplicates")
            return
        ts = time.time_ns()
        for point, value, unit in readings:
            emit(point, value, unit=unit, node=heard.node, ts_ns=ts)
        if self.config.rssi and adv.rssi is not None and adv.rssi != NO_RSSI:
            emit("rssi", adv.rssi, unit="dBm", node=heard.node, ts_ns=ts)

    def _decode_problem(self, address: str, e: DecodeError) -> None:
        """Count every advert we could not (fully) read and log it once per device and kind."""
        if isinstance(e, Partial):  # the readings before the unreadable part were kept
            self.ctx.count("partly_decoded")
            self._report_once(address, "partial", f"{e}; the readings before it are kept")
            return
        if isinstance(e, Unsupported):
            self.ctx.count("unsupported")
            kind = "encrypted" if isinstance(e, Encrypted) else "unsupported"
        else:
            self.ctx.count("decode_errors")
            kind = "malformed"
        self._report_once(address, kind, f"{e} (ignored)")

    def _report_once(self, address: str, kind: str, message: str) -> None:
        """One log line per device and kind of problem, not one per advertisement."""
        self._log_once(address, kind, f"{address}: {message}")

    # -- adapter watch ----------------------------------------------------------------

    def _went_away(self, why: str) -> None:
        if self._gone is not None and not self._gone.is_set():
            self._gone_reason = why
            self._gone.set()

    def _on_signal(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        try:
            if msg.member == "InterfacesRemoved":
                if msg.body[0] == self._adapter_path and ADAPTER_IFACE in msg.body[1]:
                    self._went_away("was removed")
            elif msg.member == "PropertiesChanged":
                if msg.path == self._adapter_path and msg.body[0] == ADAPTER_IFACE:
                    powered = msg.body[1].get("Powered")
                    if powered is not None and not powered.value:
                        self._went_away("was powered off")
            elif msg.member == "NameOwnerChanged" and msg.body[0] == BLUEZ and not msg.body[2]:
                self._went_away("is gone: BlueZ (bluetoothd) stopped")
        except (IndexError, AttributeError, TypeError):  # a signal shaped unlike BlueZ's: not ours
            pass

    def _bus_lost(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            fut.exception()  # retrieved, so asyncio does not log it as never retrieved
        self._went_away("is unreachable: lost the D-Bus system bus")

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "", body: Any = ()) -> Message:
        assert self._bus is not None
        reply = await self._bus.call(
            Message(destination=dest, path=path, interface=iface, member=member, signature=sig, body=list(body))
        )
        assert reply is not None
        return reply

    async def _dbus(self, dest: str, path: str, iface: str, member: str, sig: str, body: Any) -> None:
        reply = await self._call(dest, path, iface, member, sig, body)
        if reply.message_type == MessageType.ERROR:
            raise NotReady(f"Bluetooth adapter {self.config.adapter}: D-Bus {member} failed: {reply.error_name}")

    # -- GATT -------------------------------------------------------------------------

    async def _gatt_read(self, g: GattPoll, emit: Emit) -> bool:
        """Connect, read one characteristic, disconnect; False if the device was never heard."""
        node = self._book.node(g.address)
        device = self._devices.get(g.address)
        if device is None:
            self._gatt_failed(node, g, "device not heard advertising yet")
            return False
        client = BleakClient(device, timeout=self.config.gatt_timeout)
        try:
            async with asyncio.timeout(self.config.gatt_timeout):
                await client.connect()
                try:
                    raw = await client.read_gatt_char(g.characteristic)
                finally:
                    await client.disconnect()
            value = decode_struct(bytes(raw), g.format, g.scale)
        except (BleakError, TimeoutError, DecodeError, EOFError, OSError) as e:
            self._gatt_failed(node, g, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
            return True
        emit(g.point, value, unit=g.unit, node=node)
        self._log_once.forget(g.address, f"gatt:{g.point}")
        self.ctx.node_status(node, True)
        return True

    def _gatt_failed(self, node: str, g: GattPoll, why: str) -> None:
        """A node heard advertising stays online (logged once); a GATT-only node goes offline."""
        self.ctx.count("gatt_errors")
        message = f"GATT read of {g.point} ({g.characteristic[4:8]}) failed: {why}"
        entry = self._book.entries.get(g.address)
        if entry is not None and entry.online:
            self._report_once(g.address, f"gatt:{g.point}", message)
        else:
            self.ctx.node_status(node, False, message)
