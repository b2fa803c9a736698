"""`sensegate config push`, `sensegate command`, `sensegate status`: the ops side of remote config.

Each one connects to the broker, sends (or only listens), waits for the gateways' answers and
prints them; the exit status is 0 when every answer is good, 1 when one is not, 2 when answers
are missing after ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.fleet.rolloutcli import add_rollout_args
from gateway.remote.profile import CONFIG_HOME, add_profile_arg

DEFAULT_OPS_DIR = CONFIG_HOME


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None, help="broker, mqtt://HOST:PORT[/TOPIC-PREFIX] or mqtts://... "
                   "(default: the profile's)")
    p.add_argument("--ca", default=None, help="CA file for mqtts://")
    p.add_argument("--cert", default=None, help="client certificate for mutual TLS")
    p.add_argument("--key", default=None, help="client key for mutual TLS")
    p.add_argument("--username", default=None)
    p.add_argument("--password", default="")
    p.add_argument("--password-file", default=None, help="file holding the broker password")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the answers")
    p.add_argument("--json", action="store_true", help="print the answers as JSON")
    add_profile_arg(p)


def _signing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sign-key", default=None,
                   help="ops private key (made by `sensegate keys init --ops`; default: the profile's, else "
                   f"{DEFAULT_OPS_DIR / 'ops.key'})")
    to = p.add_mutually_exclusive_group()
    to.add_argument("--to", help="one gateway id")
    to.add_argument("--group", help="a fleet group (gateways list it under remote.groups; default: the profile's)")
    p.add_argument("--expect", type=int, default=None,
                   help="answers to wait for (default 1; with --group: the group's size as last seen on the broker)")


def prepare(args: argparse.Namespace, name: str, target: bool = True) -> str:
    """Fill the arguments from the profile (flags win); the problem in words, or ''."""
    from gateway.remote.profile import ProfileError, apply

    try:
        apply(args)
    except ProfileError as e:
        return f"sensegate {name}: {e}"
    if not args.url:
        return f"sensegate {name}: no broker: give --url, or make a profile with `sensegate ops init NAME --url ...`"
    if target and not (getattr(args, "to", None) or getattr(args, "group", None)):
        return f"sensegate {name}: give --to GATEWAY or --group GROUP (or a default group in the profile)"
    return ""


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
    add_rollout_args(push)

    back = cfg_sub.add_parser("use-local", help="on a gateway: run the local config file again instead of a pushed one")
    back.add_argument("-c", "--config", default="/etc/sensegate/sensegate.yaml", help="the local config file")

    cmd = sub.add_parser("command", help="send a signed command and show the result")
    cmd.add_argument("op", choices=("ping", "write", "snapshot", "poll", "restart", "log_level", "rotate_key",
                                    "revert"))
    cmd.add_argument("args", nargs="*", metavar="NAME=VALUE",
                     help="arguments, e.g. instance=bus point=meter-1/relay value=true (values read as YAML)")
    cmd.add_argument("--ttl", type=float, default=60.0, help="seconds until the command expires")
    _signing_args(cmd)
    _broker_args(cmd)
    add_rollout_args(cmd)

    st = sub.add_parser("status", help="show gateways' online state and config status (retained)")
    st.add_argument("gateways", nargs="*", help="gateway ids (default: every gateway seen)")
    st.add_argument("--trust", action="append", default=[], metavar="DIR|FILE|GATEWAY-ID=FILE",
                    help="check each config status's signature against the gateway's bound key (as `sensegate "
                    "receive --trust`); unverified ones are marked, and the exit status is 1")
    _broker_args(st)
    st.set_defaults(wait=2.0)


def _broker(args: argparse.Namespace) -> Any:
    from gateway.remote.ops import Broker

    password = args.password
    if not password and args.password_file:
        password = Path(args.password_file).read_text().strip()
    return Broker.from_url(args.url, ca_file=args.ca or "", cert_file=args.cert or "", key_file=args.key or "",
                           username=args.username or "", password=password)


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


def outcome_summary(answers: dict[str, dict[str, Any]], expected: list[str],
                    expect: int = 0) -> tuple[list[str], int]:
    """Lines naming who rolled back, was refused, failed or did not answer; and the exit status
    (0 all good, 1 one was not, 2 answers missing). ``expect``: how many, where not all are named."""
    by: dict[str, list[str]] = {}
    for gw, body in sorted(answers.items()):
        by.setdefault(str(body.get("state", body.get("status"))), []).append(gw)
    silent = sorted(g for g in expected if g not in answers)
    unnamed = max(0, expect - len(answers) - len(silent))
    if unnamed:
        silent.append(f"{unnamed} more (not named: pass --to, or see `sensegate fleet status`)")
    lines = []
    for state in ("rolled_back", "rejected", "refused", "failed"):
        for gw in by.get(state, []):
            lines.append(f"{state.upper().replace('_', ' ')}: {gw}: {answers[gw].get('reason', '')}")
    if silent:
        lines.append(f"NO ANSWER: {', '.join(silent)}")
    counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}"
                       + (f" ({', '.join(v)})" if k not in ("applied", "done") else "") for k, v in sorted(by.items()))
    lines.append(f"{len(answers)} of {max(len(expected), expect, len(answers))} answered: {counts or 'none'}"
                 + (f"; no answer from {', '.join(silent)}" if silent else ""))
    good = all(k in ("applied", "done") for k in by)
    return lines, 2 if silent else 0 if good else 1


def _print(answers: Any, expected: list[str], as_json: bool, fields: tuple[str, ...], expect: int = 0) -> int:
    lines, status = outcome_summary(answers.by_gateway, expected, expect)
    if as_json:
        silent = sorted(g for g in expected if g not in answers.by_gateway)
        print(json.dumps({"answers": answers.by_gateway, "no_answer": silent, "timed_out": answers.timed_out},
                         indent=2))
    else:
        for gw, body in sorted(answers.by_gateway.items()):
            extra = "  ".join(f"{f}={body[f]}" for f in fields if body.get(f) not in (None, ""))
            print(f"{gw}: {extra}")
        for line in lines:
            print(line)
    return status


def _expected(args: argparse.Namespace) -> list[str]:
    """Who must answer, by name: the gateway named, or the group's members as their health
    summaries say (``--all-at-once``); ``args.expect`` defaults to their number."""
    if args.to:
        names = [args.to]
    else:
        from gateway.fleet.view import snapshot
        from gateway.mqtt import MqttError

        try:
            names = [r.gateway for r in asyncio.run(snapshot(_broker(args))).rows(None, args.group)]
        except MqttError:
            names = []
    args.expect = args.expect or len(names) or 1
    return names


def config_push(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError
    from gateway.remote.ops import push_config

    problem = prepare(args, "config push")
    if problem:
        print(problem, file=sys.stderr)
        return 2
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
    if args.group and not args.all_at_once:
        from gateway.fleet.kinds import ConfigKind
        from gateway.fleet.rolloutcli import start

        rev = args.revision if args.revision is not None else int(time.time() * 1000)
        return start(args, ConfigKind(raw, rev, Path(args.file).name), key, f"config {args.file} revision {rev}")
    expected = _expected(args)
    rev, answers = asyncio.run(push_config(_broker(args), key, raw, to=args.to, group=args.group,
                                           revision=args.revision, expect=args.expect, within=args.wait,
                                           retain=args.retain))
    if not args.json:
        print(f"pushed revision {rev} to {args.to or 'group ' + args.group}")
    return _print(answers, expected, args.json,
                  ("state", "revision", "reason", "running_revision", "config_sha256"), args.expect)


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

    problem = prepare(args, "command")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    cmd_args: dict[str, Any] = {}
    for item in args.args:
        name, eq, text = item.partition("=")
        if not eq or not name:
            print(f"sensegate command: {item!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        cmd_args[name] = _value(text)
    try:
        key = _sign_key(args)
    except (OSError, KeyFileError) as e:
        print(f"sensegate command: {e}", file=sys.stderr)
        return 2
    if args.group and not args.all_at_once:
        import secrets

        from gateway.fleet.kinds import CommandKind
        from gateway.fleet.rolloutcli import start

        kind = CommandKind(args.op, cmd_args, f"c{int(time.time())}-{secrets.token_hex(4)}", args.ttl)
        return start(args, kind, key, kind.describe())
    expected = _expected(args)
    cid, _, answers = asyncio.run(send_command(_broker(args), key, args.op, cmd_args, to=args.to, group=args.group,
                                               ttl=args.ttl, expect=args.expect, within=args.wait))
    if not args.json:
        print(f"command {cid}: {args.op} {cmd_args}")
    return _print(answers, expected, args.json, ("status", "result", "reason"), args.expect)


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

    problem = prepare(args, "status", target=False)
    if problem:
        print(problem, file=sys.stderr)
        return 2
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
