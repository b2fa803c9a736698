"""Signing keys: make them (mode 0600), load them (refusing world-readable ones), name them.

A key's ``kid`` is the first 16 bytes of the SHA-256 of its SubjectPublicKeyInfo (DER); the
fingerprint printed for technicians is the same hash, hex, in groups of four.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

if TYPE_CHECKING:
    from typing import TypeAlias

    from cryptography.hazmat.primitives.asymmetric import ec

Alg = Literal["ed25519", "es256"]

# Ed25519 (the default) goes through PyNaCl (libsodium): the daemon never loads cryptography,
# whose bundled OpenSSL costs about 7 MB of resident memory on a gateway. P-256 keys (ES256)
# still use cryptography, imported only when such a key is made or read.
# RFC 8410 DER: a PKCS#8 v1 Ed25519 private key is this prefix + the 32-byte seed, and the
# SubjectPublicKeyInfo is this prefix + the 32-byte public key.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")


class KeyFileError(Exception):
    """A key is missing, unreadable, of the wrong kind, or readable by others."""


class InvalidSignature(Exception):
    """An Ed25519 signature does not verify."""


class Ed25519PublicKey:
    """An Ed25519 public key (32 bytes), verified with libsodium."""

    __slots__ = ("_vk", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = bytes(raw)
        self._vk = VerifyKey(self.raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise InvalidSignature unless ``signature`` is this key's over ``data``."""
        if len(signature) != 64:
            raise InvalidSignature("an Ed25519 signature is 64 bytes")
        try:
            self._vk.verify(data, signature)
        except BadSignatureError:
            raise InvalidSignature("signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ed25519PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class Signer(ABC):
    """A private key as signing needs it, wherever it lives (a PEM file, a PKCS#11 token).

    ``sign`` returns the COSE signature bytes (RFC 9053: Ed25519's 64 bytes, ES256's r || s) and
    may block (a token is a device): callers sign on a worker thread, never on the event loop.
    """

    __slots__ = ()
    alg: Alg

    @abstractmethod
    def sign(self, data: bytes) -> bytes:
        """The COSE signature over ``data``."""

    @abstractmethod
    def public_key(self) -> PublicKey:
        """The public half, for kid, fingerprint and the receivers."""

    @property
    def kid(self) -> bytes:
        """The COSE ``kid`` of this key (``key_id`` of its public half)."""
        return key_id(self.public_key())

    def close(self) -> None:  # noqa: B027 (a no-op unless the key holds something, like a token session)
        """Release what the key holds (a token's session); nothing for a key read from a file."""


class Ed25519PrivateKey(Signer):
    """An Ed25519 signing key (its 32-byte seed), signing with libsodium."""

    __slots__ = ("_pub", "_sk")
    alg: Alg = "ed25519"

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 private key is a 32-byte seed")
        self._sk = SigningKey(bytes(seed))
        self._pub = Ed25519PublicKey(bytes(self._sk.verify_key))

    @classmethod
    def generate(cls) -> Ed25519PrivateKey:
        return cls(os.urandom(32))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte signature over ``data`` (RFC 8032, deterministic)."""
        return self._sk.sign(data).signature

    def public_key(self) -> Ed25519PublicKey:
        return self._pub

    def seed(self) -> bytes:
        return bytes(self._sk)


class P256Signer(Signer):
    """A P-256 key from a PEM file, signing ES256 through cryptography."""

    __slots__ = ("_key",)
    alg: Alg = "es256"

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes) -> bytes:
        """ECDSA over SHA-256 of ``data``, as COSE's fixed-size r || s (RFC 9053 2.1)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()


if TYPE_CHECKING:
    PrivateKey: TypeAlias = Signer | ec.EllipticCurvePrivateKey
    PublicKey: TypeAlias = Ed25519PublicKey | ec.EllipticCurvePublicKey
else:  # annotations only at run time: naming the P-256 types would import cryptography
    PrivateKey = PublicKey = object


@dataclass(frozen=True)
class KeyInfo:
    """Where a new key went and how to recognise it."""

    private_path: Path
    public_path: Path
    alg: Alg
    fingerprint: str


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return ("\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n").encode()


def _pem_der(raw: bytes, label: str) -> bytes | None:
    """The DER inside a file that is exactly one PEM block with ``label``; None for anything else
    (which then goes to cryptography's parser, and its error messages)."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if not (text.startswith(begin) and text.endswith(end)):
        return None
    body = text[len(begin) : -len(end)]
    if "-----" in body:
        return None
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def spki_der(pub: PublicKey) -> bytes:
    """The public key as DER SubjectPublicKeyInfo."""
    if isinstance(pub, Ed25519PublicKey):
        return _SPKI_ED25519 + pub.raw
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_pem(pub: PublicKey) -> bytes:
    """The public key as PEM SubjectPublicKeyInfo (what ``NAME.pub.pem`` holds)."""
    return _pem("PUBLIC KEY", spki_der(pub))


def key_id(pub: PublicKey) -> bytes:
    """The COSE ``kid`` of a public key: SHA-256(SPKI DER)[:16]."""
    return hashlib.sha256(spki_der(pub)).digest()[:16]


def fingerprint(pub: PublicKey) -> str:
    """Human-comparable fingerprint: SHA-256 of the SPKI, hex in groups of four."""
    h = hashlib.sha256(spki_der(pub)).hexdigest()
    return ":".join(h[i : i + 4] for i in range(0, len(h), 4))


def alg_of(key: PrivateKey | PublicKey) -> Alg:
    """Which signature algorithm a key is for."""
    if isinstance(key, Signer):
        return key.alg
    if isinstance(key, Ed25519PublicKey):
        return "ed25519"
    curve = getattr(key, "curve", None)
    if curve is not None and curve.name == "secp256r1":
        return "es256"
    raise KeyFileError(f"unsupported key {getattr(curve, 'name', type(key).__name__)}: use Ed25519 or P-256")


def generate(alg: Alg) -> PrivateKey:
    """A new private key for ``alg``."""
    if alg == "ed25519":
        return Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: PrivateKey) -> bytes:
    """The private key as unencrypted PKCS#8 PEM (a token's key has none: it never leaves the token)."""
    if isinstance(key, Ed25519PrivateKey):
        return _pem("PRIVATE KEY", _PKCS8_ED25519 + key.seed())
    if isinstance(key, Signer):
        raise KeyFileError(f"a {type(key).__name__} cannot be written out")
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_key(directory: Path, alg: Alg = "ed25519", name: str = "device", force: bool = False) -> KeyInfo:
    """Write ``NAME.key`` (PKCS#8 PEM, 0600) and ``NAME.pub.pem`` into ``directory``."""
    private_path = directory / f"{name}.key"
    public_path = directory / f"{name}.pub.pem"
    if private_path.exists() and not force:
        raise KeyFileError(f"{private_path} already exists; keep it, or pass --force to replace it")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise KeyFileError(f"cannot create {directory}: {e.strerror or e}") from None
    key = generate(alg)
    pem = private_pem(key)
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
        public_path.write_bytes(public_pem(pub))
    except OSError as e:
        raise KeyFileError(f"cannot write key into {directory}: {e.strerror or e}") from None
    return KeyInfo(private_path, public_path, alg, fingerprint(pub))


def load_ops_key(path: Path) -> PrivateKey:
    """Load an ops signing key; a missing one is named as an ops key, with the command that makes one."""
    if not path.exists():
        raise KeyFileError(
            f"no ops key at {path}: make one on the ops machine with 'sensegate keys init --ops --dir {path.parent}' "
            "(or give its path with --sign-key); each gateway trusts its public half: "
            "sudo sensegate provision --ops-key ops.pub.pem"
        )
    return load_private_key(path)


def load_private_key(path: Path) -> PrivateKey:
    """Load a device key; refuse one that group or others may read."""
    try:
        st = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"no signing key at {path}: run 'sensegate keys init --dir {path.parent}'") from None
    except OSError as e:
        raise KeyFileError(f"cannot read signing key {path}: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"signing key {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix with: chmod 600 {path}"
        )
    return private_key_from_pem(raw, str(path))


def private_key_from_pem(raw: bytes, where: str = "key") -> PrivateKey:
    """An Ed25519 or P-256 private key from unencrypted PEM (KeyFileError says why not)."""
    der = _pem_der(raw, "PRIVATE KEY")
    if der is not None and len(der) == 48 and der.startswith(_PKCS8_ED25519):
        return Ed25519PrivateKey(der[16:])
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{where} is not an unencrypted PEM private key: {e}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):  # e.g. PKCS#8 v2, with the public key in it
        return Ed25519PrivateKey(key.private_bytes_raw())
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{where}: unsupported key type {type(key).__name__}; use Ed25519 or P-256")
    alg_of(key)
    return key


