"""Opening the buffer file: only SQLite's verdict of corruption sets a file aside.

A full disk, a lock or a missing permission at start leaves the buffer where it is: the daemon
says so in one line, keeps readings in memory and delivers everything once the file opens. A
file that really is corrupt is set aside; what SQLite can still read is recovered and sent
under its own numbers, and what it cannot is declared lost in the next batch. Real files, a
real tmpfs, the real daemon, a real broker and the verifying receiver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.doctor import Environment, check_backlog, check_disk, check_set_aside
from gateway.driver_api import Reading
from gateway.store import RETRY_OPEN, Store, backlog, salvage
from gateway.store.db import SCHEMA
from hil.faults import DiskFull
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import REGISTRY, MqttReceiver, batcher_for, make_config, sim_daemon_config

T0 = 1_795_000_000_000_000_000
ROOT = Path(__file__).parents[2]


class Daemon:
    """``sensegate run`` as a child process, its log lines collected."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "-c", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace"))

    async def wait_line(self, text: str, within: float = 30.0) -> str:
        async with asyncio.timeout(within):
            while True:
                hit = next((ln for ln in self.lines if text in ln), None)
                if hit is not None:
                    return hit
                await asyncio.sleep(0.05)

    async def stop(self) -> int:
        assert self.proc is not None and self._reader is not None
        self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        await self._reader
        return code


async def _until(cond: Any, within: float, what: str) -> None:
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 (state in files and the receiver)
            await asyncio.sleep(0.1)


def _waiting(db: Path) -> int:
    try:
        return backlog(db)[0]
    except sqlite3.Error:
        return 0


# -- a full disk at start ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(bool(DiskFull.unavailable_reason()), reason=DiskFull.unavailable_reason() or "-")
async def test_a_full_disk_at_start_keeps_the_buffer_and_delivers_everything_once_there_is_room(
        tmp_path: Path, broker: Mosquitto) -> None:
    with DiskFull(tmp_path / "state", size="4m") as disk:
        config = sim_daemon_config(tmp_path, broker.url, "gw-disk")
        db = tmp_path / "state" / "buffer.db"
        await asyncio.to_thread(broker.stop)  # run 1: nothing can be delivered, the buffer fills
        first = Daemon(config)
        await first.start()
        await _until(lambda: _waiting(db) >= 200, 30, "readings stored by run 1")
        assert await first.stop() == 0
        held = backlog(db)[0]

        disk.fill()  # the state directory is full, the buffer holds undelivered readings
        cfg = load_config(config, REGISTRY)  # doctor says what it finds, never just "cannot inspect"
        assert check_disk(cfg, Environment()).status == "fail"
        f = check_backlog(cfg, Environment())
        assert f"{held} reading(s) waiting" in f.message or (
            "the disk is full" in f.message and "free space" in f.fix), f
        await asyncio.to_thread(broker.start)
        rx = MqttReceiver(broker.url, tmp_path / "state/keys/device.pub.pem", gateway="gw-disk")
        async with rx.running():
            second = Daemon(config)
            await second.start()
            line = await second.wait_line("buffer: cannot open")
            assert "the disk is full" in line
            full_from = time.time_ns()
            await asyncio.sleep(2 * RETRY_OPEN)  # it keeps trying, and keeps running, quietly
            assert second.proc is not None and second.proc.returncode is None
            assert not list(db.parent.glob("buffer.db.corrupt-*")), "a full disk never sets the buffer aside"
            assert rx.rx.summary().batches == 0
            full_to = time.time_ns()

            disk.free()
            await second.wait_line("opened after")
            # everything of run 1, and what was emitted while the disk was full, arrives in order
            await _until(lambda: any(r.ts_ns > full_to for r in rx.readings), 30, "readings after the full disk")
            stored = await asyncio.to_thread(_next_seq, db)  # every number up to here arrives, in order
            await rx.wait_numbered(stored - 1, within=60)
            assert await second.stop() == 0
        text = "".join(second.lines)
        assert "Traceback" not in text, text
        said = [ln for ln in second.lines if "cannot open" in ln]
        assert len(said) == 1, f"said once, in one line: {said}"
        s = rx.rx.summary()
        assert (s.gaps, s.dropped, s.chain_breaks, s.bad_signatures, s.malformed) == (0, 0, 0, 0, 0), s.to_json()
        assert {r.seq for r in rx.readings} >= set(range(1, held + 1)), "every reading of run 1 was delivered"
        assert any(full_from <= r.ts_ns <= full_to for r in rx.readings), "readings kept in memory were delivered"


