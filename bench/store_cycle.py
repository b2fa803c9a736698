"""The store's batch cycle in one process, per batch and per reading, against another checkout.

``python -m bench.store_cycle [--baseline-root DIR] [--rounds N]`` (not part of ``make bench``;
about a minute). One cycle is what an idle uplink makes the daemon do: ``put`` k readings, take
them into a batch in one transaction (``make_batch``: numbering, segment, the clock check and
its epochs, header, Ed25519 signature), acknowledge it. It runs for k = 1, 20 and 500 readings
per batch, each in a child process of this checkout and, with ``--baseline-root`` (e.g.
``git archive h/arch | tar -x -C /tmp/base``), of that one, interleaved round by round so both
see the same machine; it prints microseconds per batch and nanoseconds per reading, the
ratio to the baseline, and (this checkout) the cost of one ``ClockWatch.check``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SIZES = (1, 20, 500)

CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path
from gateway.batcher import Batcher
from gateway.config.schema import BatchSection, BufferSection
from gateway.driver_api import Reading
from gateway.keys import Ed25519PrivateKey
from gateway.store import Store

async def cycle(k, seconds):
    with tempfile.TemporaryDirectory() as d:
        store = Store(Path(d) / "b.db", "gw-bench", BufferSection(), BatchSection())
        await store.open()
        batcher = Batcher(Ed25519PrivateKey(bytes(range(32))), "gw-bench", BatchSection())
        readings = [Reading("gw-bench", "n", time.time_ns() + i, float(i), "Cel") for i in range(k)]
        n = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        while time.perf_counter() - t0 < seconds:
            for r in readings:
                store.put(r)
            b = await store.make_batch(batcher)
            await store.ack(b)
            n += 1
        cpu = time.process_time() - c0
        await store.close()
        return cpu / n

out = {}
for k in json.loads(sys.argv[1]):
    out[k] = asyncio.run(cycle(k, float(sys.argv[2])))
try:
    import timeit
    from gateway import cose, wire
    from gateway.clock import ClockWatch
    from gateway.keys import key_id
    from gateway.receiver.clock import StreamClock, TimeTally
    from gateway.store.timeline import Timeline
except ImportError:  # a checkout before the clock keys
    pass
else:
    def each(fn, n=20_000):
        return min(timeit.repeat(fn, number=n, repeat=5)) / n
    w = ClockWatch()
    out["check"] = each(w.check)
    key = Ed25519PrivateKey(bytes(range(32)))
    kid = key_id(key.public_key())
    e = wire.ClockEpoch(1, 3, 19_309_821_405_217, 1_796_311_752_951_540_756, True, 20_000)
    bare = wire.Header("gw-bench", 1 << 62, 3, 1000, bytes(32), (1000, 1019))
    clocked = wire.Header("gw-bench", 1 << 62, 3, 1000, bytes(32), (1000, 1019), ck=[e])
    out["header"] = each(lambda: cose.protected_header(key, kid, clocked.labels())) - \
        each(lambda: cose.protected_header(key, kid, bare.labels()))
    pc, pb = (cose.parse_sign1(wire.sign(key, kid, h, []).data).protected for h in (clocked, bare))
    book = StreamClock()
    parsed = wire.parse_header(pc)
    out["parse"] = each(lambda: wire.parse_header(pc)) - each(lambda: wire.parse_header(pb))
    out["receiver"] = each(lambda: book.take(parsed, TimeTally()))
    class Db:
        aborts = 0
    tl = Timeline(Db())
    tl._firsts, tl._epochs, tl._seen_aborts = [1], [e], 0
    out["epochs"] = each(lambda: tl.epochs(1000, 1019))
    out["header_bytes"] = len(cose.protected_header(key, kid, clocked.labels())) - \
        len(cose.protected_header(key, kid, bare.labels()))
print(json.dumps(out))
"""


def run(root: Path, seconds: float) -> dict[str, float]:
    """One child process on ``root``'s code: CPU seconds per batch for each size."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(SIZES), str(seconds)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600, check=True)
    return {str(k): float(v) for k, v in json.loads(done.stdout).items()}  # (sizes; this checkout: the parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-root", default="", help="another checkout to compare with (same run)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="per size per round")
    a = ap.parse_args()
    here = Path(__file__).resolve().parents[1]
    roots = {"this": here} | ({"base": Path(a.baseline_root)} if a.baseline_root else {})
    got: dict[str, list[dict[str, float]]] = {name: [] for name in roots}
    for _ in range(a.rounds):
        for name, root in roots.items():
            got[name].append(run(root, a.seconds))
    print(f"{'readings/batch':>15} {'checkout':>9} {'us/batch':>10} {'ns/reading':>11} {'x base':>7}")
    for k in map(str, SIZES):
        med = {name: statistics.median(r[k] for r in runs) for name, runs in got.items()}
        for name, v in med.items():
            ratio = f"{v / med['base']:.3f}" if "base" in med else "-"
            print(f"{k:>15} {name:>9} {v * 1e6:>10.1f} {v / int(k) * 1e9:>11.0f} {ratio:>7}")
    parts = [r for r in got["this"] if "check" in r]
    if parts:
        def med(k: str) -> float:
            return statistics.median(r[k] for r in parts) * 1e6

        print("the clock's own parts, per batch (never per reading), microseconds:")
        print(f"  ClockWatch.check {med('check'):.2f} (at each commit, and once a second)")
        print(f"  epochs of the batch (Timeline.epochs) {med('epochs'):.2f}")
        print(f"  header with one ck entry, extra encoding {med('header'):.2f}; "
              f"{int(parts[0]['header_bytes'])} bytes more")
        print(f"  receiver: parse_header extra {med('parse'):.2f}, StreamClock.take {med('receiver'):.2f}")


if __name__ == "__main__":
    main()
