"""End-to-end benchmark: drivers -> buffer -> signed batches -> mosquitto (or CoAP) -> verifying
receiver, all real processes on this machine.

Prints one table, a verdict per target of BRIEF section 7, and writes bench/results/latest.json.
Figures, not assertions: `make test` only runs it on a tiny load (tests/bench/test_bench_runs.py).
How each figure is measured, and how to profile: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key
from gateway.service import service_env
from gateway.store import backlog
from gateway.testing import free_port
from hil.mosquitto import Mosquitto

CLK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# -- /proc readings of the daemon -------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


class Probe:
    """CPU, RSS and bytes written of one process, sampled by the bench."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[tuple[float, int]] = []  # (monotonic, KiB)

    def sample(self) -> None:
        self.rss.append((time.monotonic(), _status_kib(self.pid, "VmRSS")))

    def snap(self) -> tuple[float, float, int]:
        return time.monotonic(), _cpu_seconds(self.pid), _write_bytes(self.pid)

    def hwm_mib(self) -> float:
        return _status_kib(self.pid, "VmHWM") / 1024


def _sleep_sampling(probe: Probe, seconds: float, until: Callable[[], bool] | None = None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.sample()
        if until is not None and until():
            return
        time.sleep(0.25)


# -- the processes -----------------------------------------------------------------------------

def _gateway_id(name: str) -> str:
    return f"bench-{name}".replace("_", "-")


def _gateway(work: Path, name: str, drivers: list[dict[str, Any]], uplink: dict[str, Any],
             **sections: Any) -> Path:
    cfg: dict[str, Any] = {"gateway": {"id": _gateway_id(name), "state_dir": str(work / "state")},
                           "uplinks": [uplink], "drivers": drivers, **sections}
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


DAEMON_ROOT = ROOT  # --baseline-root: the daemon of another checkout, measured by this bench


PYCACHE: Path | None = None  # set by main(): the byte-code cache of the packaged unit's environment


def _daemon_env(plain: bool = False) -> dict[str, str]:
    """The daemon runs as the packaged systemd unit runs it (gateway.service.SERVICE_ENV), with a
    byte-code cache warmed before the first scenario, as on a gateway after its first start;
    ``plain``: a bare ``sensegate run``."""
    if plain or PYCACHE is None:
        return dict(os.environ)
    return {**os.environ, **service_env(PYCACHE)}


def _warm_pycache() -> None:
    """Compile, under the unit's environment, every module a daemon with every driver imports."""
    code = ("import gateway.cli, gateway.daemon, gateway.uplinks.mqtt, gateway.coap\n"
            "from gateway.registry import Registry, load_driver_class\n"
            "for m in Registry.discover().manifests.values():\n"
            "    try:\n        load_driver_class(m)\n    except Exception:\n        pass\n")
    subprocess.run([PY, "-c", code], cwd=DAEMON_ROOT, env=_daemon_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _spawn_daemon(config: Path, env: dict[str, str] | None = None, plain: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([PY, "-m", "gateway", "run", "-c", str(config)], cwd=DAEMON_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**_daemon_env(plain), **(env or {})})


def _spawn_receiver(url: str, pub: Path, name: str, timeout: float, count: int = 0) -> subprocess.Popen[str]:
    args = [PY, "-m", "bench.receiver", "--url", url, "--trust", f"{_gateway_id(name)}={pub}",
            "--timeout", str(timeout)]
    if url.startswith("mqtt"):
        args += ["--client-id", "bench-rx"]  # a persistent session: nothing lost while it subscribes
    if count:
        args += ["--count", str(count)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=90)
    return out or ""


def _rx_lines(out: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(x) for x in out.strip().splitlines() if x.startswith("{")]
    if not lines or "ok" not in lines[-1]:
        raise RuntimeError(f"the receiver printed no summary: {out[-500:]!r}")
    return [x for x in lines if "mark_ns" in x], lines[-1]


def _uplink(kind: str, broker: Mosquitto | None) -> tuple[dict[str, Any], str]:
    if kind == "mqtt":
        assert broker is not None
        return {"type": "mqtt", "url": broker.url, "inflight": 16, "reconnect_max": 1}, broker.url
    sock = socket.SOCK_DGRAM if kind == "coap" else socket.SOCK_STREAM
    url = f"{kind}://127.0.0.1:{free_port(sock)}"
    return {"type": "coap", "url": url, "inflight": 16, "timeout": "20s", "reconnect_max": "2s"}, url


def _sim(name: str, repeat: int, interval: str, points: int) -> dict[str, Any]:
    return {"driver": "sim", "name": name, "interval": interval, "jitter": 0, "timeout": "5s", "repeat": repeat,
            "points": [{"name": f"p{i}", "unit": "W", "pattern": "counter"} for i in range(points)]}


def run_load(name: str, work: Path, seconds: float, drivers: list[dict[str, Any]], uplink: str = "mqtt",
             warmup: float = 3.0, helper: list[str] | None = None,
             sections: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the daemon under a load; measure a steady window from ``warmup`` s after the first
    delivered batch to the end (rates, CPU, disk, latency), RSS throughout."""
    work.mkdir(parents=True, exist_ok=True)
    drivers = [dict(d) for d in drivers]  # (a helper's port goes into this run's sections, not a shared one)
    helper_proc = None
    env: dict[str, str] = {}
    if helper:  # a simulated device: prints its port (Modbus bus) or NAME=VALUE for the daemon (D-Bus)
        helper_proc = subprocess.Popen(helper, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert helper_proc.stdout is not None
        first = helper_proc.stdout.readline().strip()
        if "=" in first:
            key, _, value = first.partition("=")
            env[key] = value
        else:
            for d in drivers:
                d.setdefault("port", int(first))
    try:
        with Mosquitto(work / "mqtt", persistence=False) as broker:
            info = init_key(work / "state" / "keys", force=True)
            up, url = _uplink(uplink, broker)
            config = _gateway(work, name, drivers, up, **(sections or {}))
            rx = _spawn_receiver(url, info.public_path, name, seconds + warmup + 60)
            time.sleep(0.8)  # subscribed (MQTT) / listening (CoAP)
            spawned_ns = time.time_ns()
            gw = _spawn_daemon(config, env)
            probe = Probe(gw.pid)
            # warm-up: until the first batch arrived (the receiver's marks tell) plus `warmup`
            _sleep_sampling(probe, warmup + 2.0)
            rx.send_signal(signal.SIGUSR1)
            t0, cpu0, wb0 = probe.snap()
            _sleep_sampling(probe, seconds)
            rx.send_signal(signal.SIGUSR1)
            t1, cpu1, wb1 = probe.snap()
            hwm = probe.hwm_mib()
            time.sleep(0.3)  # the end mark is printed before the daemon's drain adds to the count
            err = gw.stderr.read() if gw.poll() is not None and gw.stderr else ""
            gw.send_signal(signal.SIGTERM)
            _, err2 = gw.communicate(timeout=90)
            marks, summary = _rx_lines(_stop(rx))
    finally:
        if helper_proc is not None:
            _stop(helper_proc)
    if len(marks) < 2 or not summary["readings"]:
        raise RuntimeError(f"{name}: nothing measured; daemon said:\n{(err or err2)[-2000:]}")
    (m0, m1) = marks[-2:]
    window = (m1["mark_ns"] - m0["mark_ns"]) / 1e9
    n = m1["readings"] - m0["readings"]
    steady = [kib for t, kib in probe.rss if t >= t0] or [0]
    lat = m1.get("latency_ms") or {}
    messages = m1["messages"] - m0["messages"]
    framing = _mqtt_framing(_gateway_id(name), (m1["batch_bytes"] - m0["batch_bytes"]) / max(messages, 1)) \
        if uplink == "mqtt" else 0
    return {
        "readings_received": summary["readings"],
        "readings_per_s": n / window,
        "uplink_bytes_per_s": (m1["batch_bytes"] - m0["batch_bytes"] + messages * framing) / window,
        "batches_per_s": messages / window,
        "disk_bytes_per_s": (wb1 - wb0) / (t1 - t0),
        "cpu_s_per_100k": (cpu1 - cpu0) / max(n, 1) * 100_000,
        "cpu_share_of_core": (cpu1 - cpu0) / (t1 - t0),
        "peak_rss_mib": max(hwm, max(kib for _, kib in probe.rss) / 1024),
        "steady_rss_mib": sorted(steady)[len(steady) // 2] / 1024,
        "disk_bytes_per_reading": (wb1 - wb0) / max(n, 1),
        "latency_p50_ms": lat.get("p50"),
        "latency_p99_ms": lat.get("p99"),
        "first_batch_s": (summary["first_ok_ns"] - spawned_ns) / 1e9 if summary["first_ok_ns"] else None,
        "dropped": summary["dropped"],
        "gaps": summary["gaps"],
        "bad_signatures": summary["bad_signatures"],
        "verified_ok": bool(summary["ok"]) and summary["readings"] > 0,
    }


def _mqtt_framing(gateway: str, payload: float) -> int:
    """Bytes an MQTT 5 QoS 1 PUBLISH adds to a batch: fixed header, remaining length, topic
    (``sensegate/<gw>/batch``), packet id, empty properties. TCP/IP and TLS headers not included."""
    topic = len(f"sensegate/{gateway}/batch")
    rest = 2 + topic + 2 + 1 + payload
    return 1 + (1 if rest < 128 else 2 if rest < 16384 else 3 if rest < 2097152 else 4) + 2 + topic + 2 + 1


def edge_savings(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """For each ``NAME_deadband`` run beside its ``NAME`` run: uplink bytes, disk bytes and readings
    per second before and after, and the ratios."""
    out: dict[str, dict[str, float]] = {}
    for name, after in results.items():
        before = results.get(name.removesuffix("_deadband"))
        if not name.endswith("_deadband") or before is None:
            continue
        row: dict[str, float] = {}
        for key in ("uplink_bytes_per_s", "disk_bytes_per_s", "readings_per_s", "batches_per_s"):
            row[f"{key}_before"], row[f"{key}_after"] = before[key], after[key]
            row[f"{key}_ratio"] = after[key] / before[key] if before[key] else float("nan")
        out[name.removesuffix("_deadband")] = row
    return out


def run_idle(work: Path, seconds: float) -> dict[str, Any]:
    """Ten sim drivers polling every 10 s: the daemon's CPU share once started."""
    drivers = [{"driver": "sim", "name": f"slow{i}", "interval": "10s", "points": [{"name": "t", "unit": "Cel"}]}
               for i in range(10)]
    r = run_load("idle", work, seconds, drivers, warmup=3.0)
    r["idle_cpu_percent"] = r["cpu_share_of_core"] * 100
    return r


def run_drain(work: Path, backlog_n: int, fill_rate: tuple[int, str, int] = (200, "10ms", 5)) -> dict[str, Any]:
    """An outage: the broker is down while ``backlog_n`` readings pile up; then it is back and
    the daemon (restarted, no drivers) delivers the backlog. Drain rate and RSS during it."""
    work.mkdir(parents=True, exist_ok=True)
    info = init_key(work / "state" / "keys", force=True)
    broker = Mosquitto(work / "mqtt", persistence=False)
    up = {"type": "mqtt", "url": broker.url, "inflight": 16, "reconnect_max": 1}
    repeat, interval, points = fill_rate
    gw = _spawn_daemon(_gateway(work, "drain", [_sim("fill", repeat, interval, points)], up))
    db = work / "state" / "buffer.db"
    fill_start = time.monotonic()
    have = 0
    while have < backlog_n and time.monotonic() - fill_start < 120:
        time.sleep(0.5)
        if db.exists():
            try:
                have = backlog(db)[0]
            except Exception:  # the file is being created
                pass
    fill_s = time.monotonic() - fill_start
    _stop(gw)
    have = backlog(db)[0]
    with broker:
        rx = _spawn_receiver(broker.url, info.public_path, "drain", 300, count=have)
        time.sleep(0.8)
        started = time.monotonic()
        gw = _spawn_daemon(_gateway(work, "drain", [], up))
        probe = Probe(gw.pid)
        _sleep_sampling(probe, 300, until=lambda: rx.poll() is not None)
        drained_s = time.monotonic() - started
        _, summary = _rx_lines(_stop(rx))
        hwm = probe.hwm_mib()
        _stop(gw)
    rss = [kib / 1024 for _, kib in probe.rss]
    after_1s = [kib / 1024 for t, kib in probe.rss if t >= started + 1.0] or rss
    return {
        "backlog_readings": have,
        "fill_s": fill_s,
        "readings_received": summary["readings"],
        "readings_per_s": summary["readings"] / drained_s,
        "drain_s": drained_s,
        "peak_rss_mib": max(hwm, max(rss)),
        "steady_rss_mib": after_1s[len(after_1s) // 2],
        "rss_start_mib": after_1s[0],
        "rss_end_mib": after_1s[-1],
        "rss_growth_mib": max(after_1s) - after_1s[0],
        "gaps": summary["gaps"],
        "dropped": summary["dropped"],
        "verified_ok": bool(summary["ok"]) and summary["readings"] >= have,
    }


def run_rss(work: Path, seconds: float) -> dict[str, Any]:
    """RSS with every built-in driver configured (each driver's sample.yaml; the devices are
    absent, so they retry), against the same daemon with the sim driver only."""
    drivers: list[dict[str, Any]] = []
    for sample in sorted((ROOT / "drivers").glob("*/sample.yaml")):
        if sample.parent.name == "example":
            continue
        for i, d in enumerate(yaml.safe_load(sample.read_text()) or []):
            d["name"] = f"{sample.parent.name}{i}"
            drivers.append(d)
    out: dict[str, Any] = {"drivers": sorted({d["driver"] for d in drivers})}
    for label, ds, plain in (("sim_only", [_sim("s", 1, "1s", 1)], False), ("all_drivers", drivers, False),
                             ("all_drivers_plain", drivers, True)):
        w = work / label
        w.mkdir(parents=True, exist_ok=True)
        with Mosquitto(w / "mqtt", persistence=False) as broker:
            init_key(w / "state" / "keys", force=True)
            gw = _spawn_daemon(_gateway(w, label, ds, _uplink("mqtt", broker)[0]), plain=plain)
            probe = Probe(gw.pid)
            _sleep_sampling(probe, seconds)
            alive = gw.poll() is None
            hwm = probe.hwm_mib()
            err = _stop(gw) if not alive else ""
            _stop(gw)
        if not alive:
            raise RuntimeError(f"rss {label}: the daemon exited: {err}")
        rss = [kib / 1024 for _, kib in probe.rss]
        out[f"{label}_rss_mib"] = rss[-1]
        out[f"{label}_peak_rss_mib"] = max(hwm, max(rss))
    out["steady_rss_mib"] = out["all_drivers_rss_mib"]
    out["peak_rss_mib"] = out["all_drivers_peak_rss_mib"]
    out["verified_ok"] = True
    return out


def run_rss_rig(work: Path, seconds: float) -> dict[str, Any]:
    """RSS with every built-in driver configured *and its device present*: the simulated rig
    (hil/rigs/sim.yaml: Modbus, GPS, RFID, barcode, BLE on a private D-Bus, camera, 1-Wire,
    I2C, sim), so each driver's library is loaded and working. Sampled once every device delivers."""
    import asyncio

    from hil.rig import RigRun, load_rig

    async def go() -> dict[str, Any]:
        async with RigRun(load_rig("sim"), work) as rig:
            assert rig.receiver is not None

            def every_device() -> bool:
                seen = {g.reading.node for g in rig.receiver.got}  # type: ignore[union-attr]
                return all(set(rig.nodes_of(name)) & seen for name in rig.devices)

            # a first start compiles the modules only a working device needs (bleak's BlueZ
            # backend, pymodbus's transport) into the unit's byte-code cache, as a gateway's
            # first boot does; the second start is measured
            first = await rig.start_daemon()
            await rig.receiver.wait(every_device, within=60, what="every rig device delivering")
            if await first.stop() != 0:
                raise RuntimeError(f"rss_rig: the first daemon failed: {first.log_text()[-2000:]}")
            rig.receiver.got.clear()
            daemon = await rig.start_daemon()
            probe = Probe(daemon.pid)
            await rig.receiver.wait(every_device, within=60, what="every rig device delivering")
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                probe.sample()
                await asyncio.sleep(0.5)
            hwm = probe.hwm_mib()
            rc = await daemon.stop()
            if rc != 0:
                raise RuntimeError(f"rss_rig: the daemon exited with {rc}: {daemon.log_text()[-2000:]}")
            rss = [kib / 1024 for _, kib in probe.rss]
            return {"devices": sorted(rig.devices), "skipped_devices": rig.skipped,
                    "steady_rss_mib": sorted(rss)[len(rss) // 2], "peak_rss_mib": max(hwm, max(rss)),
                    "verified_ok": rig.receiver.rx.summary().bad_signatures == 0}

    return asyncio.run(go())


_SUBSCRIBER = """
import sys, paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
c = paho.Client(CallbackAPIVersion.VERSION2, client_id="ceiling-sub")
c.on_connect = lambda c, *a: c.subscribe("c/#", qos=1)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_forever()
"""


def run_ceiling(work: Path, seconds: float, payload_bytes: int, readings_per_batch: int) -> dict[str, Any]:
    """Raw paho QoS 1 publishing of batch-sized payloads to the same kind of broker, with a
    subscriber taking them: the most any MQTT gateway in Python could deliver here."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto(work / "mqtt", persistence=False) as broker:
        sub = subprocess.Popen([PY, "-c", _SUBSCRIBER, str(broker.port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="ceiling")
        c.max_inflight_messages_set(16)
        acked = [0]
        c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        payload = os.urandom(payload_bytes)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        sent = 0
        while time.monotonic() - t0 < seconds:
            while sent - acked[0] > 32:  # a bounded queue, as the daemon's inflight window
                time.sleep(0.0005)
            c.publish("c/batch", payload, qos=1)
            sent += 1
        while acked[0] < sent and time.monotonic() - t0 < seconds + 10:
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        c.loop_stop()
        c.disconnect()
        sub.terminate()
        sub.wait(10)
    msgs = acked[0]
    return {"payload_bytes": payload_bytes, "messages_per_s": msgs / elapsed,
            "readings_per_s": msgs * readings_per_batch / elapsed,
            "cpu_s_per_100k": cpu / max(msgs * readings_per_batch, 1) * 100_000, "verified_ok": True}


def python_speed() -> float:
    """Millions of simple interpreter loop iterations per second: the machine's yardstick."""
    n = 2_000_000
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i & 7
    return n / (time.perf_counter() - t) / 1e6


# -- the table and the verdicts ----------------------------------------------------------------

COLUMNS = [("readings_per_s", "readings_per_s", "{:,.0f}"), ("cpu_s_per_100k", "CPU s/100k", "{:.2f}"),
           ("cpu_share_of_core", "CPU share", "{:.3f}"), ("peak_rss_mib", "peak RSS MiB", "{:.1f}"),
           ("steady_rss_mib", "steady RSS MiB", "{:.1f}"), ("disk_bytes_per_reading", "disk B/reading", "{:.1f}"),
           ("disk_bytes_per_s", "disk B/s", "{:,.0f}"), ("uplink_bytes_per_s", "uplink B/s", "{:,.0f}"),
           ("latency_p50_ms", "p50 ms", "{:.0f}"), ("latency_p99_ms", "p99 ms", "{:.0f}"),
           ("first_batch_s", "1st batch s", "{:.2f}"), ("gaps", "gaps", "{}"), ("verified_ok", "ok", "{}")]


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = [["scenario"] + [h for _, h, _ in COLUMNS]]
    for name, r in results.items():
        rows.append([name] + [("-" if r.get(k) is None else f.format(r[k])) for k, _, f in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def verdicts(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of BRIEF section 7 that this run measured: met or not, with the figure."""
    out: list[dict[str, Any]] = []

    def target(what: str, scenario: str, key: str, limit: float, above: bool = False) -> None:
        r = results.get(scenario)
        if r is None or r.get(key) is None:
            return
        v = float(r[key])
        out.append({"target": what, "scenario": scenario, "value": v,
                    "met": (v >= limit if above else v < limit) and bool(r.get("verified_ok"))})

    target(">= 100,000 readings/s end to end", "110k_offered", "readings_per_s", 100_000, above=True)
    target("idle CPU < 0.5% (10 drivers at 10 s)", "idle_10_drivers", "idle_cpu_percent", 0.5)
    target("RSS < 40 MB, every built-in driver", "rss_all_drivers", "steady_rss_mib", 40 * 1e6 / 2**20)
    target("RSS < 40 MB, every built-in driver with its device", "rss_rig_devices", "steady_rss_mib", 40 * 1e6 / 2**20)
    # the same daemon without the unit's environment (a technician's bare `sensegate run`)
    target("RSS < 40 MB, every built-in driver, bare run", "rss_all_drivers", "all_drivers_plain_rss_mib",
           40 * 1e6 / 2**20)
    target("no RSS growth in a 1M backlog drain (< 5 MiB)", "drain_1m", "rss_growth_mib", 5.0)
    for name in results:
        if name in ("idle_10_drivers", "drain_1m", "rss_all_drivers", "rss_rig_devices", "ceiling") \
                or name.startswith("tiny") \
                or name.endswith("_deadband") \
                or "@" in name:  # (with report rules most readings are never written: disk B/s says it)
            continue
        target("<= 100 bytes written per reading", name, "disk_bytes_per_reading", 100.0001)
    target("p99 latency < 100 ms at 1,000/s", "1k_per_s", "latency_p99_ms", 100)
    target("p99 latency < 500 ms at 50,000/s", "50k_per_s", "latency_p99_ms", 500)
    for name in results:
        if "@" not in name:
            target("first batch within 2 s of start", name, "first_batch_s", 2.0)
    return out


def scenarios(seconds: float, tiny: bool) -> dict[str, Callable[[Path], dict[str, Any]]]:
    if tiny:
        return {
            "tiny": lambda w: run_load("tiny", w, 2.0, [_sim("load", 10, "50ms", 2)], warmup=0.5),
            "tiny_coap": lambda w: run_load("tiny_coap", w, 2.0, [_sim("load", 10, "50ms", 2)], "coap", warmup=0.5),
        }
    modbus_map = [{"name": f"r{i}", "function": "holding", "address": i, "type": "u16"} for i in range(100)]
    modbus = {"driver": "modbus", "name": "bus", "transport": "tcp", "host": "127.0.0.1", "interval": "1s",
              "jitter": 0, "timeout": "55s", "request_timeout": "1s", "maps": {"m": modbus_map},
              "nodes": [{"id": f"meter-{i}", "slave": i, "map": "m"} for i in range(1, 51)]}
    ble = {"driver": "ble", "name": "ble", "adapter": "hci0", "names": ["DIY-*"], "dedup_window": "0s",
           "offline_after": "30s"}
    # realistic report rules for the plant's registers and the rooms' sensors (bench/README.md)
    modbus_rules = [{"points": ["*"], "deadband_percent": 0.5, "max_interval": "10m"}]
    ble_rules = [{"points": ["temperature"], "deadband": 0.2, "max_interval": "15m"},
                 {"points": ["humidity"], "deadband": 1, "max_interval": "15m"},
                 {"points": ["rssi"], "window": "1m", "aggregate": ["mean"]}]
    return {
        "ceiling": lambda w: run_ceiling(w, 4.0, 5000 * 36, 5000),
        "sim_max": lambda w: run_load("sim_max", w, seconds, [_sim("load", 2000, "10ms", 5)]),
        "1k_per_s": lambda w: run_load("1k_per_s", w, seconds, [_sim("load", 10, "20ms", 2)]),
        # the same trickle with batches spaced for SD cards: fewer flushes, more latency
        "1k_per_s_sd": lambda w: run_load("1k_per_s_sd", w, seconds, [_sim("load", 10, "20ms", 2)],
                                          sections={"batch": {"min_interval": "500ms"},
                                                    "buffer": {"commit_interval": "1s"}}),
        "10k_per_s": lambda w: run_load("10k_per_s", w, seconds, [_sim("load", 40, "20ms", 5)]),
        "50k_per_s": lambda w: run_load("50k_per_s", w, seconds, [_sim("load", 100, "10ms", 5)]),
        # 110,000 offered (the sim's polls drift a little late): does it sustain 100,000?
        "110k_offered": lambda w: run_load("110k_offered", w, seconds, [_sim("load", 220, "10ms", 5)]),
        "50k_coap": lambda w: run_load("50k_coap", w, seconds, [_sim("load", 100, "10ms", 5)], "coap"),
        "modbus_50x100": lambda w: run_load("modbus_50x100", w, seconds, [modbus],
                                            helper=[PY, "-m", "bench.modbus_bus", "50", "100"]),
        # the same bus with a realistic deadband (edge processing, docs/edge.md)
        "modbus_50x100_deadband": lambda w: run_load(
            "modbus_50x100_deadband", w, seconds, [{**modbus, "report": modbus_rules}],
            helper=[PY, "-m", "bench.modbus_bus", "50", "100"]),
        # 200 BTHome sensors, each advertising temperature and humidity once a second, through bleak
        "ble_200_nodes": lambda w: run_load("ble_200_nodes", w, seconds, [ble],
                                            helper=[PY, "-m", "bench.ble_nodes", "200", "1.0"]),
        "ble_200_nodes_deadband": lambda w: run_load(
            "ble_200_nodes_deadband", w, seconds, [{**ble, "report": ble_rules}],
            helper=[PY, "-m", "bench.ble_nodes", "200", "1.0"]),
        "idle_10_drivers": lambda w: run_idle(w, max(seconds, 20.0)),
        "rss_all_drivers": lambda w: run_rss(w, 8.0),
        "rss_rig_devices": lambda w: run_rss_rig(w, 8.0),
        "drain_1m": lambda w: run_drain(w, 1_000_000),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=float, default=12.0, help="steady window of each load scenario")
    p.add_argument("--tiny", action="store_true", help="a few seconds of light load (used by make test)")
    p.add_argument("--only", default="", help="comma-separated scenario names")
    p.add_argument("--out", default="bench/results/latest.json")
    p.add_argument("--baseline-root", default="", help="also run each scenario with the daemon of this checkout "
                   "(e.g. a git worktree of an older commit): rows NAME@base, same machine, same run")
    p.add_argument("--group", default="gateway", choices=("gateway", "ingest"),
                   help="gateway: the daemon's scenarios (the default); ingest: the fleet ingest's (bench/ingest.py: "
                   "throughput_1k, throughput_10k, throughput_10k_small, memory, latency, latency_5k; results in "
                   "bench/results/ingest.json)")
    args = p.parse_args(argv)
    if args.group == "ingest":
        from bench import ingest

        return ingest.main(args)
    chosen = scenarios(args.seconds, args.tiny)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    if args.baseline_root:
        def based(fn: Callable[[Path], dict[str, Any]]) -> Callable[[Path], dict[str, Any]]:
            def run(w: Path) -> dict[str, Any]:
                global DAEMON_ROOT
                DAEMON_ROOT = Path(args.baseline_root).resolve()
                try:
                    return fn(w)
                finally:
                    DAEMON_ROOT = ROOT
            return run
        chosen = {k: v for name, fn in chosen.items() if name != "ceiling"
                  for k, v in ((name + "@base", based(fn)), (name, fn))} | (
                      {"ceiling": chosen["ceiling"]} if "ceiling" in chosen else {})
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    speed = python_speed()
    global PYCACHE, DAEMON_ROOT
    with tempfile.TemporaryDirectory(prefix="sensegate-bench-") as tmp:
        PYCACHE = Path(tmp) / "pycache"
        os.environ["SENSEGATE_RIG_PYCACHE"] = str(PYCACHE)  # the rig scenario's daemon too
        _warm_pycache()
        if args.baseline_root:  # the baseline's daemon starts as warm as ours (no compiling in its first run)
            DAEMON_ROOT = Path(args.baseline_root).resolve()
            try:
                _warm_pycache()
            finally:
                DAEMON_ROOT = ROOT
        for name, fn in chosen.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = fn(Path(tmp) / name)
            except Exception as e:  # one broken scenario must not hide the others
                errors[name] = f"{type(e).__name__}: {e}"
                print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
    if "ceiling" in results:
        for r in results.values():
            if r is not results["ceiling"] and "cpu_s_per_100k" in r:
                r["ratio_to_ceiling"] = r["readings_per_s"] / results["ceiling"]["readings_per_s"]
    print(table(results))
    checks = verdicts(results)
    for v in checks:
        print(f"{'MET    ' if v['met'] else 'NOT MET'}  {v['target']:<48} {v['scenario']:<16} {v['value']:,.2f}")
    savings = edge_savings(results)
    for base, row in savings.items():
        print(f"EDGE     {base}: uplink {row['uplink_bytes_per_s_before']:,.0f} -> "
              f"{row['uplink_bytes_per_s_after']:,.0f} B/s ({row['uplink_bytes_per_s_ratio']:.3f}x), disk "
              f"{row['disk_bytes_per_s_before']:,.0f} -> {row['disk_bytes_per_s_after']:,.0f} B/s "
              f"({row['disk_bytes_per_s_ratio']:.3f}x), readings {row['readings_per_s_before']:,.0f} -> "
              f"{row['readings_per_s_after']:,.0f}/s")
    for name, e in errors.items():
        print(f"FAILED   {name}: {e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "cpus": os.cpu_count(), "python_mloops_per_s": speed, "results": results,
                               "targets": checks, "edge_savings": savings, "errors": errors}, indent=2))
    print(f"written to {out}")
    return 0 if not errors and all(r.get("verified_ok") for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