def as_signer(key: PrivateKey) -> Signer:
    """Any private key as a ``Signer`` (a P-256 key from cryptography gets its wrapper)."""
    return key if isinstance(key, Signer) else P256Signer(key)


def load_signing_key(spec: str | Path) -> Signer:
    """The device key a config names: a PEM file, or a key on a PKCS#11 token (a pkcs11: URI).

    Opening a token may block (library load, login): call it off the event loop. The PKCS#11
    library is imported only here, only for a URI, so a PEM gateway never loads it."""
    text = str(spec)
    if text.startswith("pkcs11:"):
        from gateway.hsm import open_token_key

        return open_token_key(text)
    return as_signer(load_private_key(Path(text)))


def load_public_key(path: Path) -> PublicKey:
    """Load a trusted public key (PEM SubjectPublicKeyInfo)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read public key {path}: {e.strerror or e}") from None
    return public_key_from_pem(raw, str(path))


def public_key_from_pem(raw: bytes, where: str = "key") -> PublicKey:
    """An Ed25519 or P-256 public key from PEM SubjectPublicKeyInfo (KeyFileError says why not)."""
    der = _pem_der(raw, "PUBLIC KEY")
    if der is not None and len(der) == 44 and der.startswith(_SPKI_ED25519):
        return Ed25519PublicKey(der[12:])
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:  # an OID it does not know: the latter
        raise KeyFileError(f"{where} is not a PEM public key: {e}") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return Ed25519PublicKey(key.public_bytes_raw())
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{where}: unsupported key type {type(key).__name__}; use Ed25519 or P-256")
    alg_of(key)
    return key


def public_key_from_der(der: bytes, where: str = "key") -> PublicKey:
    """An Ed25519 or P-256 public key from DER SubjectPublicKeyInfo (what key events carry)."""
    if len(der) == 44 and der.startswith(_SPKI_ED25519):
        return Ed25519PublicKey(der[12:])
    if len(der) > 1024:
        raise KeyFileError(f"{where}: {len(der)} bytes is no Ed25519 or P-256 public key")
    return public_key_from_pem(_pem("PUBLIC KEY", der), where)
