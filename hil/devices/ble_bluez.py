"""Simulated BlueZ for drivers/ble: a private D-Bus system bus with python-dbusmock's BlueZ on it.

The real bleak BlueZ backend talks to it as it would to bluetoothd: point bleak at
``SimulatedBlueZ.address`` with ``DBUS_SYSTEM_BUS_ADDRESS`` (``sim.env`` has it). Tests and the
demo then add adapters and devices and publish advertisements (ManufacturerData/ServiceData/
RSSI changes, as bluetoothd emits them) and readable GATT characteristics.

    sim = SimulatedBlueZ()
    await sim.start()
    await sim.add_adapter("hci0")
    await sim.add_device("C4:7C:8D:6A:00:01", "ruuvi")
    await sim.advertise("C4:7C:8D:6A:00:01", rssi=-61, manufacturer_data={0x0499: payload})
    ...
    await sim.stop()

Needs ``dbus-daemon`` (Debian package ``dbus``) and python-dbusmock (pip, `test` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

TEMPLATE = Path(__file__).with_name("bluez_template.py")
MOCK_IFACE = "org.bluez.Mock"
DBUSMOCK_IFACE = "org.freedesktop.DBus.Mock"
BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""


def full_uuid(uuid: int | str) -> str:
    """A 16-bit UUID (0xFCD2 or "fcd2") as the 128-bit string BlueZ uses for ServiceData keys."""
    if isinstance(uuid, int):
        return BASE_UUID.format(uuid)
    return BASE_UUID.format(int(uuid, 16)) if len(uuid) == 4 else uuid.lower()


class SimulatedBlueZ:
    """A dbus-daemon with a system-bus-like policy plus a dbusmock bluetoothd, on a unix socket."""

    def __init__(self) -> None:
        self.address = ""
        self._dir: Path | None = None
        self._daemon: asyncio.subprocess.Process | None = None
        self._mock: asyncio.subprocess.Process | None = None
        self._bus: MessageBus | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment that points bleak (any D-Bus client) at this bus as the system bus."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    @property
    def log_path(self) -> Path | None:
        """Where dbusmock logs every call (handy when a test fails)."""
        return None if self._dir is None else self._dir / "dbusmock.log"

    async def start(self, bluez: bool = True) -> str:
        """Start the bus (and the mock bluetoothd unless ``bluez=False``); return the bus address."""
        self._dir = Path(tempfile.mkdtemp(prefix="sensegate-bluez-"))
        config = self._dir / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self._dir / "system_bus_socket"))
        log = _log_fd(self._dir / "dbus-daemon.log")  # e.g. "Failed to set fd limit" when not root
        try:
            self._daemon = await asyncio.create_subprocess_exec(
                "dbus-daemon",
                f"--config-file={config}",
                "--nofork",
                "--nopidfile",
                "--print-address",
                stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C in a demo reaches us, and we stop them in order
            )
        finally:
            os.close(log)
        assert self._daemon.stdout is not None
        try:
            async with asyncio.timeout(10):
                line = await self._daemon.stdout.readline()
        except BaseException:
            await self.stop()
            raise
        self.address = line.decode().strip()
        if not self.address:
            await self.stop()
            raise RuntimeError("dbus-daemon did not print its address")
        self._bus = await MessageBus(bus_address=self.address).connect()
        if bluez:
            await self.start_bluez()
        return self.address

    async def start_bluez(self) -> None:
        """Start the mock bluetoothd (org.bluez) on the bus; wait until it owns its name."""
        assert self._dir is not None and self._bus is not None
        env = {**os.environ, **self.env}
        log = _log_fd(self._dir / "dbusmock.log")
        try:
            self._mock = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dbusmock",
                "--system",
                "--template",
                str(TEMPLATE),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in a demo reaches us, and we stop them in order
            )
        finally:
            os.close(log)
        try:
            async with asyncio.timeout(15):
                while not await self._has_owner("org.bluez"):
                    if self._mock.returncode is not None:
                        raise RuntimeError(f"dbusmock exited with {self._mock.returncode}; see {self.log_path}")
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.stop_bluez()
            raise

    async def stop_bluez(self) -> None:
        """Stop the mock bluetoothd (as if bluetoothd crashed): org.bluez leaves the bus."""
        mock, self._mock = self._mock, None
        if mock is not None:
            await _terminate(mock)

    async def stop(self) -> None:
        """Stop everything and remove the socket directory; safe to call twice."""
        await self.stop_bluez()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await bus.wait_for_disconnect()
        daemon, self._daemon = self._daemon, None
        if daemon is not None:
            await _terminate(daemon)
        d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)

    # -- what a test or demo does with the radio world --------------------------------

    async def add_adapter(self, name: str = "hci0", alias: str = "sensegate") -> str:
        """Plug in a powered adapter (``/org/bluez/<name>``)."""
        return str(await self._mock_call("AddAdapter", "ss", [name, alias]))

    async def remove_adapter(self, name: str = "hci0") -> None:
        """Unplug an adapter and the devices under it."""
        await self._mock_call("RemoveAdapterWithDevices", "s", [name])

    async def set_powered(self, on: bool, adapter: str = "hci0") -> None:
        """Power an adapter off or on (``bluetoothctl power off``): Adapter1.Powered changes."""
        await self._call(
            f"/org/bluez/{adapter}",
            DBUSMOCK_IFACE,
            "UpdateProperties",
            "sa{sv}",
            ["org.bluez.Adapter1", {"Powered": Variant("b", on)}],
        )

    async def add_device(self, address: str, name: str = "", adapter: str = "hci0") -> str:
        """A peripheral in range (nothing advertised yet); returns its object path."""
        return str(await self._mock_call("AddLeDevice", "sss", [adapter, address, name]))

    async def advertise(
        self,
        address: str,
        *,
        rssi: int = -60,
        manufacturer_data: dict[int, bytes] | None = None,
        service_data: dict[int | str, bytes] | None = None,
        adapter: str = "hci0",
    ) -> None:
        """One received advertisement, published as bluetoothd's PropertiesChanged."""
        svc = {full_uuid(k): v for k, v in (service_data or {}).items()}
        await self._mock_call("Advertise", "ssna{qay}a{say}", [adapter, address, rssi, manufacturer_data or {}, svc])

    async def add_characteristic(
        self, address: str, service_uuid: int | str, char_uuid: int | str, value: bytes, adapter: str = "hci0"
    ) -> str:
        """A readable GATT characteristic on a device; returns its object path."""
        body = [adapter, address, full_uuid(service_uuid), full_uuid(char_uuid), value]
        return str(await self._mock_call("AddGattCharacteristic", "ssssay", body))

    async def set_characteristic(self, char_path: str, value: bytes) -> None:
        """Change what the next GATT read of that characteristic returns."""
        await self._mock_call("SetCharacteristicValue", "say", [char_path, value])

    async def set_connectable(self, address: str, ok: bool, adapter: str = "hci0") -> None:
        """Make connections to a device fail (out of range) or work again."""
        await self._mock_call("SetConnectable", "ssb", [adapter, address, ok])

    async def method_calls(self, path: str, method: str) -> list[list[Any]]:
        """Arguments of every call of ``method`` on the mock object at ``path`` so far."""
        reply = await self._call(path, DBUSMOCK_IFACE, "GetMethodCalls", "s", [method])
        return [list(args) for _ts, args in reply]

    # -- internals ---------------------------------------------------------------------

    async def _has_owner(self, name: str) -> bool:
        reply = await self._call(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameHasOwner",
            "s",
            [name],
            destination="org.freedesktop.DBus",
        )
        return bool(reply)

    async def _mock_call(self, member: str, signature: str, body: list[Any]) -> Any:
        return await self._call("/", MOCK_IFACE, member, signature, body)

    async def _call(
        self, path: str, interface: str, member: str, signature: str, body: list[Any], destination: str = "org.bluez"
    ) -> Any:
        if self._bus is None:
            raise RuntimeError("SimulatedBlueZ is not started")
        reply = await self._bus.call(
            Message(
                destination=destination, path=path, interface=interface, member=member, signature=signature, body=body
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member} failed: {reply.error_name}: {reply.body[0] if reply.body else ''}")
        return reply.body[0] if reply.body else None


def _log_fd(path: Path) -> int:
    """A file descriptor for a child's output (a small local file: opening it does not block)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def _demo() -> None:  # pragma: no cover - manual use: python -m hil.devices.ble_bluez
    """Run a simulated BlueZ with a Ruuvi and a BTHome sensor until interrupted."""
    sim = SimulatedBlueZ()
    await sim.start()
    print(f"export DBUS_SYSTEM_BUS_ADDRESS={sim.address}", flush=True)
    await sim.add_adapter("hci0")
    await sim.add_device("C4:7C:8D:6A:00:01", "Ruuvi 0001")
    await sim.add_device("A4:C1:38:00:00:02", "DIY-sensor")
    ruuvi = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    seq = 0
    try:
        while True:
            seq = (seq + 1) % 256
            await sim.advertise("C4:7C:8D:6A:00:01", rssi=-60 - seq % 5, manufacturer_data={0x0499: ruuvi})
            await sim.advertise(
                "A4:C1:38:00:00:02",
                rssi=-70,
                service_data={0xFCD2: bytes([0x40, 0x00, seq]) + bytes.fromhex("02C40903BF13")},
            )
            await asyncio.sleep(2)
    finally:
        await sim.stop()


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_demo())
