"""Device keys on a PKCS#11 token (a secure element, a TPM 2.0, SoftHSM2): sign without the key
ever leaving the token.

Imported only when the config's ``gateway.key_file`` is a ``pkcs11:`` URI (gateway/pkcs11uri.py),
so a gateway with a PEM key never loads python-pkcs11 or a token library. ES256 signs the
SHA-256 digest with CKM_ECDSA (the mechanism ATECC608 and TPM 2.0 tokens offer); Ed25519 signs
the message with CKM_EDDSA where the token has it (SoftHSM2 >= 2.6). Every call blocks on the
device: the batcher signs on its database thread, never on the event loop.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.keys import Alg, Ed25519PublicKey, KeyFileError, PublicKey, Signer, fingerprint
from gateway.pkcs11uri import Pkcs11Uri, UriError, parse

if TYPE_CHECKING:
    import pkcs11

log = logging.getLogger("sensegate.keys")

# DER of the curve parameters (CKA_EC_PARAMS): P-256's OID, Ed25519's OID, and the printable
# string "edwards25519" some tokens use instead (PKCS#11 3.0, 2.3.5)
_P256 = bytes.fromhex("06082a8648ce3d030107")
_ED25519 = (bytes.fromhex("06032b6570"), bytes.fromhex("130c656477617264733235353139"))
_LOST = ("SessionHandleInvalid", "SessionClosed", "DeviceRemoved", "TokenNotPresent", "UserNotLoggedIn",
         "DeviceError", "KeyHandleInvalid", "ObjectHandleInvalid", "GeneralError")
"""Errors after which the session is opened again once before giving up (token replugged, reset)."""
_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


class TokenError(KeyFileError):
    """The token, its PIN or its key cannot be used; the message says what to check."""


class NoTokenKey(TokenError):
    """The token is there and the PIN works, but it holds no key by the URI's label/id."""


def _missing() -> TokenError:
    return TokenError("a pkcs11: key needs python-pkcs11: pip install 'sensegate[pkcs11]'")


def _lib(module: str) -> Any:
    """The loaded PKCS#11 library (C_Initialize once per process, as the standard expects)."""
    try:
        import pkcs11
    except ImportError:
        raise _missing() from None
    with _LIBS_LOCK:
        if module not in _LIBS:
            if not os.path.isfile(module):
                raise TokenError(f"no PKCS#11 module at {module} (is the token's package installed?)")
            try:
                _LIBS[module] = pkcs11.lib(module)
            except pkcs11.PKCS11Error as e:
                raise TokenError(f"cannot load the PKCS#11 module {module}: {_why(e)}") from None
        return _LIBS[module]


def _why(e: Exception) -> str:
    return f"{type(e).__name__}{': ' + str(e) if str(e) else ''}"


def _token(uri: Pkcs11Uri) -> pkcs11.Token:
    import pkcs11

    lib = _lib(uri.module)
    try:
        slots = lib.get_slots(token_present=True)
    except pkcs11.PKCS11Error as e:
        raise TokenError(f"cannot list the slots of {uri.module}: {_why(e)}") from None
    found = []
    for slot in slots:
        if uri.slot_id is not None and slot.slot_id != uri.slot_id:
            continue
        try:
            tok = slot.get_token()
        except pkcs11.PKCS11Error:
            continue
        if ((uri.token is None or tok.label == uri.token)
                and (uri.serial is None or tok.serial.decode(errors="replace").strip() == uri.serial)
                and (uri.manufacturer is None or tok.manufacturer_id == uri.manufacturer)
                and (uri.model is None or tok.model == uri.model)):
            found.append(tok)
    if not found:
        present = ", ".join(repr(s.get_token().label) for s in slots) or "none"
        raise TokenError(f"no token matching {uri.describe()} (tokens present: {present})")
    if len(found) > 1:
        raise TokenError(f"{len(found)} tokens match {uri.describe()}; name one with token= or serial=")
    chosen: pkcs11.Token = found[0]
    return chosen


