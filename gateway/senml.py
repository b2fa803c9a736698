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
import struct
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import cbor2

from gateway import cbor
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


def encode_records(readings: Iterable[Reading], encoder: RecordEncoder | None = None) -> tuple[bytes, int]:
    """CBOR encodings of the readings' records, concatenated (no array header), and the count."""
    return (encoder or RecordEncoder()).encode(readings)


_F64 = struct.Struct(">Bd").pack
_F64_VT = struct.Struct(">BBdBBd").pack  # 2: v, 6: t, both float64
_F64_T = struct.Struct(">BBd").pack  # 6: t
_U16 = struct.Struct(">BBH").pack
_U32 = struct.Struct(">BBI").pack
_KEY_BT = b"\x22"  # label -3 (bt)
_Q = {1: b"\x61q\x01", 2: b"\x61q\x02"}
_P3 = b"\x61p\x03"
_SMALL_INTS = [b"\x02" + bytes((i,)) if i < 24 else b"\x02\x18" + bytes((i,)) for i in range(256)]


def _cbor_int(v: int) -> bytes | None:
    if 0 <= v < 2**64:
        return cbor.head(cbor.UINT, v)
    if -(2**64) <= v < 0:
        return cbor.head(cbor.NINT, -1 - v)
    return None  # a bignum: leave it to cbor2


class RecordEncoder:
    """Encodes readings to SenML records, byte for byte as ``cbor2.dumps`` of the record maps
    would, without building a map per reading: the name/unit prefix of each series is encoded
    once and cached, numbers and times are packed directly. Anything unusual (text, bytes,
    locations, blobs, bignums, non-finite floats) goes through the general path."""

    MAX_CACHED = 20_000

    def __init__(self) -> None:
        # (node, point, unit) -> (fields in the prefix, prefix, map head + prefix for the common case)
        self._prefix: dict[tuple[str, str, str | None], tuple[int, bytes, bytes]] = {}

    def _series(self, key: tuple[str, str, str | None]) -> tuple[int, bytes, bytes]:
        if len(self._prefix) >= self.MAX_CACHED:
            self._prefix.clear()
        node, point, unit = key
        head = b"\x00" + cbor.tstr(f"{node}/{point}")
        n = 1
        if unit:
            head += b"\x01" + cbor.tstr(unit)
            n = 2
        hit = self._prefix[key] = (n, head, bytes((0xA0 | (n + 2),)) + head)
        return hit

    def encode(self, readings: Iterable[Reading]) -> tuple[bytes, int]:
        parts: list[bytes] = []
        append = parts.append
        cache = self._prefix
        bt_ns = 0
        count = 0
        pack_vt = _F64_VT
        pack_t = _F64_T
        f64 = _F64
        lo, hi = -_EXACT_LIMIT, _EXACT_LIMIT
        for r in readings:
            ts = r.ts_ns
            delta = ts - bt_ns
            if count and lo < delta < hi:
                bt = None
            else:
                bt = ts // NS
                bt_ns = bt * NS
                delta = ts - bt_ns
            count += 1
            v: Any = r.value
            tv = type(v)
            key = (r.node, r.point, r.unit)
            entry = cache.get(key) or self._series(key)
            if tv is float and v - v == 0.0:
                if bt is None and not r.quality and r.path != 3:  # the common case: one pack
                    append(entry[2] + pack_vt(0x02, 0xFB, v, 0x06, 0xFB, delta / NS))
                    continue
                val = b"\x02" + f64(0xFB, v)
            elif tv is int and -(2**64) <= v < 2**64:
                if 0 <= v < 256:
                    val = _SMALL_INTS[v]
                elif 0 <= v < 65536:
                    val = _U16(0x02, 0x19, v)
                elif 0 <= v < 2**32:
                    val = _U32(0x02, 0x1A, v)
                else:
                    val = b"\x02" + (cbor.head(cbor.UINT, v) if v >= 0 else cbor.head(cbor.NINT, -1 - v))
            elif tv is bool:
                val = b"\x04\xf5" if v else b"\x04\xf4"
            else:
                append(self._general(r, bt, delta))
                continue
            if bt is None and not r.quality and r.path != 3:
                append(entry[2] + val + pack_t(0x06, 0xFB, delta / NS))
                continue
            n = entry[0] + 2  # value and t
            tail = b""
            q = r.quality
            if q:
                tail = _Q.get(int(q)) or (b"\x61q" + cbor2.dumps(int(q)))
                n += 1
            if r.path == 3:
                tail += _P3
                n += 1
            if bt is not None:
                tail += _KEY_BT + (_cbor_int(bt) or cbor2.dumps(bt))
                n += 1
            append(bytes((0xA0 | n,)) + entry[1] + val + tail + pack_t(0x06, 0xFB, delta / NS))
        return b"".join(parts), count

    @staticmethod
    def _general(r: Reading, bt: int | None, delta: int) -> bytes:
        rec = _record(r)
        if bt is not None:
            rec[BT] = bt
        rec[T] = delta / NS
        return cbor2.dumps(rec)


