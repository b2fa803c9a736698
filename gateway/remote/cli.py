"""`sensegate config push`, `sensegate command`, `sensegate status`: the ops side of remote config.

Each one connects to the broker, sends (or only listens), waits for the gateways' answers and
prints them; the exit status is 0 when every answer is good, 1 when one is not, 2 when answers
are missing after ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_OPS_DIR = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "sensegate"


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="broker, mqtt://HOST:PORT[/TOPIC-PREFIX] or mqtts://...")
    p.add_argument("--ca", default="", help="CA file for mqtts://")
    p.add_argument("--cert", default="", help="client certificate for mutual TLS")
    p.add_argument("--key", default="", help="client key for mutual TLS")
    p.add_argument("--username", default="")
    p.add_argument("--password", default="")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the answers")
    p.add_argument("--json", action="store_true", help="print the answers as JSON")


def _signing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign-key", default=str(DEFAULT_OPS_DIR / "ops.key"),
                   help="ops private key (made by `sensegate keys init --ops`)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", help="one gateway id")
    to.add_argument("--group", help="a fleet group (gateways list it under remote.groups)")
    p.add_argument("--expect", type=int, default=1, help="answers to wait for (with --group: the group's size)")


def add_parsers(sub: Any) -> None:
    """The `config push`, `command` and `status` subcommands."""
    cfg = sub.add_parser("config", help="push a signed config to a gateway or a group")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION")
    cfg_sub.required = True
    push = cfg_sub.add_parser("push", help="sign FILE with the ops key, push it, show each gateway's status")
    push.add_argument("file", help="the YAML config (identity may be left out: each gateway keeps its own)")
    push.add_argument("--revision", type=int, default=None, help="push revision (default: now, in ms)")
    push.add_argument("--retain", action="store_true", help="retain the push, for gateways that are offline now")
    push.add_argument("--no-check", action="store_true", help="skip the local validation")
    _signing_args(push)
    _broker_args(push)

    back = cfg_sub.add_parser("use-local", help="on a gateway: run the local config file again instead of a pushed one")
    back.add_argument("-c", "--config", default="/etc/sensegate/sensegate.yaml", help="the local config file")

    cmd = sub.add_parser("command", help="send a signed command and show the result")
    cmd.add_argument("op", choices=("ping", "write", "snapshot", "poll", "restart", "log_level", "rotate_key"))
    cmd.add_argument("args", nargs="*", metavar="NAME=VALUE",
                     help="arguments, e.g. instance=bus point=meter-1/relay value=true (values read as YAML)")
    cmd.add_argument("--ttl", type=float, default=60.0, help="seconds until the command expires")
    _signing_args(cmd)
    _broker_args(cmd)

    st = sub.add_parser("status", help="show gateways' online state and config status (retained)")
    st.add_argument("gateways", nargs="*", help="gateway ids (default: every gateway seen)")
    st.add_argument("--trust", action="append", default=[], metavar="DIR|FILE|GATEWAY-ID=FILE",
                    help="check each config status's signature against the gateway's bound key (as `sensegate "
                    "receive --trust`); unverified ones are marked, and the exit status is 1")
    _broker_args(st)
    st.set_defaults(wait=2.0)


def _broker(args: argparse.Namespace) -> Any:
    from gateway.remote.ops import Broker

    return Broker.from_url(args.url, ca_file=args.ca, cert_file=args.cert, key_file=args.key,
                           username=args.username, password=args.password)


def _sign_key(args: argparse.Namespace) -> Any:
    from gateway.keys import load_ops_key

    return load_ops_key(Path(args.sign_key))


def _local_check(raw: bytes, name: str) -> str:
    """Problems found by validating the document here, as `sensegate check --fleet` does."""
    from gateway.config import ConfigInvalid
    from gateway.config.fleet import check_fleet_document
    from gateway.registry import Registry

    try:
        _, refused = check_fleet_document(raw, Registry.discover(), name)
    except ConfigInvalid as e:
        return str(e)
    return "\n".join(f"{name}: {why}" for why in refused)


def _print(answers: Any, expect: int, as_json: bool, fields: tuple[str, ...]) -> int:
    if as_json:
        print(json.dumps({"answers": answers.by_gateway, "timed_out": answers.timed_out}, indent=2))
    else:
        for gw, body in sorted(answers.by_gateway.items()):
            extra = "  ".join(f"{f}={body[f]}" for f in fields if body.get(f) not in (None, ""))
            print(f"{gw}: {extra}")
    if len(answers.by_gateway) < expect:
        print(f"sensegate: {len(answers.by_gateway)} of {expect} answer(s) before the timeout", file=sys.stderr)
        return 2
    good = all(b.get("state", b.get("status")) in ("applied", "done") for b in answers.by_gateway.values())
    return 0 if good else 1


def config_push(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError
    from gateway.remote.ops import push_config

    try:
        raw = Path(args.file).read_bytes()
        key = _sign_key(args)
    except (OSError, KeyFileError) as e:
        print(f"sensegate config push: {e}", file=sys.stderr)
        return 2
    if not args.no_check:
        problems = _local_check(raw, args.file)
        if problems:
            print(problems, file=sys.stderr)
            print("sensegate config push: not pushed (the file does not validate here; --no-check to push anyway)",
                  file=sys.stderr)
            return 1
    rev, answers = asyncio.run(push_config(_broker(args), key, raw, to=args.to, group=args.group,
                                           revision=args.revision, expect=args.expect, within=args.wait,
                                           retain=args.retain))
    if not args.json:
        print(f"pushed revision {rev} to {args.to or 'group ' + args.group}")
    return _print(answers, args.expect, args.json, ("state", "revision", "reason", "running_revision", "config_sha256"))


def _value(text: str) -> Any:
    import yaml

    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return v if isinstance(v, bool | int | float | str) else text


def command(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError
    from gateway.remote.ops import send_command

    cmd_args: dict[str, Any] = {}
    for item in args.args:
        name, eq, text = item.partition("=")
        if not eq or not name:
            print(f"sensegate command: {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        cmd_args[name] = _value(text)
    try:
        key = _sign_key(args)
    except KeyFileError as e:
        print(f"sensegate command: {e}", file=sys.stderr)
        return 2
    cid, _, answers = asyncio.run(send_command(_broker(args), key, args.op, cmd_args, to=args.to, group=args.group,
                                               ttl=args.ttl, expect=args.expect, within=args.wait))
    if not args.json:
        print(f"command {cid}: {args.op} {cmd_args}")
    return _print(answers, args.expect, args.json, ("status", "result", "reason"))


def _verify_statuses(seen: dict[str, dict[str, Any]], specs: list[str]) -> list[str]:
    """Check each config status's signature (gateway/signedjson.py); the gateways whose status
    does not verify. Each entry gets ``"verified"``: true, or why not."""
    from gateway.receiver.trust import KeyBindings
    from gateway.signedjson import check

    trust = KeyBindings.from_specs(specs)
    bad = []
    for gw, entry in seen.items():
        if "config" not in entry:
            continue
        got = check(entry["config"], trust, gw, "config-status")
        entry["config"] = got.body
        entry["verified"] = True if got.verified else got.reason
        if not got.verified:
            bad.append(gw)
    return bad


def status(args: argparse.Namespace) -> int:
    from gateway.receiver.trust import TrustError
    from gateway.remote.ops import gateway_status

    seen = asyncio.run(gateway_status(_broker(args), args.gateways, within=args.wait))
    unverified: list[str] = []
    if args.trust:
        try:
            unverified = _verify_statuses(seen, args.trust)
        except TrustError as e:
            print(f"sensegate status: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(seen, indent=2))
    else:
        signed = f"{'SIGNED':<9} " if args.trust else ""
        print(f"{'GATEWAY':<20} {'ONLINE':<8} {'CONFIG':<12} {signed}{'REVISION':<15} {'SHA256':<13} REASON")
        for gw in sorted(seen):
            on = seen[gw].get("online", {}).get("state", "?")
            c = seen[gw].get("config", {})
            rev = c.get("running_revision")
            running = "local file" if rev is None and c else str(rev or "-")
            mark = ("-" if not c else "yes" if seen[gw].get("verified") is True else "NO") if args.trust else ""
            print(f"{gw:<20} {on:<8} {c.get('state', '-'):<12} {mark + ' ' * (10 - len(mark)) if args.trust else ''}"
                  f"{running:<15} {(c.get('config_sha256') or '-')[:12]:<13} {c.get('reason', '')}")
        for gw in sorted(unverified):
            print(f"sensegate status: the config status of {gw} is not verified: {seen[gw]['verified']}",
                  file=sys.stderr)
    missing = [g for g in args.gateways if g not in seen]
    if missing:
        print(f"sensegate status: nothing retained for {', '.join(missing)}", file=sys.stderr)
        return 2
    return 1 if unverified else 0
