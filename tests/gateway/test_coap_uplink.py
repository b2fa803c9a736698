"""Store-and-forward over CoAP against a real aiocoap server on loopback: exact delivery over
UDP, TCP and TLS, block-wise batches, server outages, OSCORE, and rejected batches."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from gateway.coap import write_oscore_pair
from gateway.driver_api import Reading
from gateway.pipeline import BufferedPipeline
from tests.gateway.coaputil import CoapReceiver, coap_url
from tests.gateway.helpers import make_config, pipeline, until
from tests.gateway.test_batches import READINGS
from tests.gateway.tlsutil import make_pki

T0 = 1_795_000_000_000_000_000


def coap_config(tmp_path: Path, url: str, **uplink: object) -> object:
    up = {"type": "coap", "url": url, "reconnect_max": 1, "timeout": 3, **uplink}
    return make_config(tmp_path / "s", uplinks=[up], batch={"max_readings": 50})


def same(got: list, want: list[Reading]) -> bool:  # type: ignore[type-arg]
    return [(r.node, r.point, r.ts_ns, r.unit) for r in got] == [(r.node, r.point, r.ts_ns, r.unit) for r in want]


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_every_reading_arrives_exactly_as_produced(tmp_path: Path, scheme: str) -> None:
    url = coap_url(scheme)
    cfg = coap_config(tmp_path, url)
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem")
    async with rx.running(), pipeline(cfg) as p:
        assert p.uplink.name == "coap"
        for r in READINGS:
            p.put(r)
        got = await rx.wait_readings(len(READINGS))
        await until(lambda: p.uplink.acked >= 1 and not p.uplink.inflight)  # type: ignore[attr-defined]
    assert same(got, READINGS)
    assert got[0].value == 21.5 and got[5].value == b"\x00\xff\x10"
    s = rx.rx.summary()
    assert s.ok and s.gaps == 0 and s.duplicates == 0 and set(rx.statuses) == {"ok"}


async def test_batch_larger_than_64_kib_goes_blockwise(tmp_path: Path) -> None:
    url = coap_url()
    cfg = make_config(tmp_path / "s", uplinks=[{"type": "coap", "url": url, "reconnect_max": 1, "timeout": 20}],
                      batch={"max_readings": 5000, "max_bytes": "256KiB"})
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem")
    sizes: list[int] = []
    feed = rx._feed
    rx.server.on_batch = lambda data: (sizes.append(len(data)), feed(data))[1]
    n = 1500
    async with rx.running(), pipeline(cfg) as p:
        for i in range(n):  # all in one tick: committed together, so the first batch is big
            p.put(Reading("gw-test", "blob-ish", T0 + i, f"{i:06d}" + "x" * 80))
        got = await rx.wait_readings(n)
    assert max(sizes) > 64 * 1024, sizes
    # every block of up to 1024 bytes arrived as its own request with a Block1 option
    assert rx.server.blocks >= sum(-(-s // 1024) for s in sizes if s > 1024)
    assert [r.value[:6] for r in got] == [f"{i:06d}" for i in range(n)]
    assert rx.rx.summary().ok


async def _produce(p: BufferedPipeline, n: int, every: float) -> None:
    for i in range(n):
        p.put(Reading("gw-test", "n", T0 + i, i))
        await asyncio.sleep(every)


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
async def test_server_outage_loses_nothing_and_keeps_order(tmp_path: Path, scheme: str) -> None:
    url = coap_url(scheme)
    cfg = coap_config(tmp_path, url)
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem")
    await rx.start()
    try:
        async with pipeline(cfg) as p:
            producer = asyncio.create_task(_produce(p, 600, 0.005))
            await rx.wait_readings(50)
            await rx.stop()
            await until(lambda: not p.uplink.connected)
            errors = p.uplink.errors  # type: ignore[attr-defined]
            await until(lambda: p.uplink.errors > errors)  # type: ignore[attr-defined]  # still trying
            await rx.start()
            await producer
            got = await rx.wait_readings(600, within=30)
            assert p.uplink.connected
    finally:
        await rx.stop()
    by_seq = {r.seq: r.value for r in got}
    assert sorted(by_seq) == list(range(1, 601)), "nothing lost"
    assert [by_seq[s] for s in range(1, 601)] == list(range(600))
    s = rx.rx.summary()
    assert s.gaps == 0 and s.chain_breaks == 0 and s.bad_signatures == 0 and s.malformed == 0


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    url = coap_url("coaps+tcp")
    cfg = coap_config(tmp_path, url, tls={"ca_file": pki["ca"], "cert_file": pki["client_cert"],
                                           "key_file": pki["client_key"]})
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem", cert_file=pki["server_cert"],
                      key_file=pki["server_key"], ca_file=pki["ca"])
    async with rx.running(), pipeline(cfg) as p:
        for r in READINGS:
            p.put(r)
        got = await rx.wait_readings(len(READINGS))
    assert same(got, READINGS)


async def test_untrusted_server_certificate_is_retried_not_rejected(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other", name="otherca")
    url = coap_url("coaps+tcp")
    cfg = coap_config(tmp_path, url, tls={"ca_file": other["ca"]})
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem", cert_file=pki["server_cert"],
                      key_file=pki["server_key"])
    async with rx.running(), pipeline(cfg) as p:
        p.put(READINGS[0])
        await until(lambda: p.uplink.errors >= 2)  # type: ignore[attr-defined]
        assert p.uplink.rejected == 0 and not rx.readings  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "coap" in r.name]
    assert sum("retrying" in m for m in warnings) == 1, "an outage is logged once, not per retry"


async def test_oscore_protected_delivery(tmp_path: Path) -> None:
    write_oscore_pair(tmp_path / "gw-oscore", tmp_path / "rx-oscore")
    url = coap_url()
    cfg = coap_config(tmp_path, url, oscore=str(tmp_path / "gw-oscore"))
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem", oscore=str(tmp_path / "rx-oscore"))
    async with rx.running():
        async with pipeline(cfg) as p:
            for r in READINGS:
                p.put(r)
            for i in range(300):  # and some block-wise batches through OSCORE
                p.put(Reading("gw-test", "n", T0 + i, i))
            got = await rx.wait_readings(len(READINGS) + 300)
        assert same(got[: len(READINGS)], READINGS)
        assert rx.rx.summary().ok
        # the gateway persisted its OSCORE sequence number and released the context's lock
        assert (tmp_path / "gw-oscore" / "sequence.json").exists()
        assert not (tmp_path / "gw-oscore" / "lock").exists()
        # without OSCORE the same server refuses (4.01): retried, never dead-lettered
        plain = coap_config(tmp_path / "plain", url)
        async with pipeline(plain) as p:
            p.put(READINGS[0])
            await until(lambda: p.uplink.errors >= 1)  # type: ignore[attr-defined]
            assert p.uplink.rejected == 0  # type: ignore[attr-defined]
    assert len(rx.readings) == len(READINGS) + 300


async def test_rejected_batch_goes_to_the_dead_letter_table(tmp_path: Path) -> None:
    url = coap_url()
    cfg = coap_config(tmp_path, url)
    rx = CoapReceiver(url, tmp_path / "s/keys/device.pub.pem")
    rx.reject_next = ["flip"]  # the server sees the first batch with a damaged signature
    async with rx.running(), pipeline(cfg) as p:
        p.put(READINGS[0])
        await until(lambda: p.uplink.rejected == 1)  # type: ignore[attr-defined]
        for r in READINGS[1:]:
            p.put(r)
        await rx.wait_readings(len(READINGS) - 1)
        await until(lambda: p.store.stats.dead_letters == 1)
        dead = await p.store.dead_letters()
        assert p.uplink.connected, "a rejection says the server is there"
    assert [(bseq, up) for bseq, up, _ in dead] == [(1, "coap")]
    assert "4.00" in dead[0][2] and "signature" in dead[0][2]
    assert rx.statuses[0] == "bad_signature" and rx.statuses[1:] == ["ok"] * (len(rx.statuses) - 1)
    assert rx.rx.summary().bad_signatures == 1
