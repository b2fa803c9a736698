"""A buffer file SQLite says is corrupt: set it aside, recover what it can read, declare the rest.

Only SQLite's own verdict sets a file aside: SQLITE_CORRUPT or SQLITE_NOTADB from any statement,
or a ``PRAGMA quick_check`` that does not answer "ok". A full disk, a missing permission, a lock
or any other I/O error leaves the file where it is (the store waits and tries again).

Recovery reads the set-aside file row by row, stepping over damaged pages, and writes into the
new file what it could read and check: the numbers and chain (``meta``), every segment whose
records decode as the SenML we wrote, the drop ranges not yet declared, and the blobs whose
content still matches their hash. The new file continues the old stream, so recovered readings
keep their numbers; reading numbers the old file owed a receiver and that could not be read are
declared lost (reason ``buffer_corrupt``) in the next batch. Batches already signed are not
kept: their readings go again in new batches, under the same numbers (a receiver that got the
first sending counts duplicates, never a conflict). When the numbers themselves cannot be read,
the recovered readings start a new stream. What happened is written next to the set-aside file
(``buffer.db.salvage-<time>.json``), which ``sensegate doctor`` reports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from gateway import senml
from gateway.store.numbers import new_meta
from gateway.wire import BUFFER_CORRUPT, FORMAT_VERSION

CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
MAX_ERRORS = 10_000  # damaged spots stepped over in one table before giving up on the rest of it
log = logging.getLogger("sensegate.buffer")


class Corrupt(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage (SQLite raised nothing, but said so)."""


def is_corrupt(e: BaseException) -> bool:
    """Whether SQLite itself says the file is damaged (never for ENOSPC, EACCES, a lock, I/O)."""
    if isinstance(e, Corrupt):
        return True
    code = e.sqlite_errorcode if isinstance(e, sqlite3.Error) else None
    return isinstance(code, int) and code & 0xFF in CORRUPT_CODES


def check_sync(conn: sqlite3.Connection) -> None:
    """Raise Corrupt unless SQLite's quick check finds the file sound."""
    rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        raise Corrupt("; ".join(str(r) for r in rows))


@dataclass(frozen=True)
class WhyNot:
    """Why a buffer file cannot be opened: the kind of problem, which stays the same from one
    attempt to the next (so a change is said once), and the words for it."""

    kind: str  # full, locked, read-only, permission, io, or the error itself
    text: str

    def __str__(self) -> str:
        return self.text


def describe(e: BaseException, path: Path) -> WhyNot:
    """Why a buffer file cannot be opened, in plain words."""
    name = (e.sqlite_errorname or "") if isinstance(e, sqlite3.Error) else ""
    errno_ = e.errno if isinstance(e, OSError) else None
    free = None
    with contextlib.suppress(OSError, StopIteration):
        free = shutil.disk_usage(next(p for p in (path.parent, *path.parents) if os.access(p, os.X_OK))).free
    if name.startswith("SQLITE_FULL") or errno_ == 28 or free == 0:
        return WhyNot("full", f"the disk is full ({free or 0} bytes free now in {path.parent})")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return WhyNot("locked", f"{path} is locked by another process (a second sensegate on the same state "
                                "directory?)")
    if name.startswith("SQLITE_READONLY") or errno_ == 30:
        return WhyNot("read-only", f"{path} or its directory is read-only")
    if errno_ == 13 or name.startswith(("SQLITE_PERM", "SQLITE_AUTH")) or (
            name.startswith("SQLITE_CANTOPEN") and not _may_write(path)):
        return WhyNot("permission", f"permission denied on {path} or its directory")
    if name.startswith("SQLITE_IOERR"):
        return WhyNot("io", f"an I/O error on {path} ({e}; check the storage: dmesg)")
    return WhyNot(str(e), str(e))


def _may_write(path: Path) -> bool:
    """Whether this process may create and write the file (and its -wal, -shm) there."""
    try:
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            return False
        return not path.parent.exists() or os.access(path.parent, os.W_OK | os.X_OK)
    except OSError:  # not even allowed to look
        return False


