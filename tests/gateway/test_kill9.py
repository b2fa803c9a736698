"""`kill -9` the real daemon at random moments: the receiver must find no gap and a sound chain,
and every reading number either delivered once or declared skipped after the unclean stop."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver
from tests.gateway.helpers import sim_daemon_config as _config

KILLS = int(os.environ.get("SENSEGATE_KILLS", "20"))


async def _daemon(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "-c", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


@pytest.mark.slow
async def test_kill_dash_nine_loop_delivers_or_declares_every_number(tmp_path: Path, broker: Mosquitto) -> None:
    config = _config(tmp_path, broker.url)
    rng = random.Random(9)
    rx = MqttReceiver(broker.url, tmp_path / "state/keys/device.pub.pem", gateway="gw-kill")
    async with rx.running():
        for run in range(1, KILLS + 1):
            proc = await _daemon(config)
            await rx.wait_boot(run)  # this run is up and delivering batches of its own
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # then die at a random point
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        proc = await _daemon(config)  # the last run ends cleanly and flushes
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        db = sqlite3.connect(tmp_path / "state/buffer.db")
        next_seq = int(db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()[0])
        left = db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
        boot = int(db.execute("SELECT value FROM meta WHERE key='boot'").fetchone()[0])
        db.close()
        assert left == 0, "a clean stop delivers everything committed"
        await rx.wait_numbered(next_seq - 1, within=20)
    s = rx.rx.summary()
    assert s.gaps == 0 and s.gap_ranges == []
    assert s.chain_breaks == 0 and s.bad_signatures == 0 and s.malformed == 0
    assert s.dropped == 0, s.drop_reasons
    seqs = [r.seq for r in rx.readings]
    assert len(seqs) == len(set(seqs)) == s.readings, "no reading was delivered twice as new"
    assert s.readings + s.skipped == next_seq - 1, "every number was received or declared skipped"
    skipped = set(range(1, next_seq)) - set(seqs)
    assert {x for st in rx.rx.streams.values() for a, b in st.unclean.r for x in range(a, b + 1)} >= skipped
    assert boot == KILLS + 1, "every run started and counted its boot"
    assert s.restarts == KILLS
    print(f"{KILLS} kills: {s.readings} readings received, {s.skipped} numbers skipped after the kills")
