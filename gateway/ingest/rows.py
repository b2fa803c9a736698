"""How a verified reading becomes a database row, the same for every back-end.

Columns after (gateway, stream, seq, timestamp): node, point, unit, v (number), vs (text),
vb (boolean), vd (bytes), quality (0 good, 1 uncertain, 2 bad), path (2 direct, 3 relayed from a
capillary node), extra (JSON: a location's details, a blob's content type and size) and blob
(the SHA-256 a blob reading names, the key into the blobs table).

A signed reading is stored as it came, with two exceptions a database forces, both marked in
``extra``: a NUL character (PostgreSQL text cannot hold one) becomes U+FFFD (``"nul": true``),
and an integer too large for a float8 is kept as text in ``vs`` (``"big": true``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.senml import DecodedReading

COLUMNS = ("node", "point", "unit", "v", "vs", "vb", "vd", "quality", "path", "extra", "blob")
Values = tuple[str, str, str | None, float | None, str | None, bool | None, bytes | None, int, int, str | None,
               bytes | None]
_NI = "ni:///sha-256;"


def _text(s: str | None, extra: dict[str, Any]) -> str | None:
    if s is not None and "\x00" in s:
        extra["nul"] = True
        return s.replace("\x00", "\ufffd")
    return s


def _json(obj: dict[str, Any]) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=repr)
    except ValueError:  # NaN or infinity in a location
        return json.dumps({"unreadable": repr(obj)[:500]})


def blob_sha(uri: Any) -> bytes | None:
    """The SHA-256 of an RFC 6920 ``ni:///sha-256;...`` URI, or None."""
    if not isinstance(uri, str) or not uri.startswith(_NI):
        return None
    b64 = uri[len(_NI):]
    try:
        sha = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
    except ValueError:
        return None
    return sha if len(sha) == 32 else None


def values(r: DecodedReading) -> Values:
    """The row of one reading, after its identity columns."""
    extra: dict[str, Any] = dict(r.extra) if r.extra else {}
    v: float | None = None
    vs: str | None = None
    vb: bool | None = None
    vd: bytes | None = None
    blob: bytes | None = None
    kind, value = r.kind, r.value
    if kind == "v":
        try:
            v = float(value)
        except OverflowError:
            vs, extra["big"] = str(value), True
    elif kind == "vb":
        vb = bool(value)
    elif kind == "vd":
        vd = bytes(value)
    else:  # vs, loc (a geo: URI), blob (an ni: URI)
        vs = _text(value, extra)
        if kind == "blob":
            blob = blob_sha(value)
    unit = _text(r.unit, extra)
    return (r.node, r.point, unit, v, vs, vb, vd, r.quality, r.path, _json(extra) if extra else None, blob)
