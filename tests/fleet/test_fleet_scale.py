"""The fleet's retained state read at a city's scale, through a real mosquitto with its default
limits: 600 gateways, each with a retained status, health summary and config status (1,800
messages). Mosquitto queues a subscription's retained messages at once and drops what passes
max_queued_messages (1,000 by default); `fleet status`, `status`, the fleet page and `rollout
status` must still see every gateway."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from gateway.fleet.rollout import Entry, Rollout
from gateway.fleet.web import FleetPage
from gateway.mqtt import MqttSession, MqttSettings
from gateway.remote.ops import Broker
from hil.mosquitto import Mosquitto
from tests.fleet.helpers import sg

N = 600
GROUP = "city"
REVISION = 1_700_000_000_000


def retained(gw: str, now: float) -> dict[str, dict[str, object]]:
    """What a gateway keeps retained (bodies shaped as the gateway sends them, signatures left out)."""
    return {
        f"sensegate/{gw}/status": {"gateway": gw, "state": "online", "ts": now},
        f"sensegate/{gw}/health": {"gateway": gw, "ts": now, "health": {
            "version": "0.2.0", "groups": [GROUP], "status_interval": 60, "config": {"revision": REVISION,
                                                                                    "source": "push"},
            "drivers": {"counter": {"state": "running"}}, "padding": "x" * 1500}},
        f"sensegate/{gw}/config/status": {"gateway": gw, "state": "applied", "revision": REVISION, "ts": now},
    }


async def publish_all(url: str, messages: dict[str, dict[str, object]]) -> None:
    """Publish retained at QoS 1 and wait until the broker acknowledged every one."""
    unacked: set[int] = set()
    done = asyncio.Event()

    def on_publish(mid: int) -> None:
        unacked.discard(mid)
        if not unacked:
            done.set()

    session = MqttSession(MqttSettings.from_url(url, client_id="fleet-scale-publisher"), on_publish=on_publish)
    await session.connect()
    try:
        for topic, body in messages.items():
            unacked.add(session.client.publish(topic, json.dumps(body).encode(), qos=1, retain=True).mid)
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        await session.close()


async def test_fleet_readers_see_all_600_gateways_past_the_brokers_queue_limit(tmp_path: Path,
                                                                                 broker: Mosquitto) -> None:
    names = [f"gw-{i:04d}" for i in range(N)]
    now = time.time()
    await publish_all(broker.url, {t: b for gw in names for t, b in retained(gw, now).items()})

    r = await sg("fleet", "status", "--url", broker.url, "--group", "", "--json")
    rows = json.loads(r.stdout)["gateways"]
    whole = [g for g in rows if g["state"] == "online" and g["version"] == "0.2.0" and g["revision"] == REVISION]
    assert len(whole) == N, f"fleet status saw {len(whole)} of {N} gateways with status, health and config status"

    r = await sg("status", "--url", broker.url, "--json")
    answers = json.loads(r.stdout)
    assert len(answers) == N and all("config" in a and "online" in a for a in answers.values()), \
        f"status saw {len(answers)} of {N} gateways, {sum('config' in a for a in answers.values())} config statuses"

    page = FleetPage(Broker.from_url(broker.url))
    await page.start()
    try:
        async with asyncio.timeout(30):
            while sum(r.state == "online" and r.version == "0.2.0" and r.revision == REVISION
                      for r in await page.rows()) < N:
                page.watch.changed.clear()
                await page.watch.changed.wait()
                await asyncio.sleep(0.2)  # rows are built from all 600: not at every message
    except TimeoutError:
        raise AssertionError(f"the fleet page has {len(await page.rows())} of {N} gateways, not all whole") from None
    finally:
        await page.close()

    # a rollout that sent the config to all 600: their retained config statuses answer it
    kind = {"name": "config", "yaml": "", "revision": REVISION, "label": "city.yaml"}
    ro = Rollout(id="config-scale", kind=kind, group=GROUP, url=broker.url, waves=[names], canary=False,
                 max_failures=0, wave_timeout=60.0, expires=int(now) + 3600, state="waiting",
                 gateways={gw: Entry(wave=0, state="sent", sent_at=now - 60) for gw in names},
                 path=str(tmp_path / "rollouts" / "config-scale.json"))
    ro.save()
    r = await sg("rollout", "status", "config-scale", "--url", broker.url, "--rollouts", str(tmp_path / "rollouts"))
    assert r.returncode == 0 and f"ok          {N}" in r.stdout, r.stdout + r.stderr
