"""The gateway's signed health summary, as the fleet view reads it, through a real mosquitto and
the real daemon: what it carries, that it verifies against the gateway's bound key, that it and
the config status come back after the broker lost every retained message, that a vanished
gateway shows as offline with its last-seen time, and `sensegate fleet status` over all of it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from gateway.fleet.view import snapshot
from gateway.receiver.trust import KeyBindings
from gateway.remote.ops import Broker, push_config
from gateway.testing import free_port
from hil.mosquitto import Mosquitto
from tests.gateway.test_expect_absent import meter
from tests.gateway.test_remote_mqtt import SIM, bootstrap, connected, daemon, ops_key, until

SG = [sys.executable, "-m", "gateway"]


async def sg(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process, awaited (the daemon under test shares this loop)."""
    proc = await asyncio.create_subprocess_exec(*SG, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out.decode(), err.decode())


async def test_signed_health_in_the_fleet_view_survives_a_broker_that_lost_its_retained_messages(
        tmp_path: Path) -> None:
    m = Mosquitto(tmp_path / "mq", persistence=False)
    m.start()
    try:
        key, pub = ops_key(tmp_path)
        path = bootstrap(tmp_path, "gw-h1", m.url, pub, remote_groups=["district-7"],
                         metrics={"status_interval": "1h"})  # only connects and applies publish
        trust = KeyBindings.from_specs([f"gw-h1={tmp_path / 'gw-h1/keys/device.pub.pem'}"])
        b = Broker.from_url(m.url)
        local = yaml.safe_load(path.read_text())
        async with daemon(path) as d:
            await connected(d)
            doc = {"uplinks": local["uplinks"], "metrics": local["metrics"], "drivers": [SIM, meter(free_port())],
                   "health": {"expect_absent": ["meter"]}}
            rev, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-h1", within=30)
            assert answers.by_gateway["gw-h1"]["state"] == "applied"

            async def row() -> object:
                rows = (await snapshot(b)).rows(trust)
                return rows[0] if rows else None

            await until(lambda: d.pipeline.last_acked[0] > 0)  # type: ignore[union-attr]
            await d.health.publish()
            r = await row()
            assert r is not None and r.verified is True, r
            assert r.state == "online" and r.groups == ["district-7"] and r.version
            assert (r.revision, r.source) == (rev, "pushed")
            assert r.last_push is not None and r.last_push["state"] == "applied"
            assert r.absent == ["meter"] and r.drivers_total == 1 and r.drivers_up == 1 and not r.down
            assert r.buffered is not None and r.last_ack and r.last_ack_at
            assert r.clock_synced is not None and r.disk_free and r.disk_free > 0
            assert r.healthy

            m.restart()  # the broker comes back with nothing retained
            await until(lambda: d.pipeline is not None and d.pipeline.uplinks[0].connected)  # type: ignore[attr-defined]
            watch = await snapshot(b)
            for _ in range(50):
                if {"status", "health", "config"} <= set(watch.seen.get("gw-h1", {})) and \
                        "health" in watch.seen["gw-h1"]["status"]:
                    break
                watch = await snapshot(b, within=1)
            seen = watch.seen["gw-h1"]
            assert seen["config"]["state"] == "applied" and seen["config"]["revision"] == rev
            assert seen["config"]["republished"], "the config status came back, marked as sent again"
            r = watch.rows(trust)[0]
            assert r.verified is True and r.state == "online" and r.revision == rev

            proc = await sg("fleet", "status", "--url", m.url, "--trust",
                            f"gw-h1={tmp_path / 'gw-h1/keys/device.pub.pem'}", "--group", "district-7")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            lines = proc.stdout.splitlines()
            assert lines[0] == "group district-7" and lines[1].split()[:4] == ["GATEWAY", "STATE", "AGENT", "CONFIG"]
            assert lines[2].split()[:5] == ["gw-h1", "online", r.version, f"r{rev}", "pushed"], proc.stdout
            assert "1/1 up, 1 absent" in lines[2] and " yes" in lines[2]
            assert "1 gateway(s): 1 online, 1 healthy" in proc.stdout

            # a forged summary (another key) on the health topic is shown, not believed
            other = await sg("fleet", "status", "--url", m.url, "--json", "--trust",
                             f"gw-h1={tmp_path / 'ops/ops.pub.pem'}")
            assert other.returncode == 1
            gw = json.loads(other.stdout)["gateways"][0]
            assert isinstance(gw["verified"], str) and "not trusted" in gw["verified"], gw
        left = time.time()

        watch = await snapshot(b)
        r = watch.rows(trust)[0]
        assert r.state == "offline" and r.last_seen is not None and r.last_seen <= left, r
        proc = await sg("fleet", "status", "--url", m.url, "--state", "offline")
        assert proc.returncode == 1 and "gw-h1" in proc.stdout and "offline, seen" in proc.stdout, proc.stdout
    finally:
        m.stop()
