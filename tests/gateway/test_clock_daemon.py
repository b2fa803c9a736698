"""The real daemon on a gateway that booted a day behind (libfaketime, as the rig does it) until
NTP steps its clock forward and declares it synchronised: at the receiver every reading taken
before the step is flagged, then re-dated to its true time; nothing is lost or renumbered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from hil.faults import ClockJump
from hil.mosquitto import Mosquitto
from hil.rig import RigReceiver
from tests.gateway.helpers import sim_daemon_config

S = 10**9
DAY = 86_400 * S


async def test_a_gateway_that_boots_a_day_behind_is_re_dated_once_ntp_steps_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    why = ClockJump.unavailable_reason()
    if why:
        pytest.fail(why + ": hil/system-deps.sh installs it")
    clock = ClockJump(tmp_path, synchronised=False)
    clock.jump(-86_400)  # fake-hwclock's time after a day without power
    config = sim_daemon_config(tmp_path, broker.url, "gw-clock")
    rx = RigReceiver(broker.url, tmp_path / "state" / "keys" / "device.pub.pem", "gw-clock", client_id="clock-rx")
    await rx.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(config), env={**os.environ, **clock.env()},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        await rx.wait(lambda: len(rx.got) >= 300, within=30, what="readings on the day-behind clock")
        clock.jump(86_400)  # NTP steps the clock ...
        t = time.monotonic()
        await rx.wait(lambda: any(g.at >= t and abs(g.reading.ts_ns - time.time_ns()) < 5 * S for g in rx.got),
                      within=30, what="readings stamped by the stepped clock")
        clock.synchronise(True)  # ... and then declares it synchronised
        t = time.monotonic()
        await rx.wait(lambda: any(g.at >= t and g.synced for g in rx.got), within=30,
                      what="readings of a synchronised clock")
        behind = [g for g in rx.got if g.reading.ts_ns < time.time_ns() - DAY // 2]
        await rx.wait(lambda: all(g.fixed_ns is not None for g in behind), within=30, what="the re-dating")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await rx.stop()
    assert len(behind) >= 300
    for g in behind:  # taken before the step: flagged, and re-dated by the step (to within its precision)
        assert g.synced is False and g.fixed_ns is not None
        assert abs(g.fixed_ns - g.reading.ts_ns - DAY) < 50_000_000
        assert g.at_wall_ns - 5 * S <= g.fixed_ns <= g.at_wall_ns + S  # its true time: just before it arrived
    after = [g for g in rx.got if g.synced]
    assert after and all(g.fixed_ns is None and abs(g.reading.ts_ns - g.at_wall_ns) < 5 * S for g in after)
    s = rx.rx.summary()
    assert s.gaps == 0 and s.ok and s.clock_steps == 1, s.to_json()
    seqs = sorted(g.reading.seq for g in rx.got)
    assert seqs == list(range(1, len(seqs) + 1)), "nothing lost or renumbered"
    assert s.time_uncertain == s.time_redated == sum(1 for g in rx.got if g.synced is False)
