"""Signed ops documents: COSE_Sign1 over a config's YAML bytes, a command's CBOR map or a driver bundle.

The protected header carries, besides ``alg`` and ``kid``: ``"sgk"`` the kind (``config``,
``command``, ``driver`` or ``agent``, so one kind can never be replayed as another), ``"to"`` the target (a gateway id
or ``group/<name>``), ``"iat"`` when it was signed, and for configs ``"rv"`` the push revision
(anti-rollback: a gateway applies only revisions newer than any it has seen), and optionally
``"exp"``, the time after which a retained copy must no longer be taken (rollouts retain each
gateway's document for gateways that are offline; docs/fleet.md).

Every number in a signed document is an integer (``rv``, ``iat``: 0..2^63-1) or, in a
command's body, a finite number (``check_numbers``): a NaN compares false with everything and
would slip past the expiry, TTL and min/max checks, a bignum past any bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cbor2

from gateway import cose
from gateway.keys import KeyFileError, PrivateKey, PublicKey, fingerprint, key_id, load_public_key

if TYPE_CHECKING:
    from gateway.keyevents import OpsKeyring

MAX_UINT = 2**63 - 1  # revisions, signing times: they fit a signed 64-bit integer everywhere
MAX_INT_ARG = 2**64 - 1  # integers in a command's arguments: a 64-bit register, signed or unsigned
MAX_DEPTH = 8
Kind = Literal["config", "command", "agent", "driver"]
KIND, TARGET, REVISION, ISSUED, EXPIRES = "sgk", "to", "rv", "iat", "exp"
CONTENT_TYPES = {"config": "application/yaml", "command": "application/cbor", "agent": "application/cbor",
                 "driver": "application/zip"}
OPS_EVENTS = "opskeys.cbor"  # under <state_dir>/remote: the ops key events a gateway took, in order


class Rejected(Exception):
    """A pushed document or command is refused; the message is the reason sent back in the status."""


def cbor_map(payload: bytes, what: str) -> dict[Any, Any]:
    """A signed document's CBOR body, which must be a map (a command, an update manifest)."""
    try:
        body = cbor2.loads(payload)
    except Exception as e:  # cbor2 raises many kinds on garbage
        raise Rejected(f"{what} is not CBOR: {e}") from None
    if not isinstance(body, dict):
        raise Rejected(f"{what} is not a CBOR map")
    return body


@dataclass(frozen=True)
class Signed:
    """A verified document: who signed it, for whom, and what it says."""

    kind: Kind
    target: str
    revision: int
    issued: int
    payload: bytes
    signer: str  # the ops key's fingerprint
    expires: int = 0  # Unix seconds after which it must not be taken (0: no expiry)


def check_numbers(value: Any, where: str, depth: int = 0) -> None:
    """Refuse (Rejected) a NaN or infinite float or an integer beyond 64 bits anywhere in ``value``."""
    if depth > MAX_DEPTH:
        raise Rejected(f"{where}: nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, bool) or value is None or isinstance(value, str | bytes):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Rejected(f"{where}: {value!r} is not a finite number")
    elif isinstance(value, int):
        if not -MAX_INT_ARG <= value <= MAX_INT_ARG:
            raise Rejected(f"{where}: integer {value} is beyond 64 bits")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            check_numbers(k, where, depth + 1)
            check_numbers(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_numbers(v, f"{where}[{i}]", depth + 1)


def _uint(h: Mapping[Any, Any], label: str, name: str) -> int:
    """An optional header integer 0..2^63-1 (absent: 0); Rejected for a float, NaN, bool or bignum."""
    value = h.get(label, 0)
    if type(value) is not int or not 0 <= value <= MAX_UINT:
        raise Rejected(f"{name} must be a whole number 0..2^63-1, not {value!r}")
    return value


def group_target(group: str) -> str:
    """The ``to`` value addressing a fleet group."""
    return f"group/{group}"


def sign(key: PrivateKey, kind: Kind, target: str, payload: bytes, revision: int = 0, expires: int = 0) -> bytes:
    """Sign a config (YAML bytes) or a command (CBOR map) for a gateway or a group; ``expires``
    (Unix seconds) bounds how long a retained copy may still be taken (a rollout's offline gateways)."""
    extra: dict[Any, Any] = {cose.CONTENT_TYPE: CONTENT_TYPES[kind], KIND: kind, TARGET: target,
                             ISSUED: int(time.time())}
    if kind == "config":
        extra[REVISION] = revision
    if expires:
        extra[EXPIRES] = int(expires)
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
            except KeyFileError:
                continue  # doctor reports unreadable keys; a bad file must not stop the daemon
            keys[key_id(pub)] = pub
    return keys


def gateway_ops_keys(ops_keys: list[str], base: Path, state_dir: str) -> OpsKeyring:
    """The ops keys a gateway trusts: those of its ``remote.ops_keys`` files, as rotated and
    revoked since by the key events it took (kept in ``<state_dir>/remote/opskeys.cbor``).

    The remote agent, ``sensegate driver install BUNDLE`` and doctor all ask this, so a revoked
    ops key signs nothing anywhere on the gateway."""
    from gateway.keyevents import OpsKeyring

    return OpsKeyring(load_trusted(ops_keys, base), Path(state_dir) / "remote" / OPS_EVENTS)


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
        from gateway.keyevents import OpsKeyring

        why = trusted.why(kid) if isinstance(trusted, OpsKeyring) else ""
        if why:
            raise Rejected(f"signed by ops key {kid.hex()}, which was {why}")
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
    revision = _uint(h, REVISION, "revision")
    issued = _uint(h, ISSUED, "signing time (iat)")
    expires = _uint(h, EXPIRES, "expiry (exp)")
    if kind == "config" and revision < 1:
        raise Rejected("a config push needs a revision >= 1")
    if expires and expires < time.time():
        raise Rejected(f"expired {time.time() - expires:.0f} s ago (a retained push kept past its rollout's expiry)")
    return Signed(kind, target, revision, issued, msg.payload, fingerprint(pub), expires)


def encode_command(cmd_id: str, op: str, args: Mapping[str, Any], expires: float) -> bytes:
    """The CBOR map a command signs: id, op, args and expiry (Unix seconds)."""
    return cbor2.dumps({"id": cmd_id, "op": op, "args": dict(args), "exp": int(expires)}, canonical=True)