def array_header(n: int) -> bytes:
    """The CBOR head of a pack (an array) of ``n`` records."""
    return cbor.head(cbor.ARRAY, n)


class SenmlError(ValueError):
    """A pack that is not SenML as we write it."""


class DecodedReading(NamedTuple):
    """A reading as a receiver sees it, with its sequence number (a tuple: a receiver makes one
    per record, and a tuple is the cheapest object there is to make)."""

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


_KIND_TYPES: dict[str, tuple[type, ...]] = {
    "v": (int, float), "vs": (str,), "vb": (bool,), "vd": (bytes,), "loc": (str,), "blob": (str,)}


_new = tuple.__new__  # a DecodedReading without the call of its __new__ (one per record)


def decode_pack(pack: Any, first_seq: int) -> list[DecodedReading]:
    """Decode a SenML pack (already CBOR-decoded) into readings numbered from ``first_seq``."""
    out: list[DecodedReading] = []
    _walk(pack, first_seq, out)
    return out


def check_pack(pack: Any, first_seq: int, ts_out: list[int] | None = None,
               blobs_out: list[tuple[int, Any]] | None = None) -> int:
    """Check a SenML pack exactly as :func:`decode_pack` does, without building a reading per
    record; returns the record count. Optionally collects each record's timestamp (ns) in
    ``ts_out`` and (sequence number, ``vs``) of blob records in ``blobs_out``."""
    return _walk(pack, first_seq, None, ts_out, blobs_out)


def _walk(pack: Any, first_seq: int, out: list[DecodedReading] | None, ts_out: list[int] | None = None,
          blobs_out: list[tuple[int, Any]] | None = None) -> int:
    """The one walk over a pack's records: every check of the format, the readings built only
    when ``out`` is given (the type tests take the common types' fast way first)."""
    if not isinstance(pack, list | tuple):
        raise SenmlError("a SenML pack is an array of records")
    bt = None
    names: set[str] = set()  # names already checked in this pack
    for i, rec in enumerate(pack):
        if type(rec) is not dict and not isinstance(rec, Mapping):
            raise SenmlError(f"record {i} is not a map")
        if BT in rec:
            if type(rec[BT]) is not int:
                raise SenmlError(f"record {i}: bt must be an integer")
            bt = rec[BT]
        if bt is None:
            raise SenmlError(f"record {i}: no base time")
        name = rec.get(N)
        if type(name) is not str or name not in names:
            if not isinstance(name, str) or "/" not in name or not NAME_RE.match(name):
                raise SenmlError(f"record {i}: bad name {name!r}")
            names.add(name)
        t = rec.get(T, 0.0)
        tt = type(t)
        if not (tt is float or tt is int) and (not isinstance(t, int | float) or isinstance(t, bool)):
            raise SenmlError(f"record {i}: bad time")
        if t != t or abs(t) > 2**52:
            raise SenmlError(f"record {i}: bad time")
        extra = None
        if V in rec and "loc" not in rec and "ct" not in rec:
            kind, value = "v", rec[V]
            tv = type(value)
            if not (tv is float or tv is int) and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise SenmlError(f"record {i}: value of the wrong type for v")
        else:
            if "loc" in rec:
                kind, value, extra = "loc", rec.get(VS), rec["loc"]
            elif "ct" in rec:
                kind, value, extra = "blob", rec.get(VS), {"ct": rec["ct"], "sz": rec.get("sz")}
                if blobs_out is not None:
                    blobs_out.append((first_seq + i, value))
            elif VS in rec:
                kind, value = "vs", rec[VS]
            elif VB in rec:
                kind, value = "vb", rec[VB]
            elif VD in rec:
                kind, value = "vd", rec[VD]
            else:
                raise SenmlError(f"record {i}: no value")
            if not isinstance(value, _KIND_TYPES[kind]):
                raise SenmlError(f"record {i}: value of the wrong type for {kind}")
        unit = rec.get(U)
        if unit is not None and type(unit) is not str and not isinstance(unit, str):
            raise SenmlError(f"record {i}: unit must be text")
        q, p = 0, 2
        if "q" in rec or "p" in rec:
            q, p = rec.get("q", 0), rec.get("p", 2)
            if q not in (0, 1, 2) or p not in (2, 3):
                raise SenmlError(f"record {i}: bad quality or path")
        if out is not None or ts_out is not None:
            ts = bt * NS + round(t * NS)
            if ts_out is not None:
                ts_out.append(ts)
            if out is not None:
                node, _, point = name.partition("/")
                out.append(_new(DecodedReading, (first_seq + i, node, point, ts, value, unit, q, p, kind, extra)))
    return len(pack)


def reading_quality(q: int) -> Quality:
    """The Quality enum of a decoded quality code."""
    return Quality(q)
