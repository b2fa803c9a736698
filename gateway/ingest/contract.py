"""The fleet ingest's contracts, version 1: where batches come from, who may sign them, where
they are stored. A new broker or database is one class that meets a Protocol below.

The path of a message, in ``gateway.ingest.worker``:

1. A ``Source`` (NATS JetStream, or an MQTT broker such as mosquitto) hands over ``Delivery``
   objects: the topic and the bytes a gateway published. Nothing is acknowledged yet.
2. ``gateway.ingest.verify`` checks each one: the COSE signature with the key that a
   ``TrustLookup`` says is bound to the gateway the batch names, the topic against the header,
   the header and the SenML pack. The result is a ``VerifiedBatch``, a ``BlobChunk``, a
   ``Heartbeat`` (a gateway's signed status: how far it has numbered) or a ``Refused`` (with
   its reason).
3. A ``Storage`` writes a ``Work`` (what one fetch produced) in ONE transaction: the readings,
   the batch log, each gateway's completeness ledger, blobs and the quarantine. It is
   idempotent: storing the same batch again inserts nothing and counts a duplicate.
4. Only after the commit are the deliveries acknowledged to the broker. A crash between the
   two re-delivers them; step 3 then stores nothing twice.

Workers keep no state of their own: the ledger is read and written under a row lock per
(gateway, stream) inside the transaction, so any worker may take any batch in any order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.ingest.ledger import StreamLedger
    from gateway.keys import PublicKey
    from gateway.senml import DecodedReading
    from gateway.wire import ClockEpoch, ClockStep

CONTRACT_VERSION = 1
DEFAULT_TAIL_GRACE = 300.0  # seconds after a heartbeat's claim arrived before what it claims counts as missing

# Why a message was refused (the ``reason`` of a ``Refused`` and of a quarantine row)
UNKNOWN_KEY = "unknown_key"  # its kid is not enrolled for any gateway: forged
WRONG_GATEWAY = "wrong_gateway"  # its kid is enrolled, for another gateway: forged
REVOKED = "revoked"  # signed by a key that ops revoked
REPLACED = "replaced"  # signed by a key replaced by another, after the grace period
BAD_SIGNATURE = "bad_signature"  # the signature does not verify: altered or forged
TOPIC_MISMATCH = "topic_mismatch"  # the topic names another gateway than the signed header
MALFORMED = "malformed"  # not a COSE_Sign1 batch, or signed but not a valid batch
CONFLICT = "conflict"  # a batch number seen before with other content (chain break)
BAD_BLOB = "bad_blob"  # blob chunks that are malformed or do not add up to their hash
BAD_HEARTBEAT = "bad_heartbeat"  # a status signed as a heartbeat that does not verify (see the detail)
REFUSAL_REASONS = (UNKNOWN_KEY, WRONG_GATEWAY, REVOKED, REPLACED, BAD_SIGNATURE, TOPIC_MISMATCH,
                   MALFORMED, CONFLICT, BAD_BLOB, BAD_HEARTBEAT)


class StorageUnavailable(Exception):
    """The database cannot be reached or gave up mid-transaction: nothing was stored for sure
    (or it was, and a re-delivery will find it). The worker hands the messages back and waits."""


# -- trust --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Untrusted:
    """Why a key may not speak for the gateway a batch names."""

    reason: str  # UNKNOWN_KEY, WRONG_GATEWAY, REVOKED or REPLACED
    detail: str


class TrustLookup(Protocol):
    """Gateway id + key id -> the public key bound to that gateway, or why there is none.

    The same question the reference receiver's file trust answers; the ingest's answer comes
    from the registry tables (``Storage.registry``). Called for every batch: no I/O here.
    """

    def key_for(self, gateway: str, kid: bytes) -> PublicKey | Untrusted: ...


@dataclass(frozen=True)
class KeyRecord:
    """One enrolled key: bound to one gateway for life; revoked or replaced, never deleted."""

    kid: bytes
    gateway: str
    alg: str
    public_pem: str
    enrolled_ns: int
    revoked_ns: int = 0
    revoked_reason: str = ""
    replaced_by: bytes = b""
    replaced_ns: int = 0


# -- what the broker delivers --------------------------------------------------------------------


class Delivery(Protocol):
    """One message from the broker, held until acknowledged."""

    topic: str  # the MQTT topic the gateway published on ("<prefix>/<gw>/batch")
    data: bytes
    received_ns: int  # when the broker stored it (or, failing that, when it arrived here)

    async def ack(self) -> None:
        """Done with it for good (after the commit): the broker forgets it."""

    async def retry(self, delay: float) -> None:
        """Not done: deliver it again after ``delay`` seconds, to this worker or another."""


class Source(Protocol):
    """Where batches come from; any number of workers may share one."""

    name: str

    async def open(self) -> None:
        """Connect, and make sure what keeps messages for the ingest (a durable consumer, a
        persistent session) exists: without it the broker forgets what it acknowledged."""

    async def fetch(self, max_messages: int, wait: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``wait`` seconds for the first."""

    def lag(self) -> tuple[int, float]:
        """Messages waiting for the ingest in the broker and the age (s) of the last fetched."""

    async def close(self) -> None: ...


