"""Which keys may speak for which gateway: the receiver's trust, as one small lookup.

A receiver asks one question per batch: may the key named ``kid`` speak for the gateway the
batch claims (``gw`` in its signed header)? Any object with ``lookup(gateway, kid)`` answers
it (the ``Trust`` protocol): the key to verify with, or ``Untrusted`` with the reason. A key
speaks for exactly one gateway, so one stolen key cannot forge the fleet.

``KeyBindings`` is the file-based answer used by ``sensegate receive --trust``: a directory of
``<gateway-id>.pub.pem`` files (what ``sensegate provision`` hands ops), single files bound
by their name, or ``GATEWAY-ID=FILE``. A file may hold several PEM public keys. It follows
verified key events (gateway/keyevents.py): a rotation binds the new key and retires the old
one for batches after the switch (``at``: the batch's stream and number), a revocation ends a
key. A fleet registry (a database) implements the same protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.keyevents import GATEWAY, ROTATE, EventRefused, KeyEvent, parse_event, verify_event
from gateway.keys import KeyFileError, PublicKey, fingerprint, key_id, public_key_from_pem
from gateway.wire import GATEWAY_ID_RE, KeyLookup, Position, Untrusted

PUB_SUFFIX = ".pub.pem"
DEFAULT_KEY_NAME = "device"  # what `sensegate keys init` names a key: not a gateway id
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)
MAX_SEEN = 4096  # key event documents remembered as taken (a re-delivered one is no news)


class Trust(KeyLookup, Protocol):
    """The receiver's trust: the key that may sign for ``gateway`` under ``kid`` (``lookup``, the
    question gateway/wire.py asks when it verifies a batch), or why none; and the key events
    (rotations, revocations) that change it."""

    def take(self, document: bytes, ops_keys: Mapping[bytes, PublicKey], gateway: str | None = None) -> KeyEvent | None:
        """Verify and apply a gateway key event (about ``gateway``, when given); None when it is
        no news; EventRefused if refused."""
        ...


@dataclass
class _Bound:
    """One key's binding and what key events said about it."""

    gateway: str
    key: PublicKey
    where: str
    until: Position | None = None  # retired: signs only batches of this stream below this number
    successor: bytes = b""
    since: Position | None = None  # rotated in: signs no batch of this stream below this number
    revoked: str = ""


class TrustError(Exception):
    """A trust specification cannot be used; the message says what to do."""


def gateway_of_file(path: Path) -> str:
    """The gateway id a key file is named after: ``<gateway-id>.pub.pem`` (or ``.pem``)."""
    name = path.name
    stem = name[: -len(PUB_SUFFIX)] if name.endswith(PUB_SUFFIX) else path.stem
    if stem == DEFAULT_KEY_NAME or not GATEWAY_ID_RE.match(stem):
        raise TrustError(f"{path} does not name a gateway: rename it to <gateway-id>{PUB_SUFFIX} "
                         f"or give the gateway with it: --trust GATEWAY-ID={path}")
    return stem


