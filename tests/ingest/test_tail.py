"""Tail loss: readings lost after the last batch that arrived. A gateway's signed heartbeat says
how far it has numbered; the ledger counts what it said had left the gateway and never arrived as
missing once the grace period has passed (pending before), and `fleet report` shows it. A forged
heartbeat changes nothing and is quarantined."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hil.mosquitto import Mosquitto
from tests.ingest.fleet import (
    Gateway,
    Ingest,
    check_against_simulator,
    fleet_cli,
    ledgers,
    query,
    simulate_cli,
    wait_complete,
)

pytestmark = pytest.mark.slow


async def _report(db: str, *args: str) -> tuple[int, dict[str, dict[str, object]], dict[str, object]]:
    status, out = await fleet_cli("report", "--db", db, "--json", *args)
    doc = json.loads(out)
    return status, {g["gateway"]: g for g in doc["gateways"]}, doc["fleet"]


async def _until_heartbeats(db: str, want: dict[str, int], within: float = 60.0) -> None:
    """Until every gateway's ledger holds a heartbeat that issued up to ``want[gateway]``."""
    async with asyncio.timeout(within):
        while True:
            got = await ledgers(db)
            if all(g in got and got[g].hb_last_seq >= n for g, n in want.items()):
                return
            await asyncio.sleep(0.3)


async def test_a_simulated_last_batch_that_never_reaches_the_broker_is_missing_after_the_grace(
        tmp_path: Path) -> None:
    keys, db = tmp_path / "keys", f"sqlite:{tmp_path / 'ingest.db'}"
    await simulate_cli("--gateways", "6", "--rate", "0", "--keys", str(keys), "--export-only")
    assert (await fleet_cli("enrol", "--db", db, str(keys)))[0] == 0
    with Mosquitto(tmp_path / "mqtt", extra=["max_queued_messages 100000"]) as broker:
        worker = await (await Ingest(tmp_path / "workers", "w0", db, broker.url).start()).ready()
        try:
            summary = await simulate_cli("--gateways", "6", "--rate", "300", "--seconds", "3", "--keys", str(keys),
                                         "--broker", broker.url, "--lose-tail", "2", "--forgers", "1",
                                         "--heartbeat", "0.5", "--drop-rate", "0.1", "--seed", "11")
            produced = {p["gateway"]: p for p in summary["gateways"]}
            lost = {g: p["lost"] for g, p in produced.items() if p["lost"]}
            assert len(lost) == 2 and all(lost.values()), lost
            await _until_heartbeats(db, {g: p["last_seq"] for g, p in produced.items()})
            whole = {g: (p["stream"], p["last_seq"] - p["lost"]) for g, p in produced.items()}
            got = await wait_complete(db, whole, within=60)
            check_against_simulator(db, summary, {g: led for g, led in got.items()})  # missing: the lost tails
            status, report, fleet = await _report(db, "--grace", "0")
            assert status == 1 and fleet["missing"] == sum(lost.values()), fleet
            for g, p in produced.items():
                r = report[g]
                assert r["missing"] == p["lost"] and r["pending"] == 0, (g, r)
                assert r["verdict"] == ("missing" if p["lost"] else "complete"), (g, r)
                if p["lost"]:
                    first = p["last_seq"] - p["lost"] + 1
                    assert r["missing_ranges"] == [{"stream": p["stream"], "first": first, "last": p["last_seq"]}]
            status, report, fleet = await _report(db, "--grace", "3600")  # within the grace: not yet missing
            assert status == 0 and fleet["missing"] == 0 and fleet["pending"] == sum(lost.values()), fleet
            victim = summary["forgers"][0]["claims"]
            assert report[victim]["heartbeat"]["issued"] == produced[victim]["last_seq"]  # the forged one did not count
            rows = query(db, "SELECT reason, count(*) FROM quarantine GROUP BY 1 ORDER BY 1")
            assert dict(rows).get("bad_heartbeat") == summary["totals"]["forged_heartbeats"] == 1, rows
            status, text = await fleet_cli("report", "--db", db, "--grace", "0")
            line = next(x for x in text.splitlines() if x.startswith(next(iter(lost))))
            assert line.split()[4] == str(next(iter(lost.values()))) and line.endswith("missing"), text
        finally:
            assert await worker.stop() == 0, worker.text()[-2000:]


async def test_a_daemons_tail_dropped_by_the_broker_shows_as_missing(tmp_path: Path) -> None:
    """A real gateway daemon; the ingest is away and mosquitto keeps only 5 messages for it
    (``max_queued_messages``), acknowledging and silently dropping the rest. Without the
    heartbeat the ledger would call the gateway complete up to its fifth batch; with it, once
    the gateway stopped cleanly (its last heartbeat is retained), every number it handed to the
    broker and that never arrived is missing."""
    db = f"sqlite:{tmp_path / 'ingest.db'}"
    with Mosquitto(tmp_path / "mqtt", extra=["max_queued_messages 5"]) as broker:
        gw = Gateway(tmp_path / "gw", "gw-tail", broker.url, heartbeat=0.5)
        assert (await fleet_cli("enrol", "--db", db, str(gw.pub)))[0] == 0
        worker = await (await Ingest(tmp_path / "workers", "w0", db, broker.url).start()).ready()
        assert await worker.stop() == 0  # its persistent session stays: mosquitto queues for it, up to 5
        await gw.start()
        await gw.connected()
        await asyncio.sleep(4)
        stream, last = await gw.stop_delivered()
        worker = await (await Ingest(tmp_path / "workers", "w1", db, broker.url).start()).ready()
        try:
            await _until_heartbeats(db, {"gw-tail": last})
            led = (await ledgers(db))["gw-tail"]
            assert led.stream == stream and 0 < led.last_seq < last, (led.last_seq, last)
            status, report, _ = await _report(db, "--grace", "0")
            r = report["gw-tail"]
            assert status == 1 and r["verdict"] == "missing", r
            assert r["received"] + r["dropped"] + r["skipped"] + r["missing"] == last, (r, last)
            assert r["missing"] >= last - led.last_seq > 0 and r["pending"] == 0, (r, last)
        finally:
            assert await worker.stop() == 0, worker.text()[-2000:]
