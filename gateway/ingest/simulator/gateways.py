"""Simulated gateways: the gateway's own batch step over a buffer kept in memory.

A ``SimGateway`` numbers readings, encodes them as the gateway's intake does
(``senml.encode_records``), keeps them as segments in a ``SimBuffer`` (the batch step's
``Waiting``: numbers, chain end, segments, drop rows) and hands that to ``gateway.batcher.Batcher``,
which picks the segments, declares the drops, builds the header and signs with ``gateway.wire``.
What it issued is counted in ``Produced``, the figures an ingest's ledger must come out at.

The events a fleet has, modelled on the gateway's store:

* a declared drop: readings numbered and lost on the gateway (a full buffer, an expired
  reading); the next batch declares the range with its reason;
* an unclean stop (``crash``): what was not yet committed is lost, the batch being made may or
  may not have left, and the restart skips a reserved block of reading numbers (declared
  ``unclean_stop``) and of batch numbers, as gateway/store/numbers.py does after a kill -9;
* a re-send: a batch published again (a PUBACK that never came);
* a forger: a gateway id's batches (and heartbeats) signed with a key nobody enrolled.

Every gateway also has its heartbeat (gateway/heartbeat.py): the signed status saying how far it
has numbered, the same message the daemon publishes.
"""

from __future__ import annotations

import os
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway import heartbeat, senml, signedjson, wire
from gateway.batcher import Batcher
from gateway.config.schema import BatchSection
from gateway.driver_api import Reading
from gateway.keys import PrivateKey, as_signer, generate, load_private_key, private_pem, public_pem
from gateway.store import NewBatch
from gateway.wire import UNCLEAN_STOP

SEQ_RESERVE = 64  # reading numbers a restart skips past the last one issued (numbers.SEQ_BLOCK's smallest)
BSEQ_RESERVE = 16  # batch numbers it skips (numbers.BSEQ_BLOCK's smallest)
HISTORY = 8  # recent batches a gateway may send again


class SimBuffer:
    """A gateway's numbers and what waits to be batched, in memory: the batch step's ``Waiting``."""

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.boot = 1
        self.next_seq = 1
        self.next_bseq = 1
        self.last_hash = wire.GENESIS_HASH
        self.batched_upto = 0
        self.waiting: deque[tuple[int, int, bytes]] = deque()  # (first, last, encoded records)
        self.drop_rows: list[tuple[int, int, str]] = []

    def segments(self) -> Iterator[tuple[int, int, bytes]]:
        return iter(self.waiting)

    def drops(self, before: int) -> list[tuple[int, int, str]]:
        return [d for d in self.drop_rows if d[0] < before]

    def blob_drops(self, limit: int) -> list[tuple[bytes, str]]:
        return []

    def clock(self, first: int, last: int) -> list[wire.ClockEpoch]:
        """No clock epochs: a simulated gateway's clock is its host's, declared nothing of (as a
        gateway from before the clock was recorded; the ingest takes its readings' time as given)."""
        return []

    def clock_steps(self, limit: int) -> list[wire.ClockStep]:
        return []

    def booked(self, new: NewBatch) -> None:
        """What the store's outbox records for a new batch, in memory."""
        b = new.batch
        while self.waiting and self.waiting[0][1] <= b.last_seq:
            self.waiting.popleft()
        if new.drops_upto:
            self.drop_rows = [d for d in self.drop_rows if d[0] > new.drops_upto]
        self.next_bseq = b.bseq + 1
        self.last_hash = b.hash
        self.batched_upto = new.batched_upto


@dataclass
class Produced:
    """What one simulated gateway issued: the figures its ledger must show."""

    gateway: str
    stream: int
    last_seq: int = 0  # highest reading number issued
    last_bseq: int = 0  # highest batch number issued
    batches: int = 0  # distinct batches published
    readings: int = 0  # readings in published batches (each once)
    dropped: int = 0  # declared dropped (buffer_full, expired)
    unclean: int = 0  # declared skipped after unclean stops
    unclean_sent: int = 0  # of those, readings in a batch that left before the stop
    resent: int = 0  # batches published again
    restarts: int = 0
    boots: int = 0  # boots that published a batch
    lost: int = 0  # readings in batches made but never published (a lost tail)

    def expected(self) -> dict[str, int]:
        """The ledger's figures for this gateway once everything published has arrived."""
        return {"received": self.readings, "dropped": self.dropped, "skipped": self.unclean - self.unclean_sent,
                "missing": self.lost, "restarts": max(0, self.boots - 1)}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "expected": self.expected()}


