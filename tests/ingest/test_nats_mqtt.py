"""What a 3-node NATS cluster does with an MQTT QoS 1 publish, the ground the fleet ingest stands on
(docs/ingest.md, "What a PUBACK from NATS means"):

* the PUBACK waits for the copy in nats-server's own stream ``$MQTT_msgs`` (replicated to a
  quorum): with no quorum there is no PUBACK, so the gateway keeps the batch and sends it again;
* ``$MQTT_msgs`` keeps a message only for consumers that exist when it arrives: without the
  ingest's durable consumer, an acknowledged batch is gone;
* a stream of our own that captures the batch subjects is not waited for: a PUBACK can come
  while that stream never stores the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import nats
import nats.errors
import pytest
from nats.js.api import StreamConfig

from gateway.ingest.sources.nats import STREAM, NatsSource
from hil.nats import NatsCluster
from tests.ingest.fleet import publish, publish_until_acked

TOPIC = "sensegate/gw-n/batch"
RECOVERY = 180.0  # seconds a cluster that lost its quorum gets to serve again once a node is back


@contextlib.asynccontextmanager
async def consumer(cluster: NatsCluster) -> AsyncIterator[NatsSource]:
    src = NatsSource(cluster.urls)
    await src.open()
    try:
        yield src
    finally:
        await src.close()


async def fetch_all(src: NatsSource, within: float = 60.0) -> list[bytes]:
    """What the consumer holds; after a node died its leader may first have to be elected again."""
    async with asyncio.timeout(within):
        while True:
            try:
                got = [d.data for d in await src.fetch(100, 2.0)]
            except nats.errors.Error:  # no responders / timeouts while the consumer has no leader
                got = []
            if got:
                for _ in range(3):  # and whatever else is there
                    more = [d.data for d in await src.fetch(100, 1.0)]
                    got += more
                return got


async def stream_messages(cluster: NatsCluster, name: str) -> int:
    nc = await nats.connect(cluster.urls)
    try:
        return int((await nc.jetstream().stream_info(name)).state.messages)
    finally:
        await nc.close()


async def test_a_puback_with_no_consumer_keeps_nothing(cluster: NatsCluster) -> None:
    assert await publish(cluster.mqtt_url(0), TOPIC, b"before the ingest", within=10)
    assert await stream_messages(cluster, STREAM) == 0, "acknowledged, and forgotten: nobody was interested"
    async with consumer(cluster) as src:  # what `sensegate ingest` makes first, and keeps
        assert await publish(cluster.mqtt_url(1), TOPIC, b"after", within=10)
        got = await fetch_all(src)
        # at least once: under load NATS may store a QoS 1 publish twice (the ingest stores it once)
        assert set(got) == {b"after"}, got


@pytest.mark.slow
async def test_no_puback_while_the_stream_has_no_quorum(cluster: NatsCluster) -> None:
    async with consumer(cluster):
        pass  # the durable consumer outlives the connection that made it
    cluster.kill(1)
    cluster.kill(2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while loop.time() - t0 < 12:  # a gateway keeps trying; it never hears a PUBACK
        assert not await publish(cluster.mqtt_url(0), TOPIC, b"held by the gateway", within=4)
    cluster.start_node(1)
    # the bound is liveness, not speed: with a node back, the meta group, $MQTT_sess and
    # $MQTT_msgs elect leaders and catch up before nats-server answers CONNECT and PUBLISH again;
    # 20-30 s here, over 60 s once in CI on a loaded machine (a gateway simply keeps retrying)
    await publish_until_acked(cluster.mqtt_url(0), TOPIC, b"held by the gateway", within=RECOVERY)
    async with consumer(cluster) as src:
        got = await fetch_all(src, within=RECOVERY)
    assert got and set(got) == {b"held by the gateway"}, "stored at least once (re-sends are duplicates)"


@pytest.mark.slow
async def test_a_stream_of_our_own_is_not_what_the_puback_waits_for(cluster: NatsCluster) -> None:
    nc = await nats.connect(cluster.urls)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="OWN", subjects=["sensegate.*.batch"], num_replicas=1))
        leader = (await js.stream_info("OWN")).cluster.leader  # type: ignore[union-attr]
    finally:
        await nc.close()
    down = next(i for i, n in enumerate(cluster.nodes) if n.name == leader)
    up = (down + 1) % 3
    async with consumer(cluster) as src:
        cluster.kill(down)  # the only server of our own stream
        await publish_until_acked(cluster.mqtt_url(up), TOPIC, b"acked anyway", within=60)
        assert set(await fetch_all(src)) == {b"acked anyway"}, "the ingest's copy is there"
    cluster.start_node(down)
    assert await stream_messages(cluster, "OWN") == 0, "our own stream never got it, yet the gateway was told PUBACK"
