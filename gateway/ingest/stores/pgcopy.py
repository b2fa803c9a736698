"""Readings as one PostgreSQL binary COPY stream, built in a single pass: the worker's hot path.

psycopg's ``write_row`` sends each value through its adapters, a few microseconds a row. This
writes the rows of the ``readings`` table (what a row holds is gateway/ingest/rows.py's) in
PostgreSQL's binary COPY format (the manual's "COPY", "Binary Format"): a signature, then per
row the field count and every field as a 32-bit length and its bytes (length -1: NULL), then a
trailer. The common reading, a number with nothing extra stamped on a synchronised clock, costs
two struct packs and a cached prefix for its node, point and unit; any other goes through
``rows.values`` and the field encoders below. The last two columns are the reading's time flag
and corrected time (gateway/ingest/clock.py). tests/ingest/test_pgcopy.py holds it to psycopg's own binary formatter.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from gateway.ingest import clock, rows
from gateway.ingest.clock import Span
from gateway.ingest.contract import VerifiedBatch
from gateway.senml import DecodedReading

COLUMNS = ("gateway", "stream", "seq", "ts", *rows.COLUMNS, "time_uncertain", "ts_fixed")
SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # the signature, flags 0, no header extension
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z, PostgreSQL's timestamp zero, in Unix microseconds
MAX_SERIES = 50_000  # cached node/point/unit prefixes (cleared when full)

_NCOLS = struct.pack(">h", len(COLUMNS))
_NULL = struct.pack(">i", -1)
_LEN = struct.Struct(">i").pack
_INT8 = struct.Struct(">iq").pack
_SEQ_TS = struct.Struct(">iqiq").pack  # seq, ts
# v, then vs vb vd NULL, quality, path, then extra blob NULL
_V_REST = struct.Struct(">id iii ihih ii".replace(" ", "")).pack
_F8 = struct.Struct(">id").pack
_I2 = struct.Struct(">ih").pack
_SURE = b"\x00\x00\x00\x01\x00" + _NULL  # time_uncertain false, ts_fixed NULL: a synchronised clock
_UNSURE = b"\x00\x00\x00\x01\x01"  # time_uncertain true, then ts_fixed


def _time(uncertain: bool, ts_ns: int, shift: int | None) -> bytes:
    """The time flag and corrected time (``ts`` plus the shift, in microseconds, as the re-dating UPDATE)."""
    if not uncertain:
        return _SURE
    return _UNSURE + (_NULL if shift is None else _INT8(8, ts_ns // 1000 + shift // 1000 - PG_EPOCH_US))


def _text(s: str) -> bytes:
    b = s.encode()
    return _LEN(len(b)) + b


def _bytes(b: bytes) -> bytes:
    return _LEN(len(b)) + b


def _field_values(v: rows.Values) -> bytes:
    """The fields after (gateway, stream, seq, ts) of any row (``rows.values``)."""
    node, point, unit, num, vs, vb, vd, quality, path, extra, blob = v
    return b"".join((
        _text(node), _text(point), _NULL if unit is None else _text(unit),
        _NULL if num is None else _F8(8, num), _NULL if vs is None else _text(vs),
        _NULL if vb is None else b"\x00\x00\x00\x01" + (b"\x01" if vb else b"\x00"),
        _NULL if vd is None else _bytes(vd), _I2(2, quality), _I2(2, path),
        _NULL if extra is None else _bytes(b"\x01" + extra.encode()),  # jsonb: version 1, then the text
        _NULL if blob is None else _bytes(blob),
    ))


class ReadingsCopy:
    """Encodes batches' readings for ``COPY readings (COLUMNS) FROM STDIN (FORMAT BINARY)``."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str | None], bytes | None] = {}

    def _series_of(self, key: tuple[str, str, str | None]) -> bytes | None:
        """The node, point and unit fields; None when the unit needs rows.values (a NUL in it)."""
        if len(self._series) >= MAX_SERIES:
            self._series.clear()
        node, point, unit = key
        fields = None if unit is not None and "\x00" in unit else \
            _text(node) + _text(point) + (_NULL if unit is None else _text(unit))
        self._series[key] = fields
        return fields

    def encode(self, batches: Iterable[tuple[VerifiedBatch, Sequence[DecodedReading], list[Span]]]) -> bytes:
        """The whole COPY stream: signature, a row per reading, trailer (``spans``: clock.settle's)."""
        parts = [SIGNATURE]
        add = parts.extend
        cache = self._series
        for b, fresh, spans in batches:
            head = _NCOLS + _text(b.gateway) + _INT8(8, b.stream)
            if any(uncertain for _, _, uncertain, _ in spans):
                for r, uncertain, shift in clock.timed(fresh, spans):
                    add((head, _SEQ_TS(8, r.seq, 8, r.ts_ns // 1000 - PG_EPOCH_US), _field_values(rows.values(r)),
                         _time(uncertain, r.ts_ns, shift)))
                continue
            for r in fresh:
                seq_ts = _SEQ_TS(8, r.seq, 8, r.ts_ns // 1000 - PG_EPOCH_US)
                value = r.value
                if r.kind == "v" and r.extra is None and (type(value) is float or (type(value) is int
                                                                                    and -(2**53) <= value <= 2**53)):
                    key = (r.node, r.point, r.unit)
                    series = cache[key] if key in cache else self._series_of(key)
                    if series is not None:
                        add((head, seq_ts, series, _V_REST(8, value, -1, -1, -1, 2, r.quality, 2, r.path, -1, -1),
                             _SURE))
                        continue
                add((head, seq_ts, _field_values(rows.values(r)), _SURE))
        parts.append(TRAILER)
        return b"".join(parts)
