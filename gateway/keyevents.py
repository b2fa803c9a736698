"""Key events: a key rotation signed by the old key and the new one, a revocation signed by ops.

One document format for gateway device keys and for ops keys (docs/security.md, "Rotation and
revocation"): a tagged COSE_Sign (RFC 9052 section 4.1) whose body protected header is
``{"sgk": "key"}`` and whose payload is a canonical CBOR map:

* rotation: ``{"ev": "rotate", "role": "gateway"|"ops", "gw": id (gateway keys), "old": kid,
  "new": kid, "key": the new key's DER SubjectPublicKeyInfo, "st": stream, "bs": the first batch
  number the new key signs (gateway keys), "iat": Unix seconds}``, signed by exactly two
  signers: the old key and the new one;
* revocation: ``{"ev": "revoke", "role": ..., "gw": id (gateway keys), "kid": kid, "why": text,
  "iat": ...}``, signed by one trusted ops key (for an ops key: another one).

``verify_event`` checks a document against what the caller trusts and returns a ``KeyEvent``:
what to record. The reference receiver (gateway/receiver/trust.py), the gateways' ops keys
(``OpsKeyring``) and the fleet ingest's registry all call it, and record the result their way.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cbor2

from gateway import cose
from gateway.keys import KeyFileError, PrivateKey, PublicKey, fingerprint, key_id, public_key_from_der, spki_der

log = logging.getLogger("sensegate.keys")

KIND = "key"  # "sgk" of the body's protected header: never a config or a command
ROTATE: Literal["rotate"] = "rotate"
REVOKE: Literal["revoke"] = "revoke"
GATEWAY: Literal["gateway"] = "gateway"
OPS: Literal["ops"] = "ops"
MAX_EVENT = 8 * 1024  # one document (two P-256 signatures and a key: about 400 bytes)
MAX_HISTORY = 8  # rotation documents a gateway's retained keys message carries, oldest first
MAX_UINT = 2**63 - 1
MAX_WHY = 200
_GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_FIELDS = {
    (ROTATE, GATEWAY): {"ev", "role", "gw", "old", "new", "key", "st", "bs", "iat"},
    (ROTATE, OPS): {"ev", "role", "old", "new", "key", "iat"},
    (REVOKE, GATEWAY): {"ev", "role", "gw", "kid", "why", "iat"},
    (REVOKE, OPS): {"ev", "role", "kid", "why", "iat"},
}


class EventRefused(Exception):
    """A key event is not accepted; the message says why. ``forged``: signed, but by keys that
    may not make it (an attack or a mistake worth an alarm), not merely malformed or unknown."""

    def __init__(self, reason: str, forged: bool = False) -> None:
        super().__init__(reason)
        self.forged = forged


@dataclass(frozen=True)
class KeyEvent:
    """A verified key event: what a trust store records.

    Rotation: ``kid`` (the old key) is retired and ``new_key`` (``new_kid``) takes over; for a
    gateway key, the old key signs only batches of ``stream`` numbered below ``from_batch`` and
    the new key none of those. Revocation: ``kid`` signs nothing from now on.
    """

    kind: Literal["rotate", "revoke"]
    role: Literal["gateway", "ops"]
    gateway: str  # "" for ops keys
    kid: bytes
    issued: int
    digest: bytes  # SHA-256 of the document: the same document seen again is no news
    document: bytes
    signers: tuple[bytes, ...]
    new_kid: bytes = b""
    new_key: PublicKey | None = None
    stream: int = 0
    from_batch: int = 0
    reason: str = ""

    def describe(self) -> str:
        """One line for logs and the receiver's output."""
        who = f"gateway {self.gateway!r}" if self.role == GATEWAY else "ops"
        if self.kind == ROTATE:
            at = f" from batch {self.from_batch} of stream {self.stream}" if self.role == GATEWAY else ""
            return f"{who} key {self.kid.hex()} rotated to {self.new_kid.hex()}{at}"
        return f"{who} key {self.kid.hex()} revoked" + (f" ({self.reason})" if self.reason else "")


# -- making documents -----------------------------------------------------------------------------