# -- what a worker stores ------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedBatch:
    """A batch whose signature verified with a key bound to ``gateway``."""

    gateway: str
    kid: bytes
    stream: int
    boot: int
    bseq: int
    prev: bytes  # the SHA-256 of batch bseq - 1 as the gateway claims it
    digest: bytes  # the SHA-256 of this message
    first_seq: int
    last_seq: int  # first_seq - 1 for a batch that only declares drops
    drops: tuple[tuple[int, int, str], ...]
    blob_drops: tuple[tuple[bytes, str], ...]
    readings: Sequence[DecodedReading]
    received_ns: int
    topic: str
    message: bytes  # the signed bytes, kept for the quarantine should it conflict with a stored batch
    clock: tuple[ClockEpoch, ...] = ()  # the clock epochs its readings were stamped in ("ck")
    steps: tuple[ClockStep, ...] = ()  # clock steps it declares ("cj")
    ts_min: int = 0  # the oldest and newest reading's time (0, 0 with no readings)
    ts_max: int = 0

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1


@dataclass(frozen=True)
class BlobChunk:
    """One chunk of a blob (camera image); it is trusted only by the hash a verified batch names."""

    gateway: str  # from the topic: not signed
    sha256: bytes
    index: int
    count: int
    content_type: str
    data: bytes
    received_ns: int


@dataclass(frozen=True)
class Heartbeat:
    """A gateway's signed heartbeat (gateway/heartbeat.py): how far its stream has numbered."""

    gateway: str
    stream: int
    boot: int
    last_seq: int  # highest reading number issued
    last_bseq: int
    held_from: int  # lowest reading number the gateway still holds unacknowledged
    sent_ns: int  # the gateway's clock
    received_ns: int  # when the broker stored it (or it arrived here)

    @property
    def handed_off(self) -> int:
        """Every reading number up to here left the gateway: received or declared, or lost on the way."""
        return min(self.last_seq, self.held_from - 1)


@dataclass(frozen=True)
class Refused:
    """A message stored nowhere but in the quarantine, with the reason."""

    reason: str
    detail: str
    topic: str
    gateway: str  # as claimed by the topic or header: not to be believed
    kid: bytes
    message: bytes
    received_ns: int


@dataclass
class Work:
    """What one fetch produced, stored in one transaction."""

    batches: list[VerifiedBatch] = field(default_factory=list)
    chunks: list[BlobChunk] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    heartbeats: list[Heartbeat] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.batches) + len(self.chunks) + len(self.refused) + len(self.heartbeats)


@dataclass
class StoreReport:
    """What a transaction did, for the worker's metrics."""

    batches: int = 0  # new batches stored
    readings: int = 0  # new reading rows
    duplicates: int = 0  # batches stored before (re-sends, replays, re-deliveries): nothing inserted
    refused: dict[str, int] = field(default_factory=dict)  # quarantined, by reason
    blobs: int = 0  # blobs completed and verified
    heartbeats: int = 0  # heartbeats taken into the ledger
    gaps: dict[str, int] = field(default_factory=dict)  # gateway -> readings missing, after this commit
    time_uncertain: int = 0  # new readings stamped on a clock their gateway did not call synchronised
    time_redated: int = 0  # such readings (new or stored before) given a corrected time

    def refuse(self, reason: str, n: int = 1) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + n


class Storage(Protocol):
    """A database for readings, ledgers, the trust registry and the quarantine."""

    url: str  # where, for logs (no password)

    async def open(self) -> None:
        """Connect and create or upgrade the schema (idempotent; safe with other workers)."""

    async def close(self) -> None: ...

    async def store(self, work: Work) -> StoreReport:
        """Write ``work`` in one transaction, or nothing (raise StorageUnavailable)."""

    async def registry(self, since: int) -> tuple[int, list[KeyRecord]] | None:
        """Every enrolled key, when the registry changed after version ``since``; else None."""

    async def enrol(self, gateway: str, public_pem: str, replaces: bytes = b"") -> KeyRecord:
        """Bind a key to a gateway (ValueError if it is bound to another one)."""

    async def enrol_many(self, keys: Sequence[tuple[str, str]]) -> list[KeyRecord | str]:
        """Bind many (gateway, public PEM) in one transaction (a fleet's provisioning export);
        per key its record, or why it was not bound."""

    async def revoke(self, gateway: str, kid: bytes | None, reason: str) -> int:
        """Revoke one key of a gateway, or all its keys; returns how many."""

    async def ledgers(self, gateway: str | None = None) -> list[StreamLedger]:
        """The completeness ledger of every (gateway, stream), or of one gateway."""

    async def refusals(self, gateway: str | None = None) -> dict[tuple[str, str], int]:
        """Quarantined messages counted by (claimed gateway, reason)."""

    async def missing(self, grace: float) -> tuple[int, int]:
        """Gateways with readings unaccounted for, and how many readings: the holes as of the
        last commits, and the tails heartbeats claimed more than ``grace`` seconds ago."""