def set_aside(path: Path) -> Path:
    """Move the file (and its -wal and -shm) to ``<name>.corrupt-<time>``; returns the new path."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    return aside


def put_back(aside: Path, path: Path) -> None:
    """Undo ``set_aside`` (a recovery that could not finish is tried again from the start)."""
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            Path(str(path) + suffix).unlink()
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(aside) + suffix)
        if src.exists():
            os.replace(src, Path(str(path) + suffix))


@dataclass
class Report:
    """What recovery found; also written as JSON next to the set-aside file."""

    file: str
    set_aside_at: str
    error: str
    stream: str = "kept"  # "kept" (numbers continued), "new" (numbers unreadable), "foreign" (not restored)
    recovered_readings: int = 0
    recovered_segments: int = 0
    lost_readings: int = 0
    lost: list[list[int]] = field(default_factory=list)  # reading number ranges declared lost
    pending_drops: int = 0  # undeclared drop ranges carried over
    recovered_blobs: int = 0
    unreadable: list[str] = field(default_factory=list)  # tables with damage that was stepped over

    @property
    def held(self) -> int:
        """Readings the file owed a receiver, as far as can be told."""
        return self.recovered_readings + self.lost_readings

    def save(self, aside: Path) -> None:
        with contextlib.suppress(OSError):
            report_path(aside).write_text(json.dumps(asdict(self), indent=1) + "\n")


def report_path(aside: Path) -> Path:
    """``buffer.db.salvage-<time>.json`` for ``buffer.db.corrupt-<time>``."""
    name, _, stamp = aside.name.rpartition(".corrupt-")
    return aside.with_name(f"{name}.salvage-{stamp}.json")


@dataclass
class Salvaged:
    """Rows read from a damaged file."""

    meta: dict[str, Any] | None
    segments: list[tuple[int, int, int, int, bytes]]
    drops: list[tuple[int, int, str]]
    batch_firsts: list[int]
    blobs: list[tuple[bytes, str, int, bytes]]
    blob_drops: list[tuple[bytes, str]]
    unreadable: list[str]


def read(aside: Path) -> Salvaged:
    """Everything readable and sound in a damaged buffer file (never raises)."""
    out = Salvaged(None, [], [], [], [], [], [])
    try:
        conn = sqlite3.connect(aside, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        out.unreadable.append(f"the whole file ({e})")
        return out
    try:
        try:
            out.meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) or None
        except sqlite3.Error as e:
            out.unreadable.append(f"meta ({e})")
        for first, last, nbytes, created, data in _rows(
                conn, "segments", "first_seq", "first_seq, last_seq, nbytes, created_ns, data", out.unreadable):
            if _sound(first, last, nbytes, data):
                out.segments.append((first, last, nbytes, created, data))
        out.drops = [(a, b, r) for a, b, r in _rows(conn, "drops", "first_seq", "first_seq, last_seq, reason",
                                                    out.unreadable)
                     if type(a) is int and type(b) is int and a <= b and isinstance(r, str)]
        out.batch_firsts = [f for f, in _rows(conn, "batches", "bseq", "first_seq", out.unreadable) if type(f) is int]
        for sha, ctype, created, data in _scan(conn, "SELECT sha256, content_type, created_ns, data FROM blobs",
                                               "blobs", out.unreadable):
            if isinstance(data, bytes) and hashlib.sha256(data).digest() == sha:
                out.blobs.append((sha, ctype, created, data))
        out.blob_drops = list(_scan(conn, "SELECT sha256, reason FROM blob_drops", "blob_drops", out.unreadable))
    finally:
        conn.close()
    return out


def _sound(first: Any, last: Any, nbytes: Any, data: Any) -> bool:
    """A segment whose records decode as the SenML pack of its numbers (damage inside a page
    that SQLite cannot see must not be signed and sent as readings)."""
    if not (type(first) is int and type(last) is int and 1 <= first <= last and isinstance(data, bytes)
            and nbytes == len(data)):
        return False
    try:
        return senml.check_pack(cbor2.loads(senml.array_header(last - first + 1) + data), first) == last - first + 1
    except (senml.SenmlError, ValueError, TypeError, cbor2.CBORDecodeError):
        return False


def _scan(conn: sqlite3.Connection, sql: str, table: str, unreadable: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of a query up to the first damage."""
    try:
        yield from conn.execute(sql)
    except sqlite3.Error as e:
        unreadable.append(f"{table} ({e})")


