"""The reference receiver's memory under many batches, in-process (no broker, no daemon).

    python -m bench.receiver_memory [--batches 100000] [--gateways 1] [--readings 1]

Signs batches as gateways do (gateway.testing.batches.Chain), feeds each to one Receiver as it
is made (nothing else is kept), and prints VmRSS and the receiver's own traced size at marks,
as one JSON line each and a table. Memory per batch should be ~0: the receiver keeps ranges and
a fixed window of hashes per stream (docs/wire-format.md, "What a receiver keeps").
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

from gateway.keys import Ed25519PrivateKey
from gateway.receiver import KeyBindings, Receiver
from gateway.testing.batches import Chain


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=100_000, help="batches in all (spread over the gateways)")
    ap.add_argument("--gateways", type=int, default=1, help="gateways (one stream each)")
    ap.add_argument("--readings", type=int, default=1, help="readings per batch")
    a = ap.parse_args(argv)
    keys = [Ed25519PrivateKey.generate() for _ in range(a.gateways)]
    names = [f"gw-{i:04d}" for i in range(a.gateways)]
    chains = [Chain(k, n) for k, n in zip(keys, names, strict=True)]
    rx = Receiver(KeyBindings({n: [k.public_key()] for n, k in zip(names, keys, strict=True)}),
                  keep_readings=False)
    marks = {a.batches // 10, a.batches // 2, a.batches}
    gc.collect()
    base = _rss_kib()
    rows = [{"batches": 0, "rss_kib": base, "growth_kib": 0, "s": 0.0}]
    t0 = time.monotonic()
    for i in range(1, a.batches + 1):
        j = i % a.gateways
        res = rx.feed(chains[j].next(a.readings), topic_gateway=names[j])
        if res.status != "ok":
            raise SystemExit(f"batch {i}: {res.status} {res.reason}")
        if i in marks:
            gc.collect()
            rss = _rss_kib()
            rows.append({"batches": i, "rss_kib": rss, "growth_kib": rss - base,
                         "s": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    s = rx.summary()
    assert s.ok and s.batches == a.batches and s.gaps == 0, s
    first, last = rows[1], rows[-1]
    per_batch = (last["rss_kib"] - first["rss_kib"]) * 1024 / max(1, last["batches"] - first["batches"])
    print(f"\n{a.gateways} gateway(s), {a.batches} batches of {a.readings} reading(s): RSS {base / 1024:.1f} MiB "
          f"before, {last['rss_kib'] / 1024:.1f} MiB after; {per_batch:.1f} bytes per batch after the first "
          f"{first['batches']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
