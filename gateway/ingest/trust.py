"""The trust registry as the ingest's workers see it: gateway id -> its keys, in memory.

Every worker holds a snapshot of the registry tables (``Storage.registry``) and loads it again
when the registry's version changes (the worker checks every two seconds), so verifying a
batch never waits for the database and a revocation reaches every worker within one refresh.
A key is bound to one gateway for life. A replaced key (rotation) still verifies the batches
its gateway signed before the rotation reached it, for ``grace`` seconds after the
replacement; a revoked key verifies nothing from the moment the refresh sees it.
"""

from __future__ import annotations

import time

from gateway import wire
from gateway.ingest.contract import REPLACED, REVOKED, UNKNOWN_KEY, WRONG_GATEWAY, KeyRecord, Untrusted
from gateway.ingest.report import when
from gateway.keys import KeyFileError, PublicKey, public_key_from_pem

DEFAULT_GRACE = 30 * 86400.0


class RegistryTrust:
    """A snapshot of enrolled keys, answering ``key_for(gateway, kid)`` (the TrustLookup)."""

    def __init__(self, records: list[KeyRecord], grace: float = DEFAULT_GRACE) -> None:
        self.records = {r.kid: r for r in records}
        self.grace_ns = int(grace * 1e9)
        self._keys: dict[bytes, PublicKey] = {}

    def key_for(self, gateway: str, kid: bytes) -> PublicKey | Untrusted:
        rec = self.records.get(kid)
        if rec is None:
            return Untrusted(UNKNOWN_KEY, f"key {kid.hex() or '(none)'} is not enrolled for any gateway")
        if rec.gateway != gateway:
            return Untrusted(WRONG_GATEWAY, f"key {kid.hex()} is bound to gateway {rec.gateway!r}, "
                                            f"not {gateway!r}")
        if rec.revoked_ns:
            return Untrusted(REVOKED, f"key {kid.hex()} of {gateway!r} was revoked at {when(rec.revoked_ns)}"
                                      + (f": {rec.revoked_reason}" if rec.revoked_reason else ""))
        if rec.replaced_ns and time.time_ns() > rec.replaced_ns + self.grace_ns:
            return Untrusted(REPLACED, f"key {kid.hex()} of {gateway!r} was replaced by {rec.replaced_by.hex()} "
                                       f"at {when(rec.replaced_ns)}, and its grace period is over")
        key = self._keys.get(kid)
        if key is None:
            try:
                key = self._keys[kid] = public_key_from_pem(rec.public_pem.encode(), f"key {kid.hex()}")
            except KeyFileError as e:  # enrol checks keys, so only a damaged row gets here
                return Untrusted(UNKNOWN_KEY, str(e))
        return key

    def lookup(self, gateway: str, kid: bytes, at: wire.Position | None = None) -> PublicKey | wire.Untrusted:
        """The same answer as the wire format's ``KeyLookup`` (for signed JSON: the heartbeat)."""
        key = self.key_for(gateway, kid)
        if isinstance(key, Untrusted):
            return wire.Untrusted(key.detail, forged=key.reason == WRONG_GATEWAY, revoked=key.reason == REVOKED)
        return key
