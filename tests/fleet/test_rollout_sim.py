"""A wave rollout to 100 simulated gateways (each the real daemon and remote agent, in this
process) through a real mosquitto, driven by the real `sensegate config push --group` in a child
process: three gateways are offline and reported pending by name; they take the retained
document when they return, and `sensegate rollout status` then reports the rollout done."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gateway.testing.simgateway import SIM_DRIVER, SimGateway, start_all, stop_all
from hil.mosquitto import Mosquitto
from tests.fleet.helpers import ops_key, sg
from tests.gateway.helpers import until

N = 100
OFFLINE = ("gw-033", "gw-037", "gw-081")


async def test_a_wave_rollout_to_100_gateways_with_3_offline_completes_when_they_return(
        tmp_path: Path, broker: Mosquitto) -> None:
    _, key_file, pub = ops_key(tmp_path)
    fleet = [SimGateway(tmp_path / "gws", f"gw-{i:03d}", broker.url, [str(pub)], ["district-7"]) for i in range(N)]
    rollouts = tmp_path / "rollouts"
    common = ["--url", broker.url, "--sign-key", str(key_file), "--rollouts", str(rollouts)]
    try:
        await start_all(fleet)
        await until(lambda: all(g.daemon is not None and g.daemon.health.published for g in fleet), 60)
        await stop_all(g for g in fleet if g.id in OFFLINE)  # they were seen in the group, then went away

        doc = tmp_path / "site.yaml"
        doc.write_text(yaml.safe_dump({"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 2}],
                                       "metrics": {"status_interval": "1h"},
                                       "drivers": [{**SIM_DRIVER, "interval": "7s"}]}))
        r = await sg("config", "push", str(doc), "--group", "district-7", "--canary", "1", "--wave-size", "33",
                     "--wave-timeout", "90s", "--revision", "500", *common)
        assert r.returncode == 3, r.stdout + r.stderr
        out = r.stdout
        assert f"to group district-7: {N} gateway(s)" in out
        assert "canary         1 gateway(s) [gw-000] 1 ok" in out, out
        assert "WAITING: 97 ok, 0 failed, 3 pending (gw-033, gw-037, gw-081; offline" in out, out
        assert "32 ok, 1 pending, offline (gw-037)" in out, "a wave names its offline gateways"
        rid = out.split()[1].rstrip(":")
        for g in fleet:
            if g.id not in OFFLINE:
                assert g.daemon is not None and g.daemon.remote is not None and g.daemon.remote.revision == 500, g.id

        st = await sg("rollout", "status", rid, *common)
        assert st.returncode == 3 and "pending       3  gw-033, gw-037, gw-081" in st.stdout, st.stdout + st.stderr

        back = [g for g in fleet if g.id in OFFLINE]
        await start_all(back)
        await until(lambda: all(g.daemon is not None and g.daemon.remote is not None
                                and g.daemon.remote.revision == 500 for g in back), 60)
        st = await sg("rollout", "status", rid, "--json", *common)
        state = json.loads(st.stdout)
        assert st.returncode == 0 and state["state"] == "done", st.stdout + st.stderr
        assert {e["state"] for e in state["gateways"].values()} == {"ok"}
        listed = await sg("rollout", "list", "--rollouts", str(rollouts))
        assert rid in listed.stdout and "done" in listed.stdout
    finally:
        await stop_all(fleet)


async def test_an_interrupted_rollout_is_picked_up_where_it_stopped(tmp_path: Path, broker: Mosquitto) -> None:
    import asyncio
    import signal

    from tests.fleet.helpers import SG

    _, key_file, pub = ops_key(tmp_path)
    fleet = [SimGateway(tmp_path / "gws", f"gw-{i:02d}", broker.url, [str(pub)], ["street-4"]) for i in range(12)]
    rollouts = tmp_path / "rollouts"
    common = ["--url", broker.url, "--sign-key", str(key_file), "--rollouts", str(rollouts)]
    try:
        await start_all(fleet)
        await until(lambda: all(g.daemon is not None and g.daemon.health.published for g in fleet), 60)
        doc = tmp_path / "site.yaml"
        doc.write_text(yaml.safe_dump({"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 2}],
                                       "metrics": {"status_interval": "1h"},
                                       "drivers": [{**SIM_DRIVER, "interval": "9s"}]}))
        proc = await asyncio.create_subprocess_exec(
            *SG, "config", "push", str(doc), "--group", "street-4", "--wave-size", "1", "--revision", "900", *common,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        seen = []
        async with asyncio.timeout(60):
            while not any(line.startswith("wave 3/11") and "1 ok" in line for line in seen):
                seen.append((await proc.stdout.readline()).decode())
        proc.send_signal(signal.SIGINT)  # the operator's laptop lid closes mid-rollout
        _, err = await proc.communicate()
        assert proc.returncode == 130 and "sensegate rollout resume" in err.decode(), err
        rid = seen[0].split()[1].rstrip(":")
        state = json.loads((rollouts / f"{rid}.json").read_text())
        assert state["state"] == "interrupted", state["state"]
        took = sum(e["state"] == "ok" for e in state["gateways"].values())
        assert 4 <= took < 12 and sum(e["state"] == "waiting" for e in state["gateways"].values()) >= 1

        r = await sg("rollout", "resume", rid, *common)
        assert r.returncode == 0 and "DONE: 12 ok, 0 failed" in r.stdout, r.stdout + r.stderr
        assert all(g.daemon is not None and g.daemon.remote is not None and g.daemon.remote.revision == 900
                   for g in fleet)
    finally:
        await stop_all(fleet)
