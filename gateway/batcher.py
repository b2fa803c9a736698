"""The batch step: which stored readings go into the next batch, what it declares, and its
signature.

Called by the store inside the transaction that records the batch (``Store.make_batch``), on
the database thread. A batch is made of whole segments, contiguous in reading numbers, up to
``batch.max_readings`` readings and about ``batch.max_bytes`` (a single larger segment goes
alone). It declares the drop ranges recorded before its first reading (adjacent ranges with one
reason merged, at most ``wire.MAX_DECLARED``; the rest follow in the next batch) and the blobs
that were dropped. A batch with no readings but something to declare is an empty pack just
after the dropped range. It says which clock epochs its readings were stamped in (``ck``: at
most ``wire.MAX_DECLARED``, so a clock that changed more often than that ends the batch early)
and the clock steps not yet declared (``cj``). The header, pack and signature are
gateway/wire.py's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any, Protocol

from gateway import wire
from gateway.config.schema import BatchSection
from gateway.keys import PrivateKey, key_id
from gateway.store import NewBatch


class Waiting(Protocol):
    """What waits to be batched, as the batch step reads it: the store's ``Unbatched`` (inside
    the store's transaction), or a simulated gateway's memory (gateway/ingest/simulator.py)."""

    stream: int
    boot: int
    next_seq: int  # the next reading number (readings below it are numbered)
    next_bseq: int
    last_hash: bytes
    batched_upto: int  # reading numbers up to here are in batches (or declared)

    def segments(self) -> Iterator[tuple[int, int, bytes]]:
        """(first_seq, last_seq, encoded records) of what is not yet batched, in order."""
        ...

    def drops(self, before: int) -> list[tuple[int, int, str]]:
        """Undeclared drop ranges that start before reading number ``before``, in order."""
        ...

    def blob_drops(self, limit: int) -> list[tuple[bytes, str]]:
        """Undeclared blob drops: (sha256, reason)."""
        ...

    def clock(self, first: int, last: int) -> list[wire.ClockEpoch]:
        """The clock epochs readings ``first``..``last`` were stamped in, in order."""
        ...

    def clock_steps(self, limit: int) -> list[wire.ClockStep]:
        """Clock steps not yet declared, oldest first."""
        ...


class Batcher:
    """Makes and signs batches for one gateway with one key."""

    def __init__(self, key: PrivateKey, gateway_id: str, cfg: BatchSection) -> None:
        self.key = key
        self.kid = key_id(key.public_key())
        self.kr: bytes | None = None  # a key rotation document the next batches carry (gateway/devicekey.py)
        self.gateway_id = gateway_id
        self.max_readings = cfg.max_readings
        self.max_bytes = cfg.max_bytes

    def use(self, key: PrivateKey, kr: bytes | None = None) -> None:
        """Sign the next batches with ``key`` (the device key after a rotation), carrying ``kr``."""
        if key is not self.key:
            self.key, self.kid = key, key_id(key.public_key())
        self.kr = kr

    def next_batch(self, waiting: Waiting) -> NewBatch | None:
        """The next batch from what waits, signed; None when there is nothing to send."""
        parts: list[bytes] = []
        first = last = 0
        nbytes = 0
        for f, last_, data in waiting.segments():
            if parts and (f != last + 1 or last_ - first + 1 > self.max_readings
                          or nbytes + len(data) > self.max_bytes):
                break
            if not parts:
                first = f
            parts.append(data)
            last = last_
            nbytes += len(data)
        epochs: list[wire.ClockEpoch] = []
        if parts:
            epochs = waiting.clock(first, last)
            if len(epochs) > wire.MAX_DECLARED:
                parts, last, nbytes, epochs = _cut(parts, first, epochs, waiting)
        drop_rows = waiting.drops(first if parts else waiting.next_seq)
        declared = _declare(drop_rows)
        drop_rows = drop_rows[: declared[1]]
        blob_drops = waiting.blob_drops(wire.MAX_DECLARED)
        if not parts and not drop_rows and not blob_drops:
            return None
        if not parts:  # a report of drops only: an empty pack just after the dropped range
            first = waiting.next_seq
            last = first - 1
        steps = waiting.clock_steps(wire.MAX_DECLARED)
        header = wire.Header(self.gateway_id, waiting.stream, waiting.boot, waiting.next_bseq, waiting.last_hash,
                             (first, last), declared[0], [[sha, reason] for sha, reason in blob_drops], self.kr,
                             epochs, steps)
        signed = wire.sign(self.key, self.kid, header, parts)
        digest = hashlib.sha256(signed.data).digest()
        batch = wire.Batch(header.bs, first, last, signed.data, digest, time.time_ns(), nbytes)
        upto = max(waiting.batched_upto, last, max((r[1] for r in drop_rows), default=0))
        return NewBatch(batch, signed, drop_rows[-1][0] if drop_rows else 0, [sha for sha, _ in blob_drops], upto,
                        steps)


def _cut(parts: list[bytes], first: int, epochs: list[wire.ClockEpoch],
         waiting: Waiting) -> tuple[list[bytes], int, int, list[wire.ClockEpoch]]:
    """Fewer segments, so that the batch spans at most MAX_DECLARED clock epochs (at least one
    segment; one whose readings span more has its extra epochs folded into the last one kept:
    a clock changing that often within one commit cannot be told apart reading by reading)."""
    limit = epochs[wire.MAX_DECLARED].first_seq  # the first epoch that does not fit
    kept: list[bytes] = []
    last = nbytes = 0
    for _, seg_last, data in waiting.segments():
        if len(kept) == len(parts) or (kept and seg_last >= limit):
            break
        kept.append(data)
        last, nbytes = seg_last, nbytes + len(data)
    return kept, last, nbytes, [e for e in epochs if e.first_seq <= last][: wire.MAX_DECLARED]


def _declare(rows: list[tuple[int, int, str]]) -> tuple[list[list[Any]], int]:
    """The drop ranges one batch declares, and how many of ``rows`` they cover: adjacent ranges
    with one reason (one per commit of a long episode) go out as one; at most MAX_DECLARED."""
    declared: list[list[Any]] = []
    taken = 0
    for a, b, reason in rows:
        if declared and declared[-1][2] == reason and declared[-1][1] + 1 == a:
            declared[-1][1] = b
        elif len(declared) == wire.MAX_DECLARED:
            break
        else:
            declared.append([a, b, reason])
        taken += 1
    return declared, taken
