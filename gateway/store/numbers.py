"""Reading and batch numbers: kept in the ``meta`` table, reserved in blocks ahead of use.

A batch may leave before the transaction that stored its readings commits. What makes that
safe is the *reservation*: reading and batch numbers are reserved in blocks, each reservation
fsynced before a number of the block is used. After an unclean stop (kill -9, a crash, a power
cut) no reserved number is ever reused: the rest of the block is skipped and its reading numbers
declared (reason ``unclean_stop``). A receiver thus sees every number either delivered or
declared, and never one number with two contents. A clean stop returns the unused numbers.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from gateway.store.db import Database, StoreError, StoreStats
from gateway.wire import FORMAT_VERSION, GENESIS_HASH, UNCLEAN_STOP, Drop

RESERVE_FOR = 5.0  # seconds a block of reserved numbers should last (one fsync per block)
SEQ_BLOCK = (64, 1 << 24)  # smallest and largest block of reading numbers
BSEQ_BLOCK = (16, 1 << 16)  # of batch numbers
log = logging.getLogger("sensegate.buffer")


def new_meta(gateway_id: str, next_seq: int = 1) -> dict[str, Any]:
    """The meta row of a new stream (a new buffer file, or one whose numbers were lost)."""
    return {
        "format": FORMAT_VERSION,
        "gateway_id": gateway_id,
        "stream": secrets.randbits(63),
        "next_seq": next_seq,
        "next_bseq": 1,
        "batched_upto": 0,
        "last_hash": GENESIS_HASH,
        "boot": 0,
    }


class Numbers:
    """The ``meta`` row of one buffer file: identity, next numbers, reservations, the chain's end."""

    def __init__(self, db: Database, path: Path, gateway_id: str, stats: StoreStats) -> None:
        self.db = db
        self.path = path
        self.gateway_id = gateway_id
        self.stats = stats
        self.meta: dict[str, Any] = {}
        self._blocks = {"seq": SEQ_BLOCK[0], "bseq": BSEQ_BLOCK[0]}
        self._reserved_at = {"seq": 0.0, "bseq": 0.0}

    @property
    def next_seq(self) -> int:
        return int(self.meta.get("next_seq", 1))

    @property
    def batched_upto(self) -> int:
        return int(self.meta.get("batched_upto", 0))

    @property
    def boot(self) -> int:
        return int(self.meta.get("boot", 0))

    @property
    def stream(self) -> int:
        return int(self.meta.get("stream", 0))

    def load_sync(self) -> None:
        """Read (or start) the meta row, count this boot, skip what an unclean stop left reserved."""
        conn = self.db.conn
        assert conn is not None
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) or new_meta(self.gateway_id)
        fmt = meta.get("format")
        if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
            raise StoreError(
                f"buffer {self.path} has format {fmt!r}, newer than this sensegate reads ({FORMAT_VERSION}); "
                "upgrade sensegate or move the file aside"
            )
        if meta["gateway_id"] != self.gateway_id:
            raise StoreError(
                f"buffer {self.path} belongs to gateway {meta['gateway_id']!r}, not {self.gateway_id!r}; "
                "deliver or move it aside before changing the gateway id"
            )
        meta["boot"] = int(meta["boot"]) + 1
        # numbers reserved but not stored may have left in batches before an unclean stop: never
        # reuse them. The readings are skipped and declared; the batch numbers are skipped, one
        # more than reserved, so the chain restarts after a hole (the next batch's pv names the
        # last batch this file kept, not one that may have been sent after it)
        next_seq, next_bseq = int(meta["next_seq"]), int(meta["next_bseq"])
        seq_resv = int(meta.setdefault("seq_resv", next_seq - 1))
        bseq_resv = int(meta.setdefault("bseq_resv", next_bseq - 1))
        skip = None
        if seq_resv >= next_seq:
            skip = Drop(next_seq, seq_resv, UNCLEAN_STOP)
            meta["next_seq"] = seq_resv + 1
        if bseq_resv >= next_bseq:
            meta["next_bseq"] = bseq_resv + 2
        if skip is not None or bseq_resv >= next_bseq:
            log.warning("buffer: the last stop was unclean; skipping reading numbers %s and batch numbers "
                        "%d-%d, which may have been sent (the next batch declares the readings)",
                        f"{skip.first_seq}-{skip.last_seq}" if skip else "(none)", next_bseq, bseq_resv + 1)
        meta["seq_resv"], meta["bseq_resv"] = int(meta["next_seq"]) - 1, int(meta["next_bseq"]) - 1
        self.meta = meta
        conn.execute("BEGIN")
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
        if skip is not None:
            conn.execute("INSERT OR REPLACE INTO drops VALUES (?, ?, ?)", (skip.first_seq, skip.last_seq, skip.reason))
            self.stats.skipped_unclean += skip.count
        conn.execute("COMMIT")

    def durable_sync(self, values: dict[str, int]) -> None:
        """Commit what is open and write ``values`` to meta, fsynced."""
        self.db.durable_sync(values)
        self.meta.update(values)

    def reserve_sync(self, seqs: int, bseqs: int) -> None:
        """Make sure the next ``seqs`` reading numbers and ``bseqs`` batch numbers are reserved
        (durably) before any of them is used. A block lasts about RESERVE_FOR seconds: it doubles
        when the last one went faster, halves when it lasted far longer."""
        meta = self.meta
        kinds = (("seq", seqs, SEQ_BLOCK), ("bseq", bseqs, BSEQ_BLOCK))
        if all(int(meta["next_" + k]) + n - 1 <= int(meta[k + "_resv"]) for k, n, _ in kinds):
            return
        now = time.monotonic()
        want: dict[str, int] = {}
        for kind, n, (lo, hi) in kinds:
            last, resv, block = int(meta["next_" + kind]) + n - 1, int(meta[kind + "_resv"]), self._blocks[kind]
            if resv - last >= block // 2:
                continue  # enough left (a kind near its end is topped up with the other: one fsync)
            took = now - self._reserved_at[kind]
            if took < RESERVE_FOR:
                block = min(block * 2, hi)
            elif took > 8 * RESERVE_FOR:
                block = max(block // 2, lo)
            self._blocks[kind], self._reserved_at[kind] = block, now
            want[kind + "_resv"] = last + block
        self.durable_sync(want)
        self.stats.reservations += 1

    def release_sync(self) -> None:
        """A clean stop: return the unused reserved numbers, durably (the next start skips none).
        Should that fail (disk full), the next start skips and declares them, as after an
        unclean stop."""
        meta = self.meta
        self.durable_sync({"seq_resv": int(meta["next_seq"]) - 1, "bseq_resv": int(meta["next_bseq"]) - 1})