def _open(uri: Pkcs11Uri, rw: bool = False) -> pkcs11.Session:
    import pkcs11

    tok = _token(uri)
    try:
        pin = uri.read_pin()
    except UriError as e:
        raise TokenError(str(e)) from None
    try:
        return tok.open(user_pin=pin, rw=rw)
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        # a login is per process and token: another session of ours (the signing key's, while a
        # rotation makes the next key) holds it, and this one shares it without logging in
        try:
            return tok.open(rw=rw)
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"cannot open a session on token {tok.label!r}: {_why(e)}") from None
    except pkcs11.exceptions.PinIncorrect:
        raise TokenError(f"the token refused the PIN from {uri.pin_source} (wrong PIN; "
                         "a few more tries may lock it)") from None
    except pkcs11.exceptions.PinLocked:
        raise TokenError(f"the PIN of token {tok.label!r} is locked; the token's security officer must "
                         "reset it") from None
    except pkcs11.PKCS11Error as e:
        raise TokenError(f"cannot log in to token {tok.label!r}: {_why(e)}") from None


def _find(session: pkcs11.Session, uri: Pkcs11Uri, cls: Any) -> Any:
    """The one object of class ``cls`` the URI names, or None."""
    import pkcs11
    from pkcs11 import Attribute

    attrs: dict[Any, Any] = {Attribute.CLASS: cls}
    if uri.object is not None:
        attrs[Attribute.LABEL] = uri.object
    if uri.id is not None:
        attrs[Attribute.ID] = uri.id
    try:
        found = list(session.get_objects(attrs))
    except pkcs11.PKCS11Error as e:
        raise TokenError(f"cannot search the token: {_why(e)}") from None
    if len(found) > 1:
        raise TokenError(f"{len(found)} keys match {uri.describe()}; add id= to the URI to name one")
    return found[0] if found else None


def _point(raw: bytes, size: int) -> bytes:
    """An EC point from CKA_EC_POINT: a DER OCTET STRING, or (some tokens) the bare point."""
    if len(raw) == size + 2 and raw[0] == 0x04 and raw[1] == size:
        return raw[2:]
    if len(raw) == size:
        return raw
    raise TokenError(f"the token's public key is {len(raw)} bytes, not a {size}-byte point")


def public_from_token(pub: Any) -> tuple[Alg, PublicKey]:
    """The algorithm and public key of a token's public key object."""
    import pkcs11
    from pkcs11 import Attribute, KeyType

    try:
        key_type, params, raw = pub[Attribute.KEY_TYPE], pub[Attribute.EC_PARAMS], pub[Attribute.EC_POINT]
    except pkcs11.PKCS11Error as e:
        raise TokenError(f"the token key is not an EC key sensegate can use ({_why(e)})") from None
    if key_type == KeyType.EC_EDWARDS and params in _ED25519:
        return "ed25519", Ed25519PublicKey(_point(raw, 32))
    if key_type == KeyType.EC and params == _P256:
        from cryptography.hazmat.primitives.asymmetric import ec

        return "es256", ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _point(raw, 65))
    raise TokenError("the token key is neither P-256 (ES256) nor Ed25519; make one with "
                     "sensegate keys init --pkcs11 URI --alg es256")


