"""`sensegate demo`: simulated devices + a throw-away mosquitto + the daemon + the receiver.

Everything runs on loopback in a temporary directory. The daemon is the real one, started as
a child process; the receiver verifies every batch and the demo ends with its summary. With
``--ingest`` the embedded fleet ingest (`sensegate ingest` with SQLite, docs/ingest.md) takes the
same batches off the same broker, stores every reading once and ends with `sensegate fleet
report`: the gateway's completeness verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import KeyFileError, init_key, load_public_key, public_pem
from gateway.mqtt import MqttError, MqttSession
from gateway.receiver import KeyBindings, Receiver
from gateway.receiver.cli import format_summary
from gateway.receiver.mqtt import receiver_settings, receiver_topics, topic_gateway
from gateway.testing.procs import stop_process

GATEWAY_ID = "demo-gw-1"

class DemoDevices:
    """The simulated field devices the demo starts, each only if its driver is installed."""

    def __init__(self) -> None:
        self.stops: list[Any] = []
        self.sections: list[dict[str, Any]] = []
        self.skipped: list[str] = []

    async def start(self) -> None:
        from gateway.registry import Registry

        installed = Registry.discover().manifests
        for name, starter in (("modbus", self._modbus), ("gps", self._gps), ("camera", self._camera)):
            if name not in installed:
                self.skipped.append(f"{name} (driver not installed)")
                continue
            try:
                await starter()
            except ImportError as e:
                self.skipped.append(f"{name} ({e.name} not installed: pip install 'sensegate[{name}]')")

    async def _modbus(self) -> None:
        from hil.devices.modbus_slave import ModbusSim, energy_meter

        sim = ModbusSim([energy_meter(1)], transport="tcp")
        await sim.start()
        self.stops.append(sim.stop)
        self.sections.append({
            "driver": "modbus", "name": "meter", "transport": "tcp", "host": "127.0.0.1", "port": sim.port,
            "interval": "2s", "nodes": [{"id": "meter-1", "slave": 1, "points": [
                {"name": "voltage_l1", "function": "input", "address": 0, "type": "f32", "unit": "V",
                 "precision": 1},
                {"name": "power_total", "function": "input", "address": 12, "type": "f32", "unit": "W",
                 "precision": 1},
                {"name": "energy_total", "function": "holding", "address": 0, "type": "u32", "unit": "Wh"},
            ]}]})

    async def _gps(self) -> None:
        from hil.devices.nmea_gps import NmeaGps

        gps = NmeaGps(period=1.0)
        path = await gps.start()
        self.stops.append(gps.stop)
        self.sections.append({"driver": "gps", "name": "tracker", "port": path, "interval": "3s"})

    async def _camera(self) -> None:
        from hil.devices.camera_http import CameraServer

        cam = CameraServer()
        await cam.start()
        self.stops.append(cam.stop)
        self.sections.append({"driver": "camera", "name": "gate_cam", "source": "http", "url": cam.url(),
                              "interval": "5s"})

    async def stop(self) -> None:
        for stop in reversed(self.stops):
            with contextlib.suppress(Exception):
                await stop()


def demo_drivers(example_port: int) -> list[dict[str, Any]]:
    """The simulated devices' driver sections."""
    return [
        {"driver": "sim", "name": "weather", "interval": "1s",
         "points": [
             {"name": "temperature", "unit": "Cel", "pattern": "sine", "low": 18, "high": 24, "period": "30s"},
             {"name": "humidity", "unit": "%RH", "pattern": "random_walk", "low": 40, "high": 70, "step": 1,
              "seed": 7},
         ]},
        {"driver": "sim", "name": "parking", "interval": "2s", "path": "ip3", "nodes": 3,
         "node_prefix": "bay", "points": [{"name": "occupied", "pattern": "step", "values": [False, True],
                                           "hold": "3s"}]},
        {"driver": "example", "name": "boiler", "interval": "2s", "port": example_port, "node": "boiler-room",
         "path": "ip3"},
    ]


