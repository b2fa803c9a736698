"""What the back-ends share besides the ledger: enrolling a key, partition months, revocation."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from gateway.config.schema import _ID as GATEWAY_ID
from gateway.ingest.contract import BAD_BLOB, BlobChunk, KeyRecord, Refused, Work
from gateway.keys import KeyFileError, alg_of, key_id, public_key_from_pem, public_pem

DAY_NS = 86_400 * 1_000_000_000


def enrol_record(gateway: str, pem: str) -> KeyRecord:
    """The registry row for a public key (PEM SubjectPublicKeyInfo); ValueError says what is wrong."""
    if not re.match(GATEWAY_ID, gateway):
        raise ValueError(f"{gateway!r} is not a gateway id (letters, digits, '_.:-', at most 128)")
    try:
        key = public_key_from_pem(pem.encode(), "the key")
    except KeyFileError as e:
        raise ValueError(str(e)) from None
    return KeyRecord(key_id(key), gateway, alg_of(key), public_pem(key).decode(), time.time_ns())


def records_to_enrol(keys: Sequence[tuple[str, str]], bound: dict[bytes, str]) -> tuple[list[KeyRecord | str],
                                                                                        list[KeyRecord]]:
    """For ``enrol_many``: each key's record or why not (``bound``: kid -> gateway, as stored,
    updated here), and the records to insert."""
    out: list[KeyRecord | str] = []
    new: list[KeyRecord] = []
    for gateway, pem in keys:
        try:
            rec = enrol_record(gateway, pem)
        except ValueError as e:
            out.append(str(e))
            continue
        have = bound.get(rec.kid)
        if have is not None and have != gateway:
            out.append(f"key {rec.kid.hex()} is already bound to gateway {have!r}; a key speaks for one gateway only")
            continue
        if have is None:
            bound[rec.kid] = gateway
            new.append(rec)
        out.append(rec)
    return out, new


def months_of(work: Work) -> Iterator[datetime]:
    """The first instant (UTC) of every month a reading of ``work`` falls in."""
    days: set[int] = set()
    for b in work.batches:
        if not b.readings:
            continue
        if b.ts_min // DAY_NS == b.ts_max // DAY_NS:  # nearly always: one day
            days.add(b.ts_min // DAY_NS)
        else:
            days.update(r.ts_ns // DAY_NS for r in b.readings)
    seen: set[tuple[int, int]] = set()
    for d in sorted(days):
        t = datetime.fromtimestamp(d * 86_400, UTC)
        if (t.year, t.month) not in seen:
            seen.add((t.year, t.month))
            yield datetime(t.year, t.month, 1, tzinfo=UTC)


def month_bounds(start: datetime) -> tuple[datetime, datetime]:
    """[start, start of the next month)."""
    nxt = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)
    return start, nxt


def parse_revoke(gateway: str, kid: bytes | None, mark: str = "%s") -> tuple[str, tuple[object, ...]]:
    """The WHERE clause of a revocation (``mark``: the driver's placeholder): one key of a gateway,
    or all of them."""
    if kid is None:
        return f"gateway = {mark}", (gateway,)
    return f"gateway = {mark} AND kid = {mark}", (gateway, kid)


def assemble(chunk: BlobChunk, parts: list[bytes]) -> bytes | Refused:
    """A blob from all its chunks (in index order), or why it cannot be trusted."""
    data = b"".join(parts)
    if len(parts) != chunk.count or hashlib.sha256(data).digest() != chunk.sha256:
        return Refused(BAD_BLOB, f"blob chunks ({len(parts)} of {chunk.count}) do not add up to the SHA-256 they "
                       "were sent under", "", chunk.gateway, b"", b"", chunk.received_ns)
    return data
