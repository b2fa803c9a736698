"""`sensegate keys rotate` and `sensegate keys revoke`: rotate a device or ops key, revoke a key.

On a gateway, ``keys rotate`` makes the next device key (PEM beside the key, or a key pair on
the token) and the running daemon switches to it at its next batch (gateway/devicekey.py). On
an ops machine, ``keys rotate --ops`` signs the rotation of the ops key with the old and the new
key, publishes it retained (gateways and receivers take it), and only then replaces the key
file. ``keys revoke`` publishes a revocation signed by an ops key (docs/security.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway.keys import KeyFileError, PublicKey, alg_of, fingerprint, key_id, load_private_key, public_pem

KID_RE = re.compile(r"^[0-9a-fA-F]{32}$")


def add_parsers(keys_sub: Any) -> None:
    """The `keys rotate` and `keys revoke` subcommands."""
    from gateway.remote.cli import DEFAULT_OPS_DIR

    rot = keys_sub.add_parser("rotate", help="rotate the device key (the daemon switches at its next batch), "
                              "or with --ops the ops key")
    rot.add_argument("-c", "--config", default=None,
                     help="the gateway's config (default /etc/sensegate/sensegate.yaml)")
    rot.add_argument("--ops", action="store_true", help="rotate the ops key instead (publishes the rotation)")
    rot.add_argument("--dir", default=str(DEFAULT_OPS_DIR), help="with --ops: where ops.key is")
    _broker_args(rot, required=False)

    rev = keys_sub.add_parser("revoke", help="revoke a gateway's device key or an ops key (signed by your ops key)")
    rev.add_argument("key", help="the key to revoke: its kid (32 hex digits) or its public key file (PEM)")
    who = rev.add_mutually_exclusive_group(required=True)
    who.add_argument("--gateway", help="the gateway whose device key it is")
    who.add_argument("--ops", action="store_true", help="it is an ops key (signed by another ops key)")
    rev.add_argument("--reason", default="", help="why (shown by gateways and receivers)")
    rev.add_argument("--sign-key", default=str(DEFAULT_OPS_DIR / "ops.key"), help="your ops private key")
    _broker_args(rev, required=True)


def _broker_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--url", required=required, default="", help="broker, mqtt://HOST:PORT[/TOPIC-PREFIX] or mqtts://...")
    p.add_argument("--ca", default="", help="CA file for mqtts://")
    p.add_argument("--cert", default="", help="client certificate for mutual TLS")
    p.add_argument("--key-file", dest="tls_key", default="", help="client key for mutual TLS")
    p.add_argument("--username", default="")
    p.add_argument("--password", default="")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the broker")


def _broker(args: argparse.Namespace) -> Any:
    from gateway.remote.ops import Broker

    return Broker.from_url(args.url, ca_file=args.ca, cert_file=args.cert, key_file=args.tls_key,
                           username=args.username, password=args.password)


def _fail(what: str, e: object) -> int:
    print(f"sensegate keys {what}: {e}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    """`keys rotate` / `keys revoke`."""
    if args.keys_command == "revoke":
        return revoke(args)
    return rotate_ops(args) if args.ops else rotate_device(args)


def rotate_device(args: argparse.Namespace) -> int:
    """Make the next device key; the running daemon switches to it at its next batch."""
    from gateway.config import ConfigInvalid, load_config
    from gateway.daemon import DEFAULT_CONFIG
    from gateway.devicekey import prepare_next
    from gateway.registry import Registry
    from gateway.signing import key_files

    path = args.config or DEFAULT_CONFIG
    try:
        cfg = load_config(path, Registry.discover())
    except ConfigInvalid as e:
        return _fail("rotate", e)
    files = key_files(cfg)
    try:
        made = prepare_next(files, cfg.config.batch.alg)
    except (KeyFileError, OSError) as e:
        return _fail("rotate", e)
    print(f"next key:    {'made' if made.new else 'already waiting'}"
          f"{' on the token' if files.token else f' ({files.base.name}.next.key, mode 0600)'}")
    print(f"fingerprint: {made.fingerprint}")
    print("switch:      the running daemon switches to it at its next batch (a stopped one at its start); "
          "the rotation, signed by the old and the new key, goes to the receivers with the batches "
          f"and retained on <prefix>/{cfg.config.gateway.id}/keys")
    return 0


def rotate_ops(args: argparse.Namespace) -> int:
    """Rotate the ops key: sign the rotation with both keys, publish it retained, then replace the file."""
    from gateway.keyevents import make_rotation
    from gateway.keys import generate, private_pem
    from gateway.remote import topics
    from gateway.remote.ops import publish_retained
    from gateway.remote.store import write_atomic

    if not args.url:
        return _fail("rotate", "--ops needs --url: the rotation is published to the gateways")
    directory = Path(args.dir)
    key_file, next_file = directory / "ops.key", directory / "ops.next.key"
    try:
        old = load_private_key(key_file)
        new = generate(alg_of(old))
        write_atomic(next_file, private_pem(new))
    except (KeyFileError, OSError) as e:
        return _fail("rotate", e)
    old_pub, new_pub = old.public_key(), new.public_key()
    doc = make_rotation(old, new)
    broker = _broker(args)
    topic = topics.ops_key_event(broker.prefix, key_id(old_pub).hex(), "rotated")
    if not asyncio.run(publish_retained(broker, topic, doc, args.wait)):
        next_file.unlink()
        return _fail("rotate", f"the broker did not take the rotation within {args.wait:g} s; the ops key is unchanged")
    try:
        (directory / "rotations").mkdir(mode=0o700, exist_ok=True)
        write_atomic(directory / "rotations" / f"{key_id(old_pub).hex()}.cose", doc)
        os.replace(next_file, key_file)
        (directory / "ops.pub.pem").write_bytes(public_pem(new_pub))
    except OSError as e:
        return _fail("rotate", f"the rotation is published, but {key_file} could not be replaced ({e}); "
                     f"the new key is {next_file}")
    print(f"ops key rotated: {fingerprint(old_pub)} -> {fingerprint(new_pub)}")
    print(f"published retained on {topic}: gateways and receivers (--ops-trust) trust the new key from now on")
    print(f"new gateways: provision them with {directory / 'ops.pub.pem'}")
    return 0


def _kid(spec: str) -> bytes:
    """A kid from 32 hex digits or a public key file."""
    if KID_RE.match(spec):
        return bytes.fromhex(spec)
    from gateway.keys import load_public_key

    pub: PublicKey = load_public_key(Path(spec))
    return key_id(pub)


def revoke(args: argparse.Namespace) -> int:
    """Sign a revocation with the ops key and publish it retained."""
    from gateway.keyevents import make_revocation
    from gateway.remote import topics
    from gateway.remote.ops import publish_retained
    from gateway.wire import GATEWAY_ID_RE

    if args.gateway and not GATEWAY_ID_RE.match(args.gateway):
        return _fail("revoke", f"{args.gateway!r} is not a gateway id")
    try:
        kid = _kid(args.key)
        signer = load_private_key(Path(args.sign_key))
    except (KeyFileError, OSError) as e:
        return _fail("revoke", e)
    doc = make_revocation(signer, kid, args.gateway or "", args.reason)
    broker = _broker(args)
    topic = (topics.gateway_key_revoked(broker.prefix, args.gateway, kid.hex()) if args.gateway
             else topics.ops_key_event(broker.prefix, kid.hex(), "revoked"))
    if not asyncio.run(publish_retained(broker, topic, doc, args.wait)):
        return _fail("revoke", f"the broker did not take the revocation within {args.wait:g} s")
    print(f"revoked {'device key of ' + args.gateway if args.gateway else 'ops key'} {kid.hex()}: "
          f"published retained on {topic}")
    return 0