def _fmt(r: Any) -> str:
    v = r.value
    if r.kind == "vd":
        v = f"<{len(v)} bytes>"
    elif r.kind == "loc":
        v = v.removeprefix("geo:")
    elif r.kind == "blob":
        b64 = v.rsplit(";", 1)[-1]
        v = f"image {base64.urlsafe_b64decode(b64 + '=' * (-len(b64) % 4)).hex()[:16]}..."
    unit = f" {r.unit}" if r.unit else ""
    return f"  {r.node + '/' + r.point:<28} = {v!s:<12}{unit:<5} seq {r.seq}"


async def _token_key(workdir: Path) -> tuple[dict[str, Any], Any, str, dict[str, str]]:
    """`demo --pkcs11`: a SoftHSM2 token in the work dir holds the device key (ES256), as a secure
    element would; returns the config's gateway/batch settings, the public key, its fingerprint and
    the daemon's environment."""
    import os

    from gateway.hsm import create_key
    from hil.softhsm import SoftHsm

    hsm = await asyncio.to_thread(SoftHsm(workdir / "softhsm").start)
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)  # this process makes the key on it
    made = await asyncio.to_thread(create_key, hsm.uri("device"), "es256", True)
    print(f"demo: device key made on a SoftHSM2 token ({hsm.uri('device')})")
    return {"key_file": hsm.uri("device"), "alg": "es256"}, made.public, made.fingerprint, hsm.env()


class DemoIngest:
    """`sensegate ingest` on the demo's broker, into SQLite, as docs/ingest.md's quick start runs it."""

    def __init__(self, workdir: Path, db: str, broker_url: str) -> None:
        self.workdir, self.db, self.broker_url = workdir, db, broker_url
        self.proc: asyncio.subprocess.Process | None = None

    async def _fleet(self, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "fleet", *args, "--db", self.db,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    async def start(self, public_pem: Path) -> None:
        """Enrol the gateway's key, then start the ingest and wait until it is subscribed."""
        status, out = await self._fleet("enrol", "--gateway", GATEWAY_ID, str(public_pem))
        if status:
            raise RuntimeError(f"fleet enrol: {out.strip()}")
        log = self.workdir / "ingest.log"
        with open(log, "wb") as f:  # noqa: ASYNC230 (a local file, once)
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "ingest", "--db", self.db, "--broker", self.broker_url,
                stdout=f, stderr=f)
        async with asyncio.timeout(30):
            while "taking batches" not in log.read_text(errors="replace"):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"sensegate ingest exited: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        print(f"demo: sensegate ingest (pid {self.proc.pid}) stores every batch in {self.db}")

    async def report(self, within: float = 10.0) -> bool:
        """Once the ledger has the gateway's last heartbeat, stop the ingest and print the report."""
        status, out = 1, ""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while True:
                    status, out = await self._fleet("report", "--grace", "0")
                    if status == 0 and "heartbeat" in out:
                        break
                    await asyncio.sleep(0.5)
        await self.stop()
        print("\n$ sensegate fleet report --db " + self.db + "\n" + out)
        return status == 0

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await stop_process(proc)


