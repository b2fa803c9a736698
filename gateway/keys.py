"""Signing keys: make them (mode 0600), load them (refusing world-readable ones), name them.

A key's ``kid`` is the first 16 bytes of the SHA-256 of its SubjectPublicKeyInfo (DER); the
fingerprint printed for technicians is the same hash, hex, in groups of four.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

Alg = Literal["ed25519", "es256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class KeyError_(Exception):
    """A key is missing, unreadable, of the wrong kind, or readable by others."""


@dataclass(frozen=True)
class KeyInfo:
    """Where a new key went and how to recognise it."""

    private_path: Path
    public_path: Path
    alg: Alg
    fingerprint: str


def spki_der(pub: PublicKey) -> bytes:
    """The public key as DER SubjectPublicKeyInfo."""
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(pub: PublicKey) -> bytes:
    """The COSE ``kid`` of a public key: SHA-256(SPKI DER)[:16]."""
    return hashlib.sha256(spki_der(pub)).digest()[:16]


def fingerprint(pub: PublicKey) -> str:
    """Human-comparable fingerprint: SHA-256 of the SPKI, hex in groups of four."""
    h = hashlib.sha256(spki_der(pub)).hexdigest()
    return ":".join(h[i : i + 4] for i in range(0, len(h), 4))


def alg_of(key: PrivateKey | PublicKey) -> Alg:
    """Which signature algorithm a key is for."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key.curve, ec.SECP256R1):
        return "es256"
    raise KeyError_(f"unsupported curve {key.curve.name}: use Ed25519 or P-256")


def generate(alg: Alg) -> PrivateKey:
    """A new private key for ``alg``."""
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def init_key(directory: Path, alg: Alg = "ed25519", name: str = "device", force: bool = False) -> KeyInfo:
    """Write ``NAME.key`` (PKCS#8 PEM, 0600) and ``NAME.pub.pem`` into ``directory``."""
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub.pem"
    if private_path.exists() and not force:
        raise KeyError_(f"{private_path} already exists; keep it, or pass --force to replace it")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise KeyError_(f"cannot create {directory}: {e.strerror or e}") from None
    key = generate(alg)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = private_path.with_suffix(".key.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, private_path)
        pub = key.public_key()
        pem_pub = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        public_path.write_bytes(pem_pub)
    except OSError as e:
        raise KeyError_(f"cannot write key into {directory}: {e.strerror or e}") from None
    return KeyInfo(private_path, public_path, alg, fingerprint(pub))


def load_private_key(path: Path) -> PrivateKey:
    """Load a device key; refuse one that group or others may read."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyError_(f"no signing key at {path}: run 'sensegate keys init --dir {path.parent}'") from None
    except OSError as e:
        raise KeyError_(f"cannot read signing key {path}: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyError_(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix with: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{path} is not an unencrypted PEM private key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyError_(f"{path}: unsupported key type {type(key).__name__}; use Ed25519 or P-256")
    alg_of(key)
    return key


def load_public_key(path: Path) -> PublicKey:
    """Load a trusted public key (PEM SubjectPublicKeyInfo)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyError_(f"cannot read public key {path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as e:
        raise KeyError_(f"{path} is not a PEM public key: {e}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise KeyError_(f"{path}: unsupported key type {type(key).__name__}; use Ed25519 or P-256")
    alg_of(key)
    return key
