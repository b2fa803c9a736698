"""The binary COPY encoder of readings (gateway/ingest/stores/pgcopy.py) against psycopg's own
row formatting, in a real PostgreSQL: the same readings COPYed both ways come out the same rows,
for every kind of value, unit, quality and path, and for the odd ones (a NUL in a unit, a number
too big for a float8, NaN, locations, blobs), and for readings of uncertain time, re-dated or not."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.ingest import clock, rows
from gateway.ingest.clock import Span
from gateway.ingest.contract import VerifiedBatch
from gateway.ingest.stores.pgcopy import COLUMNS, ReadingsCopy
from gateway.ingest.stores.postgres import ts
from gateway.senml import DecodedReading

TABLE = """(gateway text, stream bigint, seq bigint, ts timestamptz, node text, point text, unit text,
    v double precision, vs text, vb boolean, vd bytea, quality smallint, path smallint, extra jsonb, blob bytea,
    time_uncertain boolean, ts_fixed timestamptz)"""

MAX_TS_NS = 253_402_300_799 * 10**9  # 9999-12-31T23:59:59Z, the last second both ends can hold
names = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
units = st.none() | st.sampled_from(["Cel", "W", "%RH", "m/s", "k\x00W", "°C"])


@st.composite
def readings(draw: st.DrawFn) -> DecodedReading:
    kind = draw(st.sampled_from(["v", "v", "v", "vs", "vb", "vd", "loc", "blob"]))
    extra: dict[str, Any] | None = None
    value: Any
    if kind == "v":
        value = draw(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70))
    elif kind == "vs":
        value = draw(st.text(max_size=20))
    elif kind == "vb":
        value = draw(st.booleans())
    elif kind == "vd":
        value = draw(st.binary(max_size=20))
    elif kind == "loc":
        value, extra = "geo:1.5,2.5", {"lat": 1.5, "lon": 2.5, "acc": draw(st.floats(0, 100))}
    else:
        sha = hashlib.sha256(draw(st.binary(max_size=8))).digest()
        value = "ni:///sha-256;" + base64.urlsafe_b64encode(sha).rstrip(b"=").decode()
        extra = {"ct": "image/jpeg", "sz": draw(st.integers(0, 10**6))}
    return DecodedReading(0, draw(names), draw(names), draw(st.integers(0, MAX_TS_NS)), value,
                          draw(units), draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([2, 3])), kind, extra)


def _batch(gateway: str, stream: int, got: list[DecodedReading], spans: list[Span] | None = None,
           ) -> tuple[VerifiedBatch, list[DecodedReading], list[Span]]:
    numbered = [r._replace(seq=i + 1) for i, r in enumerate(got)]
    b = VerifiedBatch(gateway, b"", stream, 1, 1, bytes(32), bytes(32), 1, len(numbered), (), (), numbered, 0, "", b"")
    return b, numbered, spans if spans is not None else [(1, len(numbered), False, None)]


@st.composite
def time_spans(draw: st.DrawFn, n: int) -> list[Span]:
    """How clock.settle splits a batch: runs of reading numbers, each certain, or uncertain with
    a known shift or none yet."""
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=3)))) if n > 1 else []
    bounds = list(zip([1, *(c + 1 for c in cuts)], [*cuts, n], strict=True))
    return [(a, b, un, draw(st.none() | st.integers(-(10**15), 10**15)) if un else None)
            for a, b in bounds for un in [draw(st.booleans())]]


@pytest.fixture
def conn(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"CREATE TABLE ours {TABLE}")  # type: ignore[arg-type]
        c.execute(f"CREATE TABLE theirs {TABLE}")  # type: ignore[arg-type]
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(readings(), min_size=1, max_size=30).flatmap(lambda got: st.tuples(st.just(got),
                                                                                   time_spans(len(got)))),
       names, st.integers(0, 2**63 - 1))
def test_the_binary_stream_stores_what_psycopg_would(conn: psycopg.Connection[Any],
                                                      got_spans: tuple[list[DecodedReading], list[Span]],
                                                      gateway: str, stream: int) -> None:
    got, spans = got_spans
    batch = _batch(gateway, stream, got, spans)
    assume(all(r.ts_ns + (shift or 0) < MAX_TS_NS for r, _, shift in clock.timed(batch[1], spans)))  # year 9999
    conn.execute("TRUNCATE ours, theirs")
    cols = ", ".join(COLUMNS)
    with conn.cursor() as cur:
        with cur.copy(f"COPY ours ({cols}) FROM STDIN (FORMAT BINARY)") as copy:  # type: ignore[arg-type]
            copy.write(ReadingsCopy().encode([batch]))
        with cur.copy(f"COPY theirs ({cols}) FROM STDIN") as copy:  # type: ignore[arg-type]
            for r, uncertain, shift in clock.timed(batch[1], spans):
                fixed = None if shift is None else ts(r.ts_ns) + timedelta(microseconds=shift // 1000)
                copy.write_row((gateway, stream, r.seq, ts(r.ts_ns), *rows.values(r), uncertain, fixed))
    ours = conn.execute("SELECT * FROM ours ORDER BY seq").fetchall()
    theirs = conn.execute("SELECT * FROM theirs ORDER BY seq").fetchall()
    assert len(ours) == len(got)
    assert repr(ours) == repr(theirs)  # repr: NaN equals NaN


def test_a_cached_series_with_many_batches_and_gateways(conn: psycopg.Connection[Any]) -> None:
    enc = ReadingsCopy()
    base = DecodedReading(0, "n1", "t", 1_795_000_000_000_000_000, 21.5, "Cel", 0, 2, "v")
    data = enc.encode([_batch(f"gw-{g}", g, [base._replace(value=float(i)) for i in range(50)]) for g in range(5)])
    sql = f"COPY ours ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(sql) as copy:  # type: ignore[arg-type]
        copy.write(data)
    assert conn.execute("SELECT count(*), count(DISTINCT gateway), sum(v) FROM ours").fetchone() == (250, 5, 5 * 1225.0)