def _document(payload: dict[str, Any], signers: list[PrivateKey]) -> bytes:
    protected = cbor2.dumps({"sgk": KIND}, canonical=True)
    return cose.encode_sign(protected, cbor2.dumps(payload, canonical=True), signers)


def make_rotation(old: PrivateKey, new: PrivateKey, gateway: str = "", stream: int = 0, from_batch: int = 0,
                  issued: int | None = None) -> bytes:
    """A rotation signed by ``old`` and ``new`` (both sign: may block on a token). ``gateway``
    empty: an ops key's rotation; else a gateway device key's, switching at batch ``from_batch``."""
    from gateway.keys import as_signer

    new_pub = as_signer(new).public_key()
    body: dict[str, Any] = {"ev": ROTATE, "role": GATEWAY if gateway else OPS, "old": cose.kid_of(old),
                            "new": key_id(new_pub), "key": spki_der(new_pub),
                            "iat": int(time.time()) if issued is None else issued}
    if gateway:
        body.update(gw=gateway, st=stream, bs=from_batch)
    return _document(body, [old, new])


def make_revocation(ops: PrivateKey, kid: bytes, gateway: str = "", reason: str = "",
                    issued: int | None = None) -> bytes:
    """A revocation of ``kid`` (a gateway's device key, or with no ``gateway`` an ops key),
    signed by the ops key ``ops``."""
    body: dict[str, Any] = {"ev": REVOKE, "role": GATEWAY if gateway else OPS, "kid": kid, "why": reason[:MAX_WHY],
                            "iat": int(time.time()) if issued is None else issued}
    if gateway:
        body["gw"] = gateway
    return _document(body, [ops])


def history_message(documents: list[bytes]) -> bytes:
    """The retained ``<prefix>/<gw>/keys`` message: the latest rotations, oldest first."""
    return cbor2.dumps(documents[-MAX_HISTORY:])


def documents_in(data: bytes) -> list[bytes]:
    """The documents in a key message: one COSE_Sign, or an array of them as byte strings (a history)."""
    if len(data) > MAX_EVENT * MAX_HISTORY:
        raise EventRefused(f"key message of {len(data)} bytes is over the {MAX_EVENT * MAX_HISTORY} limit")
    try:
        obj = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types on garbage
        raise EventRefused(f"not CBOR: {e}") from None
    if isinstance(obj, list) and obj and all(isinstance(d, bytes) for d in obj):
        if len(obj) > MAX_HISTORY:
            raise EventRefused(f"a key history of {len(obj)} documents (at most {MAX_HISTORY})")
        return list(obj)
    return [data]


# -- checking them --------------------------------------------------------------------------------


GatewayKey = Callable[[str, bytes], "PublicKey | str"]
"""``(gateway, kid) -> the key if it is a current key of that gateway, else why not``."""


def _uint(v: Any, lo: int = 0) -> bool:
    return type(v) is int and lo <= v <= MAX_UINT


def _kid(v: Any) -> bool:
    return isinstance(v, bytes) and len(v) == 16


def parse_event(data: bytes) -> tuple[cose.Sign, dict[str, Any]]:
    """The COSE_Sign and its payload map, every field of the right type (EventRefused if not)."""
    if len(data) > MAX_EVENT:
        raise EventRefused(f"key event of {len(data)} bytes is over the {MAX_EVENT} limit")
    try:
        msg = cose.parse_sign(data, MAX_EVENT)
    except cose.CoseError as e:
        raise EventRefused(f"not a key event (COSE_Sign): {e}") from None
    if msg.protected.get("sgk") != KIND:
        raise EventRefused(f"a {msg.protected.get('sgk')!r} document where a key event is expected")
    try:
        p = cbor2.loads(msg.payload)
    except Exception as e:
        raise EventRefused(f"key event payload is not CBOR: {e}") from None
    if not isinstance(p, dict):
        raise EventRefused("key event payload is not a map")
    fields = _FIELDS.get((p.get("ev"), p.get("role")))  # type: ignore[arg-type]
    if fields is None:
        raise EventRefused(f"unknown key event {p.get('ev')!r} for role {p.get('role')!r}")
    if set(p) != fields:
        raise EventRefused(f"key event fields {sorted(map(str, p))} are not {sorted(fields)}")
    ok = _uint(p["iat"]) and ("gw" not in p or (isinstance(p["gw"], str) and bool(_GATEWAY_ID.match(p["gw"]))))
    if p["ev"] == ROTATE:
        ok = ok and _kid(p["old"]) and _kid(p["new"]) and isinstance(p["key"], bytes) and p["old"] != p["new"]
        if p["role"] == GATEWAY:
            ok = ok and _uint(p["st"]) and _uint(p["bs"], 1)
    else:
        ok = ok and _kid(p["kid"]) and isinstance(p["why"], str) and len(p["why"]) <= MAX_WHY
    if not ok:
        raise EventRefused("a key event field has the wrong type or is out of range")
    return msg, p


