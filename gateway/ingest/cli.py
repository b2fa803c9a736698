"""`sensegate ingest` (a worker) and `sensegate fleet enrol|revoke|keys|report` (ops on its database).

Exit status of `fleet report`: 0 when every gateway is complete, 1 when readings are missing or a
chain is broken, 2 when the database cannot be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.ingest.contract import DEFAULT_TAIL_GRACE
from gateway.ingest.stores import DEFAULT_DB, NeedsExtra, open_storage

log = logging.getLogger("sensegate.ingest")


def add_parsers(sub: Any) -> None:
    """The `ingest` and `fleet` subcommands."""
    ing = sub.add_parser("ingest", help="fleet ingest: verify batches from the broker, store them exactly once")
    ing.add_argument("--db", default=DEFAULT_DB,
                     help=f"sqlite:PATH or postgresql://USER@HOST:PORT/DB (default {DEFAULT_DB})")
    ing.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                     help="nats://HOST:PORT[,nats://HOST:PORT...] (a NATS cluster with MQTT) or mqtt://HOST:PORT")
    ing.add_argument("--prefix", default="sensegate", help="the gateways' topic prefix")
    ing.add_argument("--name", default="sensegate-ingest",
                     help="durable consumer (NATS) or client id (MQTT) shared by the workers of one ingest")
    ing.add_argument("--metrics", default="", help="serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9118)")
    ing.add_argument("--fetch", type=int, default=64, help="messages per fetch and per transaction")
    ing.add_argument("--db-timeout", type=float, default=20.0, help="seconds before a silent database counts as down")
    ing.add_argument("--key-grace", type=float, default=30.0, help="days a replaced key still verifies")
    ing.add_argument("--tail-grace", type=float, default=DEFAULT_TAIL_GRACE, help="seconds after a heartbeat "
                     "before the readings it says had left the gateway and that never arrived count as missing "
                     "(in the metrics)")
    ing.add_argument("--ca", default="", help="MQTT: CA file for mqtts://")
    ing.add_argument("--cert", default="", help="MQTT: client certificate")
    ing.add_argument("--key", default="", help="MQTT: client key")
    ing.add_argument("--username", default="")
    ing.add_argument("--password", default="")
    ing.add_argument("--fleet-url", default="",
                     help="serve the fleet page at /fleet of --metrics, reading the gateways' health from this MQTT "
                     "broker (default: --broker when it is mqtt://); each row shows the ledger's verdict")
    ing.add_argument("--fleet-trust", action="append", default=[], metavar="DIR|FILE|GATEWAY-ID=FILE",
                     help="bound keys to check the health summaries on the fleet page (as `fleet status --trust`)")
    ing.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))

    fleet = sub.add_parser("fleet", help="the ingest's registry and ledgers: enrol keys, revoke, report; "
                           "simulate a fleet")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="ACTION")
    fleet_sub.required = True
    enrol = fleet_sub.add_parser("enrol", help="bind gateways' public keys (GATEWAY-ID.pub.pem from provision)")
    enrol.add_argument("keys", nargs="+", metavar="PUB.pem", help="public key files (or directories of "
                       "*.pub.pem); the gateway id is the file name before .pub.pem unless --gateway is given")
    enrol.add_argument("--gateway", default="", help="the gateway the key(s) belong to")
    enrol.add_argument("--replaces", default="", metavar="KID", help="hex kid of the key this one replaces (rotation)")
    revoke = fleet_sub.add_parser("revoke", help="stop trusting a gateway's key (or all its keys)")
    revoke.add_argument("--gateway", required=True)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--kid", default="", help="hex kid of the key")
    which.add_argument("--all", action="store_true", help="every key of the gateway")
    revoke.add_argument("--reason", required=True, help="why (kept in the registry, shown to ops)")
    keys = fleet_sub.add_parser("keys", help="list enrolled keys")
    keys.add_argument("--gateway", default="")
    keys.add_argument("--json", action="store_true")
    report = fleet_sub.add_parser("report", help="per gateway: received, dropped, skipped, missing, chain, verdict")
    report.add_argument("--gateway", default="")
    report.add_argument("--json", action="store_true")
    report.add_argument("--grace", type=float, default=DEFAULT_TAIL_GRACE, help="seconds after a heartbeat before "
                        "the readings it says had left the gateway and that never arrived count as missing")
    for p in (enrol, revoke, keys, report):
        p.add_argument("--db", default=DEFAULT_DB, help="the ingest's database (sqlite:PATH or postgresql://...)")
    from gateway.fleet.cli import add_fleet_parsers

    add_fleet_parsers(fleet_sub)  # fleet status, fleet web (the gateways' own health summaries)
    _add_simulate(fleet_sub)


def _add_simulate(fleet_sub: Any) -> None:
    """`sensegate fleet simulate` (gateway/ingest/simulator/)."""
    p = fleet_sub.add_parser("simulate", help="play N gateways in one process, publishing signed batches")
    p.add_argument("--gateways", type=int, required=True, help="how many gateways")
    p.add_argument("--rate", type=float, required=True, help="readings per second, the whole fleet (0: as fast as "
                   "the broker takes them, --batch-readings per batch)")
    p.add_argument("--batch-readings", type=int, default=100, help="with --rate 0: readings per batch")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://HOST:PORT (mosquitto, or a NATS MQTT "
                   "listener); several, comma-separated, spread the gateways over them")
    p.add_argument("--keys", default="sensegate-sim-keys", help="directory of the gateways' keys (ID.key, ID.pub.pem); "
                   "made on first use: enrol it with `sensegate fleet enrol --db DB DIR`")
    p.add_argument("--export-only", action="store_true", help="make the keys and print the enrol command; publish "
                   "nothing")
    p.add_argument("--prefix", default="sensegate", help="topic prefix")
    p.add_argument("--id-prefix", default="sim", help="gateway ids are PREFIX-00001 ...")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to run")
    p.add_argument("--readings", type=int, default=0, help="stop after this many readings instead")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between two batches of a gateway")
    p.add_argument("--connections", type=int, default=0, help="MQTT connections shared by the gateways "
                   "(default: one per gateway, at most 64)")
    p.add_argument("--drop-rate", type=float, default=0.0, help="chance per batch of a declared drop before it")
    p.add_argument("--unclean-rate", type=float, default=0.0, help="chance per batch of an unclean stop")
    p.add_argument("--resend-rate", type=float, default=0.0, help="chance per batch of a batch sent again")
    p.add_argument("--forgers", type=int, default=0, help="forgers publishing in enrolled gateways' names")
    p.add_argument("--lose-tail", type=int, default=0, metavar="N",
                   help="the first N gateways' last batch never reaches the broker")
    p.add_argument("--heartbeat", type=float, default=10.0, help="seconds between a gateway's signed heartbeats "
                   "(0: only one, at the end)")
    p.add_argument("--points", type=int, default=4, help="points per gateway")
    p.add_argument("--seed", type=int, default=None, help="random seed (the same seed, the same events)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--summary", default="", help="write the JSON summary to this file")


# -- sensegate ingest ------------------------------------------------------------------------------


def ingest_main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate ingest`."""
    from gateway.logs import setup_logging

    setup_logging(args.log_level)
    try:
        return asyncio.run(_ingest(args))
    except (NeedsExtra, ValueError) as e:
        print(f"sensegate ingest: {e}", file=sys.stderr)
        return 2


