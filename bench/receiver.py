"""The bench's receiver: `sensegate receive` with the latency histogram on and no output per
reading (the counting path of gateway.receiver.core), printing one JSON line at the end:
the summary plus the wall-clock time (ns) the first verified batch arrived. SIGUSR1 prints a
progress line (time, readings so far, batch messages and their bytes so far, latency since the
previous mark) and restarts the latency histogram, so the bench can measure a steady window.

    python -m bench.receiver --url mqtt://127.0.0.1:1883 --trust GW-ID=gw.pub.pem --timeout 30
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

from gateway.cli import build_parser
from gateway.receiver import cli as rcli
from gateway.receiver.core import Feed, Receiver


class _FirstBatch(Receiver):
    first_ok_ns = 0
    batch_bytes = 0  # every batch message's size: what the uplink carried, without its framing
    messages = 0

    def feed(self, data: bytes, topic_gateway: str | None = None) -> Feed:
        self.batch_bytes += len(data)
        self.messages += 1
        result = super().feed(data, topic_gateway)
        if result.status == "ok" and not self.first_ok_ns:
            self.first_ok_ns = time.time_ns()
        return result


async def _run(args: Any) -> dict[str, Any]:
    rx = _FirstBatch(rcli.load_trust(args.trust), keep_readings=False, latency=True)
    run = (rcli.CoapReceiveRun if rcli._is_coap(args.url) else rcli.ReceiveRun)(args, rx, None)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, run.done.set)

    def mark() -> None:  # SIGUSR1: a progress line (window start/end), then a fresh latency histogram
        s = rx.summary()
        print(json.dumps({"mark_ns": time.time_ns(), "readings": s.readings, "latency_ms": s.latency_ms,
                          "batch_bytes": rx.batch_bytes, "messages": rx.messages}), flush=True)
        assert rx.latency is not None
        rx.latency.clear()

    loop.add_signal_handler(signal.SIGUSR1, mark)
    task = asyncio.create_task(run.run())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.timeout or None):
            await run.done.wait()
    run.done.set()
    await task
    out = rx.summary().to_json()
    out["first_ok_ns"] = rx.first_ok_ns
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(["receive", "--out", "", *(sys.argv[1:] if argv is None else argv)])
    print(json.dumps(asyncio.run(_run(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
