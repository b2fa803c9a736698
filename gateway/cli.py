"""The one entry point, `sensegate`: each subcommand imports only what it needs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gateway import __version__

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    """Register a subcommand handler."""

    def deco(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return deco


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="sensegate", description="Sensing-layer gateway agent.")
    p.add_argument("--version", action="version", version=f"sensegate {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=None, help="config file (default /etc/sensegate/sensegate.yaml)")

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("file", nargs="?", help="config file to check")
    check.add_argument("--schema", action="store_true", help="print the config's JSON Schema instead")
    check.add_argument("--fleet", action="store_true",
                       help="FILE is a fleet document for `config push` (identity may be left out)")
    check.add_argument("--reference", action="store_true",
                       help="print the configuration reference (Markdown, as in docs/configuration.md) instead")

    sub.add_parser("drivers", help="list installed drivers").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )

    keys = sub.add_parser("keys", help="device and ops keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    init = keys_sub.add_parser("init", help="make a signing key")
    init.add_argument("--dir", default=None, help="where to write the key (default /var/lib/sensegate/keys; "
                      "with --ops ~/.config/sensegate)")
    init.add_argument("--alg", choices=("ed25519", "es256"), default="ed25519")
    init.add_argument("--name", default="device", help="file name stem (device.key, device.pub.pem)")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.add_argument("--ops", action="store_true", help="make an ops key (signs config pushes and commands)")
    init.add_argument("--pkcs11", metavar="URI", default="",
                      help="make the key on a PKCS#11 token (secure element, TPM, SoftHSM2) named by an RFC 7512 "
                      "URI; it never leaves the token. The public key goes to --dir (docs/security.md)")

    from gateway.keyops import add_parsers as key_parsers

    key_parsers(keys_sub)  # keys rotate, keys revoke
    recv = sub.add_parser("receive", help="reference receiver: verify batches and check completeness")
    recv.add_argument("--url", required=True, help="mqtt://HOST:PORT[/TOPIC-PREFIX] or mqtts://... to subscribe; "
                      "coap://HOST:PORT[/PATH], coap+tcp://... or coaps+tcp://... to listen (docs/coap.md)")
    recv.add_argument("--trust", action="append", required=True, metavar="DIR|FILE|GATEWAY-ID=FILE",
                      help="which key speaks for which gateway: a directory of <gateway-id>.pub.pem files, one "
                      "such file, or GATEWAY-ID=FILE; repeatable (docs/wire-format.md)")
    recv.add_argument("--ops-trust", action="append", default=[], metavar="FILE|DIR",
                      help="ops public key(s) whose signed revocations of gateway keys (and rotations and "
                      "revocations of ops keys) this receiver applies; repeatable (docs/security.md)")
    recv.add_argument("--count", type=int, default=0, help="stop after N readings (0: run until interrupted); "
                      "exit 1 if fewer arrived")
    recv.add_argument("--batches", type=int, default=0, help="stop after N batches; exit 1 if fewer arrived")
    recv.add_argument("--timeout", type=float, default=0, help="stop after this many seconds")
    recv.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    recv.add_argument("--out", default="-", help="where to write readings as JSON lines ('-' stdout, '' none)")
    recv.add_argument("--ca", default="", help="CA file for mqtts:// (coaps+tcp://: CA that signs client certificates)")
    recv.add_argument("--cert", default="", help="client certificate for mutual TLS (coaps+tcp://: server certificate)")
    recv.add_argument("--key", default="", help="client key for mutual TLS (coaps+tcp://: server key)")
    recv.add_argument("--username", default="")
    recv.add_argument("--password", default="")
    recv.add_argument("--client-id", default="", help="keep a persistent session under this client id")
    recv.add_argument("--oscore", default="", help="CoAP: require OSCORE with the security context in this directory")
    recv.add_argument("--blobs", default="", help="save verified blobs (camera images) into this directory")

    demo = sub.add_parser("demo", help="simulated devices + local broker + daemon + receiver")
    demo.add_argument("--seconds", type=float, default=15.0, help="how long to run (0: until Ctrl-C)")
    demo.add_argument("--dir", default="", help="work directory (default: a temporary one)")
    demo.add_argument("--ingest", nargs="?", const="-", default="", metavar="sqlite:PATH",
                      help="also run the embedded fleet ingest on the demo's broker, storing every reading (in the "
                      "work directory, or in PATH to keep it), and end with its `fleet report`")
    demo.add_argument("--pkcs11", action="store_true",
                      help="keep the device key on a SoftHSM2 token (a simulated secure element), signing ES256")

    doctor = sub.add_parser("doctor", help="say what stops this gateway from working, with a fix for each")
    doctor.add_argument("-c", "--config", default=None, help="config file (default /etc/sensegate/sensegate.yaml)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--user", default="sensegate", help="the service's user (for permission checks)")
    doctor.add_argument("--bluetooth-sysfs", default="/sys/class/bluetooth", help=argparse.SUPPRESS)

    prov = sub.add_parser("provision", help="identity, device key, broker CA, ops keys; then doctor")
    prov.add_argument("-c", "--config", default=None, help="config file (default /etc/sensegate/sensegate.yaml)")
    prov.add_argument("--id", default="", help="the gateway's identity (names its key and topics)")
    prov.add_argument("--site", default=None, help="where the gateway is (street cabinet, pole number)")
    prov.add_argument("--broker", default="", help="MQTT broker URL, mqtts://HOST:8883")
    prov.add_argument("--state-dir", default="", help="state directory (default: as in the config)")
    prov.add_argument("--ca", default=None, help="the broker's CA certificate (PEM) to install")
    prov.add_argument("--ops-key", action="append", default=[], help="an ops public key (PEM) to trust; repeatable")
    prov.add_argument("--csr", action="store_true", help="make a TLS client key and a CSR for the broker's CA")
    prov.add_argument("--user", default="sensegate", help="the service's user (owns the keys)")
    prov.add_argument("--no-doctor", action="store_true", help="do not run doctor afterwards")

    drv = sub.add_parser("driver", help="driver SDK: scaffold a new driver, check a driver's conventions")
    drv_sub = drv.add_subparsers(dest="driver_command", metavar="ACTION")
    drv_sub.required = True
    new = drv_sub.add_parser("new", help="scaffold a driver from the template (drivers/example)")
    new.add_argument("name", help="driver name: lower case, digits, underscores (e.g. boiler_meter)")
    new.add_argument("--out", default=".", help="checkout root (in-tree) or parent folder (--package)")
    new.add_argument("--package", action="store_true", help="a separately installable package (sensegate-NAME)")
    drv_check = drv_sub.add_parser("check", help="check driver folders against the conventions")
    drv_check.add_argument("paths", nargs="+", metavar="PATH", help="driver folder or out-of-tree project folder")
    drv_check.add_argument("--no-ruff", action="store_true", help="skip ruff's ASYNC rules")
    drv_dir = argparse.ArgumentParser(add_help=False)
    drv_dir.add_argument("--dir", default=None, help="drivers directory (default /var/lib/sensegate/drivers)")
    inst = drv_sub.add_parser("install", parents=[drv_dir], help="install a driver: a wheel (with --sha256), a "
                              "signed bundle (.sgdrv) or a project folder; kept across upgrades")
    inst.add_argument("source", help="WHEEL.whl, BUNDLE.sgdrv or a driver project DIR")
    inst.add_argument("--sha256", default="", help="the wheel's SHA-256 as its author published it")
    inst.add_argument("-c", "--config", default=None, help="config naming the trusted ops keys (for bundles)")
    rm = drv_sub.add_parser("remove", parents=[drv_dir], help="uninstall a driver installed with `driver install`")
    rm.add_argument("name", help="driver or distribution name")
    drv_sub.add_parser("list", parents=[drv_dir], help="drivers installed with `driver install`, and their state")
    drv_sub.add_parser("reinstall", parents=[drv_dir], help=argparse.SUPPRESS)  # the package's postinst
    bundle = drv_sub.add_parser("bundle", help="ops: sign a driver wheel (+ dependency wheels) into a bundle")
    bundle.add_argument("wheels", nargs="+", metavar="WHEEL")
    bundle.add_argument("-o", "--out", required=True, help="bundle file to write (NAME.sgdrv)")
    from gateway.remote.cli import DEFAULT_OPS_DIR

    bundle.add_argument("--sign-key", default=str(DEFAULT_OPS_DIR / "ops.key"), help="ops private key")
    from gateway.remote.cli import add_parsers as remote_parsers

    remote_parsers(sub)  # config push, command, status
    from gateway.remote.profile import add_parsers as ops_parsers

    ops_parsers(sub)  # ops init, ops show
    from gateway.fleet.rolloutcli import add_parsers as rollout_parsers

    rollout_parsers(sub)  # rollout list, status, resume, abort, rollback
    from gateway.fleet.agentkind import add_parsers as agent_parsers

    agent_parsers(sub)  # agent update
    from gateway.ingest.cli import add_parsers as ingest_parsers

    ingest_parsers(sub)  # ingest, fleet
    return p


@command("run")
def _run(args: argparse.Namespace) -> int:
    from gateway.config import ConfigInvalid
    from gateway.daemon import DEFAULT_CONFIG, run_process
    from gateway.logs import setup_logging

    setup_logging("info")
    path = args.config or DEFAULT_CONFIG
    from gateway.pipeline import PipelineError
    from gateway.remote.releases import launch
    from gateway.store import StoreError

    launch(path)  # a newer release installed by an agent update runs instead of this one (docs/fleet.md)
    try:
        return run_process(path)
    except ConfigInvalid as e:
        print(e, file=sys.stderr)
        return 1
    except (PipelineError, StoreError) as e:
        print(f"sensegate: cannot start: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


@command("check")
def _check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigInvalid, load_config
    from gateway.registry import Registry

    registry = Registry.discover()
    if args.schema:
        from gateway.config.jsonschema import config_json_schema

        print(json.dumps(config_json_schema(registry), indent=2))
        return 0
    if args.reference:
        from gateway.config.reference import reference

        print(reference(), end="")
        return 0
    if not args.file:
        print("sensegate check: give a config FILE (or --schema)", file=sys.stderr)
        return 2
    from gateway.config.validate import config_files

    if args.fleet:
        return _check_fleet(args.file, registry)
    try:
        cfg = load_config(args.file, registry)
    except ConfigInvalid as e:
        print(e)
        if "missing required key 'id'" in str(e) or "missing required key 'gateway'" in str(e):
            print(f"(a fleet document for `sensegate config push`? check it with: sensegate check --fleet {args.file})")
        return 1
    dropins = config_files(args.file)[1:]
    merged = f", merged with {len(dropins)} drop-in(s): {', '.join(f.name for f in dropins)}" if dropins else ""
    print(
        f"{args.file}: ok (gateway {cfg.config.gateway.id}, {len(cfg.instances)} driver instance(s), "
        f"{len(cfg.config.uplinks)} uplink(s){merged})"
    )
    return 0


def _check_fleet(file: str, registry: Any) -> int:
    """`sensegate check --fleet`: the validator `config push` uses before it signs."""
    from gateway.config import ConfigInvalid
    from gateway.config.fleet import check_fleet_document

    try:
        cfg, refused = check_fleet_document(Path(file).read_bytes(), registry, file)
    except OSError as e:
        print(f"{file}:1:1: cannot read config: {e.strerror or e}")
        return 1
    except ConfigInvalid as e:
        print(e)
        return 1
    for why in refused:
        print(f"{file}: {why}")
    if refused:
        return 1
    print(f"{file}: ok as a fleet document ({len(cfg.instances)} driver instance(s), {len(cfg.config.uplinks)} "
          "uplink(s); each gateway keeps its own identity)")
    return 0


@command("drivers")
def _drivers(args: argparse.Namespace) -> int:
    from gateway.driver_api import API_VERSION
    from gateway.registry import Registry

    reg = Registry.discover()
    rows = [
        {
            "name": m.name,
            "version": m.version,
            "api_version": m.api_version,
            "kind": m.kind,
            "extra": m.extra or "",
            "description": m.description,
        }
        for m in reg.manifests.values()
    ]
    broken = [{"name": b.name, "target": b.target, "reason": b.reason} for b in reg.broken]
    if args.json:
        print(json.dumps({"host_api_version": API_VERSION, "drivers": rows, "broken": broken}, indent=2))
        return 0
    print(f"driver API version {API_VERSION}")
    print(f"{'NAME':<12} {'VERSION':<9} {'API':<4} {'KIND':<7} DESCRIPTION")
    for r in rows:
        print(f"{r['name']:<12} {r['version']:<9} {r['api_version']!s:<4} {r['kind']:<7} {r['description']}")
    for b in broken:
        print(f"{b['name']:<12} BROKEN: {b['reason']} ({b['target']})")
    return 0


@command("keys")
def _keys(args: argparse.Namespace) -> int:
    from gateway.keys import KeyFileError, init_key
    from gateway.remote.cli import DEFAULT_OPS_DIR

    if args.keys_command != "init":
        from gateway.keyops import main as key_ops

        return key_ops(args)

    directory = args.dir or (DEFAULT_OPS_DIR if args.ops else "/var/lib/sensegate/keys")
    name = "ops" if args.ops and args.name == "device" else args.name
    if args.pkcs11:
        return _keys_on_token(args, Path(directory) / f"{name}.pub.pem")
    try:
        info = init_key(Path(directory), alg=args.alg, name=name, force=args.force)
    except KeyFileError as e:
        print(f"sensegate keys: {e}", file=sys.stderr)
        return 1
    print(f"private key: {info.private_path} (mode 0600)")
    print(f"public key:  {info.public_path}")
    print(f"algorithm:   {info.alg}")
    print(f"fingerprint: {info.fingerprint}")
    if args.ops:
        print(f"trust it on each gateway: sensegate provision --ops-key {info.public_path}")
    return 0


def _keys_on_token(args: argparse.Namespace, public_path: Path) -> int:
    """`keys init --pkcs11 URI`: the key pair is made by the token; only the public key is written."""
    from gateway.keys import KeyFileError, public_pem

    try:
        from gateway.hsm import create_key

        made = create_key(args.pkcs11, alg=args.alg, force=args.force)
    except KeyFileError as e:
        print(f"sensegate keys: {e}", file=sys.stderr)
        return 1
    try:
        public_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        public_path.write_bytes(public_pem(made.public))
    except OSError as e:
        print(f"sensegate keys: the key is on the token, but {public_path} could not be written: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    print(f"private key: on the token ({'replaced' if made.replaced else 'new'}, not extractable)")
    print(f"public key:  {public_path}")
    print(f"algorithm:   {made.alg}")
    print(f"fingerprint: {made.fingerprint}")
    print(f"use it: gateway.key_file: '{args.pkcs11}' (and batch.alg: {made.alg})")
    return 0


@command("receive")
def _receive(args: argparse.Namespace) -> int:
    from gateway.receiver.cli import main as receive_main

    return receive_main(args)


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from gateway.demo import main as demo_main

    return demo_main(args)


@command("doctor")
def _doctor(args: argparse.Namespace) -> int:
    from gateway.daemon import DEFAULT_CONFIG
    from gateway.doctor import EXIT, Environment, as_json, report, run_checks, worst

    path = args.config or DEFAULT_CONFIG
    findings = run_checks(path, Environment(service_user=args.user, bluetooth_sysfs=Path(args.bluetooth_sysfs)))
    print(as_json(findings) if args.json else report(findings, path))
    return EXIT[worst(findings)]


@command("provision")
def _provision(args: argparse.Namespace) -> int:
    from gateway.daemon import DEFAULT_CONFIG
    from gateway.doctor import EXIT, Environment, report, run_checks, worst
    from gateway.keys import KeyFileError
    from gateway.provision import Plan, ProvisionError, provision

    plan = Plan(
        config=Path(args.config or DEFAULT_CONFIG),
        gateway_id=args.id,
        site=args.site,
        state_dir=args.state_dir,
        broker=args.broker,
        ca=Path(args.ca) if args.ca else None,
        ops_keys=[Path(k) for k in args.ops_key],
        csr=args.csr,
        service_user=args.user,
    )
    try:
        result, _ = provision(plan)
    except PermissionError as e:
        again = "sudo sensegate provision ..."
        if sys.argv[1:2] == ["provision"]:
            again = " ".join(["sudo", "sensegate", *sys.argv[1:]])
        print(f"sensegate provision: not allowed to write {e.filename or 'a file'}: provisioning writes the config "
              f"directory and the device key, so it must run as root: {again}", file=sys.stderr)
        return 3
    except (ProvisionError, KeyFileError, OSError) as e:
        print(f"sensegate provision: {e}", file=sys.stderr)
        return 3  # 0-2 are doctor's verdict after a successful provisioning
    for line in result.done:
        print(f"done: {line}")
    for line in result.next_steps:
        print(f"next: {line}")
    if args.no_doctor:
        return 0
    print()
    # provisioning comes before the agent starts (first boot runs it before the service): the
    # files are checked here, the running agent by `sensegate doctor` once it runs
    findings = run_checks(plan.config, Environment(service_user=args.user, look_at_agent=False))
    print(report(findings, str(plan.config)))
    return EXIT[worst(findings)]


def _driver_store(args: argparse.Namespace) -> int:
    from gateway.driverstore import DEFAULT_DIR, DriverStore, DriverStoreError, make_bundle

    store = DriverStore(Path(getattr(args, "dir", None) or DEFAULT_DIR))
    what = args.driver_command
    try:
        if what == "bundle":
            from gateway.keys import KeyFileError, load_ops_key

            try:
                key = load_ops_key(Path(args.sign_key))
            except KeyFileError as e:
                print(f"sensegate driver bundle: {e}", file=sys.stderr)
                return 2
            out = make_bundle([Path(w) for w in args.wheels], key, Path(args.out))
            print(f"wrote {out}: install it on a gateway that trusts this ops key with: "
                  f"sudo sensegate driver install {out.name}")
            return 0
        if what == "install":
            src = Path(args.source)
            if src.is_dir():
                rec = store.install_dir(src)
            elif src.suffix == ".sgdrv":
                rec = store.install_bundle(src, _trusted_ops_keys(args.config))
            else:
                rec = store.install_wheel(src, sha256=args.sha256)
            print(f"installed {rec.dist} {rec.version} ({rec.verified}): driver(s) {', '.join(rec.drivers)}")
            print("a running gateway picks it up on reload: sudo systemctl reload sensegate")
            return 0
        if what == "remove":
            rec = store.remove(args.name)
            print(f"removed {rec.dist} {rec.version} (driver(s) {', '.join(rec.drivers)})")
            return 0
        if what == "reinstall":
            failed = store.reinstall()
            for rec, why in failed:
                print(f"sensegate: driver {rec.dist} ({', '.join(rec.drivers)}) not put back: {why}; its instances "
                      "stay down until it is installed again", file=sys.stderr)
            return 1 if failed else 0
        from gateway.registry import Registry

        reg = Registry.discover()
        records = store.records()
        if not records:
            print(f"no drivers installed with `sensegate driver install` ({store.root})")
        for rec in records.values():
            for name in rec.drivers:
                broken = reg.broken_reason(name)
                state = "loads" if name in reg.manifests else f"BROKEN: {broken}" if broken else (
                    "NOT INSTALLED (run: sudo sensegate driver reinstall)")
                print(f"{name:<12} {rec.dist} {rec.version:<9} {state}; {rec.verified}, {rec.installed}")
        return 0
    except PermissionError as e:
        print(f"sensegate driver {what}: not allowed to write {e.filename}: run it as root (sudo)", file=sys.stderr)
        return 2
    except DriverStoreError as e:
        print(f"sensegate driver {what}: {e}", file=sys.stderr)
        return 1


def _trusted_ops_keys(config: str | None) -> Mapping[bytes, Any]:
    """The ops keys this gateway trusts now (its files' keys, as rotated and revoked since)."""
    from gateway.config import load_config
    from gateway.daemon import DEFAULT_CONFIG
    from gateway.driverstore import DriverStoreError
    from gateway.registry import Registry
    from gateway.remote.envelope import gateway_ops_keys

    path = Path(config or DEFAULT_CONFIG)
    try:
        cfg = load_config(path, Registry.discover(), broken_ok=True)
    except Exception as e:
        raise DriverStoreError(f"cannot read the trusted ops keys from {path}: {e}") from None
    trusted = gateway_ops_keys(cfg.config.remote.ops_keys, path.parent, cfg.config.gateway.state_dir)
    if not trusted:
        gone = f" (every one was rotated or revoked since: {len(trusted.gone)} key event(s))" if trusted.gone else ""
        raise DriverStoreError(f"this gateway trusts no ops key ({path}: remote.ops_keys){gone}; sudo sensegate "
                               "provision --ops-key OPS.pub.pem")
    return trusted


@command("driver")
def _driver(args: argparse.Namespace) -> int:
    if args.driver_command in ("install", "remove", "list", "reinstall", "bundle"):
        return _driver_store(args)
    if args.driver_command == "check":
        from gateway.sdk.checker import main as check_main

        return check_main(args.paths, use_ruff=not args.no_ruff)
    from gateway.sdk.scaffold import ScaffoldError, scaffold

    try:
        result = scaffold(args.name, Path(args.out), package=args.package)
    except ScaffoldError as e:
        print(f"sensegate driver new: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


@command("config")
def _config(args: argparse.Namespace) -> int:
    if args.config_command == "use-local":
        from gateway.remote.handback import use_local

        return use_local(args)
    from gateway.remote.cli import config_push

    return config_push(args)


@command("command")
def _command(args: argparse.Namespace) -> int:
    from gateway.remote.cli import command as remote_command

    return remote_command(args)


@command("status")
def _status(args: argparse.Namespace) -> int:
    from gateway.remote.cli import status

    return status(args)


@command("ops")
def _ops(args: argparse.Namespace) -> int:
    from gateway.remote.profile import main as ops_main

    return ops_main(args)


@command("rollout")
def _rollout(args: argparse.Namespace) -> int:
    from gateway.fleet.rolloutcli import main as rollout_main

    return rollout_main(args)


@command("agent")
def _agent(args: argparse.Namespace) -> int:
    from gateway.fleet.agentkind import main as agent_main

    return agent_main(args)


@command("ingest")
def _ingest(args: argparse.Namespace) -> int:
    from gateway.ingest.cli import ingest_main

    return ingest_main(args)


@command("fleet")
def _fleet(args: argparse.Namespace) -> int:
    from gateway.ingest.cli import fleet_main

    return fleet_main(args)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run one subcommand."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)
