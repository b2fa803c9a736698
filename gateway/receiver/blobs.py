"""Blobs (camera images) at the receiver: reassembly, hash check, and bounded accounting.

A blob arrives as chunks ``[index, count, content_type, bytes]`` on its own topic (or one CoAP
PUT) and is named by a verified batch's reading (``ni:///sha-256;...``). A blob counts as
verified once both happened. What is kept is bounded whatever runs through: partial uploads
(``MAX_PARTIAL_BYTES`` in all), the bytes of the latest verified blobs (``MAX_KEPT_BYTES``, so
a caller can read ``blobs[sha]`` right after "verified"), and the hashes still waiting for
their other half (``MAX_PENDING`` each way; one pushed out is counted for good, as missing or
unreferenced).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import cbor2

MAX_BLOB = 64 * 1024 * 1024  # one blob, all chunks together
MAX_PARTIAL_BYTES = 64 * 1024 * 1024  # chunks of incomplete blobs, all together
MAX_KEPT_BYTES = 64 * 1024 * 1024  # bytes of verified blobs kept for the caller (the latest one always)
MAX_PENDING = 4096  # hashes kept per kind (named but not received, received but not named, done)
MAX_CHUNKS = 4096
NI_PREFIX = "ni:///sha-256;"


class _Lru(OrderedDict[str, Any]):
    """An insertion-ordered map that forgets its oldest entries past ``limit``; counts them."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.forgotten = 0

    def put(self, key: str, value: Any = None) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)
            self.forgotten += 1


class BlobTracker:
    """Reassembles and checks blobs; counts verified, unreferenced, dropped, missing and bad."""

    def __init__(self) -> None:
        self.blobs: OrderedDict[str, tuple[str, bytes]] = OrderedDict()  # latest verified: sha hex -> (type, bytes)
        self.bad = 0
        self.verified = 0  # received, hash checked, and named by a verified batch
        self.dropped = 0  # declared dropped by the gateway (its blob store was full)
        self._parts: OrderedDict[str, dict[int, bytes]] = OrderedDict()  # incomplete: sha hex -> index -> chunk
        self._partial_bytes = 0
        self._kept_bytes = 0
        self._named = _Lru(MAX_PENDING)  # named by a batch, not received (yet): missing
        self._received = _Lru(MAX_PENDING)  # received, not named by a batch (yet): unreferenced
        self._done = _Lru(MAX_PENDING)  # verified: a repeat is not counted again
        self.recent_drops = _Lru(MAX_PENDING)  # declared dropped (the latest): a repeat is not counted again

    @property
    def unreferenced(self) -> int:
        return len(self._received) + self._received.forgotten

    @property
    def missing(self) -> int:
        return len(self._named) + self._named.forgotten

    def feed(self, sha_hex: str, payload: bytes) -> str:
        """Take one chunk; "partial", "verified" (complete, hash matches), "bad" or "malformed"."""
        try:
            if len(payload) > MAX_BLOB + 1024:
                raise ValueError("chunk over the blob size limit")
            sha = bytes.fromhex(sha_hex)
            index, count, ctype, chunk = cbor2.loads(payload)
            if (len(sha) != 32 or type(index) is not int or type(count) is not int or not 0 <= index < count
                    or count > MAX_CHUNKS or not isinstance(ctype, str) or not isinstance(chunk, bytes)):
                raise ValueError("bad chunk header")
        except (ValueError, TypeError, cbor2.CBORDecodeError):
            return "malformed"
        sha_hex = sha.hex()
        if sha_hex in self._done or sha_hex in self._received:
            return "verified"
        parts = self._parts.pop(sha_hex, None) or {}
        self._partial_bytes += len(chunk) - len(parts.get(index, b""))
        parts[index] = chunk
        self._parts[sha_hex] = parts  # the most recently fed is last
        if sum(len(c) for c in parts.values()) > MAX_BLOB:
            self._forget_partial(sha_hex)
            self.bad += 1
            return "bad"
        while self._partial_bytes > MAX_PARTIAL_BYTES and len(self._parts) > 1:  # the oldest go first
            self._forget_partial(next(iter(self._parts)))
        if len(parts) < count:
            return "partial"
        self._forget_partial(sha_hex)
        data = b"".join(parts[i] for i in range(count))
        if hashlib.sha256(data).digest() != sha:
            self.bad += 1
            return "bad"
        self._keep(sha_hex, ctype, data)
        self._meet(sha_hex, self._named, self._received)
        return "verified"

    def _meet(self, sha_hex: str, other_half: _Lru, waiting: _Lru) -> None:
        """One half (bytes, or a batch naming them) arrived: verified if the other half waits, else wait."""
        if sha_hex in other_half:
            del other_half[sha_hex]
            self.verified += 1
            self._done.put(sha_hex)
        else:
            waiting.put(sha_hex)

    def _forget_partial(self, sha_hex: str) -> None:
        parts = self._parts.pop(sha_hex, {})
        self._partial_bytes -= sum(len(c) for c in parts.values())

    def _keep(self, sha_hex: str, ctype: str, data: bytes) -> None:
        """Keep the bytes for the caller; the oldest kept go once all together exceed the bound."""
        self.blobs[sha_hex] = (ctype, data)
        self._kept_bytes += len(data)
        while self._kept_bytes > MAX_KEPT_BYTES and len(self.blobs) > 1:
            _, (_, old) = self.blobs.popitem(last=False)
            self._kept_bytes -= len(old)

    def named(self, uris: Iterable[Any]) -> None:
        """Blobs named by a verified batch (``ni:///sha-256;<base64url>`` values)."""
        for vs in uris:
            if not (isinstance(vs, str) and vs.startswith(NI_PREFIX)):
                continue
            b64 = vs.removeprefix(NI_PREFIX)
            with contextlib.suppress(ValueError):
                sha_hex = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
                if sha_hex not in self._done and sha_hex not in self._named and sha_hex not in self.recent_drops:
                    self._meet(sha_hex, self._received, self._named)

    def declared_dropped(self, shas: Iterable[bytes]) -> None:
        """Blobs the gateway declared dropped: no longer missing, counted once."""
        for sha in shas:
            sha_hex = sha.hex()
            if sha_hex in self._done or sha_hex in self.recent_drops:
                continue
            self._named.pop(sha_hex, None)
            self.dropped += 1
            self.recent_drops.put(sha_hex)
