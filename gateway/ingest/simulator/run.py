"""The simulated fleet's schedule, and `sensegate fleet simulate`.

Every gateway makes one batch per ``interval`` seconds holding the readings it issued since its
last one (``rate`` is the whole fleet's readings per second, spread evenly), the gateways'
turns staggered across the interval. At each turn a gateway may first declare a drop, stop
uncleanly or send a recent batch again, each with its probability, and every ``heartbeat``
seconds it publishes its signed heartbeat. A forger takes turns like a gateway, in its victim's
name. At the end every gateway sends what it still holds, except the ``lose_tail`` first ones,
whose last batch never reaches the broker, then its heartbeat (forgers a forged one, claiming
readings their victim never issued), and the simulator waits for every PUBACK. The summary
says per gateway what it issued and what its ledger must show (``Produced.expected``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import wire
from gateway.ingest.simulator.gateways import SimGateway, gateway_ids, keyring
from gateway.ingest.simulator.publish import MqttFleet
from gateway.keys import generate
from gateway.mqtt import MqttError

TICK = 0.01  # seconds between two groups of turns


@dataclass
class Options:
    """What `sensegate fleet simulate` was asked for."""

    gateways: int
    rate: float  # readings per second, the whole fleet (0: unpaced, ``batch_readings`` per batch)
    broker: str = "mqtt://127.0.0.1:1883"  # or several, comma-separated: the gateways spread over them
    keys: Path = Path("sensegate-sim-keys")
    prefix: str = "sensegate"
    id_prefix: str = "sim"
    seconds: float = 10.0
    readings: int = 0  # stop once this many readings were issued (0: after ``seconds``)
    interval: float = 1.0  # seconds between two batches of one gateway
    connections: int = 0  # MQTT connections (0: one per gateway, at most 64)
    window: int = 256  # unacknowledged messages per connection
    drop_rate: float = 0.0
    unclean_rate: float = 0.0
    resend_rate: float = 0.0
    forgers: int = 0
    lose_tail: int = 0
    heartbeat: float = 10.0  # seconds between two heartbeats of a gateway (0: only the last one)
    batch_readings: int = 100  # unpaced: readings in each batch
    points: int = 4
    seed: int | None = None


@dataclass
class Forger:
    """A gateway id's batches signed with a key nobody enrolled."""

    gw: SimGateway
    index: int
    batches: int = 0
    heartbeats: int = 0


@dataclass
class Fleet:
    gateways: list[SimGateway]
    forgers: list[Forger] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)


def build(opts: Options) -> Fleet:
    """The gateways with their keys (made in ``opts.keys`` on first use) and the forgers."""
    rng = random.Random(opts.seed)
    ids = gateway_ids(opts.gateways, opts.id_prefix)
    keys = keyring(opts.keys, ids)
    gws = [SimGateway(gw, keys[gw], random.Random(rng.getrandbits(64)), opts.prefix, opts.points) for gw in ids]
    forgers = [Forger(SimGateway(f"forger-{j + 1}", generate("ed25519"), random.Random(rng.getrandbits(64)),
                                 opts.prefix, opts.points, claims=ids[j % len(ids)]), len(ids) + j)
               for j in range(opts.forgers)]
    return Fleet(gws, forgers, rng)


async def _send(fleet_mqtt: MqttFleet, index: int, g: SimGateway, batches: list[wire.Batch]) -> None:
    for b in batches:
        await fleet_mqtt.publish(index, g.topic, b.data)


