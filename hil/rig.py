"""The hardware-in-the-loop rig: which devices are attached where, and the run around them.

A rig is a YAML file in ``hil/rigs/`` (``sim.yaml`` for CI, ``bench-pi.yaml`` for a Raspberry Pi
on a lab bench). ``load_rig("sim")`` or ``load_rig("hil/rigs/bench-pi.yaml")`` reads it;
``RigRun`` then, for one scenario:

* starts the broker (``broker: local``: a private mosquitto on a free loopback port) or uses
  the one named in the rig (``broker: mqtt://host:port``),
* starts the simulated device behind every ``sim:`` entry (a real pty, loopback server, fake
  sysfs tree or private D-Bus, see hil/devices/) and fills ``{placeholders}`` in the driver's
  options with what the device got (its pty path, port, URL); a bench entry has no ``sim:``
  and its options name real hardware (``/dev/serial/by-id/...``),
* writes the daemon's config and key, starts the real daemon (``python -m gateway run``) as a
  child process (optionally inside a network namespace or under libfaketime),
* runs the reference receiver (gateway.receiver.Receiver) over MQTT in this process, with a
  persistent session, recording each reading with the boot counter of its batch.

A device whose driver is not installed, or whose simulated device cannot start here, is left
out with the reason (``RigRun.skipped``), so the rest of the rig still runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key
from gateway.mqtt import batch_topic, subscribe_forever
from gateway.receiver import KeyBindings, Receiver
from gateway.receiver.clock import span_of
from gateway.receiver.mqtt import receiver_settings, receiver_topics, topic_gateway
from gateway.registry import Registry
from gateway.senml import DecodedReading
from gateway.service import service_env
from hil.mosquitto import Mosquitto

RIGS = Path(__file__).with_name("rigs")
TOPIC_PREFIX = "sensegate"  # the MQTT uplink's default topic_prefix, which the rig's config keeps
_PLACEHOLDER = re.compile(r"^\{(\w+)\}$")


class RigError(Exception):
    """The rig file is wrong or the rig cannot run; the message says what to fix."""


# -- the rig file ------------------------------------------------------------------------------


@dataclass
class DeviceSpec:
    """One attached device: the driver instance that reads it and, for CI, its simulation."""

    name: str
    driver: str
    config: dict[str, Any]
    sim: str | None = None  # kind of simulated device (SIMULATORS), None on a bench
    nodes: list[str] = field(default_factory=list)  # node names its readings carry
    faults: dict[str, str] = field(default_factory=dict)  # bench: shell commands (unplug, plug, noise_on, ...)
    netns: bool = True  # reachable from a network namespace (serial, sysfs, D-Bus); false for TCP/IP devices


@dataclass
class RigSpec:
    """A rig file: the gateway, the broker and the devices."""

    name: str
    path: Path
    gateway_id: str
    broker: str  # "local" or mqtt://host:port
    devices: list[DeviceSpec]
    python: str = sys.executable  # the interpreter that runs the daemon

    @property
    def simulated(self) -> bool:
        return all(d.sim is not None or d.driver == "sim" for d in self.devices)

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)


def load_rig(name_or_path: str) -> RigSpec:
    """``sim`` (hil/rigs/sim.yaml), a name in hil/rigs/, or a path to a rig file."""
    path = Path(name_or_path)
    if not path.exists():
        path = RIGS / (name_or_path if name_or_path.endswith((".yaml", ".yml")) else f"{name_or_path}.yaml")
    if not path.exists():
        raise RigError(f"no rig file {name_or_path!r} (looked in {RIGS})")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list):
        raise RigError(f"{path}: a rig file is a mapping with a 'devices' list")
    unknown = set(doc) - {"rig", "gateway", "broker", "devices", "python"}
    if unknown:
        raise RigError(f"{path}: unknown keys {sorted(unknown)}")
    devices = []
    for i, d in enumerate(doc["devices"]):
        if not isinstance(d, dict) or not {"name", "driver"} <= set(d):
            raise RigError(f"{path}: device {i} needs 'name' and 'driver'")
        extra = set(d) - {"name", "driver", "config", "sim", "nodes", "faults", "netns"}
        if extra:
            raise RigError(f"{path}: device {d['name']!r}: unknown keys {sorted(extra)}")
        if d.get("sim") is not None and d["sim"] not in SIMULATORS:
            raise RigError(f"{path}: device {d['name']!r}: unknown sim {d['sim']!r} (known: {sorted(SIMULATORS)})")
        devices.append(DeviceSpec(
            name=str(d["name"]), driver=str(d["driver"]), config=dict(d.get("config") or {}),
            sim=d.get("sim"), nodes=[str(n) for n in d.get("nodes") or [d["name"]]],
            faults={str(k): str(v) for k, v in (d.get("faults") or {}).items()},
            netns=bool(d.get("netns", True)),
        ))
    names = [d.name for d in devices]
    if len(set(names)) != len(names):
        raise RigError(f"{path}: device names must be unique")
    gw = doc.get("gateway") or {}
    return RigSpec(
        name=str(doc.get("rig") or path.stem), path=path, gateway_id=str(gw.get("id", "rig-gw")),
        broker=str(doc.get("broker", "local")), devices=devices, python=str(doc.get("python") or sys.executable),
    )


def fill(value: Any, env: dict[str, Any]) -> Any:
    """Replace ``{name}`` placeholders in option values (a lone placeholder keeps its type)."""
    if isinstance(value, dict):
        return {k: fill(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, env) for v in value]
    if isinstance(value, str):
        m = _PLACEHOLDER.match(value)
        if m:
            if m.group(1) not in env:
                raise RigError(f"placeholder {value} has no value (the device offers {sorted(env)})")
            return env[m.group(1)]
        return value.format_map(env) if "{" in value else value
    return value


# -- simulated devices ----------------------------------------------------------------------------


class SimDevice:
    """A simulated device as the rig drives it: start/stop, unplug/plug, noise, raw bytes."""

    def __init__(self, spec: DeviceSpec, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.env: dict[str, Any] = {}  # placeholder values for the driver's options
        self.process_env: dict[str, str] = {}  # environment the daemon needs (BLE: the D-Bus)
        self.produced = 0  # events the device generated (scans, frames, adverts), where it counts them
        self.plugged = True
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self._stop_ticker()

    def supports(self, fault: str) -> bool:
        """Whether this device can have ``fault`` ("unplug", "noise") injected."""
        return True

    def unplug(self) -> Any | None:
        raise NotImplementedError

    def plug(self) -> Any | None:
        raise NotImplementedError

    def noise(self, on: bool = True) -> Any | None:
        """Garbage on the line / malformed answers (``on``), or back to clean data."""
        raise NotImplementedError

    def inject(self, data: bytes) -> None:
        raise RigError(f"{self.spec.sim} takes no raw bytes")

    def _tick(self, period: float, fn: Callable[[], Any]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(period)
                r = fn()
                if asyncio.iscoroutine(r):
                    with contextlib.suppress(Exception):  # a stopped bus between two ticks
                        await r

        self._ticker = asyncio.create_task(loop(), name=f"rig-{self.spec.name}")

    async def _stop_ticker(self) -> None:
        t, self._ticker = self._ticker, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


class _Example(SimDevice):
    async def start(self) -> None:
        from hil.devices.example_device import ExampleDevice

        self.dev = ExampleDevice(temperature=21.5)
        self.env["port"] = await self.dev.start()

    async def stop(self) -> None:
        await self.dev.stop()

    async def unplug(self) -> None:
        await self.dev.stop()
        self.plugged = False

    async def plug(self) -> None:
        await self.dev.start(self.env["port"])
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self.dev.garbage = on


class _ModbusRtu(SimDevice):
    async def start(self) -> None:
        from hil.devices.modbus_slave import ModbusSim, energy_meter

        self.dev = ModbusSim([energy_meter(1), energy_meter(2, phase_voltage=231.0)], transport="rtu")
        self.env["device"] = await self.dev.start()

    async def stop(self) -> None:
        await self.dev.stop()
        self.produced = sum(s.requests for s in self.dev.slaves.values())

    def unplug(self) -> None:
        self.dev.disconnect()
        self.plugged = False

    def plug(self) -> None:
        self.dev.reconnect()
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        for s in self.dev.slaves.values():
            s.garbage = on


class _Camera(SimDevice):
    async def start(self) -> None:
        from hil.devices.camera_http import CameraServer

        self.dev = CameraServer()
        await self.dev.start()
        self.env["url"] = self.dev.url()

    async def stop(self) -> None:
        await self.dev.stop()
        self.produced = len(self.dev.served)

    async def unplug(self) -> None:
        await self.dev.stop()
        self.plugged = False

    async def plug(self) -> None:
        await self.dev.start(self.dev.port)
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self.dev.fault = "garbage" if on else None


class _OneWire(SimDevice):
    SENSORS = {"28-0316a2791aff": 61250, "28-0416b0c3e2ff": 48500}

    async def start(self) -> None:
        from hil.devices.onewire_sysfs import FakeW1Bus

        self.dev = FakeW1Bus(self.workdir / "w1")
        for sid, millic in self.SENSORS.items():
            self.dev.add(sid, millic)
        self.env["base_path"] = self.dev.path

    def unplug(self) -> None:
        for sid in self.SENSORS:
            self.dev.remove(sid)
        self.plugged = False

    def plug(self) -> None:
        for sid, millic in self.SENSORS.items():
            self.dev.add(sid, millic)
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        for sid in self.SENSORS:
            self.dev.crc_error(sid, on)


class _PtySim(SimDevice):
    """A simulated device on a pseudo-terminal (``self.dev``): pull the cable, put it back,
    line noise toggled by ``_noisy`` (read by the device's own ticker)."""

    dev: Any
    _noisy = False

    async def stop(self) -> None:
        await self._stop_ticker()
        await self.dev.stop()

    def unplug(self) -> None:
        self.dev.unplug()
        self.plugged = False

    def plug(self) -> None:
        self.dev.plug()
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self._noisy = on


class _Gps(_PtySim):
    async def start(self) -> None:
        from hil.devices.nmea_gps import NmeaGps

        self.dev = NmeaGps(period=0.2)
        self.env["path"] = await self.dev.start()

    async def stop(self) -> None:
        await self.dev.stop()
        self.produced = self.dev.epochs

    def noise(self, on: bool = True) -> None:
        self.dev.garbage = on

    def inject(self, data: bytes) -> None:
        self.dev.port.write(data)


class _Rfid(_PtySim):
    async def start(self) -> None:
        from hil.devices.rfid_rdm6300 import Rdm6300

        self.dev = Rdm6300(period=0.1)
        self.env["path"] = await self.dev.start()
        self._n = 0
        self._noisy = False
        self._tick(0.5, self._next_tag)

    def _next_tag(self) -> None:
        self._n += 1
        self.produced += 1
        self.dev.present(f"0F{self._n:08X}")
        if self._noisy:
            self.dev.send_garbage()

    def inject(self, data: bytes) -> None:
        self.dev.port.write(data)


class _Barcode(_PtySim):
    async def start(self) -> None:
        from hil.devices.barcode_scanner import BarcodeScanner

        self.dev = BarcodeScanner(terminator=b"\r\n")
        self.env["path"] = await self.dev.start()
        self._noisy = False
        self._tick(0.5, self._scan)

    def _scan(self) -> None:
        if self._noisy:
            self.dev.send_garbage()
        if self.dev.port.plugged:
            self.produced += 1
            self.dev.scan(f"RIG-{self.produced:06d}")

    def inject(self, data: bytes) -> None:
        self.dev.send_raw(data)


class _Ble(SimDevice):
    ADDRESS = "A4:C1:38:00:00:02"

    async def start(self) -> None:
        if not shutil.which("dbus-daemon"):
            raise RigError("dbus-daemon is not installed (Debian package dbus)")
        from hil.devices.ble_bluez import SimulatedBlueZ

        self.dev = SimulatedBlueZ()
        await self.dev.start()
        try:
            await self.dev.add_adapter("hci0")
            await self.dev.add_device(self.ADDRESS, "DIY-greenhouse")
        except BaseException:
            await self.dev.stop()
            raise
        self.process_env = dict(self.dev.env)
        self._noisy = False
        self._tick(0.5, self._advert)

    async def _advert(self) -> None:
        self.produced += 1
        centi = 2000 + self.produced % 500  # BTHome v2 temperature, 0.01 Cel steps
        if self._noisy:  # a hostile advertisement: BTHome header, then a cut object
            await self.dev.advertise(self.ADDRESS, service_data={0xFCD2: b"\x40\x02"})
        await self.dev.advertise(
            self.ADDRESS, rssi=-60 - self.produced % 5,
            service_data={0xFCD2: bytes([0x40, 0x02]) + centi.to_bytes(2, "little")},
        )

    async def stop(self) -> None:
        await self._stop_ticker()
        await self.dev.stop()

    async def unplug(self) -> None:  # the adapter goes away (USB dongle pulled)
        await self.dev.set_powered(False)
        self.plugged = False

    async def plug(self) -> None:
        await self.dev.set_powered(True)
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self._noisy = on


class _BrokerSim(SimDevice):
    """A network that reaches the gateway through its own MQTT broker (ChirpStack, Zigbee2MQTT):
    a private mosquitto for it; unplugged, the broker and the network server go away."""

    async def _start_broker(self) -> None:
        self.broker = Mosquitto(self.workdir / "broker", persistence=False)
        await asyncio.to_thread(self.broker.start)
        self.env["broker_url"] = self.broker.url

    async def _start_net(self) -> None:
        raise NotImplementedError

    async def _stop_net(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self._start_broker()
        try:
            await self._start_net()
        except BaseException:
            await asyncio.to_thread(self.broker.stop)
            raise
        self._noisy = False
        self._tick(1.0, self._step)

    def _step(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        await self._stop_ticker()
        with contextlib.suppress(Exception):
            await self._stop_net()
        await asyncio.to_thread(self.broker.stop)

    async def unplug(self) -> None:
        await self._stop_ticker()
        await self._stop_net()
        await asyncio.to_thread(self.broker.stop)
        self.plugged = False

    async def plug(self) -> None:
        await asyncio.to_thread(self.broker.start)
        await self._start_net()
        self._tick(1.0, self._step)
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self._noisy = on


class _ChirpStack(_BrokerSim):
    """ChirpStack's MQTT integration: a parking sensor uplinking Cayenne LPP every 0.5 s."""

    EUI = "0101010101010101"

    async def _start_net(self) -> None:
        from hil.devices.chirpstack_ns import SimulatedChirpStack

        self.dev = SimulatedChirpStack(self.broker.url)
        await self.dev.start()
        self.dev.add_device(self.EUI, "parking sensor")

    async def _stop_net(self) -> None:
        await self.dev.stop()

    def _step(self) -> None:
        self.produced += 1
        if self._noisy:  # events ChirpStack would never send: not JSON, a cut Cayenne payload
            self.dev.publish_doc("up", self.EUI, b"\xff not json")
            self.dev.uplink(self.EUI, bytes.fromhex("0367"))
        self.dev.uplink(self.EUI, bytes([3, 0x67]) + (200 + self.produced % 50).to_bytes(2, "big"))


class _Zigbee2Mqtt(_BrokerSim):
    """A Zigbee2MQTT bridge: its climate sensor reports every 0.5 s."""

    async def _start_net(self) -> None:
        from hil.devices.zigbee2mqtt_bridge import SimulatedZigbee2Mqtt

        self.dev = SimulatedZigbee2Mqtt(self.broker.url)
        await self.dev.start()

    async def _stop_net(self) -> None:
        await self.dev.stop()

    def _step(self) -> None:
        self.produced += 1
        if self._noisy:
            self.dev.publish("garden/climate", b"{not json")
        self.dev.report("garden/climate", temperature=round(20 + self.produced % 50 / 10, 1))


def _listen_port() -> int:
    """A free port below the ephemeral range, for a server the daemon opens later: a port from
    the ephemeral range may meanwhile become some connection's local port (even the box's own
    connection attempts to it), and the daemon could not listen there."""
    import random
    import socket

    low = 20000
    with contextlib.suppress(OSError, ValueError):
        low = min(low, int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 2000)
    for _ in range(200):
        port = random.randrange(max(1024, low - 8000), low)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port
    raise RigError("no free port below the ephemeral range")


class _Push(SimDevice):
    """An air-quality box POSTing SenML every 0.5 s to the daemon's push endpoint."""

    async def start(self) -> None:
        from hil.devices.push_device import AirQualityBox

        self.env["port"] = _listen_port()
        self.dev = AirQualityBox("127.0.0.1", self.env["port"], node="aq-17")
        self._noisy = False
        self._tick(1.0, self._post)

    async def _post(self) -> None:
        from hil.devices.push_device import post_raw

        if not self.plugged:
            return
        if self._noisy:  # what a broken device sends: not SenML, a lying length
            with contextlib.suppress(Exception):
                await post_raw("127.0.0.1", self.env["port"], b"POST /senml HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/senml+json\r\nContent-Length: 9\r\n\r\n[{garbage", 2)
        try:
            await self.dev.measure()
        except OSError:
            return  # the daemon is not listening (yet, or any more): the box tries again
        self.produced += 1

    def unplug(self) -> None:  # the box loses power: it goes silent
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self._noisy = on


class _ServerSim(SimDevice):
    """A device that is a server on a loopback port (OPC UA, BACnet/IP, SNMP): unplugged, the
    server goes away; plugged, it comes back on the same port. A ticker changes its values."""

    dev: Any
    port = 0

    async def stop(self) -> None:
        await self._stop_ticker()
        await self.dev.stop()

    async def unplug(self) -> None:  # the device's network cable pulled
        self.plugged = False
        await self.dev.stop()

    async def plug(self) -> None:
        await self.dev.start(self.port)
        self.plugged = True

    def noise(self, on: bool = True) -> None:
        self._noisy = on

    def _begin(self, period: float, step: Callable[[], Any]) -> None:
        self._noisy = False
        self._tick(period, lambda: step() if self.plugged else None)


class _OpcUa(_ServerSim):
    """A boiler controller's OPC UA server (asyncua): its temperature changes every 0.5 s;
    noise is a failed sensor (a Bad status on the value)."""

    async def start(self) -> None:
        from hil.devices.opcua_server import OpcUaServer

        self.dev = OpcUaServer()
        self.env["endpoint"] = await self.dev.start()
        self.port = self.dev.port
        self._begin(0.5, self._step)

    async def _step(self) -> None:
        from asyncua import ua

        self.produced += 1
        value = round(70 + self.produced % 50 / 10, 1)
        if self._noisy:
            status = ua.StatusCode(ua.StatusCodes.BadSensorFailure)
            await self.dev.nodes["Temperature"].write_value(
                ua.DataValue(ua.Variant(value, ua.VariantType.Double), StatusCode_=status))
        else:
            await self.dev.set("Temperature", value)


class _Bacnet(_ServerSim):
    """An air handler on a loopback BACnet/IP network (bacpypes3), found by Who-Is, its supply
    temperature changing every 0.5 s (COV notifications); noise is a broken sensor wire."""

    async def start(self) -> None:
        from hil.devices.bacnet_device import BacnetNetwork
        from hil.devices.snmp_agent import free_udp_port

        self.dev = BacnetNetwork([1001])
        self.port = free_udp_port()
        await self.dev.start(self.port)
        self.env.update(broadcast=self.dev.broadcast, port=free_udp_port())  # (the daemon's own port)
        self._begin(0.5, self._step)

    def _step(self) -> None:
        self.produced += 1
        self.dev.devices[0].set("supply_temp", 21.0 + self.produced % 20 / 10)

    def noise(self, on: bool = True) -> None:  # reliability no-sensor: the fault status flag
        self.dev.devices[0].set_fault("supply_temp", on)


class _Snmp(_ServerSim):
    """A UPS's SNMP agent (Debian's snmpd, v2c), its battery temperature changing every second;
    noise is datagrams no agent would send, at the daemon's trap port."""

    async def start(self) -> None:
        from hil.devices.snmp_agent import SnmpAgent

        try:
            self.dev = SnmpAgent()
        except RuntimeError as e:
            raise RigError(str(e)) from None
        self.port = await self.dev.start()
        self.env.update(host=self.dev.host, port=self.port, trap_port=_listen_port())
        self._begin(1.0, self._step)

    async def _step(self) -> None:
        import socket

        self.produced += 1
        if self._noisy:  # not BER; a cut message
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (b"\xff" * 40, b"\x30\x82\xff\xff\x02\x01"):
                    s.sendto(junk, ("127.0.0.1", self.env["trap_port"]))
        await self.dev.set("temperature", str(-215 + self.produced % 20))

    async def stop(self) -> None:
        await self._stop_ticker()
        await self.dev.close()  # (and its temporary directory)


SIMULATORS: dict[str, type[SimDevice]] = {
    "example": _Example,
    "modbus-rtu": _ModbusRtu,
    "camera-http": _Camera,
    "onewire": _OneWire,
    "nmea-gps": _Gps,
    "rdm6300": _Rfid,
    "barcode": _Barcode,
    "ble": _Ble,
    "chirpstack": _ChirpStack,
    "zigbee2mqtt": _Zigbee2Mqtt,
    "push": _Push,
    "opcua": _OpcUa,
    "bacnet": _Bacnet,
    "snmp": _Snmp,
}


class BenchDevice(SimDevice):
    """A real device: faults are the shell commands the rig file gives (e.g. uhubctl for USB power)."""

    async def start(self) -> None:
        pass

    def supports(self, fault: str) -> bool:
        need = ("unplug", "plug") if fault == "unplug" else ("noise_on", "noise_off")
        return all(k in self.spec.faults for k in need)

    async def _run(self, what: str) -> None:
        cmd = self.spec.faults.get(what)
        if not cmd:
            raise RigError(f"device {self.spec.name!r} has no '{what}' command in the rig file")
        proc = await asyncio.create_subprocess_shell(cmd)
        if await proc.wait() != 0:
            raise RigError(f"device {self.spec.name!r}: '{cmd}' failed")

    async def unplug(self) -> None:
        await self._run("unplug")
        self.plugged = False

    async def plug(self) -> None:
        await self._run("plug")
        self.plugged = True

    async def noise(self, on: bool = True) -> None:
        await self._run("noise_on" if on else "noise_off")


# -- the receiver -------------------------------------------------------------------------------


@dataclass
class Received:
    reading: DecodedReading
    boot: int
    at: float  # monotonic time it arrived
    at_wall_ns: int = 0  # the rig's (true) wall clock when it arrived
    synced: bool | None = None  # stamped on a clock the gateway called synchronised (None: it did not say)
    fixed_ns: int | None = None  # its corrected time, once a later synchronised clock of its run re-dated it


class RigReceiver:
    """The reference receiver over MQTT (persistent session), keeping each reading's boot."""

    def __init__(self, url: str, pub: Path, gateway: str, client_id: str = "rig-receiver") -> None:
        self.rx = Receiver(KeyBindings.files(gateway, pub))
        self.got: list[Received] = []
        self.batches: dict[int, tuple[int, int]] = {}  # batch number -> (first, last) reading of each verified batch
        self.headers: dict[int, dict[str, Any]] = {}  # batch number -> its verified header (for notes and examples)
        self.statuses: dict[str, int] = {}
        self.settings = receiver_settings(url, client_id=client_id)
        self.changed = asyncio.Event()
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _on(self, msg: Any) -> None:
        if "/blob/" in msg.topic:
            self.rx.feed_blob(msg.topic.rsplit("/", 1)[-1], bytes(msg.payload))
        elif msg.topic.endswith("/batch"):
            res = self.rx.feed(bytes(msg.payload), topic_gateway(msg.topic))
            self.statuses[res.status] = self.statuses.get(res.status, 0) + 1
            now, wall = time.monotonic(), time.time_ns()
            boot = int(res.header.get("bo", 0))
            for r in res.readings:
                span = span_of(res.time, r.seq) if res.time else None
                shift = span.shift_ns if span is not None else None
                self.got.append(Received(r, boot, now, wall, span.synced if span is not None else None,
                                         r.ts_ns + shift if shift is not None else None))
            for x in res.redated:  # readings that came before, re-dated now
                for g in self.got:
                    if x.first <= g.reading.seq <= x.last:
                        g.fixed_ns = g.reading.ts_ns + x.shift_ns
            if res.status == "ok":
                first, last = res.header["sq"]
                self.batches[int(res.header["bs"])] = (int(first), int(last))
                self.headers[int(res.header["bs"])] = res.header
        self.changed.set()

    async def _run(self) -> None:
        await subscribe_forever(self.settings, receiver_topics(), self._on,
                                connected=self.connected)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rig-receiver")
        async with asyncio.timeout(15):
            await self.connected.wait()

    async def stop(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def wait(self, cond: Callable[[], bool], within: float = 30.0, what: str = "") -> None:
        """Until ``cond()`` holds, re-checked whenever something arrives (and every 0.2 s)."""
        try:
            async with asyncio.timeout(within):
                while not cond():
                    self.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self.changed.wait()
        except TimeoutError:
            raise TimeoutError(f"rig: gave up after {within:g} s waiting for {what or cond}") from None

    def readings(self, nodes: list[str] | None = None, point: str | None = None) -> list[Received]:
        return [g for g in self.got if (nodes is None or g.reading.node in nodes)
                and (point is None or g.reading.point == point)]

    def seqs(self) -> set[int]:
        return {g.reading.seq for g in self.got}


# -- the daemon -------------------------------------------------------------------------------


class DaemonProc:
    """One run of the real daemon as a child process; its log goes to ``log``."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def kill(self) -> int:
        """``kill -9``."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        return await self.proc.wait()

    async def stop(self, within: float = 20.0) -> int:
        """SIGTERM (a clean stop flushes), SIGKILL if it hangs."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(within):
                return await self.proc.wait()
        except TimeoutError:
            return await self.kill()

    def reload(self) -> None:
        """SIGHUP: re-read the config file."""
        self.proc.send_signal(signal.SIGHUP)


# -- one scenario's run -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchLedger:
    """The gateway's batches at one moment: numbers 1..made exist, ``unacked`` await a PUBACK."""

    made: int
    unacked: frozenset[int]

    @property
    def acked(self) -> frozenset[int]:
        return frozenset(range(1, self.made + 1)) - self.unacked


class RigBroker(Mosquitto):
    """A private mosquitto that can listen on extra addresses (a veth for the netns partition).

    It logs every packet (``mosquitto/mosquitto.log`` in the scenario's directory), so a failed
    scenario can be read packet by packet and a broker crash's loss can be told from the
    gateway's (hil.mosquitto.acked_unsaved). It saves its database every second, not after every
    change: the rig is about the gateway, and a broker that can still lose what it acknowledged
    keeps the scenario's proof of whose loss it is in use."""

    def __init__(self, workdir: Path, extra_addresses: list[str] | None = None) -> None:
        super().__init__(workdir, log_packets=True)
        self.extra_addresses = extra_addresses or []

    def _write_conf(self) -> Path:
        conf = super()._write_conf()
        if self.extra_addresses:
            lines = conf.read_text().splitlines()
            lines[1:1] = [f"listener {self.port} {a}" for a in self.extra_addresses]
            conf.write_text("\n".join(lines) + "\n")
        return conf


class RigRun:
    """Broker, devices, receiver and daemon for one scenario (``async with RigRun(...) as rig``)."""

    def __init__(self, spec: RigSpec, workdir: Path, *, devices: list[str] | None = None,
                 broker_addresses: list[str] | None = None, uplink_host: str = "127.0.0.1") -> None:
        self.spec = spec
        self.workdir = workdir
        self.wanted = devices  # None: every device of the rig
        self.broker_addresses = broker_addresses or []
        self.uplink_host = uplink_host
        self.state = workdir / "state"
        self.config_path = workdir / "sensegate.yaml"
        self.broker: RigBroker | None = None
        self.broker_url = spec.broker
        self.devices: dict[str, SimDevice] = {}
        self.skipped: dict[str, str] = {}  # device name -> why it is not in this run
        self.receiver: RigReceiver | None = None
        self.daemons: list[DaemonProc] = []
        self.extra_drivers: list[dict[str, Any]] = []
        self.overrides: dict[str, Any] = {}
        self.registry = Registry.discover()

    # -- setup ------------------------------------------------------------------------------

    async def __aenter__(self) -> RigRun:
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not (self.state / "keys" / "device.key").exists():
            init_key(self.state / "keys")
        if self.spec.broker == "local":
            self.broker = RigBroker(self.workdir / "mosquitto", self.broker_addresses)
            await asyncio.to_thread(self.broker.start)
            self.broker_url = self.broker.url
        for d in self.spec.devices:
            if self.wanted is not None and d.name not in self.wanted:
                continue
            if d.driver not in self.registry.manifests:
                self.skipped[d.name] = f"driver {d.driver!r} is not installed"
                continue
            missing = [m for m in self.registry.manifests[d.driver].requires if importlib.util.find_spec(m) is None]
            if missing:
                extra = self.registry.manifests[d.driver].extra
                self.skipped[d.name] = f"driver {d.driver!r} needs {', '.join(missing)} (pip extra {extra!r})"
                continue
            if d.sim is None and d.driver != "sim" and self.spec.simulated:
                self.skipped[d.name] = "no simulation for it in a simulated rig"
                continue
            dev: SimDevice = SIMULATORS[d.sim](d, self.workdir / d.name) if d.sim else BenchDevice(d, self.workdir)
            try:
                await dev.start()
            except Exception as e:  # e.g. a Debian package missing here: leave it out, say why
                self.skipped[d.name] = f"simulated {d.sim} did not start: {e}"
                with contextlib.suppress(Exception):
                    await dev.stop()
                continue
            self.devices[d.name] = dev
        self.receiver = RigReceiver(self.broker_url, self.state / "keys" / "device.pub.pem", self.spec.gateway_id)
        await self.receiver.start()

    async def close(self) -> None:
        for d in list(self.daemons):
            if d.alive:
                await d.kill()
        if self.receiver is not None:
            await self.receiver.stop()
        for dev in self.devices.values():
            with contextlib.suppress(Exception):
                await dev.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)

    # -- the daemon's config ------------------------------------------------------------------

    def device_sections(self) -> list[dict[str, Any]]:
        out = []
        for name, dev in self.devices.items():
            spec = dev.spec
            out.append({"driver": spec.driver, "name": name, **fill(spec.config, dev.env)})
        return out

    def config(self) -> dict[str, Any]:
        url = self.broker_url
        if self.uplink_host != "127.0.0.1":
            url = url.replace("127.0.0.1", self.uplink_host)
        doc: dict[str, Any] = {
            "gateway": {"id": self.spec.gateway_id, "state_dir": str(self.state)},
            "buffer": {"commit_interval": "200ms"},
            "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1, "keepalive": 5}],
            "drivers": self.device_sections() + self.extra_drivers,
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        return doc

    def write_config(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return self.config_path

    def process_env(self) -> dict[str, str]:
        # the daemon runs as the packaged unit runs it (optimised byte code, cached once per rig run)
        pycache = os.environ.get("SENSEGATE_RIG_PYCACHE") or str(self.workdir / "pycache")
        env = {**os.environ, **service_env(pycache)}
        for dev in self.devices.values():
            env.update(dev.process_env)
        return env

    async def start_daemon(self, *, prefix: list[str] | None = None, env: dict[str, str] | None = None,
                           write_config: bool = True) -> DaemonProc:
        if write_config:
            self.write_config()
        log = self.workdir / f"daemon-{len(self.daemons) + 1}.log"
        with open(log, "wb") as f:  # noqa: ASYNC230 (a fresh local log file, before the child starts)
            proc = await asyncio.create_subprocess_exec(
                *(prefix or []), self.spec.python, "-m", "gateway", "run", "-c", str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL, stdout=f, stderr=f, env={**self.process_env(), **(env or {})})
        d = DaemonProc(proc, log)
        self.daemons.append(d)
        return d

    # -- what the buffer says -----------------------------------------------------------------

    def buffer_meta(self) -> dict[str, Any]:
        """The buffer's meta table (next_seq, boot, ...), read while the daemon may be running."""
        db = sqlite3.connect(self.state / "buffer.db", timeout=10)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            meta["segments"] = db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
            meta["buffered"] = db.execute(
                "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments").fetchone()[0]
            meta["batches_unacked"] = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        finally:
            db.close()
        return meta

    def produced(self) -> int:
        """Readings the daemon accepted (numbered) so far: next_seq - 1."""
        return int(self.buffer_meta()["next_seq"]) - 1

    def ledger(self) -> BatchLedger:
        """The gateway's own record of its batches (its buffer file): made, and still unacknowledged.

        Acknowledgements reach the file within a second (gateway/store/outbox.py, ``ack_many``), so read
        it a second or more after the last one can have come (e.g. with the broker down)."""
        db = sqlite3.connect(self.state / "buffer.db", timeout=10)
        try:
            made = int(db.execute("SELECT value FROM meta WHERE key = 'next_bseq'").fetchone()[0]) - 1
            unacked = frozenset(b for (b,) in db.execute("SELECT bseq FROM batches"))
        finally:
            db.close()
        return BatchLedger(made, unacked)

    @property
    def batch_topic(self) -> str:
        return batch_topic(TOPIC_PREFIX, self.spec.gateway_id)

    def nodes_of(self, device: str) -> list[str]:
        return self.spec.device(device).nodes


@contextlib.asynccontextmanager
async def rig_run(spec: RigSpec, workdir: Path | None = None, **kw: Any) -> AsyncIterator[RigRun]:
    """``RigRun`` in a fresh temporary directory unless one is given."""
    tmp = None
    if workdir is None:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="sensegate-rig-"))
    try:
        async with RigRun(spec, workdir, **kw) as rig:
            yield rig
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
