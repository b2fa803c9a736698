"""`sensegate receive`: subscribe, verify, check continuity, print readings and a summary.

Exit status: 0 when everything received verified and no gap was found, 1 when the summary
shows gaps, bad signatures, forged or malformed batches or chain breaks, or when ``--count``
/ ``--batches`` asked for more than arrived; 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from gateway.keyevents import OpsKeyring
from gateway.keys import key_id
from gateway.mqtt import subscribe_forever
from gateway.receiver.clock import span_of
from gateway.receiver.core import Feed, Receiver, Summary
from gateway.receiver.mqtt import key_topic, receiver_settings, receiver_topics, topic_gateway
from gateway.receiver.trust import KeyBindings, TrustError, load_keys


def verdict(s: Summary, shortfall: str = "") -> str:
    """One line: OK, problems found, nothing received, or fewer than asked for (``shortfall``)."""
    if not s.ok:
        return "PROBLEMS FOUND"
    if shortfall:
        return f"INCOMPLETE: {shortfall}"
    if not s.received:
        return "NOTHING RECEIVED: no batch arrived"
    return "OK: complete and verified"


def format_summary(s: Summary, shortfall: str = "") -> str:
    """The human-readable summary."""
    lines = [
        f"batches:        {s.batches}",
        f"readings:       {s.readings}",
        f"gaps:           {s.gaps}" + (f"  {s.gap_ranges[:5]}" if s.gap_ranges else ""),
        f"dropped:        {s.dropped} (declared by the gateway)" + (f"  {s.drop_reasons}" if s.drop_reasons else ""),
        f"skipped:        {s.skipped} (numbers skipped after an unclean stop: lost in it, or never used)",
        f"duplicates:     {s.duplicates} batches, {s.duplicate_readings} readings",
        f"bad signatures: {s.bad_signatures}",
        f"forged:         {s.forged} (a key or topic of another gateway, or a key retired before the batch)",
        f"revoked:        {s.revoked} (batches signed with a key ops revoked)",
        f"key events:     {s.key_events} applied, {s.key_events_refused} refused",
        f"malformed:      {s.malformed}",
        f"reordered:      {s.reordered}",
        f"chain breaks:   {s.chain_breaks}",
        f"restarts:       {s.restarts}",
        f"blobs:          {s.blobs_verified} verified, {s.blobs_unreferenced} not (yet) in a batch, {s.blobs_bad} bad, "
        f"{s.blobs_dropped} declared dropped, {s.blobs_missing} not (yet) received",
        f"clock:          {s.time_uncertain} readings stamped on an unsynchronised clock, {s.time_redated} of them "
        f"re-dated; {s.clock_steps} clock steps",
        "verdict:        " + verdict(s, shortfall),
    ]
    return "\n".join(lines)


class ReceiveRun:
    """One run of the receiver over MQTT (the library part is gateway.receiver.core)."""

    failed = False  # the run could not start (exit status 2)

    def __init__(self, args: argparse.Namespace, receiver: Receiver, out: IO[str] | None) -> None:
        self.args = args
        self.rx = receiver
        self.out = out
        self.done = asyncio.Event()
        self.blob_dir = Path(args.blobs) if getattr(args, "blobs", "") else None
        if self.blob_dir is not None:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._transport_init(args)

    def _transport_init(self, args: argparse.Namespace) -> None:
        """MQTT: the topic prefix and the session settings."""
        parts = urlsplit(args.url)
        self.prefix = parts.path.strip("/") or "sensegate"
        self.settings = receiver_settings(
            args.url, client_id=getattr(args, "client_id", "") or "", ca_file=args.ca, cert_file=args.cert,
            key_file=args.key, username=args.username, password=args.password)

    def on_message(self, msg: Any) -> None:
        topic: str = msg.topic
        about = key_topic(topic)
        if about is not None:
            self.rx.feed_keys(bytes(msg.payload), about[1] or None, ops=about[0] == "ops")
            self._key_log()
            return
        if "/blob/" in topic:
            sha_hex = topic.rsplit("/", 1)[-1]
            if self.rx.feed_blob(sha_hex, bytes(msg.payload)) == "verified" and self.blob_dir is not None:
                ctype, data = self.rx.blobs[sha_hex]
                ext = {"image/jpeg": ".jpg", "image/png": ".png"}.get(ctype, ".bin")
                (self.blob_dir / f"{sha_hex}{ext}").write_bytes(data)
            return
        self.on_batch(bytes(msg.payload), topic_gateway(topic))

    def _key_log(self) -> None:
        """Say on stderr what key events did (learned rotations, revocations, refusals)."""
        for line in self.rx.key_log:
            print(f"receive: {line}", file=sys.stderr, flush=True)
        self.rx.key_log.clear()

    def on_batch(self, payload: bytes, topic_gw: str | None = None) -> Feed:
        result: Feed = self.rx.feed(payload, topic_gw)
        if self.rx.key_log:
            self._key_log()
        if result.status == "ok" and self.out is not None:
            lines = []
            for r in result.readings:
                d = r.to_json()
                d["gw"] = result.gateway
                d["bseq"] = result.bseq
                span = span_of(result.time, r.seq) if result.time else None
                if span is not None and not span.synced:  # the original time stays; the corrected one beside it
                    d["t_synced"] = False
                    if span.shift_ns is not None:
                        d["t_fixed_ns"] = r.ts_ns + span.shift_ns
                lines.append(json.dumps(d, separators=(",", ":")))
            for x in result.redated:  # readings printed before, re-dated now
                lines.append(json.dumps({"redate": {"gw": x.gateway, "st": x.stream, "first": x.first,
                                                    "last": x.last, "shift_ns": x.shift_ns}}, separators=(",", ":")))
            if lines:
                self.out.write("\n".join(lines) + "\n")
                self.out.flush()
        elif result.status != "ok":
            print(f"receive: batch rejected ({result.status}): {result.reason}", file=sys.stderr)
        s = self.rx.summary()
        a = self.args
        if (a.count and s.readings >= a.count) or (a.batches and s.batches >= a.batches):
            self.done.set()
        return result

    async def run(self) -> None:
        topics = receiver_topics(self.prefix, revocations=bool(self.rx.ops_keys.anchor))
        sub = asyncio.ensure_future(subscribe_forever(
            self.settings, topics, self.on_message, backoff=(0.5, 10.0),
            on_error=lambda e: print(f"receive: {e}; retrying", file=sys.stderr)))
        try:
            await self.done.wait()
        finally:
            sub.cancel()
            await asyncio.gather(sub, return_exceptions=True)


class CoapReceiveRun(ReceiveRun):
    """The receiver as a CoAP server (coap://, coap+tcp://, coaps+tcp://; OSCORE with --oscore)."""

    def _transport_init(self, args: argparse.Namespace) -> None:
        """CoAP: the server is set up in run()."""

    def on_blob(self, sha_hex: str, payload: bytes) -> str:
        status: str = self.rx.feed_blob(sha_hex, payload)
        if status == "verified" and self.blob_dir is not None:
            ctype, data = self.rx.blobs[sha_hex]
            ext = {"image/jpeg": ".jpg", "image/png": ".png"}.get(ctype, ".bin")
            (self.blob_dir / f"{sha_hex}{ext}").write_bytes(data)
        return status

    async def run(self) -> None:
        from gateway.coap import CoapError
        from gateway.receiver.coap import CoapReceiverServer

        a = self.args
        server = CoapReceiverServer(a.url, self.on_batch, self.rx, on_blob=self.on_blob,
                                    oscore=getattr(a, "oscore", "") or "", cert_file=a.cert, key_file=a.key,
                                    ca_file=a.ca)
        try:
            await server.start()
        except CoapError as e:
            print(f"receive: {e}", file=sys.stderr)
            self.failed = True
            self.done.set()
            return
        print(f"receive: listening on {server.url}" + (" (OSCORE required)" if server.require_oscore else ""),
              file=sys.stderr, flush=True)
        try:
            await self.done.wait()
            await asyncio.sleep(0.2)  # let the answer to the last batch leave before the socket closes
        finally:
            await server.close()


def _is_coap(url: str) -> bool:
    return url.startswith(("coap://", "coap+tcp://", "coaps+tcp://"))


def load_trust(specs: list[str]) -> KeyBindings:
    """The --trust values as bindings (gateway id -> keys); exit 2 with the reason when unusable."""
    try:
        trust = KeyBindings.from_specs(specs)
    except TrustError as e:
        print(f"receive: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    bound = trust.gateways
    names = ", ".join(sorted(bound)[:5]) + (f" and {len(bound) - 5} more" if len(bound) > 5 else "")
    print(f"receive: trusting {len(bound)} gateway(s): {names}", file=sys.stderr)
    return trust


def load_ops_trust(specs: list[str]) -> OpsKeyring:
    """The --ops-trust values (PEM files, or directories of *.pem): the ops keys whose key
    revocations and ops key rotations this receiver applies; exit 2 when one is unusable."""
    keys: dict[bytes, Any] = {}
    try:
        for spec in specs:
            path = Path(spec)
            files = sorted(path.glob("*.pem")) if path.is_dir() else [path]
            if not files:
                raise TrustError(f"{path} holds no *.pem ops public keys")
            for f in files:
                keys.update((key_id(k), k) for k in load_keys(f))
    except TrustError as e:
        print(f"receive: --ops-trust: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if keys:  # without: rotations are applied, revocations are not (docs/security.md)
        print(f"receive: applying key revocations signed by {len(keys)} ops key(s)", file=sys.stderr)
    return OpsKeyring(keys)


def shortfall(args: argparse.Namespace, s: Summary) -> str:
    """What --count / --batches asked for and did not get ("" when reached or not asked)."""
    if args.count and s.readings < args.count:
        return f"{s.readings} of {args.count} readings arrived"
    if args.batches and s.batches < args.batches:
        return f"{s.batches} of {args.batches} batches arrived"
    return ""


async def _main(args: argparse.Namespace) -> Summary:
    rx = Receiver(load_trust(args.trust), keep_readings=bool(args.out),
                  latency=bool(getattr(args, "latency", False)),
                  ops_keys=load_ops_trust(getattr(args, "ops_trust", None) or []))
    out: IO[str] | None = None
    if args.out == "-":
        out = sys.stdout
    elif args.out:
        out = open(args.out, "a", encoding="utf-8")  # noqa: SIM115, ASYNC230 (opened once, before any I/O)
    run = (CoapReceiveRun if _is_coap(args.url) else ReceiveRun)(args, rx, out)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, run.done.set)
    task = asyncio.create_task(run.run())
    try:
        if args.timeout:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(args.timeout):
                    await run.done.wait()
        else:
            await run.done.wait()
    finally:
        run.done.set()
        await task
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if out is not None and out is not sys.stdout:
            out.close()
    if run.failed:
        raise SystemExit(2)
    return rx.summary()


def main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate receive`."""
    if not args.url.startswith(("mqtt://", "mqtts://")) and not _is_coap(args.url):
        print("receive: --url must be mqtt://HOST:PORT[/PREFIX], mqtts://..., coap://HOST:PORT[/PATH], "
              "coap+tcp://... or coaps+tcp://...", file=sys.stderr)
        return 2
    if getattr(args, "oscore", "") and not _is_coap(args.url):
        print("receive: --oscore only applies to coap URLs", file=sys.stderr)
        return 2
    summary = asyncio.run(_main(args))
    short = shortfall(args, summary)
    if args.json:
        d = summary.to_json()
        d["verdict"] = verdict(summary, short)
        print(json.dumps(d))
    else:
        print(format_summary(summary, short), file=sys.stdout if args.out != "-" else sys.stderr)
    return 0 if summary.ok and not short else 1