# -- other reasons a file cannot be opened -----------------------------------------------------


def _store(state: Path) -> tuple[Store, Any]:
    cfg = make_config(state, batch={"max_readings": 50})
    c = cfg.config
    return Store(state / "buffer.db", c.gateway.id, c.buffer, c.batch), batcher_for(cfg)


async def _stored(state: Path, n: int) -> None:
    store, _ = _store(state)
    await store.open()
    for i in range(n):
        store.put(Reading("gw-test", "n", T0 + i, i))
    await store.commit()
    await store.close()


async def test_a_locked_file_is_waited_for_not_set_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "s"
    await _stored(state, 30)
    other = sqlite3.connect(state / "buffer.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    store, batcher = _store(state)
    try:
        await store.open()
        assert not store.opened.is_set()
        assert "is locked by another process" in caplog.text
        store.put(Reading("gw-test", "n", T0 + 99, 99))
        other.execute("ROLLBACK")
        async with asyncio.timeout(10 + 2 * RETRY_OPEN):
            await store.opened.wait()
        assert not list(state.glob("buffer.db.corrupt-*"))
        batch = await store.make_batch(batcher)
        assert batch is not None and (batch.first_seq, batch.last_seq) == (1, 31), "nothing lost, nothing renumbered"
    finally:
        other.close()
        await store.close()


def test_a_file_the_daemon_may_not_open_is_reported_in_plain_words_and_left_alone(tmp_path: Path) -> None:
    """EACCES, for real: the store opened by a process without the right to enter the state
    directory (root with CAP_DAC_OVERRIDE and friends dropped, as a service user would be)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("dropping capabilities needs root and setpriv (util-linux)")
    state = tmp_path / "state"
    state.mkdir()
    (state / "buffer.db").write_bytes(b"")
    os.chown(state, 65534, 65534)
    state.chmod(0o700)
    script = (
        "import asyncio, logging, sys\n"
        "from pathlib import Path\n"
        "from gateway.config.schema import BatchSection, BufferSection\n"
        "from gateway.store import Store\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "async def main():\n"
        f"    s = Store(Path({str(state / 'buffer.db')!r}), 'gw-test', BufferSection(), BatchSection())\n"
        "    await s.open()\n"
        "    print('opened' if s.opened.is_set() else 'waiting')\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                           sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "permission denied" in done.stdout and done.stdout.strip().endswith("waiting"), done.stdout
    assert sorted(p.name for p in state.iterdir()) == ["buffer.db"], "nothing set aside"


# -- a file that really is corrupt -----------------------------------------------------------


def _damage(db: Path) -> tuple[int, int]:
    """Overwrite one leaf page of the segments table with garbage (SQLite sees it) and the
    payload of one segment's overflow page elsewhere (only decoding the records sees it)."""
    conn = sqlite3.connect(db)
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'segments' AND pagetype = 'leaf' ORDER BY pageno")]
    overflow = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'segments' AND pagetype = 'overflow' ORDER BY pageno")]
    conn.close()
    assert len(leaves) >= 3 and overflow, (leaves, overflow)
    leaf = leaves[len(leaves) // 2]
    far = next(p for p in reversed(overflow) if abs(p - leaf) > 3)
    with open(db, "r+b") as f:
        f.seek((leaf - 1) * size)
        f.write(b"\xa5" * size)
        f.seek((far - 1) * size + 4 + size // 2)  # past the next-page pointer
        f.write(b"\x00\xff" * 8)
    return leaf, far


@pytest.mark.slow
async def test_a_corrupt_buffer_is_set_aside_and_what_it_holds_is_recovered_or_declared(
        tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sensegate")
    config = sim_daemon_config(tmp_path, broker.url, "gw-disk")
    db = tmp_path / "state" / "buffer.db"
    rx = MqttReceiver(broker.url, tmp_path / "state/keys/device.pub.pem", gateway="gw-disk")
    async with rx.running():
        first = Daemon(config)  # run 1: delivers for a while, then the broker goes away
        await first.start()
        await _until(lambda: rx.rx.summary().readings >= 100, 30, "readings delivered by run 1")
        await asyncio.to_thread(broker.stop)
        await _until(lambda: _waiting(db) >= 1500, 60, "a backlog of several pages")
        assert await first.stop() == 0
        held = backlog(db)[0]
        _damage(db)
        await asyncio.to_thread(broker.start)

        second = Daemon(config)  # run 2 finds the damage
        await second.start()
        await second.wait_line("recovered")
        aside = [p for p in db.parent.glob("buffer.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
        assert len(aside) == 1
        report = json.loads(salvage.report_path(aside[0]).read_text())
        assert report["stream"] == "kept" and report["recovered_readings"] > 0 and report["lost_readings"] > 0
        assert report["recovered_readings"] + report["lost_readings"] >= held
        next_seq = await asyncio.to_thread(_next_seq, db)
        await rx.wait_numbered(next_seq - 1, within=60)
        assert await second.stop() == 0
    assert "Traceback" not in "".join(second.lines)
    s = rx.rx.summary()
    assert s.gaps == 0 and s.chain_breaks == 0 and s.bad_signatures == 0 and s.malformed == 0, s.to_json()
    lost = {x for a, b in report["lost"] for x in range(a, b + 1)}
    got = {r.seq for r in rx.readings}
    # a lost number the receiver already had (sent, not acknowledged before the broker went) is
    # not counted as dropped; every other number was received
    assert s.drop_reasons == {"buffer_corrupt": len(lost - got)} and lost - got, "what could not be read is declared"
    assert set(range(1, next_seq)) <= got | lost, "the rest was delivered"

    print(f"held {held}: recovered {report['recovered_readings']}, lost {report['lost']}, "
          f"declared dropped {len(lost - got)}, unreadable {report['unreadable']}")
    env = Environment(connect_timeout=2.0)  # doctor names the file and what became of what it held
    cfg = load_config(config, REGISTRY)
    found = check_set_aside(cfg, env)
    assert len(found) == 1 and found[0].status == "warn" and aside[0].name in found[0].message
    assert f"{report['recovered_readings']} recovered and sent" in found[0].message
    assert f"{report['lost_readings']} unreadable and declared lost" in found[0].message
    assert check_backlog(cfg, env).status == "ok"


def _next_seq(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
    finally:
        conn.close()


async def test_damage_inside_a_segment_that_sqlite_cannot_see_is_declared_not_sent(tmp_path: Path) -> None:
    """Recovery checks every segment's records: garbage SQLite reads back without complaint is
    declared lost, never signed as readings."""
    state = tmp_path / "s"
    store, _ = _store(state)
    await store.open()
    for k in range(6):
        for i in range(20):
            store.put(Reading("gw-test", "n", T0 + k * 100 + i, "x" * 60 + str(i)))
        await store.commit()
    await store.close()
    conn = sqlite3.connect(state / "buffer.db")
    conn.execute("UPDATE segments SET data = X'00' || substr(data, 2) WHERE first_seq = 41")  # a sound file
    conn.commit()
    conn.close()
    found = salvage.read(state / "buffer.db")
    assert [s[0] for s in found.segments] == [1, 21, 61, 81, 101], "segment 41-60 fails its check"
    fresh = tmp_path / "new.db"
    conn = sqlite3.connect(fresh, isolation_level=None)
    conn.executescript(SCHEMA)
    report = salvage.Report("x", "now", "test")
    salvage.restore_sync(conn, found, "gw-test", report)
    assert report.lost == [[41, 60]] and report.recovered_readings == 100
    assert conn.execute("SELECT first_seq, last_seq, reason FROM drops").fetchall() == [(41, 60, "buffer_corrupt")]
    conn.close()


def test_doctor_names_a_file_set_aside_by_an_earlier_sensegate(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "s")
    (tmp_path / "s" / "buffer.db.corrupt-20250101T000000").write_bytes(b"junk")
    (tmp_path / "s" / "buffer.db.corrupt-20250101T000000-wal").write_bytes(b"junk")
    found = check_set_aside(cfg, Environment())
    assert len(found) == 1 and found[0].status == "warn"
    assert "buffer.db.corrupt-20250101T000000 was set aside as corrupt by an earlier sensegate" in found[0].message
    assert "sudo rm" in found[0].fix
