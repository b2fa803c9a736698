"""`config push --group`, `command --group` and `agent update --group` as rollouts, and
`sensegate rollout list|status|resume|abort|rollback`.

Exit status: 0 every gateway took it; 1 the rollout stopped (failures past the threshold) or ended
with failures; 2 bad arguments or the broker cannot be reached; 3 done except gateways still
pending (offline: they take it when they return).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.units import parse_duration

REVERT_TTL = 600.0  # a rollback's revert commands expire then (within any gateway's remote.max_command_ttl)


def add_rollout_args(p: argparse.ArgumentParser) -> None:
    """The wave options of every rolled-out command."""
    g = p.add_argument_group("rollout (with --group)")
    g.add_argument("--canary", type=int, default=1, help="gateways in the canary wave, the first online ones by id "
                   "(default 1; 0: none)")
    g.add_argument("--canary-gateways", default="", metavar="GW[,GW...]",
                   help="these gateways are the canary (e.g. the lab gateway and one in the street)")
    g.add_argument("--wave-size", type=int, default=10, help="gateways per wave after the canary (default 10)")
    g.add_argument("--max-failures", type=int, default=0,
                   help="failures (rejected, rolled back, no answer) tolerated before the rollout stops; "
                   "any failure in the canary stops it (default 0)")
    g.add_argument("--wave-timeout", type=parse_duration, default=120.0,
                   help="longest wait for a wave's answers (default 120s)")
    g.add_argument("--expires", type=parse_duration, default=7 * 86400.0,
                   help="offline gateways take the document until then (default 7d)")
    g.add_argument("--wait-pending", type=parse_duration, default=0.0,
                   help="after the last wave, wait this long for pending (offline) gateways (default: do not)")
    g.add_argument("--all-at-once", action="store_true",
                   help="no waves: one group-addressed document to every gateway at once")
    g.add_argument("--rollouts", default=None, help="directory of rollout state files (default: the profile's, "
                   "else ~/.local/state/sensegate/rollouts)")


def add_parsers(sub: Any) -> None:
    """`sensegate rollout ...`."""
    from gateway.remote.cli import _broker_args

    ro = sub.add_parser("rollout", help="staged rollouts: list, status, resume, abort, rollback")
    ro_sub = ro.add_subparsers(dest="rollout_command", metavar="ACTION")
    ro_sub.required = True
    lst = ro_sub.add_parser("list", help="the rollouts kept in the state directory, newest first")
    lst.add_argument("--rollouts", default=None)
    lst.add_argument("--profile", default=None)
    lst.add_argument("--json", action="store_true")
    for name, text in (("status", "show a rollout, with the answers that came since (retained config statuses)"),
                       ("resume", "go on with a halted or interrupted rollout, or wait for its pending gateways"),
                       ("abort", "stop a rollout: send nothing more, clear the documents not yet taken"),
                       ("rollback", "send every gateway that took the new document back to what it ran before")):
        p = ro_sub.add_parser(name, help=text)
        p.add_argument("id", help="rollout id (see `sensegate rollout list`)")
        p.add_argument("--rollouts", default=None)
        p.add_argument("--sign-key", default=None, help="ops private key (resume, rollback; default: the profile's)")
        p.add_argument("--release-key", default=None, help="release private key (resume of an agent update)")
        _broker_args(p)
        p.set_defaults(wait=5.0 if name == "status" else 120.0)
        if name == "resume":
            p.add_argument("--max-failures", type=int, default=None, help="a new threshold from here on")
            p.add_argument("--wait-pending", type=parse_duration, default=0.0,
                           help="wait this long for pending gateways")


def _rollouts_dir(args: argparse.Namespace) -> Path:
    return Path(args.rollouts).expanduser()


def start(args: argparse.Namespace, kind: Any, key: Any, what: str, members: list[str] | None = None) -> int:
    """Plan a rollout of ``kind`` to ``args.group`` (or to ``members``) from the fleet view, save it, run it."""
    from gateway.fleet.progress import Progress
    from gateway.fleet.rollout import Entry, Rollout, Runner, new_id, plan
    from gateway.fleet.view import snapshot
    from gateway.mqtt import MqttError
    from gateway.remote.cli import _broker

    broker = _broker(args)
    try:
        watch = asyncio.run(snapshot(broker))
    except MqttError as e:
        print(f"sensegate: {e}", file=sys.stderr)
        return 2
    rows = watch.rows(None, None if members else args.group)
    if members:
        from gateway.fleet.view import Row

        known = {r.gateway: r for r in rows}
        rows = [known.get(m, Row(m)) for m in members]  # never seen: sent anyway, retained, pending
        args.group = args.group or ",".join(members)
    if not rows:
        print(f"sensegate: no gateway reports group {args.group!r} in its health summary "
              f"(see `sensegate fleet status --group {args.group}`; older agents publish none: "
              "--all-at-once sends one group-addressed document instead)", file=sys.stderr)
        return 2
    if args.expect and len(rows) < args.expect:
        print(f"sensegate: only {len(rows)} of the {args.expect} expected gateways of group {args.group} have "
              "ever reported; the others are not in this rollout", file=sys.stderr)
    online = {r.gateway for r in rows if r.state == "online"}
    chosen = [g for g in args.canary_gateways.split(",") if g]
    unknown = [g for g in chosen if g not in {r.gateway for r in rows}]
    if unknown:
        print(f"sensegate: canary gateway(s) {', '.join(unknown)} not in group {args.group}", file=sys.stderr)
        return 2
    waves = plan([r.gateway for r in rows], online, 0 if members else args.canary, args.wave_size, chosen)
    gateways = {}
    for i, wave in enumerate(waves):
        for gw in wave:
            gateways[gw] = Entry(wave=i)
    for r in rows:
        gateways[r.gateway].previous_revision = r.revision
    from gateway.fleet.kinds import kind_to_json

    ro = Rollout(id=new_id(kind.name), kind=kind_to_json(kind), group=args.group, url=args.url, waves=waves,
                 canary=(bool(chosen) or (bool(args.canary) and bool(online))) and not members,
                 max_failures=args.max_failures,
                 wave_timeout=args.wave_timeout, expires=int(time.time() + args.expires), gateways=gateways)
    ro.path = str(_rollouts_dir(args) / f"{ro.id}.json")
    ro.save()
    progress = Progress()
    progress.header(ro, what)
    return _run(Runner(ro, kind, broker, key, progress), args.wait_pending)


def _run(runner: Any, wait_pending: float) -> int:
    from gateway.mqtt import MqttError

    try:
        return int(asyncio.run(runner.run(wait_pending)))
    except KeyboardInterrupt:
        print(f"\ninterrupted; the state is kept: `sensegate rollout resume {runner.ro.id}` goes on", file=sys.stderr)
        return 130
    except MqttError as e:
        print(f"sensegate: {e}; `sensegate rollout resume {runner.ro.id}` goes on", file=sys.stderr)
        return 2


def main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate rollout`."""
    from gateway.fleet.rollout import RolloutError
    from gateway.remote.profile import ProfileError, apply

    try:
        apply(args)
        if args.rollout_command == "list":
            return _list(args)
        from gateway.fleet.rollout import Rollout

        ro = Rollout.load(_rollouts_dir(args), args.id)
        args.url = args.url or ro.url
        return {"status": _status, "resume": _resume, "abort": _abort, "rollback": _rollback}[
            args.rollout_command](args, ro)
    except (RolloutError, ProfileError) as e:
        print(f"sensegate rollout: {e}", file=sys.stderr)
        return 2