async def _ingest(args: argparse.Namespace) -> int:
    from gateway.ingest.metrics import IngestMetrics, IngestMetricsServer
    from gateway.ingest.sources import open_source
    from gateway.ingest.worker import Worker, WorkerSettings

    storage = open_storage(args.db, timeout=args.db_timeout)
    tls = {k: v for k, v in (("ca_file", args.ca), ("cert_file", args.cert), ("key_file", args.key),
                             ("username", args.username), ("password", args.password)) if v}
    source = open_source(args.broker, prefix=args.prefix, client_id=args.name, **tls)
    metrics = IngestMetrics(worker=args.name)
    worker = Worker(source, storage, WorkerSettings(fetch=max(1, args.fetch), grace=args.key_grace * 86400,
                                                    tail_grace=args.tail_grace, prefix=args.prefix), metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    fleet = _fleet_page(args, storage)
    server = IngestMetricsServer(metrics, fleet)
    if args.metrics:
        await server.apply(True, args.metrics)
        if fleet is not None:
            await fleet.start()
    try:
        await worker.run(stop)
    finally:
        await server.close()
        if fleet is not None:
            await fleet.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _fleet_page(args: argparse.Namespace, storage: Any) -> Any:
    """The fleet page (gateway/fleet/web.py) with this ingest's completeness verdicts, when asked for."""
    url = args.fleet_url or (args.broker if args.broker.startswith(("mqtt://", "mqtts://")) else "")
    if not url or not args.metrics:
        return None
    from gateway.fleet.web import FleetPage
    from gateway.ingest.ledger import summarize
    from gateway.remote.ops import Broker

    async def verdicts() -> dict[str, str]:
        found = summarize(await storage.ledgers(None), await storage.refusals(None))
        return {s.gateway: s.verdict() for s in found}

    trust = None
    if args.fleet_trust:
        from gateway.receiver.trust import KeyBindings

        trust = KeyBindings.from_specs(args.fleet_trust)
    broker = Broker.from_url(url if urlsplit(url).path.strip("/") else url.rstrip("/") + "/" + args.prefix,
                             ca_file=args.ca, cert_file=args.cert, key_file=args.key, username=args.username,
                             password=args.password)
    return FleetPage(broker, trust, verdicts)


# -- sensegate fleet ---------------------------------------------------------------------------------


def fleet_main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate fleet ...`."""
    if args.fleet_command in ("status", "web"):
        from gateway.fleet.cli import fleet_view_main

        return fleet_view_main(args)
    if args.fleet_command == "simulate":
        from gateway.ingest.simulator.run import simulate_main

        return simulate_main(args)
    try:
        return asyncio.run(_fleet(args))
    except (NeedsExtra, ValueError) as e:
        print(f"sensegate fleet {args.fleet_command}: {e}", file=sys.stderr)
        return 2


async def _fleet(args: argparse.Namespace) -> int:
    from gateway.ingest.contract import StorageUnavailable

    storage = open_storage(args.db)
    try:
        await storage.open()
        command = {"enrol": _enrol, "revoke": _revoke, "keys": _keys, "report": _report}[args.fleet_command]
        return await command(storage, args)
    except StorageUnavailable as e:
        print(f"sensegate fleet {args.fleet_command}: {e}", file=sys.stderr)
        return 2
    finally:
        await storage.close()


async def _enrol(storage: Any, args: argparse.Namespace) -> int:
    status = 0
    files: list[Path] = []
    for name in args.keys:
        path = Path(name)
        found = sorted(path.glob("*.pub.pem")) if path.is_dir() else [path]  # noqa: ASYNC240 (a local listing)
        if not found:
            print(f"{path}: no *.pub.pem in it", file=sys.stderr)
            status = 1
        files += found
    keys: list[tuple[Path, str, str]] = []
    for path in files:
        gateway = args.gateway or path.name.removesuffix(".pem").removesuffix(".pub")
        try:
            keys.append((path, gateway, await asyncio.to_thread(path.read_text)))
        except (OSError, UnicodeDecodeError) as e:
            print(f"{path}: cannot read: {e}", file=sys.stderr)
            status = 1
    if args.replaces:  # a rotation: one key, replacing one
        results: list[Any] = []
        for _, gateway, pem in keys:
            try:
                results.append(await storage.enrol(gateway, pem, bytes.fromhex(args.replaces)))
            except ValueError as e:
                results.append(str(e))
    else:  # a fleet's export: one transaction
        results = await storage.enrol_many([(gateway, pem) for _, gateway, pem in keys]) if keys else []
    for (path, gateway, _), rec in zip(keys, results, strict=True):
        if isinstance(rec, str):
            print(f"{path}: {rec}", file=sys.stderr)
            status = 1
            continue
        what = f", replacing {args.replaces}" if args.replaces else ""
        print(f"enrolled {path} for gateway {gateway}: kid {rec.kid.hex()} ({rec.alg}){what}")
    return status


async def _revoke(storage: Any, args: argparse.Namespace) -> int:
    kid = None if args.all else bytes.fromhex(args.kid)
    n = await storage.revoke(args.gateway, kid, args.reason)
    print(f"revoked {n} key(s) of gateway {args.gateway}")
    return 0 if n else 1


async def _keys(storage: Any, args: argparse.Namespace) -> int:
    from gateway.ingest.report import when

    snapshot = await storage.registry(-1)
    records = sorted((r for r in snapshot[1] if not args.gateway or r.gateway == args.gateway) if snapshot else [],
                     key=lambda r: (r.gateway, r.enrolled_ns))
    rows = [{"gateway": r.gateway, "kid": r.kid.hex(), "alg": r.alg, "enrolled": when(r.enrolled_ns),
             "state": ("revoked" if r.revoked_ns else "replaced" if r.replaced_ns else "active"),
             "revoked": when(r.revoked_ns), "reason": r.revoked_reason,
             "replaced_by": r.replaced_by.hex(), "replaced": when(r.replaced_ns)} for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'GATEWAY':<24} {'KID':<32} {'ALG':<8} {'STATE':<9} SINCE")
    for r in rows:
        since = r["revoked"] or r["replaced"] or r["enrolled"]
        note = f"  {r['reason']}" if r["reason"] else (f"  by {r['replaced_by']}" if r["replaced_by"] else "")
        print(f"{r['gateway']:<24} {r['kid']:<32} {r['alg']:<8} {r['state']:<9} {since}{note}")
    return 0


async def _report(storage: Any, args: argparse.Namespace) -> int:
    from gateway.ingest.ledger import summarize
    from gateway.ingest.report import format_report, report_json

    summaries = summarize(await storage.ledgers(args.gateway or None), await storage.refusals(args.gateway or None),
                          grace=args.grace)
    print(json.dumps(report_json(summaries), indent=2) if args.json else format_report(summaries, args.grace))
    return 0 if all(s.verdict() in ("complete", "nothing received") for s in summaries) else 1


