"""Signed ops documents: COSE_Sign1 over a config's YAML bytes, a command's CBOR map or a driver bundle.

The protected header carries, besides ``alg`` and ``kid``: ``"sgk"`` the kind (``config`` or
``command``, so one kind can never be replayed as the other), ``"to"`` the target (a gateway id
or ``group/<name>``), ``"iat"`` when it was signed, and for configs ``"rv"`` the push revision
(anti-rollback: a gateway applies only revisions newer than any it has seen).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cbor2

from gateway import cose
from gateway.keys import KeyError_, PrivateKey, PublicKey, fingerprint, key_id, load_public_key

Kind = Literal["config", "command", "driver"]
KIND, TARGET, REVISION, ISSUED = "sgk", "to", "rv", "iat"
CONTENT_TYPES = {"config": "application/yaml", "command": "application/cbor", "driver": "application/zip"}


class Rejected(Exception):
    """A pushed document or command is refused; the message is the reason sent back in the status."""


@dataclass(frozen=True)
class Signed:
    """A verified document: who signed it, for whom, and what it says."""

    kind: Kind
    target: str
    revision: int
    issued: int
    payload: bytes
    signer: str  # the ops key's fingerprint


def group_target(group: str) -> str:
    """The ``to`` value addressing a fleet group."""
    return f"group/{group}"


def sign(key: PrivateKey, kind: Kind, target: str, payload: bytes, revision: int = 0) -> bytes:
    """Sign a config (YAML bytes) or a command (CBOR map) for a gateway or a group."""
    extra: dict[Any, Any] = {cose.CONTENT_TYPE: CONTENT_TYPES[kind], KIND: kind, TARGET: target,
                             ISSUED: int(time.time())}
    if kind == "config":
        extra[REVISION] = revision
    protected = cose.protected_header(key, key_id(key.public_key()), extra)
    return cose.encode_sign1(protected, payload, cose.sign(key, protected, payload))


def load_trusted(paths: list[str], base: Path) -> dict[bytes, PublicKey]:
    """Ops public keys by kid, from PEM files and directories of *.pem (relative to ``base``)."""
    keys: dict[bytes, PublicKey] = {}
    for entry in paths:
        p = Path(entry) if Path(entry).is_absolute() else base / entry
        files = sorted(p.glob("*.pem")) if p.is_dir() else [p] if p.exists() else []
        for f in files:
            try:
                pub = load_public_key(f)
            except KeyError_:
                continue  # doctor reports unreadable keys; a bad file must not stop the daemon
            keys[key_id(pub)] = pub
    return keys


def open_signed(data: bytes, trusted: Mapping[bytes, PublicKey], kind: Kind, targets: set[str],
                max_bytes: int) -> Signed:
    """Check size, form, signer, signature, kind and target; raise Rejected saying which failed."""
    if len(data) > max_bytes:
        raise Rejected(f"document of {len(data)} bytes is over the limit of {max_bytes} (remote.max_document_bytes)")
    try:
        msg = cose.parse_sign1(data)
    except cose.CoseError as e:
        raise Rejected(f"not a signed document (COSE_Sign1), unsigned or truncated: {e}") from None
    kid = msg.kid
    if kid is None:
        raise Rejected("the signature names no key (no kid in the protected header)")
    pub = trusted.get(kid)
    if pub is None:
        raise Rejected(f"signed by an unknown key (kid {kid.hex()}); this gateway trusts {len(trusted)} ops key(s)")
    try:
        cose.verify(msg, pub)
    except cose.CoseError as e:
        raise Rejected(f"bad signature: {e}") from None
    h = msg.protected
    if h.get(KIND) != kind:
        raise Rejected(f"a {h.get(KIND)!r} document was sent where a {kind!r} is expected")
    target = h.get(TARGET)
    if not isinstance(target, str) or target not in targets:
        raise Rejected(f"addressed to {target!r}, not to this gateway or its groups")
    revision = h.get(REVISION, 0)
    issued = h.get(ISSUED, 0)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise Rejected(f"revision must be a whole number >= 0, not {revision!r}")
    if kind == "config" and revision < 1:
        raise Rejected("a config push needs a revision >= 1")
    return Signed(kind, target, revision, issued if isinstance(issued, int) else 0, msg.payload, fingerprint(pub))


def encode_command(cmd_id: str, op: str, args: Mapping[str, Any], expires: float) -> bytes:
    """The CBOR map a command signs: id, op, args and expiry (Unix seconds)."""
    return cbor2.dumps({"id": cmd_id, "op": op, "args": dict(args), "exp": int(expires)}, canonical=True)
