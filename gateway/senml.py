"""Readings <-> SenML records (RFC 8428), CBOR representation; see docs/wire-format.md.

One reading is exactly one record, so a record's reading sequence number is the batch's
first sequence number plus the record's index. Records are encoded once, when readings are
committed to the buffer, and batches are concatenations of those encodings.

Record fields (CBOR labels of RFC 8428 table 4, plus extension labels as text strings):
  -3 bt  base time, whole seconds (set on a segment's first record, and again whenever the
         next record's offset would not survive a float64 round trip at ns precision)
   0 n   "<node>/<point>"
   1 u   unit (omitted when none)
   2 v / 3 vs / 4 vb / 8 vd   the value
   6 t   seconds relative to bt; the receiver recovers ns as bt*1e9 + round(t*1e9)
  "q"    quality: 1 uncertain, 2 bad (omitted when good)
  "p"    interface path: 3 for capillary (IP3); omitted means IP2
  "loc"  location details {lat, lon, alt, spd, crs, fix, sat, hdop}; vs holds a geo: URI
  "ct", "sz"  blob content type and size; vs holds ni:///sha-256;<base64url> (RFC 6920)
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.driver_api import Blob, Location, Path, Quality, Reading

BT, N, U, V, VS, VB, T, VD = -3, 0, 1, 2, 3, 4, 6, 8
NAME_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")
NS = 1_000_000_000
_EXACT_LIMIT = 2**40  # |offset| below ~18 minutes always survives float64 at ns precision

_LOC_KEYS = (("alt", "alt"), ("speed", "spd"), ("course", "crs"), ("sats", "sat"), ("hdop", "hdop"))


def geo_uri(loc: Location) -> str:
    """RFC 5870 geo URI of a location (lat,lon[,alt])."""
    parts = [repr(float(loc.lat)), repr(float(loc.lon))]
    if loc.alt is not None:
        parts.append(repr(float(loc.alt)))
    return "geo:" + ",".join(parts)


def blob_uri(data: bytes) -> str:
    """RFC 6920 named-information URI of a blob's SHA-256."""
    return "ni:///sha-256;" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _record(r: Reading) -> dict[Any, Any]:
    rec: dict[Any, Any] = {N: f"{r.node}/{r.point}"}
    if r.unit:
        rec[U] = r.unit
    v = r.value
    tv = type(v)
    if tv is float or tv is int:
        rec[V] = v
    elif tv is bool:
        rec[VB] = v
    elif tv is str:
        rec[VS] = v
    elif tv is bytes:
        rec[VD] = v
    elif isinstance(v, Location):
        rec[VS] = geo_uri(v)
        loc: dict[str, Any] = {"lat": v.lat, "lon": v.lon, "fix": v.fix}
        for attr, key in _LOC_KEYS:
            x = getattr(v, attr)
            if x is not None:
                loc[key] = x
        rec["loc"] = loc
    elif isinstance(v, Blob):
        rec[VS] = blob_uri(v.data)
        rec["ct"] = v.content_type
        rec["sz"] = len(v.data)
    elif isinstance(v, bool):  # subclasses of the plain types (e.g. numpy scalars)
        rec[VB] = bool(v)
    elif isinstance(v, int):
        rec[V] = int(v)
    elif isinstance(v, float):
        rec[V] = float(v)
    elif isinstance(v, str):
        rec[VS] = str(v)
    elif isinstance(v, bytes):
        rec[VD] = bytes(v)
    else:  # emit() already refuses other types
        raise TypeError(f"cannot encode {tv.__name__}")
    if r.quality:
        rec["q"] = int(r.quality)
    if r.path == Path.IP3:
        rec["p"] = 3
    return rec


def encode_records(readings: Iterable[Reading]) -> tuple[bytes, int]:
    """CBOR encodings of the readings' records, concatenated (no array header), and the count."""
    records: list[dict[Any, Any]] = []
    bt_ns = 0
    for r in readings:
        rec = _record(r)
        ts = r.ts_ns
        delta = ts - bt_ns
        if not records or not -_EXACT_LIMIT < delta < _EXACT_LIMIT:
            bt = ts // NS
            bt_ns = bt * NS
            delta = ts - bt_ns
            rec[BT] = bt
        rec[T] = delta / NS
        records.append(rec)
    if not records:
        return b"", 0
    body = cbor2.dumps(records)
    return body[_array_header_len(len(records)) :], len(records)


