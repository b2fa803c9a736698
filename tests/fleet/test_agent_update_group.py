"""An agent update rolled out to a group of three real gateway processes through a real mosquitto,
as docs/fleet.md walks an operator through it: a release that crashes on start stops the rollout
after the canary (which goes back by itself) and nothing reaches the others; then the release
.deb (made with dpkg-deb, as the package build does) goes to the canary and the rest in a wave,
and every gateway runs it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from gateway import __version__
from gateway.keys import init_key
from hil.mosquitto import Mosquitto
from tests.fleet.agentkit import (
    COUNTER,
    Unit,
    build_wheel,
    crash_on_start,
    deb_of,
    gateway_config,
    health,
    until_version,
)
from tests.fleet.helpers import ops_key, sg

GROUP = ["gw-a", "gw-b", "gw-c"]


async def test_an_agent_update_to_a_group_stops_at_a_crashing_canary_then_a_good_deb_goes_out_in_a_wave(
        tmp_path: Path, broker: Mosquitto) -> None:
    _, _, ops_pub = ops_key(tmp_path)
    release = init_key(tmp_path / "release", name="release")
    units = [Unit(Path(sys.executable),
                  gateway_config(tmp_path, gw, broker.url, ops_pub, release.public_path, [COUNTER]),
                  tmp_path / f"{gw}.log") for gw in GROUP]
    good, crash = await asyncio.gather(build_wheel(tmp_path, "0.9.1"), build_wheel(tmp_path, "0.9.2", crash_on_start))
    deb = await asyncio.to_thread(deb_of, good, tmp_path)
    common = ["--group", "lab", "--canary-gateways", "gw-a", "--wave-size", "2", "--url", broker.url,
              "--release-key", str(release.private_path), "--rollouts", str(tmp_path / "rollouts"),
              "--wave-timeout", "120s"]
    for u in units:
        u.start()
    try:
        await asyncio.gather(*(until_version(broker.url, gw, __version__) for gw in GROUP))

        r = await sg("agent", "update", str(crash), *common)
        out = r.stdout
        assert r.returncode == 1, out + r.stderr
        assert "canary         1 gateway(s) [gw-a] 0 ok, 1 failed (gw-a)" in out, out
        assert "gw-a: rolled back: version 0.9.2 did not come up healthy" in out, out
        assert "HALTED: stopped after the canary" in out and "2 not sent" in out, out
        a = await until_version(broker.url, "gw-a", __version__)
        assert a["agent"]["update"]["state"] == "rolled_back", a
        for gw in ("gw-b", "gw-c"):
            h = await health(broker.url, gw)
            assert h["version"] == __version__ and not h["agent"].get("update"), f"{gw} got nothing: {h}"

        r = await sg("agent", "update", str(deb), *common)
        out = r.stdout
        assert r.returncode == 0, out + r.stderr
        assert "canary         1 gateway(s) [gw-a] 1 ok" in out, out
        assert "wave 1/1       2 gateway(s) [gw-b .. gw-c] 2 ok" in out, out
        assert "DONE: 3 ok, 0 failed" in out, out
        rows = await asyncio.gather(*(until_version(broker.url, gw, "0.9.1") for gw in GROUP))
        assert all(h["agent"]["release"] == "0.9.1" and h["agent"]["update"]["state"] == "healthy"
                   and h["drivers_up"] == 1 for h in rows), rows
        assert all("releases/0.9.1/venv" in u.cmdline() for u in units)
    finally:
        for u in units:
            with contextlib.suppress(Exception):
                await u.stop()
