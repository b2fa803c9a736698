"""A fleet on this machine for the end-to-end tests: real gateway daemons and `sensegate ingest`
workers as child processes (so they can be killed with -9), against a broker and a database
started by the test. What the gateways produced is read from their own buffers after a clean
stop; what was stored is read from the database with its own client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.ingest.ledger import StreamLedger
from gateway.ingest.stores import open_storage
from gateway.keys import init_key
from gateway.mqtt import MqttError, MqttSession, MqttSettings

PYTHON_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


class Proc:
    """A child process with its log file; ``kill`` is kill -9, ``stop`` is SIGTERM and a wait."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: ASYNC230, SIM115 (a local file, opened once per start)
        try:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=out, stderr=out, env=PYTHON_ENV)
        finally:
            out.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_log(self, needle: str, within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while needle not in self.text():
                if not self.alive:
                    raise AssertionError(f"{self.argv[3:5]} exited:\n{self.text()[-3000:]}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, within: float = 30.0) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(within):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise AssertionError(f"did not stop within {within}s:\n{self.text()[-3000:]}") from None
        assert proc.returncode is not None
        return proc.returncode


class Gateway(Proc):
    """`sensegate run` with the sim driver publishing to ``url`` (MQTT 3.1.1, QoS 1)."""

    def __init__(self, root: Path, gateway: str, url: str, interval: str = "20ms", heartbeat: float = 60.0) -> None:
        self.gateway = gateway
        self.state = root / gateway
        init_key(self.state / "keys")
        self.pub = self.state / f"{gateway}.pub.pem"  # what provisioning hands ops
        shutil.copy(self.state / "keys" / "device.pub.pem", self.pub)
        cfg = {
            "gateway": {"id": gateway, "state_dir": str(self.state)},
            "uplinks": [{"type": "mqtt", "url": url, "protocol": "3.1.1", "reconnect_max": 2}],
            "batch": {"max_age": "100ms"},
            "metrics": {"status_interval": heartbeat},
            "drivers": [{"driver": "sim", "name": "sim", "interval": interval, "jitter": 0,
                         "points": [{"name": "n", "pattern": "counter"}, {"name": "t", "unit": "Cel"}]}],
        }
        config = self.state / "gw.yaml"
        config.write_text(yaml.safe_dump(cfg))
        super().__init__([sys.executable, "-m", "gateway", "run", "-c", str(config)], self.state / "daemon.log")

    def produced(self) -> tuple[int, int, int]:
        """(stream, highest reading number issued, readings not yet delivered), from the buffer
        after a stop."""
        db = sqlite3.connect(self.state / "buffer.db")
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            left = db.execute("SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments").fetchone()[0]
        finally:
            db.close()
        return int(meta["stream"]), int(meta["next_seq"]) - 1, int(left)

    async def connected(self, times: int = 1, within: float = 60.0) -> None:
        """Until the daemon's uplink has connected ``times`` times in all."""
        async with asyncio.timeout(within):
            while self.text().count("connected to") < times:  # noqa: ASYNC110 (a log file: no event to wait on)
                await asyncio.sleep(0.1)

    async def stop_delivered(self, tries: int = 4) -> tuple[int, int]:
        """Stop cleanly; while readings are left undelivered (a broker that came back late), run
        again until they are out, as a gateway started the next day would. (stream, last issued)."""
        for _ in range(tries):
            assert await self.stop() == 0, self.text()[-2000:]
            stream, last, left = self.produced()
            if not left:
                return stream, last
            await self.start()
            await self.connected(self.text().count("connected to") + 1)
            await asyncio.sleep(3)
        raise AssertionError(f"{self.gateway}: {left} readings still undelivered after {tries} runs")


class Ingest(Proc):
    """`sensegate ingest` as a worker process."""

    def __init__(self, root: Path, name: str, db: str, broker: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__([sys.executable, "-m", "gateway", "ingest", "--db", db, "--broker", broker,
                          "--fetch", "32", "--log-level", "info"], root / f"{name}.log")
        self.name = name

    async def start(self) -> Ingest:
        await super().start()
        return self

    async def ready(self, within: float = 60.0) -> Ingest:
        await self.wait_log("ingest: taking batches", within)
        return self


async def fleet_cli(*args: str) -> tuple[int, str]:
    """`sensegate fleet ...` as ops run it; (exit status, output)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "fleet", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def ledgers(db: str) -> dict[str, StreamLedger]:
    storage = open_storage(db)
    await storage.open()
    try:
        return {led.gateway: led for led in await storage.ledgers()}
    finally:
        await storage.close()


async def wait_complete(db: str, want: dict[str, tuple[int | None, int]],
                        within: float = 60.0) -> dict[str, StreamLedger]:
    """Until every gateway's ledger accounts for every number it issued (stream None: any stream),
    or the time is up."""
    got: dict[str, StreamLedger] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                got = await ledgers(db)
                if all(g in got and st in (None, got[g].stream) and got[g].last_seq >= last and not got[g].missing
                       for g, (st, last) in want.items()):
                    return got
                await asyncio.sleep(0.5)
    return got


def query(db: str, sql: str) -> list[tuple[Any, ...]]:
    """Read what the ingest stored, with the database's own client."""
    if db.startswith("sqlite:"):
        conn = sqlite3.connect(db.removeprefix("sqlite:"))
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(db) as c:
        return c.execute(sql).fetchall()  # type: ignore[arg-type]


@dataclass
class Verdict:
    gateway: str
    issued: int
    rows: int
    distinct: int
    led: StreamLedger


def check_exactly_once(db: str, want: dict[str, tuple[int, int]], got: dict[str, StreamLedger]) -> list[Verdict]:
    """Every number a gateway issued is stored once, or declared; the rows equal the ledger."""
    counts = {g: (n, d) for g, n, d in query(db, "SELECT gateway, count(*), count(DISTINCT seq) FROM readings "
                                                 "GROUP BY gateway")}
    out = []
    for g, (stream, last) in sorted(want.items()):
        assert g in got, f"{g}: no ledger at all"
        led = got[g]
        rows, distinct = counts.get(g, (0, 0))
        v = Verdict(g, last, rows, distinct, led)
        assert led.stream == stream
        assert rows == distinct == led.readings, f"{g}: every reading stored once ({rows} rows, {distinct} numbers)"
        assert led.missing == 0, f"{g}: missing {led.missing_ranges()[:5]}"
        assert led.chain_breaks == 0 and led.conflicts == 0, f"{g}: chain {led.chain_breaks}/{led.conflicts}"
        assert led.readings + led.dropped + led.skipped == last, \
            f"{g}: {led.readings} received + {led.dropped} dropped + {led.skipped} skipped != {last} issued"
        out.append(v)
    return out


async def publish(url: str, topic: str, payload: bytes, within: float, client_id: str = "test-pub") -> bool:
    """One QoS 1 publish on a fresh MQTT 3.1.1 connection; True when the PUBACK came in time."""
    acked = asyncio.Event()
    session = MqttSession(MqttSettings.from_url(url, client_id=client_id, protocol="3.1.1"),
                          on_publish=lambda mid: acked.set())
    try:
        await session.connect(within=within)
        session.client.publish(topic, payload, qos=1)
        done = asyncio.ensure_future(acked.wait())
        closed = asyncio.ensure_future(session.closed.wait())
        await asyncio.wait({done, closed}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        for f in (done, closed):
            f.cancel()
        await asyncio.gather(done, closed, return_exceptions=True)
        return acked.is_set()
    except MqttError:
        return False
    finally:
        await session.close()


async def publish_until_acked(url: str, topic: str, payload: bytes, within: float = 60.0) -> int:
    """Publish as a gateway does: again on a new connection until a PUBACK comes; returns the tries."""
    async with asyncio.timeout(within):
        tries = 1
        while not await publish(url, topic, payload, within=5):
            tries += 1
        return tries


async def simulate_cli(*args: str, within: float = 180.0) -> dict[str, Any]:
    """`sensegate fleet simulate ... --json` as a user runs it; its summary."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "fleet", "simulate", *args, "--json",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-3000:]
    summary: dict[str, Any] = json.loads(out)
    return summary


def check_against_simulator(db: str, summary: dict[str, Any], got: dict[str, StreamLedger]) -> None:
    """Each simulated gateway's ledger shows what it issued: received, declared dropped, skipped
    after unclean stops, missing (its heartbeats taken at their word at once: no grace); every
    reading stored once; every chain link sound."""
    counts = {g: (n, d) for g, n, d in query(db, "SELECT gateway, count(*), count(DISTINCT seq) FROM readings "
                                                 "GROUP BY gateway")}
    for p in summary["gateways"]:
        g, want = p["gateway"], p["expected"]
        led = got[g]
        assert led.stream == p["stream"], g
        missing = sum(b - a + 1 for a, b in led.missing_ranges(grace=0))  # every heartbeat's claim due now
        assert (led.readings, led.dropped, led.skipped, missing) == \
            (want["received"], want["dropped"], want["skipped"], want["missing"]), (g, p, led)
        assert counts.get(g) == (led.readings, led.readings), (g, counts.get(g), led.readings)
        assert led.chain_ok, (g, led.chain_breaks, led.conflicts)
        assert led.duplicates >= p["resent"], (g, led.duplicates, p["resent"])
        assert led.restarts == want["restarts"], (g, led.restarts, want)