def _array_header_len(n: int) -> int:
    if n < 24:
        return 1
    if n < 2**8:
        return 2
    if n < 2**16:
        return 3
    if n < 2**32:
        return 5
    return 9


def array_header(n: int) -> bytes:
    """CBOR major type 4 (array) header for ``n`` items."""
    if n < 24:
        return bytes([0x80 | n])
    if n < 2**8:
        return bytes([0x98, n])
    if n < 2**16:
        return b"\x99" + n.to_bytes(2, "big")
    if n < 2**32:
        return b"\x9a" + n.to_bytes(4, "big")
    return b"\x9b" + n.to_bytes(8, "big")


class SenmlError(ValueError):
    """A pack that is not SenML as we write it."""


@dataclass(frozen=True, slots=True)
class DecodedReading:
    """A reading as a receiver sees it, with its sequence number."""

    seq: int
    node: str
    point: str
    ts_ns: int
    value: Any
    unit: str | None
    quality: int
    path: int
    kind: str  # "v", "vs", "vb", "vd", "loc", "blob"
    extra: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (bytes as base64url)."""
        out: dict[str, Any] = {"seq": self.seq, "node": self.node, "point": self.point, "t_ns": self.ts_ns}
        if self.kind == "vd":
            out["vd"] = base64.urlsafe_b64encode(self.value).rstrip(b"=").decode()
        elif self.kind in ("loc", "blob"):
            out["vs"] = self.value
            out[self.kind] = self.extra
        else:
            out[self.kind] = self.value
        if self.unit:
            out["u"] = self.unit
        if self.quality:
            out["q"] = {1: "uncertain", 2: "bad"}.get(self.quality, self.quality)
        out["path"] = f"ip{self.path}"
        return out


def decode_pack(pack: Any, first_seq: int) -> list[DecodedReading]:
    """Decode a SenML pack (already CBOR-decoded) into readings numbered from ``first_seq``."""
    if not isinstance(pack, list | tuple):
        raise SenmlError("a SenML pack is an array of records")
    out: list[DecodedReading] = []
    bt = None
    for i, rec in enumerate(pack):
        if not isinstance(rec, Mapping):
            raise SenmlError(f"record {i} is not a map")
        if BT in rec:
            if type(rec[BT]) is not int:
                raise SenmlError(f"record {i}: bt must be an integer")
            bt = rec[BT]
        if bt is None:
            raise SenmlError(f"record {i}: no base time")
        name = rec.get(N)
        t = rec.get(T, 0.0)
        if not isinstance(name, str) or "/" not in name or not NAME_RE.match(name):
            raise SenmlError(f"record {i}: bad name {name!r}")
        if not isinstance(t, int | float) or isinstance(t, bool) or t != t or abs(t) > 2**52:
            raise SenmlError(f"record {i}: bad time")
        node, _, point = name.partition("/")
        extra = None
        if "loc" in rec:
            kind, value, extra = "loc", rec.get(VS), rec["loc"]
        elif "ct" in rec:
            kind, value, extra = "blob", rec.get(VS), {"ct": rec["ct"], "sz": rec.get("sz")}
        elif V in rec:
            kind, value = "v", rec[V]
        elif VS in rec:
            kind, value = "vs", rec[VS]
        elif VB in rec:
            kind, value = "vb", rec[VB]
        elif VD in rec:
            kind, value = "vd", rec[VD]
        else:
            raise SenmlError(f"record {i}: no value")
        expected = {"v": (int, float), "vs": (str,), "vb": (bool,), "vd": (bytes,), "loc": (str,), "blob": (str,)}
        if not isinstance(value, expected[kind]) or (kind == "v" and isinstance(value, bool)):
            raise SenmlError(f"record {i}: value of the wrong type for {kind}")
        unit = rec.get(U)
        if unit is not None and not isinstance(unit, str):
            raise SenmlError(f"record {i}: unit must be text")
        q, p = rec.get("q", 0), rec.get("p", 2)
        if q not in (0, 1, 2) or p not in (2, 3):
            raise SenmlError(f"record {i}: bad quality or path")
        ts = bt * NS + round(t * NS)
        out.append(DecodedReading(first_seq + i, node, point, ts, value, unit, q, p, kind, extra))
    return out


def reading_quality(q: int) -> Quality:
    """The Quality enum of a decoded quality code."""
    return Quality(q)