class SimGateway:
    """One gateway: its key, stream, numbering and batches (``claims``: the id its batches name;
    a forger names another gateway's)."""

    def __init__(self, gateway_id: str, key: PrivateKey, rng: random.Random, prefix: str = "sensegate",
                 points: int = 4, max_readings: int = 5000, claims: str = "") -> None:
        self.id = gateway_id
        self.claims = claims or gateway_id
        self.batcher = Batcher(key, self.claims, BatchSection(max_readings=max_readings))
        self.signer = as_signer(key)
        self.buf = SimBuffer(rng.getrandbits(63))
        self.rng = rng
        self.topic = f"{prefix}/{self.claims}/batch"
        self.status_topic = f"{prefix}/{self.claims}/status"
        self.encoder = senml.RecordEncoder()
        self.points = [f"p{i}" for i in range(max(1, points))]
        self.produced = Produced(gateway_id, self.buf.stream)
        self.history: deque[wire.Batch] = deque(maxlen=HISTORY)
        self._boot_counted = 0

    def read(self, n: int, t0_ns: int, t1_ns: int) -> None:
        """Issue ``n`` readings timestamped across [t0, t1), stored as one segment."""
        if n <= 0:
            return
        buf, pts = self.buf, self.points
        first, step, k = buf.next_seq, max(1, (t1_ns - t0_ns) // n), len(pts)
        readings = [Reading(self.claims, pts[(first + i) % k], t0_ns + i * step, float(first + i), "W")
                    for i in range(n)]
        data, count = senml.encode_records(readings, self.encoder)
        buf.waiting.append((first, first + count - 1, data))
        buf.next_seq += count
        self.produced.last_seq = buf.next_seq - 1

    def drop(self, n: int, reason: str = wire.BUFFER_FULL) -> None:
        """Issue ``n`` readings and lose them on the gateway, by policy: the next batch declares them."""
        if n <= 0:
            return
        buf = self.buf
        buf.drop_rows.append((buf.next_seq, buf.next_seq + n - 1, reason))
        buf.next_seq += n
        self.produced.dropped += n
        self.produced.last_seq = buf.next_seq - 1

    def batch(self) -> wire.Batch | None:
        """The next batch, made and signed by the gateway's batch step (None: nothing waits)."""
        new = self.batcher.next_batch(self.buf)
        if new is None:
            return None
        self.buf.booked(new)
        b = new.batch
        self.history.append(b)
        self._count(b)
        return b

    def _count(self, b: wire.Batch) -> None:
        p = self.produced
        if self._boot_counted != self.buf.boot:
            self._boot_counted = self.buf.boot
            p.boots += 1
        p.batches += 1
        p.readings += max(0, b.count)
        p.last_bseq = max(p.last_bseq, b.bseq)

    def heartbeat(self, last_seq: int | None = None) -> bytes:
        """The signed heartbeat now: what the daemon's MQTT uplink publishes, retained, on the
        status topic (a forger may claim a ``last_seq``). Published batches count as handed off."""
        buf = self.buf
        last = buf.next_seq - 1 if last_seq is None else last_seq
        held = min(buf.batched_upto + 1, last + 1)
        issued = heartbeat.Issued(buf.stream, buf.boot, last, buf.next_bseq - 1, held)
        body = heartbeat.status("online", self.claims, buf.boot, {"issued": issued.to_json()})
        return signedjson.seal(body, self.signer, self.claims, heartbeat.KIND)

    def withhold(self, b: wire.Batch) -> None:
        """``b`` never reaches the broker (the tail a heartbeat reveals)."""
        p = self.produced
        p.batches -= 1
        p.readings -= max(0, b.count)
        p.lost += max(0, b.count)

    def again(self) -> wire.Batch | None:
        """A recent batch, published again (its PUBACK did not come)."""
        if not self.history:
            return None
        self.produced.resent += 1
        return self.rng.choice(self.history)

    def crash(self, left: bool) -> wire.Batch | None:
        """An unclean stop while the batch of what waits was being made: neither that batch nor
        what was issued since the last commit survives, but the batch may have left (``left``:
        returned, to be published). The restart skips and declares the reserved reading numbers
        and skips batch numbers, as gateway/store/numbers.py does."""
        buf, p = self.buf, self.produced
        first = buf.waiting[0][0] if buf.waiting else buf.next_seq  # the first number not committed
        sent = None
        if buf.waiting:
            saved = (buf.next_bseq, buf.last_hash, buf.batched_upto, list(buf.drop_rows))
            new = self.batcher.next_batch(buf)
            if new is not None and left:
                sent = new.batch
                self._count(sent)
                p.unclean_sent += sent.count
            buf.next_bseq, buf.last_hash, buf.batched_upto, rows = saved
            buf.waiting.clear()
            lost_drops = [d for d in rows if d[0] >= first]  # issued in the lost transaction too
            p.dropped -= sum(b - a + 1 for a, b, _ in lost_drops)
            buf.drop_rows = [d for d in rows if d[0] < first]
        skip_to = buf.next_seq - 1 + SEQ_RESERVE
        buf.drop_rows.append((first, skip_to, UNCLEAN_STOP))
        p.unclean += skip_to - first + 1
        buf.next_seq = skip_to + 1
        buf.next_bseq += BSEQ_RESERVE + 1  # numbers.load_sync: one more than reserved, so the chain restarts
        buf.boot += 1
        p.restarts += 1
        p.last_seq = skip_to
        return sent


def gateway_ids(n: int, prefix: str = "sim") -> list[str]:
    """``sim-00001`` ... (zero-padded to sort in order)."""
    width = max(5, len(str(n)))
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


def keyring(directory: Path, ids: list[str]) -> dict[str, PrivateKey]:
    """Each gateway's device key from ``directory`` (``ID.key``), made on first use with its
    ``ID.pub.pem``: the file `sensegate fleet enrol` takes, as `sensegate provision` exports it."""
    directory.mkdir(parents=True, exist_ok=True)
    keys: dict[str, PrivateKey] = {}
    for gw in ids:
        path = directory / f"{gw}.key"
        if path.exists():
            keys[gw] = load_private_key(path)
            continue
        key = generate("ed25519")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem(key))
        (directory / f"{gw}.pub.pem").write_bytes(public_pem(key.public_key()))
        keys[gw] = key
    return keys