class TokenKey(Signer):
    """A signing key that stays on a PKCS#11 token; one session, used by one thread at a time."""

    def __init__(self, uri: Pkcs11Uri) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._session: Any = None
        self._priv: Any = None
        self._pub: PublicKey | None = None
        self.alg: Alg = "es256"
        self.signatures = 0
        self.reopened = 0

    def open(self) -> TokenKey:
        """Log in and find the key pair (raises TokenError saying what is missing)."""
        with self._lock:
            self._close_locked()
            self._session, self._priv, self.alg, self._pub = self._load()
        return self

    def _load(self) -> tuple[Any, Any, Alg, PublicKey]:
        """A new session, the private key object, and the key pair's algorithm and public key."""
        import pkcs11

        session = _open(self.uri)
        try:
            priv = _find(session, self.uri, pkcs11.ObjectClass.PRIVATE_KEY)
            pub = _find(session, self.uri, pkcs11.ObjectClass.PUBLIC_KEY)
            if priv is None:
                raise NoTokenKey(f"no {self.uri.describe()}: make it with "
                                 f"sensegate keys init --pkcs11 '{_shown(self.uri)}'")
            if pub is None:
                raise TokenError(f"the token has the private key but no public key object for "
                                 f"{self.uri.describe()}; sensegate needs both (same label and id)")
            alg, public = public_from_token(pub)
            if self._pub is not None and public != self._pub:
                raise TokenError(f"the key {self.uri.describe()} was replaced while the gateway ran; restart it")
        except BaseException:
            session.close()
            raise
        return session, priv, alg, public

    def sign(self, data: bytes) -> bytes:
        """The COSE signature over ``data``, made by the token (blocks: call off the event loop)."""
        import pkcs11

        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._priv is None:
                        raise pkcs11.exceptions.SessionClosed()
                    sig = self._sign_locked(data)
                    self.signatures += 1
                    return sig
                except pkcs11.PKCS11Error as e:
                    if attempt or type(e).__name__ not in _LOST:
                        raise TokenError(f"the token could not sign with {self.uri.describe()}: {_why(e)}") from None
                    log.warning("token session lost (%s); logging in again", _why(e))
                    self._reopen_locked()
        raise AssertionError("unreachable")

    def _sign_locked(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        if self.alg == "ed25519":
            sig = self._priv.sign(data, mechanism=Mechanism.EDDSA)
        else:
            sig = self._priv.sign(hashlib.sha256(data).digest(), mechanism=Mechanism.ECDSA)
        if len(sig) != 64:
            raise TokenError(f"the token returned a {len(sig)}-byte signature, not 64")
        return bytes(sig)

    def _reopen_locked(self) -> None:
        self._close_locked()
        self._session, self._priv, self.alg, self._pub = self._load()
        self.reopened += 1

    def public_key(self) -> PublicKey:
        if self._pub is None:
            raise TokenError("the token key is not open")
        return self._pub

    def close(self) -> None:
        """Log out and close the session (the library stays loaded for the process)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._session is not None:
            import pkcs11

            try:
                self._session.close()
            except pkcs11.PKCS11Error:
                pass  # the token is gone already; nothing to release
        self._session = self._priv = None


def _shown(uri: Pkcs11Uri) -> str:
    from gateway.pkcs11uri import build

    return build(uri.module, uri.token or "", uri.object or "", "" if uri.pin_source.startswith("env:")
                 else uri.pin_source)


def open_token_key(spec: str) -> TokenKey:
    """Open the key a ``pkcs11:`` URI names and prove it signs (a probe verified with its public key)."""
    from gateway import cose

    try:
        uri = parse(spec, resolve_module=True)
    except UriError as e:
        raise TokenError(f"key URI: {e}") from None
    key = TokenKey(uri).open()
    probe = os.urandom(32)
    try:
        cose.verify_signature(key.public_key(), key.sign(probe), probe)
    except cose.CoseError:
        key.close()
        raise TokenError(f"{uri.describe()}: the private key does not match the token's public key object") from None
    except BaseException:
        key.close()
        raise
    return key


@dataclass(frozen=True)
class Created:
    """What ``keys init --pkcs11`` made."""

    alg: Alg
    public: PublicKey
    fingerprint: str
    replaced: bool


def create_key(spec: str, alg: Alg, force: bool = False) -> Created:
    """Generate a key pair on the token (private: sensitive, never extractable); refuse to replace
    an existing one unless ``force``."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass

    try:
        uri = parse(spec, resolve_module=True)
    except UriError as e:
        raise TokenError(f"key URI: {e}") from None
    if uri.object is None:
        raise TokenError("give the key a label in the URI: object=device")
    session = _open(uri, rw=True)
    try:
        old = [o for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY) if (o := _find(session, uri, cls))]
        if old and not force:
            have = _find(session, uri, ObjectClass.PUBLIC_KEY)
            fp = f" (fingerprint {fingerprint(public_from_token(have)[1])})" if have is not None else ""
            raise TokenError(f"{uri.describe()} already exists{fp}; keep it, or pass --force to replace it")
        for o in old:
            o.destroy()
        params = _P256 if alg == "es256" else _ED25519[0]
        kind = KeyType.EC if alg == "es256" else KeyType.EC_EDWARDS
        key_id = uri.id if uri.id is not None else os.urandom(8)
        try:
            domain = session.create_domain_parameters(kind, {Attribute.EC_PARAMS: params}, local=True)
            # the key's other uses are left to the token: tpm2-pkcs11 refuses a template that
            # turns off what its TPM object has (decrypt/derive), and nothing here asks for them
            keep = pkcs11.constants.DEFAULT
            pub, _ = domain.generate_keypair(
                store=True, label=uri.object, id=key_id,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
                                  Attribute.PRIVATE: True, Attribute.DECRYPT: keep, Attribute.UNWRAP: keep,
                                  Attribute.DERIVE: keep},
                public_template={Attribute.VERIFY: True, Attribute.ENCRYPT: keep, Attribute.WRAP: keep})
        except pkcs11.exceptions.MechanismInvalid:
            raise TokenError(f"the token cannot make {alg} keys; use --alg es256 (every token that signs "
                             "has P-256)") from None
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"the token could not make the key: {_why(e)}") from None
        got, public = public_from_token(pub)
    finally:
        session.close()
    return Created(got, public, fingerprint(public), bool(old))


