"""COSE_Sign1 and COSE_Sign (RFC 9052/9053) with cbor2: EdDSA (Ed25519, through PyNaCl) and
ES256 (P-256, through cryptography, imported only for such keys).

Small on purpose (pycose 1.1 breaks with cbor2 6.x). Batches put their metadata in the
protected header, so it is signed with the payload; see docs/wire-format.md. COSE_Sign (several
signers over one payload) carries key rotations, which the old and the new key both sign
(gateway/keyevents.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway import cbor
from gateway.keys import Ed25519PublicKey, InvalidSignature, PrivateKey, PublicKey, alg_of, as_signer, key_id

COSE_SIGN1_TAG = 18
COSE_SIGN_TAG = 98
MAX_SIGNERS = 4  # signatures a COSE_Sign may carry here (a rotation has two)
ALG, CRIT, CONTENT_TYPE, KID = 1, 2, 3, 4
EDDSA, ES256 = -8, -7
ALG_IDS = {"ed25519": EDDSA, "es256": ES256}


class CoseError(ValueError):
    """Not a well-formed COSE_Sign1, or its signature does not verify."""


def sign(key: PrivateKey, protected: bytes, payload: bytes) -> bytes:
    """The signature over Sig_structure ["Signature1", protected, h'', payload]."""
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    return as_signer(key).sign(tbs)


def protected_header(key: PrivateKey, kid: bytes, extra: dict[Any, Any]) -> bytes:
    """Encode the protected header map: alg, kid, content type and our batch labels."""
    header: dict[Any, Any] = {ALG: ALG_IDS[alg_of(key)], KID: kid}
    header.update(extra)
    return cbor2.dumps(header, canonical=True)


def encode_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """Tagged COSE_Sign1 bytes, with the payload spliced in without re-encoding it."""
    head = b"\xd2\x84"  # tag 18, array of 4
    return head + cbor.bstr(protected) + b"\xa0" + cbor.bstr(payload) + cbor.bstr(signature)


@dataclass(frozen=True)
class Sign1:
    """A parsed COSE_Sign1: decoded protected header plus the raw parts."""

    protected_raw: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> bytes | None:
        kid = self.protected.get(KID, self.unprotected.get(KID))
        return kid if isinstance(kid, bytes) else None


MAX_MESSAGE = 16 * 1024 * 1024


def _four(data: bytes | Any, max_bytes: int, tag: int, name: str) -> Any:
    """The four items of a COSE_Sign1 or COSE_Sign (tagged or not), from bytes or a decoded item."""
    if isinstance(data, bytes | bytearray):
        if len(data) > max_bytes:
            raise CoseError(f"message of {len(data)} bytes is over the {max_bytes} limit")
        try:
            data = cbor2.loads(data)
        except Exception as e:  # cbor2 raises several types on garbage
            raise CoseError(f"not CBOR: {e}") from None
    if isinstance(data, cbor2.CBORTag):
        if data.tag != tag:
            raise CoseError(f"CBOR tag {data.tag} is not {name} ({tag})")
        data = data.value
    if not (isinstance(data, list | tuple) and len(data) == 4):
        raise CoseError(f"{name} is an array of four items")
    return data


def parse_sign1(data: bytes) -> Sign1:
    """Parse (not verify) a COSE_Sign1 message, tagged or untagged."""
    protected_raw, unprotected, payload, signature = _four(data, MAX_MESSAGE, COSE_SIGN1_TAG, "COSE_Sign1")
    if not (isinstance(protected_raw, bytes) and isinstance(unprotected, Mapping)
            and isinstance(payload, bytes) and isinstance(signature, bytes)):
        raise CoseError("COSE_Sign1 items have the wrong types")
    protected = _header_map(protected_raw, "protected header")
    return Sign1(protected_raw, protected, dict(unprotected), payload, signature)


def verify(msg: Sign1, key: PublicKey) -> None:
    """Check the signature with ``key``; raise CoseError if it does not verify."""
    alg = msg.protected.get(ALG)
    if alg != ALG_IDS[alg_of(key)]:
        raise CoseError(f"alg {alg} does not match {'an Ed25519' if alg_of(key) == 'ed25519' else 'a P-256'} key")
    verify_signature(key, msg.signature, cbor2.dumps(["Signature1", msg.protected_raw, b"", msg.payload]))


def verify_signature(key: PublicKey, signature: bytes, tbs: bytes) -> None:
    """Raise CoseError unless ``signature`` is ``key``'s over ``tbs`` (Ed25519, or ES256's r || s)."""
    if isinstance(key, Ed25519PublicKey):
        try:
            key.verify(signature, tbs)
        except InvalidSignature:
            raise CoseError("signature does not verify") from None
        return
    if len(signature) != 64:
        raise CoseError("ES256 signature must be 64 bytes")
    from cryptography.exceptions import InvalidSignature as EcInvalid
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
    except EcInvalid:
        raise CoseError("signature does not verify") from None


# -- COSE_Sign: one payload, several signers (RFC 9052 section 4.1) -------------------------------


def signer_header(key: PrivateKey) -> bytes:
    """One signer's protected header: its alg and kid."""
    return cbor2.dumps({ALG: ALG_IDS[alg_of(key)], KID: kid_of(key)}, canonical=True)


