"""Rollouts to 100 simulated gateways, timed: what an operator sees, how long it takes, the broker's load.

    .venv/bin/python -m bench.fleet_rollout [--gateways 100] [--wave-size 10] [--offline 3] [--broken 3]

Starts a private mosquitto and N simulated gateways in this process (each the real daemon and
remote agent, without the buffer: gateway/testing/simgateway.py), then runs the real `sensegate`
ops commands in child processes, as an operator would, and prints their terminal output and the
figures of each step: wall time, CPU of the operator's command, of the gateways' process and of
mosquitto, and the messages and bytes through the broker (its $SYS counters).

1. A good config to the group, ``--offline K`` gateways stopped during the push and started again
   after it: `sensegate rollout status` then reports the rollout done.
2. A config that ``--broken B`` gateways cannot run (their package lacks the driver's library):
   pushed with ``--max-failures B-1``, the rollout stops by itself at the B-th failure, each named
   with its reason; `sensegate rollout rollback` then puts back the gateways that took it.

Figures only, no assertions (tests/fleet/test_rollout_sim.py and test_rollout_real.py are the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.testing.simgateway import SIM_DRIVER, SimGateway, broken_registry, start_all, stop_all
from hil.mosquitto import Mosquitto

SYS_TOPICS = ("messages/received", "messages/sent", "bytes/received", "bytes/sent", "retained messages/count")


@dataclass
class BrokerSample:
    """Mosquitto's CPU (from /proc) and counters (from $SYS, published every second here) at one moment."""

    cpu: float
    counters: dict[str, int]


async def sample(broker: Mosquitto) -> BrokerSample:
    """Read the broker's $SYS counters (retained, refreshed every sys_interval) and its CPU time."""
    got: dict[str, int] = {}
    full = asyncio.Event()

    def on_message(msg: Any) -> None:
        with contextlib.suppress(ValueError):
            got[msg.topic.removeprefix("$SYS/broker/")] = int(bytes(msg.payload))
        if len(got) == len(SYS_TOPICS):
            full.set()

    await asyncio.sleep(1.2)  # one sys_interval: the counters include what just happened
    session = MqttSession(MqttSettings.from_url(broker.url, client_id=f"bench-sys-{time.monotonic_ns()}"),
                          on_message=on_message)
    await session.connect()
    try:
        await session.subscribe_each([f"$SYS/broker/{t}" for t in SYS_TOPICS])
        with contextlib.suppress(TimeoutError):  # a counter not retained yet comes at the next sys_interval
            async with asyncio.timeout(5):
                await full.wait()
    finally:
        await session.close()
    if len(got) < len(SYS_TOPICS):
        raise RuntimeError(f"mosquitto's $SYS counters missing: {sorted(set(SYS_TOPICS) - set(got))}")
    assert broker.proc is not None
    return BrokerSample(_cpu_seconds(broker.proc.pid), got)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_line(a: BrokerSample, b: BrokerSample, broker: Mosquitto) -> str:
    """What the step cost the broker, between two samples (the sampling itself adds a few messages)."""
    d = {k: b.counters[k] - a.counters[k] for k in SYS_TOPICS[:4]}
    assert broker.proc is not None
    hwm = next((ln.split()[1] for ln in Path(f"/proc/{broker.proc.pid}/status").read_text().splitlines()
                if ln.startswith("VmHWM:")), "?")
    return (f"broker: {b.cpu - a.cpu:.2f} s CPU, {d['messages/received']} messages in "
            f"({d['bytes/received'] / 1024:.0f} KiB), {d['messages/sent']} out ({d['bytes/sent'] / 1024:.0f} KiB), "
            f"{b.counters['retained messages/count']} retained, {int(hwm) / 1024:.1f} MB peak RSS")


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


async def step(broker: Mosquitto, title: str, shown: str, *args: str) -> tuple[int, str]:
    """Run one ops command as the operator would and print what they saw and what it cost."""
    s0, cpu0, t0 = await sample(broker), _cpu(), time.monotonic()
    code, out, cli_cpu = await _sg(*args)
    wall, gw_cpu = time.monotonic() - t0, _cpu() - cpu0
    s1 = await sample(broker)
    print(f"\n$ {shown}")
    print(out.rstrip())
    print(f"(exit status {code})")
    print(f"{title}: {wall:.1f} s wall, operator's command {cli_cpu:.2f} s CPU, the gateways {gw_cpu:.2f} s CPU "
          f"together; {load_line(s0, s1, broker)}")
    return code, out