NEXT_SUFFIX = ".next"
"""A rotation's next key waits on the token under the current label plus this suffix."""


def next_uri(spec: str) -> str:
    """The URI of the next key of a rotation: the same token, the label ``<label>.next`` (no id)."""
    from urllib.parse import quote

    try:
        uri = parse(spec)
    except UriError as e:
        raise TokenError(f"key URI: {e}") from None
    if uri.object is None:
        raise TokenError("rotating a token key needs its label in the URI (object=device)")
    head, sep, query = spec.partition("?")
    parts = [p for p in head[len("pkcs11:"):].split(";") if p and not p.startswith(("object=", "id="))]
    parts.append("object=" + quote(uri.object + NEXT_SUFFIX, "-._~:@!$'()*+,/"))
    return "pkcs11:" + ";".join(parts) + sep + query


def promote_next(spec: str, new_kid: bytes) -> None:
    """Finish a rotation on the token: destroy the old key pair under the URI's label and give the
    next pair that label (and the URI's id). Idempotent: a half-done promotion is finished."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    from gateway.keys import key_id

    uri = parse(spec, resolve_module=True)
    nxt = parse(next_uri(spec), resolve_module=True)
    session = _open(uri, rw=True)
    try:
        pending = _find(session, nxt, ObjectClass.PUBLIC_KEY)
        if pending is None:
            current = _find(session, uri, ObjectClass.PUBLIC_KEY)
            if current is not None and key_id(public_from_token(current)[1]) == new_kid:
                return  # promoted already
            raise TokenError(f"neither {uri.describe()} nor its next key is the rotation's new key {new_kid.hex()}")
        if key_id(public_from_token(pending)[1]) != new_kid:
            raise TokenError(f"the next key on the token is not the rotation's new key {new_kid.hex()}")
        keep = pending[Attribute.ID]
        try:
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: uri.object}):
                    if obj[Attribute.ID] != keep:
                        obj.destroy()
            for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                for obj in list(session.get_objects({Attribute.CLASS: cls, Attribute.LABEL: nxt.object})):
                    obj[Attribute.LABEL] = uri.object
                    if uri.id is not None:
                        obj[Attribute.ID] = uri.id
        except pkcs11.PKCS11Error as e:
            raise TokenError(f"the token could not switch to the new key: {_why(e)}") from None
    finally:
        session.close()
