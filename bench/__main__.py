"""End-to-end benchmark: sim driver -> buffer -> signed batches -> mosquitto -> verifying receiver.

Prints one table and writes bench/results/latest.json. Figures, not assertions: `make test`
only runs it on a tiny load to prove it works (tests/bench/test_bench_runs.py).
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
from pathlib import Path

import yaml

from gateway.keys import init_key
from gateway.testing import free_port
from hil.mosquitto import Mosquitto

CLK = os.sysconf("SC_CLK_TCK")


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


def run_scenario(name: str, work: Path, seconds: float, repeat: int, interval: str, points: int,
                 uplink: str = "mqtt") -> dict[str, float]:
    """Run the daemon for ``seconds`` with a sim load; measure it and what the receiver verified.

    ``uplink``: "mqtt" (through mosquitto), or "coap" / "coap+tcp" (POSTs straight to the receiver
    over UDP, block-wise, or over TCP)."""
    work.mkdir(parents=True, exist_ok=True)
    with Mosquitto(work / "mqtt", persistence=False) as broker:
        info = init_key(work / "state" / "keys", force=True)
        kind = socket.SOCK_DGRAM if uplink == "coap" else socket.SOCK_STREAM
        coap_url = f"{uplink}://127.0.0.1:{free_port(kind)}"
        cfg = {
            "gateway": {"id": f"bench-{name}", "state_dir": str(work / "state")},
            "uplinks": [{"type": "mqtt", "url": broker.url, "inflight": 16} if uplink == "mqtt" else
                        {"type": "coap", "url": coap_url, "inflight": 16, "timeout": "20s", "reconnect_max": "2s"}],
            "drivers": [{"driver": "sim", "name": "load", "interval": interval, "jitter": 0, "timeout": "5s",
                         "repeat": repeat,
                         "points": [{"name": f"p{i}", "unit": "W", "pattern": "counter"} for i in range(points)]}],
        }
        path = work / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rx = subprocess.Popen(
            [sys.executable, "-m", "gateway", "receive", "--url", broker.url if uplink == "mqtt" else coap_url,
             "--trust", str(info.public_path),
             "--out", "", "--json", "--timeout", str(seconds + 15), "--client-id", "bench-rx"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(0.7)
        started = time.monotonic()
        gw = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        while time.monotonic() - started < seconds:
            time.sleep(0.25)
            peak = max(peak, _status_kib(gw.pid, "VmRSS"))
        cpu = _cpu_seconds(gw.pid)
        written = _write_bytes(gw.pid)
        hwm = _status_kib(gw.pid, "VmHWM")
        elapsed = time.monotonic() - started
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=60)
        rx.send_signal(signal.SIGTERM)
        out, _ = rx.communicate(timeout=60)
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"receiver printed nothing; daemon said:\n{err[-2000:]}")
    s = json.loads(lines[-1])
    n = s["readings"]
    return {
        "readings_received": n,
        "readings_per_s": n / elapsed,
        "cpu_s_per_100k": cpu / max(n, 1) * 100_000,
        "cpu_share_of_core": cpu / elapsed,
        "peak_rss_mib": max(peak, hwm) / 1024,
        "disk_bytes_per_reading": written / max(n, 1),
        "gaps": s["gaps"],
        "bad_signatures": s["bad_signatures"],
        "verified_ok": bool(s["ok"]),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--tiny", action="store_true", help="a few seconds of light load (used by make test)")
    p.add_argument("--out", default="bench/results/latest.json")
    args = p.parse_args(argv)
    if args.tiny:
        scenarios = {"tiny": dict(seconds=3.0, repeat=10, interval="50ms", points=2),
                     "tiny_coap": dict(seconds=3.0, repeat=10, interval="50ms", points=2, uplink="coap")}
    else:
        scenarios = {
            "1k_per_s": dict(seconds=args.seconds, repeat=10, interval="20ms", points=2),
            "100k_per_s": dict(seconds=args.seconds, repeat=200, interval="10ms", points=5),
            # the same offered load over CoAP (UDP, block-wise batches) instead of MQTT
            "100k_coap": dict(seconds=args.seconds, repeat=200, interval="10ms", points=5, uplink="coap"),
            "100k_ctcp": dict(seconds=args.seconds, repeat=200, interval="10ms", points=5, uplink="coap+tcp"),
            "150k_per_s": dict(seconds=args.seconds, repeat=300, interval="10ms", points=5),
        }
    results = {}
    with tempfile.TemporaryDirectory(prefix="sensegate-bench-") as tmp:
        for name, sc in scenarios.items():
            results[name] = run_scenario(name, Path(tmp) / name, **sc)  # type: ignore[arg-type]
    cols = ["readings_per_s", "cpu_s_per_100k", "cpu_share_of_core", "peak_rss_mib", "disk_bytes_per_reading",
            "gaps", "verified_ok"]
    print(f"{'scenario':<10} " + " ".join(f"{c:>22}" for c in cols))
    for name, r in results.items():
        cells = [f"{r[c]:>22.2f}" if isinstance(r[c], float) else f"{r[c]!s:>22}" for c in cols]
        print(f"{name:<10} " + " ".join(cells))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "cpus": os.cpu_count(), "results": results}, indent=2))
    print(f"written to {out}")
    return 0 if all(r["verified_ok"] and r["readings_received"] > 0 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
