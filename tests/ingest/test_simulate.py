"""`sensegate fleet simulate` against the embedded ingest: 50 gateways, each with its own key and
numbering, publishing through mosquitto into `sensegate ingest` with SQLite, with declared drops,
unclean stops, re-sends and a forger. The ledger comes out at what the simulator issued minus
what it declared, every reading stored once, the forger's batches quarantined."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway import wire
from gateway.ingest.simulator.gateways import SimGateway
from gateway.keys import generate
from gateway.receiver import Receiver
from gateway.receiver.trust import KeyBindings
from hil.mosquitto import Mosquitto
from tests.ingest.fleet import Ingest, check_against_simulator, fleet_cli, query, simulate_cli, wait_complete

pytestmark = pytest.mark.slow


async def test_fifty_simulated_gateways_through_mosquitto_into_sqlite(tmp_path: Path) -> None:
    keys, db = tmp_path / "keys", f"sqlite:{tmp_path / 'ingest.db'}"
    await simulate_cli("--gateways", "50", "--rate", "0", "--keys", str(keys), "--export-only")
    status, out = await fleet_cli("enrol", "--db", db, str(keys))
    assert status == 0 and out.count("enrolled ") == 50, out
    with Mosquitto(tmp_path / "mqtt", extra=["max_queued_messages 100000"]) as broker:
        worker = await Ingest(tmp_path / "workers", "w0", db, broker.url).start()
        try:
            await worker.ready()
            summary = await simulate_cli(
                "--gateways", "50", "--rate", "2500", "--seconds", "6", "--keys", str(keys), "--broker", broker.url,
                "--drop-rate", "0.05", "--unclean-rate", "0.03", "--resend-rate", "0.05", "--forgers", "2",
                "--seed", "7")
            t = summary["totals"]
            assert summary["all_acked"] and t["dropped"] and t["unclean"] and t["unclean_sent"] and t["resent"], t
            assert t["forged_batches"] > 0, t
            want = {p["gateway"]: (p["stream"], p["last_seq"]) for p in summary["gateways"]}
            got = await wait_complete(db, want, within=90)
            check_against_simulator(db, summary, got)
            quarantined = query(db, "SELECT gateway, reason, count(*) FROM quarantine GROUP BY 1, 2")
            by_reason = {r: sum(n for _, r2, n in quarantined if r2 == r) for _, r, _ in quarantined}
            assert by_reason == {"unknown_key": t["forged_batches"], "bad_heartbeat": t["forged_heartbeats"]}, \
                quarantined
            assert {g for g, _, _ in quarantined} == {f["claims"] for f in summary["forgers"]}, quarantined
            status, out = await fleet_cli("report", "--db", db)
            assert status == 0 and "fleet: 50 gateways (50 complete)" in out, out
            assert f"unknown_key {t['forged_batches']}" in out.splitlines()[-1], out
            assert "missing" not in out.split("fleet:")[0], out  # no gateway: the forged heartbeats count for nothing
        finally:
            assert await worker.stop() == 0, worker.text()[-2000:]


def test_simulated_batches_are_the_gateways_own_and_the_reference_receiver_accounts_for_them() -> None:
    """The simulator's batches, through the reference receiver: signatures, chain, declared
    drops and the unclean-stop skip account for every number the simulated gateway issued."""
    key = generate("ed25519")
    g = SimGateway("sim-1", key, random.Random(5), max_readings=50)
    rx = Receiver(KeyBindings({"sim-1": [key.public_key()]}))
    for turn in range(40):
        g.read(30, 10**18 + turn * 10**9, 10**18 + (turn + 1) * 10**9)
        batches: list[wire.Batch] = []
        if turn in (10, 25):
            lost = g.crash(left=turn == 10)
            batches += [lost] if lost else []
        if turn % 7 == 3:
            g.drop(12, wire.EXPIRED)
        while (b := g.batch()) is not None:
            batches.append(b)
        for b in batches:
            rx.feed(b.data, topic_gateway="sim-1")
    s = rx.summary()
    p = g.produced
    assert s.bad_signatures == 0 and s.gaps == 0 and s.readings == p.readings, (s, p)
    assert (s.dropped, s.skipped, s.restarts) == (p.dropped, p.unclean - p.unclean_sent, p.boots - 1), (s, p)
    assert s.readings + s.dropped + s.skipped == p.last_seq, (s, p)
