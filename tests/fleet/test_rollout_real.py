"""A rollout to a group of 20 real gateway daemons (each `sensegate run` in its own process, with
its buffer, signed batches and device key) and one broken gateway, through a real mosquitto:
the broken gateway is the canary, rolls back, and the rollout stops there with its reason; no
real gateway got the document. `rollout resume` then takes it to the 20 in waves, and `rollout
rollback` puts every one of them back on the config it ran before."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key
from gateway.testing.simgateway import SIM_DRIVER, SimGateway
from hil.mosquitto import Mosquitto
from tests.fleet.helpers import SG, ops_key, sg

REAL = 20  # real daemons this 2-core machine runs beside the test (about 35 MB and 1 s of CPU to start each)
GROUP = "district-9"


def real_config(tmp: Path, gw: str, url: str, pub: Path) -> Path:
    init_key(tmp / gw / "keys")
    doc = {"gateway": {"id": gw, "state_dir": str(tmp / gw)},
           "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 2}],
           "remote": {"ops_keys": [str(pub)], "groups": [GROUP], "uplink_timeout": "10s", "driver_timeout": "10s"},
           "metrics": {"status_interval": "1h"},
           "drivers": [dict(SIM_DRIVER)]}
    path = tmp / f"{gw}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def fleet_json(url: str) -> dict[str, Any]:
    r = await sg("fleet", "status", "--url", url, "--group", GROUP, "--json")
    return {g["gateway"]: g for g in json.loads(r.stdout)["gateways"]}


async def test_a_broken_canary_stops_the_rollout_then_resume_and_rollback_on_20_real_daemons(
        tmp_path: Path, broker: Mosquitto) -> None:
    _, key_file, pub = ops_key(tmp_path)
    names = [f"gw-r{i:02d}" for i in range(REAL)]
    procs: list[asyncio.subprocess.Process] = []
    lab = SimGateway(tmp_path / "lab", "gw-lab", broker.url, [str(pub)], [GROUP], broken=True, drivers=[])
    common = ["--url", broker.url, "--sign-key", str(key_file), "--rollouts", str(tmp_path / "rollouts")]
    try:
        for gw in names:
            procs.append(await asyncio.create_subprocess_exec(
                *SG, "run", "-c", str(real_config(tmp_path, gw, broker.url, pub)),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=os.environ.copy()))
        await lab.start()
        seen: dict[str, Any] = {}

        async def all_online() -> bool:
            seen.update(await fleet_json(broker.url))
            return len(seen) == REAL + 1 and all(g["state"] == "online" and g["drivers_up"] == 1
                                                  for n, g in seen.items() if n != "gw-lab")

        for _ in range(60):
            if await all_online():
                break
            await asyncio.sleep(1)
        assert await all_online(), {n: (g["state"], g["drivers_up"], g.get("down")) for n, g in seen.items()}

        doc = tmp_path / "two-meters.yaml"
        doc.write_text(yaml.safe_dump({"uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 2}],
                                       "metrics": {"status_interval": "1h"},
                                       "drivers": [SIM_DRIVER, {**SIM_DRIVER, "name": "meter-2"}]}))
        r = await sg("config", "push", str(doc), "--group", GROUP, "--canary-gateways", "gw-lab", "--wave-size", "10",
                     "--wave-timeout", "60s", "--revision", "700", *common)
        out = r.stdout
        assert r.returncode == 1, out + r.stderr
        assert "canary         1 gateway(s) [gw-lab] 0 ok, 1 failed (gw-lab)" in out, out
        assert "HALTED: stopped after the canary: 1 failure(s)" in out, out
        assert "gw-lab: rolled back: driver instance" in out and "sensegate_sim_hardware_lib" in out, out
        assert "20 not sent" in out and "sensegate rollout resume" in out
        rid = out.split()[1].rstrip(":")
        now = await fleet_json(broker.url)
        assert all(now[n]["source"] == "local" for n in names), "no real gateway got it"
        state = json.loads((tmp_path / "rollouts" / f"{rid}.json").read_text())
        assert state["state"] == "halted" and sum(e["state"] == "waiting" for e in state["gateways"].values()) == 20

        r = await sg("rollout", "resume", rid, *common)
        assert r.returncode == 1, r.stdout + r.stderr  # done, with the canary's failure on record
        assert "wave 1/2      10 gateway(s) [gw-r00 .. gw-r09] 10 ok" in r.stdout, r.stdout
        assert "wave 2/2      10 gateway(s) [gw-r10 .. gw-r19] 10 ok" in r.stdout, r.stdout
        assert "DONE: 20 ok, 1 failed (gw-lab)" in r.stdout, r.stdout
        now = await fleet_json(broker.url)
        assert all(now[n]["revision"] == 700 and now[n]["drivers_up"] == 2 for n in names), now

        r = await sg("rollout", "rollback", rid, *common)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "rollback of " + rid in r.stdout and "DONE: 20 ok, 0 failed" in r.stdout, r.stdout
        for _ in range(20):
            now = await fleet_json(broker.url)
            if all(now[n]["source"] == "local" and now[n]["drivers_total"] == 1 for n in names):
                break
            await asyncio.sleep(0.5)
        assert all(now[n]["source"] == "local" and now[n]["drivers_total"] == 1 for n in names), now
        st = await sg("rollout", "status", rid, *common)
        assert "rolled back by rollback-" in st.stdout, st.stdout
    finally:
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 40) for p in procs]
        await lab.stop()
    assert codes == [0] * REAL, codes