def spread(names: list[str], k: int, offset: int) -> list[str]:
    """k gateways spread over the fleet (so they fall in different waves)."""
    n = len(names)
    return [names[min(n - 1, int((i + 1) * n / (k + 1)) + offset)] for i in range(k)] if k else []


def site(url: str, interval: str) -> dict[str, Any]:
    return {"uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 2}], "metrics": {"status_interval": "1h"},
            "drivers": [{**SIM_DRIVER, "interval": interval}]}


async def run(n: int, wave_size: int, offline: int, broken: int, work: Path) -> None:
    broker = Mosquitto(work / "mosquitto", extra=["sys_interval 1"])
    broker.start()
    ops = init_key(work / "ops", name="ops")
    names = [f"gw-{i:03d}" for i in range(n)]
    away = set(spread(names, offline, -18))
    bad = [g for g in spread(names, broken, 3) if g not in away]
    # every gateway here shares one process's CPU: their health gates get the time a busy machine needs
    fleet = {g: SimGateway(work / "gws", g, broker.url, [str(ops.public_path)], ["bench"], uplink_timeout="30s",
                           driver_timeout="30s") for g in names}
    common = ["--url", broker.url, "--sign-key", str(ops.private_path), "--rollouts", str(work / "rollouts")]
    try:
        t0 = time.monotonic()
        await start_all(fleet.values())
        print(f"{n} simulated gateways up in {time.monotonic() - t0:.1f} s "
              f"(one process, {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak RSS)")

        print(f"\n## 1. a good config, {len(away)} gateway(s) offline during the push")
        await stop_all(fleet[g] for g in away)
        good = work / "site.yaml"
        good.write_text(yaml.safe_dump(site(broker.url, "7s")))
        _, out = await step(broker, f"rollout to {n} gateways ({n - len(away)} online)",
                            f"sensegate config push site.yaml --group bench --wave-size {wave_size}",
                            "config", "push", str(good), "--group", "bench", "--wave-size", str(wave_size), *common)
        if away:
            rid = out.split()[1].rstrip(":")
            t2 = time.monotonic()
            await start_all(fleet[g] for g in away)
            for _ in range(60):  # until the returned gateways' answers are all in
                if (await _sg("rollout", "status", rid, *common))[0] == 0:
                    break
                await asyncio.sleep(0.5)
            print(f"\n({len(away)} gateway(s) started again; all answers in {time.monotonic() - t2:.1f} s later)")
            await step(broker, "status", f"sensegate rollout status {rid}", "rollout", "status", rid, *common)

        if bad:
            print(f"\n## 2. a config {len(bad)} gateway(s) cannot run ({', '.join(bad)}: the sim driver's "
                  f"library is missing there), --max-failures {len(bad) - 1}")
            for g in bad:  # the same gateways, restarted with a package that lacks the library
                await fleet[g].stop()
                await fleet[g].start(broken_registry())
            worse = work / "site-2.yaml"
            worse.write_text(yaml.safe_dump(site(broker.url, "9s")))
            limit = len(bad) - 1
            shown = f"sensegate config push site-2.yaml --group bench --wave-size {wave_size} --max-failures {limit}"
            _, out = await step(
                broker, "rollout until it stopped", shown,
                "config", "push", str(worse), "--group", "bench", "--wave-size", str(wave_size),
                "--max-failures", str(limit), *common)
            rid = out.split()[1].rstrip(":")
            await step(broker, "rollback", f"sensegate rollout rollback {rid}", "rollout", "rollback", rid, *common)
    finally:
        await stop_all(fleet.values())
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--wave-size", type=int, default=10)
    p.add_argument("--offline", type=int, default=3)
    p.add_argument("--broken", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logging.basicConfig(level=logging.WARNING)  # the gateways' own log lines are not the operator's view
    with tempfile.TemporaryDirectory(prefix="sensegate-fleet-bench-") as d:
        asyncio.run(run(a.gateways, a.wave_size, a.offline, a.broken, Path(d)))


if __name__ == "__main__":
    main()