async def run_demo(workdir: Path, seconds: float, pkcs11: bool = False, ingest_db: str = "") -> int:
    """Run the whole chain; returns 0 when readings arrived, all verified, with no gap (and,
    with ``ingest_db``, the ingest's ledger complete)."""
    from hil.devices.example_device import ExampleDevice
    from hil.mosquitto import Mosquitto

    # the ingest's persistent session: mosquitto keeps only max_queued_messages (default 1000) for it
    # while it is away or slow, and drops the rest silently (docs/ingest.md)
    broker = Mosquitto(workdir / "mosquitto", extra=["max_queued_messages 100000"] if ingest_db else [])
    try:
        await asyncio.to_thread(broker.start)
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    device = ExampleDevice(temperature=61.5)
    field = DemoDevices()
    proc: asyncio.subprocess.Process | None = None
    session: MqttSession | None = None
    ingest = DemoIngest(workdir, ingest_db, broker.url) if ingest_db else None
    try:
        port = await device.start()
        await field.start()
        config: dict[str, Any] = {
            "gateway": {"id": GATEWAY_ID, "site": "sensegate demo", "state_dir": str(workdir / "state")},
            "uplinks": [{"type": "mqtt", "url": broker.url}],
            "drivers": demo_drivers(port) + field.sections,
        }
        daemon_env = None
        if pkcs11:
            token, public, fp, daemon_env = await _token_key(workdir)
            config["gateway"]["key_file"] = token["key_file"]
            config["batch"] = {"alg": token["alg"]}
        else:
            info = init_key(workdir / "state" / "keys", force=True)
            public, fp = load_public_key(info.public_path), info.fingerprint
        if ingest is not None:
            pem = workdir / f"{GATEWAY_ID}.pub.pem"
            pem.write_bytes(public_pem(public))
            await ingest.start(pem)
        cfg_path = workdir / "sensegate.yaml"
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        print(f"demo: broker {broker.url}, work dir {workdir}")
        print(f"demo: device key fingerprint {fp}")
        rx = Receiver(KeyBindings({GATEWAY_ID: [public]}))

        def on_message(msg: Any) -> None:
            if "/blob/" in msg.topic:
                sha = msg.topic.rsplit("/", 1)[-1]
                if rx.feed_blob(sha, bytes(msg.payload)) == "verified":
                    ctype, data = rx.blobs[sha]
                    print(f"image {sha[:16]}... {ctype}, {len(data)} bytes: uploaded, SHA-256 verified")
                return
            res = rx.feed(bytes(msg.payload), topic_gateway(msg.topic))
            if res.status != "ok":
                print(f"  !! batch rejected: {res.status} {res.reason}")
                return
            print(f"batch {res.bseq} from {res.gateway}: signature verified, {len(res.readings)} reading(s)")
            for r in res.readings:
                print(_fmt(r))

        session = MqttSession(receiver_settings(broker.url), on_message=on_message)
        await session.connect()
        for topic in receiver_topics():
            session.client.subscribe(topic, qos=1)
        if field.skipped:
            print("demo: not simulated: " + ", ".join(field.skipped))
        log = open(workdir / "daemon.log", "wb")  # noqa: SIM115, ASYNC230 (kept for the child's lifetime)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(cfg_path), stdout=log, stderr=log, env=daemon_env)
        log.close()
        print(f"demo: daemon started (pid {proc.pid}); running for {seconds:g} s, Ctrl-C to stop early\n")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds or None):
                await stop.wait()
        loop.remove_signal_handler(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        rc = await proc.wait()
        await asyncio.sleep(0.3)  # the last batches of the drain
        proc = None
        s = rx.summary()
        print("\n" + format_summary(s))
        complete = await ingest.report() if ingest is not None else True
        if rc != 0:
            print(f"demo: the daemon exited with status {rc}; its log:\n"
                  + (workdir / "daemon.log").read_text()[-3000:], file=sys.stderr)
            return 1
        return 0 if s.ok and s.readings > 0 and complete else 1
    except (MqttError, KeyFileError, RuntimeError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        if session is not None:
            await session.close()
        if ingest is not None:
            await ingest.stop()
        await device.stop()
        await field.stop()
        await asyncio.to_thread(broker.stop)


def main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate demo`."""
    if args.dir:
        workdir = Path(args.dir)
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run_demo(workdir, args.seconds, args.pkcs11, _ingest_db(args, workdir)))
    tmp = Path(tempfile.mkdtemp(prefix="sensegate-demo-"))
    started = time.monotonic()
    try:
        return asyncio.run(run_demo(tmp, args.seconds, args.pkcs11, _ingest_db(args, tmp)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"demo: done in {time.monotonic() - started:.1f} s")


def _ingest_db(args: argparse.Namespace, workdir: Path) -> str:
    """``--ingest [sqlite:PATH]``: where the demo's ingest stores (default: in the work dir)."""
    if not args.ingest:
        return ""
    if args.ingest == "-":
        return f"sqlite:{workdir / 'ingest.db'}"
    url: str = args.ingest
    return url if url.startswith(("sqlite:", "postgresql://", "postgres://")) else f"sqlite:{url}"
