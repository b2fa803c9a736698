"""`sensegate fleet status` and `sensegate fleet web`: the fleet view in the terminal and in a browser.

Exit status of `fleet status`: 0 when every gateway shown is online with its drivers up (and its
summary verified, with --trust), 1 when one is not, 2 when the broker or the trust files cannot
be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

STATES = ("online", "offline", "stale", "unknown", "degraded")


def add_fleet_parsers(fleet_sub: Any) -> None:
    """`fleet status` and `fleet web`, beside the ingest's `fleet report` and friends."""
    from gateway.remote.cli import _broker_args

    st = fleet_sub.add_parser("status", help="per gateway: online or last seen, agent, config, drivers, buffer, "
                              "last acknowledged batch, clock, disk (from the signed health summaries)")
    st.add_argument("gateways", nargs="*", help="gateway ids (default: every gateway seen)")
    st.add_argument("--group", default=None, help="only this group's gateways (default: the profile's; "
                    "--group '' for all)")
    st.add_argument("--state", choices=STATES, default=None, help="only gateways in this state (degraded: online "
                    "with a driver down)")
    _trust_arg(st)
    _broker_args(st)
    st.set_defaults(wait=5.0)

    web = fleet_sub.add_parser("web", help="serve the fleet page (a table with filters) where no ingest runs")
    web.add_argument("--listen", default="127.0.0.1:8088", help="HOST:PORT (no authentication: keep it local)")
    web.add_argument("--group", default=None, help="preselect this group in the page")
    _trust_arg(web)
    _broker_args(web)


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust", action="append", default=[], metavar="DIR|FILE|GATEWAY-ID=FILE",
                   help="check each health summary's signature against the gateway's bound key (as `sensegate "
                   "status --trust`; default: the profile's)")


def fleet_view_main(args: argparse.Namespace) -> int:
    """Entry point for `fleet status` and `fleet web`."""
    from gateway.receiver.trust import TrustError
    from gateway.remote.cli import _broker, prepare

    explicit_all = args.group == ""
    problem = prepare(args, f"fleet {args.fleet_command}", target=False)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if explicit_all:
        args.group = None
    try:
        trust = _trust(args.trust)
    except TrustError as e:
        print(f"sensegate fleet {args.fleet_command}: {e}", file=sys.stderr)
        return 2
    if args.fleet_command == "web":
        from gateway.fleet.web import serve

        served: int = asyncio.run(serve(_broker(args), trust, args.listen, args.group))
        return served
    return asyncio.run(_status(args, _broker(args), trust))


def _trust(specs: list[str]) -> Any:
    if not specs:
        return None
    from gateway.receiver.trust import KeyBindings

    return KeyBindings.from_specs(specs)


def select(rows: list[Any], gateways: list[str], state: str | None) -> list[Any]:
    """The rows asked for: by id, and by state (``degraded``: online with a driver down)."""
    if gateways:
        rows = [r for r in rows if r.gateway in gateways]
    if state == "degraded":
        return [r for r in rows if r.state == "online" and r.down]
    return [r for r in rows if state is None or r.state == state]


async def _status(args: argparse.Namespace, broker: Any, trust: Any) -> int:
    from gateway.fleet.table import format_table
    from gateway.fleet.view import snapshot
    from gateway.mqtt import MqttError

    try:
        watch = await snapshot(broker, within=args.wait)
    except MqttError as e:
        print(f"sensegate fleet status: {e}", file=sys.stderr)
        return 2
    rows = select(watch.rows(trust, args.group), args.gateways, args.state)
    if args.json:
        print(json.dumps({"group": args.group, "gateways": [r.as_json() for r in rows]}, indent=2))
    else:
        if args.group:
            print(f"group {args.group}")
        print(format_table(rows, signed=trust is not None))
    missing = [g for g in args.gateways if g not in {r.gateway for r in rows}]
    if missing:
        print(f"sensegate fleet status: nothing retained for {', '.join(missing)}", file=sys.stderr)
        return 2
    return 0 if all(r.healthy for r in rows) else 1
