"""The fleet end to end, all real: gateway daemons publishing MQTT 3.1.1 QoS 1 to a 3-node NATS
cluster, two `sensegate ingest` workers pulling from its durable consumer into PostgreSQL. After
each fault the database's rows equal what the gateways issued minus what they declared, each
exactly once, and every ledger is complete with a sound chain."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hil.mosquitto import Mosquitto
from hil.nats import NatsCluster
from hil.postgres import Blackhole, Postgres
from tests.ingest.fleet import (
    Gateway,
    Ingest,
    check_exactly_once,
    fleet_cli,
    ledgers,
    publish_until_acked,
    query,
    wait_complete,
)
from tests.ingest.helpers import GatewayFeed

pytestmark = pytest.mark.slow


@dataclass
class Site:
    """Where a fleet runs: the clustered broker and PostgreSQL, or the embedded default."""

    db: str
    broker: NatsCluster | Mosquitto
    workers: int


@pytest.fixture(params=["nats+postgresql", "mosquitto+sqlite"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    if request.param == "nats+postgresql":
        return Site(request.getfixturevalue("pg_dsn"), request.getfixturevalue("cluster"), workers=2)
    return Site(f"sqlite:{tmp_path / 'ingest.db'}", request.getfixturevalue("broker"), workers=1)


@dataclass
class Run:
    """One fleet run: its gateways and workers, for a fault to act on."""

    tmp: Path
    db: str
    broker: str  # what the workers take from
    cluster: NatsCluster | None = None
    gateways: list[Gateway] = field(default_factory=list)
    workers: list[Ingest] = field(default_factory=list)

    async def worker(self, name: str, db: str = "") -> Ingest:
        w = await Ingest(self.tmp / "workers", name, db or self.db, self.broker).start()
        self.workers.append(w)
        return w


@asynccontextmanager
async def fleet(tmp: Path, db: str, broker: NatsCluster | Mosquitto, gateways: int = 3,
                workers: int = 2) -> AsyncIterator[Run]:
    """Enrolled gateways, ready workers (their consumer exists before any gateway publishes). With
    a NATS cluster the gateways spread over its nodes; with mosquitto (the embedded default) they
    share it."""
    if isinstance(broker, NatsCluster):
        run = Run(tmp, db, broker.url, broker)
        urls = [broker.mqtt_url(i % 3) for i in range(gateways)]
    else:
        run = Run(tmp, db, broker.url)
        urls = [broker.url] * gateways
    run.gateways = [Gateway(tmp / "gw", f"gw-{i}", urls[i]) for i in range(gateways)]
    status, out = await fleet_cli("enrol", "--db", db, *[str(g.pub) for g in run.gateways])
    assert status == 0, out
    try:
        for i in range(workers):
            await (await run.worker(f"w{i}")).ready()
        for g in run.gateways:
            await g.start()
        yield run
    finally:
        for p in [*run.gateways, *run.workers]:
            await p.kill()


async def produce_then_check(run: Run, seconds: float, fault: Callable[[Run], Awaitable[None]] | None = None) -> None:
    """Let the gateways publish for ``seconds`` while ``fault`` runs, stop them cleanly, and check."""
    for g in run.gateways:
        await g.connected()
    faulty = asyncio.create_task(fault(run)) if fault else None
    await asyncio.sleep(seconds)
    if faulty is not None:
        await faulty
    want = {g.gateway: await g.stop_delivered() for g in run.gateways}
    got = await wait_complete(run.db, want, within=90)
    verdicts = check_exactly_once(run.db, want, got)
    async with asyncio.timeout(30):  # each daemon's last heartbeat (retained, signed) came through the broker too
        while not all(led.hb_last_seq == want[g][1] and led.hb_held_from == want[g][1] + 1
                      for g, led in got.items() if g in want):
            await asyncio.sleep(0.3)
            got = await ledgers(run.db)
    assert all(v.issued > 200 for v in verdicts), [(v.gateway, v.issued) for v in verdicts]
    assert query(run.db, "SELECT count(*) FROM quarantine") == [(0,)], query(run.db, "SELECT reason, detail FROM "
                                                                                    "quarantine LIMIT 5")
    status, out = await fleet_cli("report", "--db", run.db)
    assert status == 0 and sum(line.endswith(" complete") for line in out.splitlines()) == len(run.gateways), out
    for w in run.workers:
        if w.alive:
            assert await w.stop() == 0, w.text()[-2000:]


async def test_three_gateways_every_reading_once(tmp_path: Path, site: Site) -> None:
    async with fleet(tmp_path, site.db, site.broker, workers=site.workers) as run:
        await produce_then_check(run, 8)


async def test_kill_dash_nine_of_a_worker_mid_run(tmp_path: Path, site: Site) -> None:
    async def kills(run: Run) -> None:
        rng = random.Random(3)
        for _ in range(3):
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            victim = run.workers[0]
            await victim.kill()  # between a commit and its acks, or mid-transaction: either way
            run.workers[0] = await Ingest(run.tmp / "workers", "w0", run.db, run.broker).start()

    async with fleet(tmp_path, site.db, site.broker, workers=site.workers) as run:
        await produce_then_check(run, 10, kills)


async def test_kill_dash_nine_of_a_nats_node_mid_run(tmp_path: Path, pg_dsn: str, cluster: NatsCluster) -> None:
    async def node_dies(run: Run) -> None:
        await asyncio.sleep(2.5)
        assert run.cluster is not None
        await asyncio.to_thread(run.cluster.kill, 1)  # gw-1's broker, and one replica of everything
        await asyncio.sleep(5)
        await asyncio.to_thread(run.cluster.start_node, 1)

    async with fleet(tmp_path, pg_dsn, cluster) as run:
        await produce_then_check(run, 11, node_dies)


async def test_postgresql_restarted_mid_run(tmp_path: Path, pg_own: Postgres, cluster: NatsCluster) -> None:
    async def restart(run: Run) -> None:
        await asyncio.sleep(3)
        await asyncio.to_thread(pg_own.restart, 3.0)

    async with fleet(tmp_path, pg_own.dsn, cluster) as run:
        await produce_then_check(run, 11, restart)
        assert any("handed back" in w.text() or "retrying" in w.text() for w in run.workers)


async def test_a_worker_that_cannot_reach_the_database_for_a_minute(tmp_path: Path, pg_dsn: str,
                                                                      pg_server: Postgres,
                                                                      cluster: NatsCluster) -> None:
    """The database goes silent for one worker (no reset, no refusal): its transaction times out,
    its messages go back to the broker and the other worker stores them; after the minute it
    carries on. The minute is real: it is longer than the consumer's ack wait and the worker's
    database deadline, which is what this proves."""
    with Blackhole(pg_server.port) as hole:
        async def silence(run: Run) -> None:
            await asyncio.sleep(2)
            hole.cut()
            await asyncio.sleep(60)
            hole.heal()
            await run.workers[0].wait_log("the database answers again", within=60)

        async with fleet(tmp_path, pg_dsn, cluster, workers=1) as run:
            cut_off = await run.worker("w-cut", hole.dsn_for(pg_dsn, pg_server.port))
            await cut_off.ready()
            run.workers.insert(0, run.workers.pop())
            await produce_then_check(run, 66, silence)
            log = cut_off.text()
            assert "handed back to the broker" in log and "no answer within" in log, log[-3000:]


async def test_forged_revoked_and_replayed_batches_are_refused_and_reported(tmp_path: Path, site: Site) -> None:
    """A key used for another gateway, a key nobody enrolled, a genuine batch on another gateway's
    topic, a revoked key, a replay: each refused (or counted a duplicate) and nothing stored."""
    url = site.broker.mqtt_url(0) if isinstance(site.broker, NatsCluster) else site.broker.url
    a, b, r = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-b"), GatewayFeed(tmp_path, "gw-r")
    impostor = GatewayFeed(tmp_path / "impostor", "gw-a")  # claims gw-a with a key of its own
    thief = GatewayFeed(tmp_path / "thief", "gw-b")
    thief.key = a.key  # gw-a's key, stolen, speaking as gw-b
    status, out = await fleet_cli("enrol", "--db", site.db, str(a.pub), str(b.pub), str(r.pub))
    assert status == 0, out
    run = Run(tmp_path, site.db, site.broker.url if isinstance(site.broker, NatsCluster) else url)
    try:
        for i in range(site.workers):
            await (await run.worker(f"w{i}")).ready()
        async with a.open(), r.open(), impostor.open(), thief.open():
            genuine = await a.batches(5)
            for data in genuine:
                await publish_until_acked(url, a.topic, data)
            for data in await r.batches(2):
                await publish_until_acked(url, r.topic, data)
            await publish_until_acked(url, a.topic, genuine[2])  # a replay
            await publish_until_acked(url, a.topic, await impostor.batch())
            await publish_until_acked(url, b.topic, await thief.batch())
            await publish_until_acked(url, b.topic, genuine[4])  # gw-a's batch on gw-b's topic
            status, out = await fleet_cli("revoke", "--db", site.db, "--gateway", "gw-r", "--all", "--reason",
                                          "cabinet 12 broken into")
            assert status == 0 and "revoked 1 key" in out, out
            await asyncio.sleep(3)  # every worker reloads the registry within two seconds
            await publish_until_acked(url, r.topic, await r.batch())
        async with asyncio.timeout(30):
            while len(query(site.db, "SELECT id FROM quarantine")) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        got = await wait_complete(site.db, {"gw-a": (None, 25)}, within=10)
    finally:
        for w in run.workers:
            await w.kill()
    reasons = sorted((row[0], row[1]) for row in query(site.db, "SELECT gateway, reason FROM quarantine"))
    assert reasons == [("gw-a", "unknown_key"), ("gw-b", "topic_mismatch"), ("gw-b", "wrong_gateway"),
                       ("gw-r", "revoked")]
    assert got["gw-a"].readings == 25 and got["gw-a"].duplicates == 1 and got["gw-a"].missing == 0
    assert query(site.db, "SELECT gateway, count(*), count(DISTINCT seq), max(v) FROM readings GROUP BY gateway "
                          "ORDER BY gateway") == [("gw-a", 25, 25, 25.0), ("gw-r", 10, 10, 10.0)]
    status, out = await fleet_cli("report", "--db", site.db)
    assert status == 0, out
    assert "refused: unknown_key 1" in out and "refused: revoked 1" in out and "wrong_gateway 1" in out, out
    status, out = await fleet_cli("keys", "--db", site.db, "--gateway", "gw-r")
    assert "revoked" in out and "cabinet 12 broken into" in out, out