def load_keys(path: Path) -> list[PublicKey]:
    """Every PEM public key in a file (a gateway may have more than one during a rotation)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TrustError(f"cannot read {path}: {e.strerror or e}") from None
    blocks = _PEM_BLOCK.findall(raw) or [raw]
    try:
        return [public_key_from_pem(b, str(path)) for b in blocks]
    except KeyFileError as e:
        raise TrustError(str(e)) from None


class KeyBindings:
    """Gateway id -> its public keys, each key bound to one gateway only."""

    def __init__(self, bindings: Mapping[str, Iterable[PublicKey]] | None = None) -> None:
        self._bound: dict[bytes, _Bound] = {}  # kid -> its binding
        self._revoked: dict[bytes, str] = {}  # kids revoked before this receiver knew them
        self._seen: dict[bytes, None] = {}  # digests of key events taken (insertion-ordered, bounded)
        for gateway, keys in (bindings or {}).items():
            for k in keys:
                self.bind(gateway, k)

    def bind(self, gateway: str, key: PublicKey, where: str = "") -> None:
        """Let ``key`` speak for ``gateway``; a key already bound to another gateway is an error."""
        if not GATEWAY_ID_RE.match(gateway):
            raise TrustError(f"{gateway!r} is not a gateway id (letters, digits, _ . : -; at most 128)")
        kid = key_id(key)
        b = self._bound.get(kid)
        if b is not None and b.gateway != gateway:
            raise TrustError(f"key {fingerprint(key)} ({where or 'given'}) is already bound to gateway {b.gateway!r} "
                             f"({b.where or 'given'}); a key speaks for one gateway only")
        if b is None:
            self._bound[kid] = _Bound(gateway, key, where, revoked=self._revoked.pop(kid, ""))

    def lookup(self, gateway: str, kid: bytes, at: Position | None = None) -> PublicKey | Untrusted:
        """The key if ``kid`` is bound to ``gateway`` and may sign the batch at ``at``; Untrusted
        (forged when bound elsewhere or retired before ``at``; revoked) otherwise."""
        b = self._bound.get(kid)
        if b is None:
            if kid in self._revoked:
                return Untrusted(f"signed by key {kid.hex()}, which ops revoked: {self._revoked[kid]}", revoked=True)
            return Untrusted(f"signed by a key that is not trusted here (kid {kid.hex()})")
        if b.gateway != gateway:
            return Untrusted(f"claims gateway {gateway!r} but is signed by the key of gateway {b.gateway!r}",
                             forged=True)
        if b.revoked:
            return Untrusted(f"signed by key {kid.hex()} of gateway {gateway!r}, which ops revoked: {b.revoked}",
                             revoked=True)
        if at is not None and b.until is not None and not (at[0] == b.until[0] and at[1] < b.until[1]):
            return Untrusted(f"batch {at[1]} of stream {at[0]} is signed by key {kid.hex()}, which gateway "
                             f"{gateway!r} retired from batch {b.until[1]} of stream {b.until[0]} (rotated to "
                             f"{b.successor.hex()})", forged=True)
        if at is not None and b.since is not None and at[0] == b.since[0] and at[1] < b.since[1]:
            return Untrusted(f"batch {at[1]} of stream {at[0]} is signed by key {kid.hex()}, which gateway "
                             f"{gateway!r} uses only from batch {b.since[1]}", forged=True)
        return b.key

    def current(self, gateway: str, kid: bytes) -> PublicKey | str:
        """The key if it is a current key of ``gateway`` (bound, neither retired nor revoked); else why not."""
        b = self._bound.get(kid)
        if b is None:
            return "revoked by ops" if kid in self._revoked else "the key is not trusted here"
        if b.gateway != gateway:
            return f"the key is bound to gateway {b.gateway!r}"
        if b.revoked:
            return f"the key was revoked by ops ({b.revoked})"
        if b.until is not None:
            return f"the key was already rotated (to {b.successor.hex()} from batch {b.until[1]})"
        return b.key

    def take(self, document: bytes, ops_keys: Mapping[bytes, PublicKey], gateway: str | None = None) -> KeyEvent | None:
        """Verify and apply one key event (gateway/keyevents.py) about ``gateway`` (when given: the
        transport's word for it); None when it is no news (taken before, or a rotation to a key
        already bound here). EventRefused says why not."""
        from hashlib import sha256

        digest = sha256(document).digest()
        if digest in self._seen:
            return None
        try:
            ev = verify_event(document, ops_keys, self.current, gateway)
        except EventRefused:
            if self._known_rotation(document, gateway):
                return None
            raise
        if ev.role != GATEWAY:
            raise EventRefused("an ops key event where a gateway key event is expected")
        self.learn(ev)
        self._seen[digest] = None
        if len(self._seen) > MAX_SEEN:
            del self._seen[next(iter(self._seen))]
        return ev

    def _known_rotation(self, document: bytes, gateway: str | None) -> bool:
        """A rotation to a key already bound to its gateway (learned before, or in the trust files)."""
        try:
            _, p = parse_event(document)
        except EventRefused:
            return False
        if p["ev"] != ROTATE or p["role"] != GATEWAY or gateway not in (None, p["gw"]):
            return False
        b = self._bound.get(p["new"])
        return b is not None and b.gateway == p["gw"] and not b.revoked

    def learn(self, ev: KeyEvent) -> None:
        """Record a verified gateway key event: bind and retire (rotation), or end a key (revocation)."""
        if ev.kind == ROTATE:
            assert ev.new_key is not None
            if ev.new_kid in self._revoked:
                raise EventRefused(f"rotation to key {ev.new_kid.hex()}, which ops revoked", forged=True)
            owner = self._bound.get(ev.new_kid)
            if owner is not None and owner.gateway != ev.gateway:
                raise EventRefused(f"rotation of gateway {ev.gateway!r} to the key of gateway {owner.gateway!r}",
                                   forged=True)
            switch = (ev.stream, ev.from_batch)
            if owner is None:
                self._bound[ev.new_kid] = owner = _Bound(ev.gateway, ev.new_key, f"rotation of {ev.kid.hex()}")
            owner.since = switch
            old = self._bound[ev.kid]
            old.until, old.successor = switch, ev.new_kid
            return
        b = self._bound.get(ev.kid)
        if b is None:
            self._revoked[ev.kid] = ev.reason or "no reason given"
        elif b.gateway != ev.gateway:
            raise EventRefused(f"revocation for gateway {ev.gateway!r} of the key of gateway {b.gateway!r}",
                               forged=True)
        else:
            b.revoked = ev.reason or "no reason given"

    @property
    def gateways(self) -> dict[str, int]:
        """Each bound gateway with its number of keys."""
        out: dict[str, int] = {}
        for b in self._bound.values():
            out[b.gateway] = out.get(b.gateway, 0) + 1
        return out

    def add(self, spec: str) -> None:
        """Add one ``--trust`` value: ``DIR``, ``FILE`` (bound by its name) or ``GATEWAY-ID=FILE``."""
        path = Path(spec)
        gateway, sep, rest = spec.partition("=")
        if sep and not path.exists() and GATEWAY_ID_RE.match(gateway):
            for k in load_keys(Path(rest)):
                self.bind(gateway, k, rest)
            return
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.endswith(PUB_SUFFIX) and p.is_file())
            if not files:
                raise TrustError(f"{path} holds no <gateway-id>{PUB_SUFFIX} files")
            for f in files:
                for k in load_keys(f):
                    self.bind(gateway_of_file(f), k, str(f))
            return
        if not path.exists():
            raise TrustError(f"{spec}: no such file or directory (--trust DIR, FILE or GATEWAY-ID=FILE)")
        gw = gateway_of_file(path)
        for k in load_keys(path):
            self.bind(gw, k, spec)

    @classmethod
    def from_specs(cls, specs: Iterable[str]) -> KeyBindings:
        """The bindings of every ``--trust`` value."""
        trust = cls()
        for spec in specs:
            trust.add(spec)
        return trust

    @classmethod
    def files(cls, gateway: str, *paths: Path) -> KeyBindings:
        """Bind the keys in ``paths`` to one gateway (a one-gateway receiver, tests, the rig)."""
        trust = cls()
        for p in paths:
            for k in load_keys(p):
                trust.bind(gateway, k, str(p))
        return trust