def _list(args: argparse.Namespace) -> int:
    from gateway.fleet.rollout import Rollout

    d = _rollouts_dir(args)
    files = sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if d.is_dir() else []
    rows = []
    for f in files:
        try:
            ro = Rollout.load(d, f.stem)
        except Exception as e:
            print(f"{f}: {e}", file=sys.stderr)
            continue
        rows.append({"id": ro.id, "state": ro.state, "group": ro.group, "gateways": len(ro.gateways),
                     "ok": ro.count("ok"), "failed": ro.failures, "pending": ro.count("pending", "sent"),
                     "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(ro.updated))})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':<34} {'STATE':<12} {'GROUP':<14} {'GWS':>5} {'OK':>5} {'FAILED':>6} {'PENDING':>7}  UPDATED")
    for r in rows:
        print(f"{r['id']:<34} {r['state']:<12} {r['group']:<14} {r['gateways']:>5} {r['ok']:>5} {r['failed']:>6} "
              f"{r['pending']:>7}  {r['updated']}")
    return 0


def _kind(ro: Any) -> Any:
    from gateway.fleet.kinds import kind_from_json

    return kind_from_json(ro.kind)


def _status(args: argparse.Namespace, ro: Any) -> int:
    from gateway.fleet.progress import Progress, names
    from gateway.fleet.rollout import Runner
    from gateway.mqtt import MqttError
    from gateway.remote.cli import _broker

    if ro.state in ("running", "halted", "waiting", "interrupted"):
        try:
            asyncio.run(Runner(ro, _kind(ro), _broker(args), None, Progress()).refresh(0.0))
        except MqttError as e:
            print(f"sensegate rollout: the broker cannot be read ({e}); as last saved:", file=sys.stderr)
    if args.json:
        from dataclasses import asdict

        body = asdict(ro)
        body.pop("path")
        print(json.dumps(body, indent=2))
    else:
        print(f"rollout {ro.id}: {ro.state}{': ' + ro.reason if ro.reason else ''}")
        print(f"  {_kind(ro).describe()} to group {ro.group}, {len(ro.gateways)} gateway(s) in {len(ro.waves)} wave(s)"
              f"{' (the first a canary)' if ro.canary else ''}; wave {min(ro.wave + 1, len(ro.waves))} reached")
        by: dict[str, list[str]] = {}
        for gw, entry in sorted(ro.gateways.items()):
            by.setdefault(entry.state, []).append(gw)
        for state in ("ok", "failed", "no answer", "pending", "sent", "waiting", "skipped"):
            if by.get(state):
                print(f"  {state:<10} {len(by[state]):>4}  {names(by[state], 12)}")
        for gw in ro.named("failed", "no answer"):
            print(f"    {gw}: {ro.gateways[gw].reason}")
        if ro.rollback:
            print(f"  rolled back by {ro.rollback}")
    if ro.state == "done":
        return 1 if ro.failures else 0
    return 3 if ro.state == "waiting" else 1


def _key(args: argparse.Namespace, ro: Any) -> Any:
    from gateway.keys import load_private_key

    path = args.release_key if ro.kind.get("name") == "agent" else args.sign_key
    return load_private_key(Path(path))


def _resume(args: argparse.Namespace, ro: Any) -> int:
    from gateway.fleet.progress import Progress
    from gateway.fleet.rollout import Runner
    from gateway.keys import KeyFileError
    from gateway.remote.cli import _broker

    if ro.state in ("done", "aborted", "rolled back"):
        print(f"sensegate rollout: {ro.id} is {ro.state}; nothing to resume", file=sys.stderr)
        return 2
    try:
        key = _key(args, ro)
    except (OSError, KeyFileError) as e:
        print(f"sensegate rollout resume: {e}", file=sys.stderr)
        return 2
    if ro.state == "halted":
        ro.forgiven = ro.failures  # the operator looked at them and goes on
        if ro.wave < len(ro.waves):
            ro.wave += 1  # the halted wave was sent; go on with the next
    if args.max_failures is not None:
        ro.max_failures = args.max_failures
    progress = Progress()
    print(f"resuming rollout {ro.id} ({ro.state}) at wave {min(ro.wave + 1, len(ro.waves))} of {len(ro.waves)}")
    return _run(Runner(ro, _kind(ro), _broker(args), key, progress), args.wait_pending)


def _abort(args: argparse.Namespace, ro: Any) -> int:
    from gateway.fleet.progress import Progress
    from gateway.fleet.rollout import Runner
    from gateway.remote.cli import _broker

    if ro.state in ("done", "aborted", "rolled back"):
        print(f"sensegate rollout: {ro.id} is {ro.state}; nothing to abort", file=sys.stderr)
        return 2
    asyncio.run(Runner(ro, _kind(ro), _broker(args), None, Progress()).abort())
    print(f"rollout {ro.id} aborted: {ro.count('ok')} gateway(s) took it (`sensegate rollout rollback {ro.id}` "
          f"puts them back), {ro.count('skipped')} skipped")
    return 0


def _rollback(args: argparse.Namespace, ro: Any) -> int:
    """A rollout of ``revert`` commands to the gateways that took the new config."""
    from gateway.fleet.kinds import CommandKind, kind_to_json
    from gateway.fleet.progress import Progress
    from gateway.fleet.rollout import Entry, Rollout, Runner, new_id
    from gateway.keys import KeyFileError, load_private_key
    from gateway.remote.cli import _broker

    if ro.kind.get("name") == "agent":
        print("sensegate rollout rollback: an agent update is rolled back with `sensegate agent update` of the "
              "earlier release (a downgrade above the minimum version is allowed)", file=sys.stderr)
        return 2
    if ro.kind.get("name") != "config":
        print("sensegate rollout rollback: only a config rollout can be rolled back (a command is not undone)",
              file=sys.stderr)
        return 2
    took = ro.named("ok")
    if not took:
        print(f"sensegate rollout rollback: no gateway took {ro.id}; nothing to roll back", file=sys.stderr)
        return 0
    try:
        key = load_private_key(Path(args.sign_key))
    except (OSError, KeyFileError) as e:
        print(f"sensegate rollout rollback: {e}", file=sys.stderr)
        return 2
    if ro.state not in ("done", "waiting", "halted", "aborted", "interrupted"):
        print(f"sensegate rollout rollback: {ro.id} is {ro.state}", file=sys.stderr)
        return 2
    if ro.state != "aborted":  # nothing more of the original goes out
        asyncio.run(Runner(ro, _kind(ro), _broker(args), None, Progress()).abort())
    rev = int(ro.kind["revision"])
    rid = new_id("rollback")
    per_gw = {gw: {"from": rev, "to": ro.gateways[gw].previous_revision} for gw in took}
    kind = CommandKind("revert", {}, rid, ttl=REVERT_TTL, per_gateway_args=per_gw)
    back = Rollout(id=rid, kind=kind_to_json(kind), group=ro.group, url=ro.url, waves=[took], canary=False,
                   max_failures=len(took), wave_timeout=args.wait, expires=ro.expires,
                   gateways={gw: Entry(wave=0) for gw in took}, parent=ro.id)
    back.path = str(Path(ro.path).with_name(f"{rid}.json"))
    back.save()
    ro.rollback, ro.state = rid, "rolled back"
    ro.save()
    progress = Progress()
    progress.header(back, f"rollback of {ro.id} (revert from revision {rev})")
    return _run(Runner(back, kind, _broker(args), key, progress), 0.0)