def kid_of(key: PrivateKey) -> bytes:
    """The kid of a private key's public half."""
    return key_id(as_signer(key).public_key())


def _sig_structure(body_protected: bytes, sign_protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature", body_protected, sign_protected, b"", payload])


def encode_sign(protected: bytes, payload: bytes, signers: list[PrivateKey]) -> bytes:
    """A tagged COSE_Sign over ``payload``, one signature per key (each may block: a token)."""
    sigs = []
    for key in signers:
        sp = signer_header(key)
        sigs.append([sp, {}, as_signer(key).sign(_sig_structure(protected, sp, payload))])
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN_TAG, [protected, {}, payload, sigs]))


@dataclass(frozen=True)
class Signature:
    """One signer of a COSE_Sign: its decoded protected header and the signature bytes."""

    protected_raw: bytes
    protected: dict[Any, Any]
    signature: bytes

    @property
    def kid(self) -> bytes | None:
        kid = self.protected.get(KID)
        return kid if isinstance(kid, bytes) else None


@dataclass(frozen=True)
class Sign:
    """A parsed COSE_Sign: the body's protected header, the payload and the signatures."""

    protected_raw: bytes
    protected: dict[Any, Any]
    payload: bytes
    signatures: tuple[Signature, ...]


def _header_map(raw: bytes, what: str) -> dict[Any, Any]:
    try:
        h = cbor2.loads(raw) if raw else {}
    except Exception as e:
        raise CoseError(f"{what} is not CBOR: {e}") from None
    if not isinstance(h, Mapping):
        raise CoseError(f"{what} is not a map")
    if CRIT in h:
        raise CoseError("critical header parameters are not supported")
    return dict(h)


def parse_sign(data: bytes | Any, max_bytes: int = 64 * 1024) -> Sign:
    """Parse (not verify) a COSE_Sign: raw bytes, or an already decoded CBOR item (tagged or not)."""
    protected_raw, unprotected, payload, sigs = _four(data, max_bytes, COSE_SIGN_TAG, "COSE_Sign")
    if not (isinstance(protected_raw, bytes) and isinstance(unprotected, Mapping) and isinstance(payload, bytes)
            and isinstance(sigs, list | tuple)):
        raise CoseError("COSE_Sign items have the wrong types")
    if not 1 <= len(sigs) <= MAX_SIGNERS:
        raise CoseError(f"COSE_Sign with {len(sigs)} signatures (1..{MAX_SIGNERS} here)")
    out = []
    for s in sigs:
        if not (isinstance(s, list | tuple) and len(s) == 3 and isinstance(s[0], bytes) and isinstance(s[1], Mapping)
                and isinstance(s[2], bytes)):
            raise CoseError("a COSE_Signature is [protected, unprotected, signature]")
        out.append(Signature(s[0], _header_map(s[0], "a signer's protected header"), s[2]))
    return Sign(protected_raw, _header_map(protected_raw, "protected header"), payload, tuple(out))


def verify_signer(msg: Sign, sig: Signature, key: PublicKey) -> None:
    """Check one signature of a COSE_Sign with ``key``; raise CoseError if it does not verify."""
    alg = sig.protected.get(ALG)
    if alg != ALG_IDS[alg_of(key)]:
        raise CoseError(f"alg {alg} does not match {'an Ed25519' if alg_of(key) == 'ed25519' else 'a P-256'} key")
    verify_signature(key, sig.signature, _sig_structure(msg.protected_raw, sig.protected_raw, msg.payload))