def _rows(conn: sqlite3.Connection, table: str, key: str, cols: str,
          unreadable: list[str]) -> Iterator[tuple[Any, ...]]:
    """Rows of a table with an integer key, in key order, stepping over damaged pages: after an
    error the next readable key is found by probing further and further ahead."""
    pos = -(2**63)
    errors = 0
    while errors < MAX_ERRORS:
        try:
            for row in conn.execute(f"SELECT {key}, {cols} FROM {table} WHERE {key} > ? ORDER BY {key}", (pos,)):
                pos = row[0]
                yield row[1:]
            return
        except sqlite3.Error as e:
            errors += 1
            if errors == 1:
                unreadable.append(f"{table} ({e})")
        nxt = _probe(conn, table, key, pos)
        if nxt is None:
            return
        try:  # the row at the next readable key, alone (its content may be what is damaged)
            row = conn.execute(f"SELECT {key}, {cols} FROM {table} WHERE {key} = ?", (nxt,)).fetchone()
        except sqlite3.Error:
            row = None
            errors += 1
        pos = nxt
        if row is not None:
            yield row[1:]


def _probe(conn: sqlite3.Connection, table: str, key: str, pos: int) -> int | None:
    """The smallest readable key above ``pos``, or None when none can be found."""
    step = 1
    while pos + step < 2**63:
        try:
            row = conn.execute(f"SELECT {key} FROM {table} WHERE {key} >= ? ORDER BY {key} LIMIT 1",
                               (pos + step,)).fetchone()
        except sqlite3.Error:
            step *= 2
            continue
        return None if row is None else int(row[0])
    return None


def restore_sync(conn: sqlite3.Connection, found: Salvaged, gateway_id: str, report: Report) -> None:
    """Write what was recovered into the new, empty buffer file (one transaction); fills ``report``."""
    meta = found.meta or {}
    usable = (isinstance(meta.get("format"), int) and meta["format"] <= FORMAT_VERSION
              and all(isinstance(meta.get(k), int) for k in ("stream", "next_seq", "next_bseq", "boot"))
              and isinstance(meta.get("last_hash"), bytes))
    if usable and meta.get("gateway_id") != gateway_id:
        report.stream = "foreign"  # another gateway's buffer: left in the set-aside file for its owner
        log.error("buffer: the damaged file belonged to gateway %r, not %r; nothing recovered from it",
                  meta.get("gateway_id"), gateway_id)
        return
    segments = sorted(found.segments)
    drops = sorted(found.drops)
    if usable:
        next_seq = max([int(meta["next_seq"])] + [s[1] + 1 for s in segments] + [d[1] + 1 for d in drops])
        owed = [s[0] for s in segments] + [d[0] for d in drops] + found.batch_firsts
        lo = min([*owed, int(meta.get("batched_upto", 0)) + 1])
        lost = _holes(lo, next_seq - 1, [(s[0], s[1]) for s in segments] + [(d[0], d[1]) for d in drops])
        meta = {**meta, "next_seq": next_seq, "batched_upto": lo - 1,
                "seq_resv": max(int(meta.get("seq_resv", 0)), next_seq - 1),
                "bseq_resv": max(int(meta.get("bseq_resv", 0)), int(meta["next_bseq"]) - 1)}
    else:  # the numbers are gone: a new stream, the readings renumbered in their order
        report.stream = "new"
        renumbered, seq = [], 1
        for first, last, nbytes, created, data in segments:
            renumbered.append((seq, seq + last - first, nbytes, created, data))
            seq += last - first + 1
        segments, drops, lost = renumbered, [], []
        meta = new_meta(gateway_id, next_seq=seq)
    report.recovered_segments = len(segments)
    report.recovered_readings = sum(s[1] - s[0] + 1 for s in segments)
    report.lost = [[a, b] for a, b in lost]
    report.lost_readings = sum(b - a + 1 for a, b in lost)
    report.pending_drops = len(drops)
    report.recovered_blobs = len(found.blobs)
    report.unreadable = found.unreadable
    conn.execute("BEGIN")
    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta.items())
    conn.executemany("INSERT INTO segments VALUES (?, ?, ?, ?, ?)", segments)
    conn.executemany("INSERT OR REPLACE INTO drops VALUES (?, ?, ?)",
                     drops + [(a, b, BUFFER_CORRUPT) for a, b in lost])
    conn.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", found.blobs)
    conn.executemany("INSERT OR IGNORE INTO blob_drops VALUES (?, ?)", found.blob_drops)
    conn.execute("COMMIT")


def _holes(lo: int, hi: int, have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges of [lo, hi] not covered by ``have``."""
    out = []
    at = lo
    for a, b in sorted(have):
        if a > at:
            out.append((at, min(a - 1, hi)))
        at = max(at, b + 1)
        if at > hi:
            break
    if at <= hi:
        out.append((at, hi))
    return [(a, b) for a, b in out if a <= b]
