"""Signed batches with any header, for receiver tests and benchmarks (no buffer, no disk).

``Chain`` numbers batches and links their hashes as a gateway does; ``sign_batch`` signs one
with whatever header values a test wants, hostile ones included (docs/wire-format.md).
"""

from __future__ import annotations

import hashlib
from typing import Any

from gateway import cose, senml, wire
from gateway.driver_api import Reading
from gateway.keys import PrivateKey, key_id

T0 = 1_795_000_000_000_000_000


def sign_batch(key: PrivateKey, header: dict[Any, Any], readings: list[Reading]) -> bytes:
    """A COSE_Sign1 batch over ``readings`` with ``header`` as its protected header (plus alg, kid)."""
    records, n = senml.encode_records(readings)
    payload = wire.payload(n, [records])
    protected = cose.protected_header(key, key_id(key.public_key()), {cose.CONTENT_TYPE: wire.SENML_CBOR, **header})
    return cose.encode_sign1(protected, payload, cose.sign(key, protected, payload))


class Chain:
    """Consecutive batches of one gateway stream: ``bs`` 1, 2, ..., ``pv`` the previous hash."""

    def __init__(self, key: PrivateKey, gateway: str, stream: int = 7, boot: int = 1) -> None:
        self.key, self.gateway, self.stream, self.boot = key, gateway, stream, boot
        self.bs = 0
        self.next_seq = 1
        self.prev = bytes(32)

    def next(self, n: int = 1, labels: dict[Any, Any] | None = None, **override: Any) -> bytes:
        """The next batch, with ``n`` readings (``override``, ``labels``: header values to replace)."""
        self.bs += 1
        first = self.next_seq
        readings = [Reading(self.gateway, "n", T0 + first + i, first + i) for i in range(n)]
        header = {"sg": 1, "gw": self.gateway, "st": self.stream, "bo": self.boot, "bs": self.bs, "pv": self.prev,
                  "sq": [first, first + n - 1], **override, **(labels or {})}
        data = sign_batch(self.key, header, readings)
        self.next_seq += n
        self.prev = hashlib.sha256(data).digest()
        return data