def _signature_by(msg: cose.Sign, kid: bytes) -> cose.Signature:
    found = [s for s in msg.signatures if s.kid == kid]
    if len(found) != 1:
        raise EventRefused(f"not signed by key {kid.hex()}", forged=True)
    return found[0]


def _check(msg: cose.Sign, sig: cose.Signature, key: PublicKey, who: str) -> None:
    try:
        cose.verify_signer(msg, sig, key)
    except cose.CoseError as e:
        raise EventRefused(f"the signature of {who} does not verify: {e}", forged=True) from None


def verify_event(data: bytes, ops_keys: Mapping[bytes, PublicKey], gateway_key: GatewayKey | None = None,
                 gateway: str | None = None) -> KeyEvent:
    """Check one key event document; EventRefused says why it is not accepted.

    ``ops_keys``: the ops keys trusted now (kid -> key); ``gateway_key``: the current keys of
    gateways (None: gateway key events are refused); ``gateway``: the gateway the transport says
    the event is about (an MQTT topic), which must match. A rotation must be signed by exactly
    the old key (a current key of that gateway, or a trusted ops key) and the new one; a
    revocation by one trusted ops key (not the revoked one)."""
    msg, p = parse_event(data)
    role, gw = p["role"], p.get("gw", "")
    if gateway is not None and role == GATEWAY and gw != gateway:
        raise EventRefused(f"a key event of gateway {gw!r} published for gateway {gateway!r}", forged=True)
    digest = hashlib.sha256(data).digest()
    signers = tuple(s.kid or b"" for s in msg.signatures)
    if p["ev"] == ROTATE:
        if len(msg.signatures) != 2:
            raise EventRefused(f"a rotation is signed by the old and the new key, not {len(msg.signatures)} key(s)",
                               forged=True)
        try:
            new_key = public_key_from_der(p["key"], "the rotation's new key")
        except (KeyFileError, ValueError) as e:
            raise EventRefused(str(e)) from None
        if key_id(new_key) != p["new"]:
            raise EventRefused("the rotation's new key does not have the kid it names", forged=True)
        if role == GATEWAY:
            if gateway_key is None:
                raise EventRefused("gateway key events are not taken here")
            old = gateway_key(gw, p["old"])
            if isinstance(old, str):
                raise EventRefused(f"rotation of gateway {gw!r} from key {p['old'].hex()}: {old}", forged=True)
        else:
            old_key = ops_keys.get(p["old"])
            if old_key is None:
                raise EventRefused(f"rotation of ops key {p['old'].hex()}, which is not trusted here", forged=True)
            old = old_key
        _check(msg, _signature_by(msg, p["old"]), old, "the old key")
        _check(msg, _signature_by(msg, p["new"]), new_key, "the new key")
        return KeyEvent(ROTATE, role, gw, p["old"], p["iat"], digest, data, signers, new_kid=p["new"],
                        new_key=new_key, stream=p.get("st", 0), from_batch=p.get("bs", 0))
    if len(msg.signatures) != 1:
        raise EventRefused("a revocation is signed by one ops key", forged=True)
    sig = msg.signatures[0]
    signer = ops_keys.get(sig.kid or b"")
    if signer is None:
        raise EventRefused(f"revocation signed by key {(sig.kid or b'').hex() or '(none)'}, which is not a trusted "
                           "ops key here", forged=True)
    if role == OPS and sig.kid == p["kid"]:
        raise EventRefused("an ops key cannot revoke itself: another trusted ops key signs its revocation",
                           forged=True)
    _check(msg, sig, signer, "the ops key")
    return KeyEvent(REVOKE, role, gw, p["kid"], p["iat"], digest, data, signers, reason=p["why"])


