"""A rollout to 100 simulated gateways, timed: what an operator sees and how long it takes.

    .venv/bin/python -m bench.fleet_rollout [--gateways 100] [--wave-size 10] [--offline 3]

Starts a private mosquitto and N simulated gateways in this process (each the real daemon and
remote agent, without the buffer: gateway/testing/simgateway.py), then runs the real
`sensegate config push FILE --group bench` in a child process, as an operator would, and prints
its terminal output and the figures: wall time of the rollout, per wave, CPU of the gateways'
process and of the operator's command. With ``--offline K``, K gateways are stopped before the
push and started again after it: `sensegate rollout status` then reports the rollout done.
Figures only, no assertions (tests/fleet/test_rollout_sim.py is the test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gateway.keys import init_key
from gateway.testing.simgateway import SIM_DRIVER, SimGateway, start_all, stop_all
from hil.mosquitto import Mosquitto


async def _sg(*args: str) -> tuple[int, str, float]:
    """`sensegate ARGS` in a child process: exit status, output, CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return proc.returncode or 0, out.decode(), cpu


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(n: int, wave_size: int, offline: int, work: Path) -> None:
    broker = Mosquitto(work / "mosquitto")
    broker.start()
    ops = init_key(work / "ops", name="ops")
    names = [f"gw-{i:03d}" for i in range(n)]
    away = set(names[7::max(1, n // max(1, offline))][:offline]) if offline else set()
    fleet = [SimGateway(work / "gws", g, broker.url, [str(ops.public_path)], ["bench"]) for g in names]
    try:
        t0 = time.monotonic()
        await start_all(fleet)
        print(f"{n} simulated gateways up in {time.monotonic() - t0:.1f} s "
              f"(one process, {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak RSS)")
        await asyncio.sleep(1.0)
        await stop_all(g for g in fleet if g.id in away)
        doc = work / "site.yaml"
        doc.write_text(yaml.safe_dump({"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 2}],
                                       "metrics": {"status_interval": "1h"},
                                       "drivers": [{**SIM_DRIVER, "interval": "7s"}]}))
        common = ["--url", broker.url, "--sign-key", str(ops.private_path), "--rollouts", str(work / "rollouts")]
        cpu0, t1 = _cpu(), time.monotonic()
        code, out, cli_cpu = await _sg("config", "push", str(doc), "--group", "bench", "--wave-size", str(wave_size),
                                       *common)
        wall = time.monotonic() - t1
        gw_cpu = _cpu() - cpu0
        print(f"\n$ sensegate config push site.yaml --group bench --wave-size {wave_size}")
        print(out.rstrip())
        print(f"(exit status {code})\n")
        print(f"rollout to {n} gateways ({n - len(away)} online): {wall:.1f} s wall, operator's command "
              f"{cli_cpu:.2f} s CPU, the {n} gateways {gw_cpu:.2f} s CPU together")
        if away:
            rid = out.split()[1].rstrip(":")
            t2 = time.monotonic()
            await start_all(g for g in fleet if g.id in away)
            code, out, _ = await _sg("rollout", "status", rid, *common)
            print(f"\n$ sensegate rollout status {rid}   # after the {len(away)} came back "
                  f"({time.monotonic() - t2:.1f} s later)")
            print(out.rstrip())
            print(f"(exit status {code})")
    finally:
        await stop_all(fleet)
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--wave-size", type=int, default=10)
    p.add_argument("--offline", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    with tempfile.TemporaryDirectory(prefix="sensegate-fleet-bench-") as d:
        asyncio.run(run(a.gateways, a.wave_size, a.offline, Path(d)))


if __name__ == "__main__":
    main()