async def simulate(opts: Options, fleet: Fleet, mqtt: MqttFleet, stop: asyncio.Event) -> dict[str, Any]:
    """Run the schedule until ``seconds`` or ``readings`` (or ``stop``), then the clean end."""
    gws, rng = fleet.gateways, fleet.rng
    everyone: list[tuple[int, SimGateway, Forger | None]] = [(i, g, None) for i, g in enumerate(gws)]
    everyone += [(f.index, f.gw, f) for f in fleet.forgers]
    paced = opts.rate > 0
    slots = max(1, round(opts.interval / TICK)) if paced else 1
    per_s = opts.rate / len(gws)
    cap = max(1.0, per_s * opts.interval * 2)  # a simulator behind schedule issues less, never bigger batches
    owed = [0.0] * len(everyone)
    started = time.monotonic()
    last = [started] * len(everyone)
    last_ns = [time.time_ns()] * len(everyone)
    beat = [started + rng.uniform(0, opts.heartbeat) for _ in everyone] if opts.heartbeat else []
    issued = 0
    k = 0
    while not stop.is_set():
        now, now_ns = time.monotonic(), time.time_ns()
        if (opts.readings and issued >= opts.readings) or (not opts.readings and now - started >= opts.seconds):
            break
        for j in range(k % slots, len(everyone), slots):
            index, g, forger = everyone[j]
            if paced:
                owed[j] = min(cap, owed[j] + per_s * (now - last[j]))
                last[j] = now
                n = int(owed[j])
                owed[j] -= n
            else:
                n = opts.batch_readings
            out: list[wire.Batch] = []
            g.read(n, last_ns[j], now_ns)
            last_ns[j] = now_ns
            if forger is None:
                issued += n
                if opts.unclean_rate and rng.random() < opts.unclean_rate:  # what was just read is lost
                    lost = g.crash(left=rng.random() < 0.5)
                    if lost is not None:
                        out.append(lost)
                if opts.drop_rate and rng.random() < opts.drop_rate:
                    g.drop(max(1, n // 2), wire.BUFFER_FULL if rng.random() < 0.5 else wire.EXPIRED)
            while (b := g.batch()) is not None:
                out.append(b)
            if forger is None and opts.resend_rate and rng.random() < opts.resend_rate:
                again = g.again()
                if again is not None:
                    out.append(again)
            if forger is not None:
                forger.batches += len(out)
            await _send(mqtt, index, g, out)
            if beat and forger is None and now >= beat[j]:
                beat[j] = now + opts.heartbeat
                await mqtt.publish(index, g.status_topic, g.heartbeat(), retain=True)
        k += 1
        delay = started + k * TICK - time.monotonic() if paced else 0
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
    elapsed = time.monotonic() - started
    for i, g in enumerate(gws):  # a clean stop: what is left goes out
        if i < opts.lose_tail:
            n = math.ceil(per_s * opts.interval) if paced else opts.batch_readings
            g.read(max(1, n), time.time_ns() - 1_000_000, time.time_ns())
        left = []
        while (b := g.batch()) is not None:
            left.append(b)
        if i < opts.lose_tail and left:
            g.withhold(left.pop())
        await _send(mqtt, i, g, left)
        await mqtt.publish(i, g.status_topic, g.heartbeat(), retain=True)
    for f in fleet.forgers:  # a forged heartbeat: readings its victim never issued, "lost"
        await mqtt.publish(f.index, f.gw.status_topic, f.gw.heartbeat(last_seq=f.gw.buf.next_seq + 10_000),
                           retain=True)
        f.heartbeats += 1
    drained = await mqtt.drain(120.0)
    return summary(opts, fleet, mqtt, elapsed, drained)


def summary(opts: Options, fleet: Fleet, mqtt: MqttFleet, elapsed: float, drained: bool) -> dict[str, Any]:
    """What was issued, per gateway and in all; what the ingest's ledger must show."""
    produced = [g.produced for g in fleet.gateways]
    total = {k: sum(getattr(p, k) for p in produced) for k in
             ("readings", "batches", "dropped", "unclean", "unclean_sent", "resent", "restarts", "lost")}
    issued = sum(p.last_seq for p in produced)
    return {
        "gateways": [p.to_json() for p in produced],
        "forgers": [{"id": f.gw.id, "claims": f.gw.claims, "batches": f.batches, "heartbeats": f.heartbeats}
                    for f in fleet.forgers],
        "totals": {**total, "issued": issued, "forged_batches": sum(f.batches for f in fleet.forgers),
                   "forged_heartbeats": sum(f.heartbeats for f in fleet.forgers)},
        "seconds": elapsed,
        "readings_per_s": issued / elapsed if elapsed > 0 else 0.0,
        "messages_acked": mqtt.acked,
        "resent_after_reconnect": mqtt.resent,
        "all_acked": drained,
    }


# -- the command line ------------------------------------------------------------------------


def options(args: argparse.Namespace) -> Options:
    if args.gateways < 1 or args.rate < 0 or args.interval <= 0:
        raise ValueError("--gateways must be at least 1, --rate at least 0, --interval above 0")
    for name in ("drop_rate", "unclean_rate", "resend_rate"):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f"--{name.replace('_', '-')} is a chance between 0 and 1")
    connections = args.connections or min(args.gateways + args.forgers, 64)
    return Options(args.gateways, args.rate, args.broker, Path(args.keys), args.prefix, args.id_prefix, args.seconds,
                   args.readings, args.interval, connections, drop_rate=args.drop_rate,
                   unclean_rate=args.unclean_rate, resend_rate=args.resend_rate, forgers=args.forgers,
                   lose_tail=min(args.lose_tail, args.gateways), heartbeat=args.heartbeat,
                   batch_readings=max(1, args.batch_readings), points=args.points, seed=args.seed)


def simulate_main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate fleet simulate`."""
    try:
        opts = options(args)
        fleet = build(opts)
    except (ValueError, OSError) as e:
        print(f"sensegate fleet simulate: {e}", file=sys.stderr)
        return 2
    print(f"{opts.gateways} gateways, keys in {opts.keys}; enrol them with: sensegate fleet enrol --db DB {opts.keys}",
          file=sys.stderr)
    if args.export_only:
        if args.json:
            print(json.dumps({"keys": str(opts.keys), "gateways": [g.id for g in fleet.gateways]}))
        return 0
    try:
        out = asyncio.run(_run(opts, fleet))
    except MqttError as e:
        print(f"sensegate fleet simulate: {e}", file=sys.stderr)
        return 2
    if args.summary:
        Path(args.summary).write_text(json.dumps(out))
    if args.json:
        print(json.dumps(out))
    else:
        t = out["totals"]
        print(f"{t['issued']} readings issued in {out['seconds']:.1f}s ({out['readings_per_s']:,.0f}/s) by "
              f"{opts.gateways} gateways: {t['readings']} sent in {t['batches']} batches, {t['dropped']} dropped "
              f"(declared), {t['unclean']} skipped by {t['restarts']} unclean stops ({t['unclean_sent']} of them had "
              f"left), {t['resent']} batches sent again, {t['lost']} lost at the tail; {t['forged_batches']} forged "
              f"batches; every message acknowledged: {'yes' if out['all_acked'] else 'NO'}")
    return 0 if out["all_acked"] else 1


async def _run(opts: Options, fleet: Fleet) -> dict[str, Any]:
    mqtt = MqttFleet([u.strip() for u in opts.broker.split(",") if u.strip()], opts.connections)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await mqtt.open()
        return await simulate(opts, fleet, mqtt, stop)
    finally:
        await mqtt.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
