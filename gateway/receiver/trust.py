"""Which keys may speak for which gateway: the receiver's trust, as one small lookup.

A receiver asks one question per batch: may the key named ``kid`` speak for the gateway the
batch claims (``gw`` in its signed header)? Any object with ``lookup(gateway, kid)`` answers
it (the ``Trust`` protocol): the key to verify with, or ``Untrusted`` with the reason. A key
speaks for exactly one gateway, so one stolen key cannot forge the fleet.

``KeyBindings`` is the file-based answer used by ``sensegate receive --trust``: a directory of
``<gateway-id>.pub.pem`` files (what ``sensegate provision`` hands ops), single files bound
by their name, or ``GATEWAY-ID=FILE``. A file may hold several PEM public keys (a gateway's
current and next key during a rotation). A fleet registry (a database with revocation and
rotation) implements the same protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.config.schema import ID_PATTERN
from gateway.keys import KeyError_, PublicKey, fingerprint, key_id, public_key_from_pem

GATEWAY_ID_RE = re.compile(ID_PATTERN)
PUB_SUFFIX = ".pub.pem"
DEFAULT_KEY_NAME = "device"  # what `sensegate keys init` names a key: not a gateway id
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


@dataclass(frozen=True)
class Untrusted:
    """Why a (gateway, kid) pair is not trusted. ``forged``: the key is known, but it does not
    speak for this gateway (bound to another one, or revoked for it); otherwise it is unknown."""

    reason: str
    forged: bool = False


class Trust(Protocol):
    """The receiver's trust: the key that may sign for ``gateway`` under ``kid``, or why none."""

    def lookup(self, gateway: str, kid: bytes) -> PublicKey | Untrusted:
        """The public key bound to ``gateway`` with this ``kid``; Untrusted otherwise."""
        ...


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
    except KeyError_ as e:
        raise TrustError(str(e)) from None


class KeyBindings:
    """Gateway id -> its public keys, each key bound to one gateway only."""

    def __init__(self, bindings: Mapping[str, Iterable[PublicKey]] | None = None) -> None:
        self._owner: dict[bytes, str] = {}  # kid -> gateway
        self._keys: dict[bytes, PublicKey] = {}
        self._where: dict[bytes, str] = {}  # kid -> where the binding came from (for errors)
        for gateway, keys in (bindings or {}).items():
            for k in keys:
                self.bind(gateway, k)

    def bind(self, gateway: str, key: PublicKey, where: str = "") -> None:
        """Let ``key`` speak for ``gateway``; a key already bound to another gateway is an error."""
        if not GATEWAY_ID_RE.match(gateway):
            raise TrustError(f"{gateway!r} is not a gateway id (letters, digits, _ . : -; at most 128)")
        kid = key_id(key)
        owner = self._owner.get(kid)
        if owner is not None and owner != gateway:
            raise TrustError(f"key {fingerprint(key)} ({where or 'given'}) is already bound to gateway {owner!r} "
                             f"({self._where[kid] or 'given'}); a key speaks for one gateway only")
        self._owner[kid], self._keys[kid], self._where[kid] = gateway, key, where

    def lookup(self, gateway: str, kid: bytes) -> PublicKey | Untrusted:
        """The key if ``kid`` is bound to ``gateway``; Untrusted (forged when bound elsewhere)."""
        owner = self._owner.get(kid)
        if owner == gateway:
            return self._keys[kid]
        if owner is None:
            return Untrusted(f"signed by a key that is not trusted here (kid {kid.hex()})")
        return Untrusted(f"claims gateway {gateway!r} but is signed by the key of gateway {owner!r}", forged=True)

    @property
    def gateways(self) -> dict[str, int]:
        """Each bound gateway with its number of keys."""
        out: dict[str, int] = {}
        for g in self._owner.values():
            out[g] = out.get(g, 0) + 1
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