# -- the ops keys a gateway or a receiver trusts -------------------------------------------------------


class OpsKeyring(Mapping[bytes, PublicKey]):
    """Trusted ops keys (kid -> key) that follow verified rotations and revocations.

    Starts from the anchor (the ``remote.ops_keys`` files, or a receiver's ``--ops-trust``);
    a rotation replaces the old key by the new one, a revocation removes a key for good (it is
    never trusted again, not even when the anchor files still hold it). With ``store``, the
    documents taken are kept (a CBOR array) and applied again at the next start, in order."""

    def __init__(self, anchor: Mapping[bytes, PublicKey], store: Path | None = None) -> None:
        self.anchor = dict(anchor)
        self.store = store
        self._keys: dict[bytes, PublicKey] = {}
        self.gone: dict[bytes, str] = {}  # kid -> why it is no longer trusted
        self.documents: list[bytes] = []
        self._seen: set[bytes] = set()
        self._reset()
        if store is not None:
            self._replay(store)

    def _reset(self) -> None:
        self._keys = {k: v for k, v in self.anchor.items() if k not in self.gone}

    def __getitem__(self, kid: bytes) -> PublicKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def why(self, kid: bytes) -> str:
        """Why ``kid`` is not trusted ("" when it is, or was never heard of)."""
        return self.gone.get(kid, "")

    def reanchor(self, anchor: Mapping[bytes, PublicKey]) -> None:
        """New anchor files (SIGHUP): trust them, minus every key retired or revoked since."""
        self.anchor = dict(anchor)
        learned = {k: v for k, v in self._keys.items() if k not in self.anchor}
        self._reset()
        self._keys.update(learned)

    def take(self, data: bytes) -> KeyEvent | None:
        """Verify and apply one ops key event; None when this exact document was applied before."""
        digest = hashlib.sha256(data).digest()
        if digest in self._seen:
            return None
        try:
            ev = verify_event(data, self)
        except EventRefused:
            if self._known_rotation(data):
                return None
            raise
        if ev.role != OPS:
            raise EventRefused("a gateway key event where an ops key event is expected")
        self._apply(ev)
        self.documents.append(data)
        if self.store is not None:
            from gateway.remote.store import write_atomic

            self.store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.store, cbor2.dumps(self.documents))
        return ev

    def _known_rotation(self, data: bytes) -> bool:
        """A rotation to an ops key trusted already (taken before, or in the anchor files)."""
        try:
            _, p = parse_event(data)
        except EventRefused:
            return False
        return p["ev"] == ROTATE and p["role"] == OPS and p["new"] in self._keys

    def _apply(self, ev: KeyEvent) -> None:
        if ev.kind == ROTATE:
            assert ev.new_key is not None
            if ev.new_kid in self.gone:
                raise EventRefused(f"ops key {ev.new_kid.hex()} was {self.gone[ev.new_kid]}", forged=True)
            self.gone[ev.kid] = f"rotated to {fingerprint(ev.new_key)}"
            self._keys.pop(ev.kid, None)
            self._keys[ev.new_kid] = ev.new_key
        else:
            self.gone[ev.kid] = "revoked" + (f" ({ev.reason})" if ev.reason else "")
            self._keys.pop(ev.kid, None)
        self._seen.add(ev.digest)

    def _replay(self, store: Path) -> None:
        try:
            docs = cbor2.loads(store.read_bytes())
        except FileNotFoundError:
            return
        except Exception as e:  # a damaged file: say so, and trust the anchor (the local files) alone
            log.error("ops key events %s are unreadable (%s); trusting the ops keys of the config files only",
                      store, e)
            return
        for doc in docs if isinstance(docs, list) else []:
            try:
                ev = verify_event(doc, self)
                self._apply(ev)
            except EventRefused as e:
                log.error("ops key event kept in %s no longer verifies (%s); skipped", store, e)
                continue
            self.documents.append(doc)
