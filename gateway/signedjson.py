"""JSON messages a gateway signs with its device key: config statuses (and heartbeats).

The message stays the JSON object it always was, so a reader that knows nothing of signatures
reads it as before, with one more member: ``"cose"``, the base64url (unpadded) of a tagged
COSE_Sign1 whose payload is the same object (without ``"cose"``) as compact JSON with sorted
keys, and whose protected header is ``{1: alg, 3: "application/json", 4: kid, "sgk": kind,
"gw": gateway id}``. A verifier checks the signature with the key bound to that gateway (the
receiver's trust, gateway/receiver/trust.py), that ``gw`` is the gateway the message is about,
and that the signed object is the message (docs/remote.md, "Signed statuses")::

    {"gateway": "gw-0042", "state": "applied", ..., "cose": "0oRYR6MBJwN..."}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

from gateway import cose
from gateway.keys import KeyFileError, Signer

log = logging.getLogger("sensegate.remote")
FIELD = "cose"
CONTENT_TYPE = "application/json"
SIGN_TIMEOUT = 5.0
"""Longest a status waits for a token's signature; then it goes out unsigned (and says so)."""
MAX_SIGNED = 64 * 1024


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes that are signed: compact JSON, keys sorted, ``"cose"`` left out."""
    return json.dumps({k: v for k, v in body.items() if k != FIELD}, separators=(",", ":"), sort_keys=True,
                      default=str).encode()


def seal(body: dict[str, Any], key: Signer, gateway: str, kind: str) -> bytes:
    """The JSON message with its signature (signs on this thread: for a token key, not the loop)."""
    payload = canonical(body)
    protected = cose.protected_header(key, key.kid, {cose.CONTENT_TYPE: CONTENT_TYPE, "sgk": kind, "gw": gateway})
    msg = cose.encode_sign1(protected, payload, cose.sign(key, protected, payload))
    signed = dict(json.loads(payload))
    signed[FIELD] = base64.urlsafe_b64encode(msg).rstrip(b"=").decode()
    return json.dumps(signed, separators=(",", ":")).encode()


async def seal_async(body: dict[str, Any], key: Signer | None, gateway: str, kind: str) -> bytes:
    """``seal`` off the event loop; the plain JSON when there is no key, or the token does not
    sign within SIGN_TIMEOUT (logged)."""
    if key is None:
        return json.dumps(body, default=str).encode()
    try:
        async with asyncio.timeout(SIGN_TIMEOUT):
            return await asyncio.to_thread(seal, body, key, gateway, kind)
    except (TimeoutError, KeyFileError, OSError, ValueError) as e:  # a token that hangs or fails: say so, send unsigned
        log.warning("a %s went out unsigned: the device key could not sign it (%s)", kind, e or "timeout")
        return json.dumps(body, default=str).encode()


@dataclass(frozen=True)
class Checked:
    """What a signed JSON message says, and whether its gateway's key vouches for it."""

    body: dict[str, Any]
    verified: bool
    reason: str  # why not verified, or who signed


def check(body: dict[str, Any], trust: Any, gateway: str, kind: str) -> Checked:
    """Verify a parsed message (``body``, with its ``"cose"``) about ``gateway`` against ``trust``
    (anything with ``lookup(gateway, kid)``: gateway.receiver.trust.Trust)."""
    from gateway.wire import Untrusted

    plain = {k: v for k, v in body.items() if k != FIELD}
    sig = body.get(FIELD)
    if sig is None:
        return Checked(plain, False, "unsigned")
    try:
        if not isinstance(sig, str) or len(sig) > MAX_SIGNED:
            raise ValueError("not a base64url string of a sane size")
        msg = cose.parse_sign1(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    except (ValueError, binascii.Error, cose.CoseError) as e:
        return Checked(plain, False, f"malformed signature: {e}")
    p = msg.protected
    if p.get("sgk") != kind or p.get(cose.CONTENT_TYPE) != CONTENT_TYPE:
        return Checked(plain, False, f"signed as a {p.get('sgk')!r}, not a {kind}")
    if p.get("gw") != gateway or plain.get("gateway", gateway) != gateway:
        return Checked(plain, False, f"signed for gateway {p.get('gw')!r}, shown as {gateway!r}")
    key = trust.lookup(gateway, msg.kid or b"")
    if isinstance(key, Untrusted):
        return Checked(plain, False, key.reason)
    try:
        cose.verify(msg, key)
        signed = json.loads(msg.payload)
    except (cose.CoseError, ValueError) as e:
        return Checked(plain, False, f"bad signature: {e}")
    if signed != json.loads(canonical(plain)):
        return Checked(plain, False, "altered: the message differs from what the gateway signed")
    return Checked(signed, True, f"signed by {gateway}'s key {(msg.kid or b'').hex()}")
