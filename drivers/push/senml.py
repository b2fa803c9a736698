"""SenML packs from devices (RFC 8428), JSON and CBOR, resolved to records; pure, never imports gateway.

Resolution follows RFC 8428 section 4.6: base name, time, unit, value and sum carry over to
the records after them until changed; name = bn + n; value = bv + v, sum = bs + s; time =
bt + t, and a resolved time below 2**28 is relative to now. Fields are the labels of RFC 8428
table 4 (JSON) and their CBOR integers (table 6); ``vd`` is a byte string in CBOR and base64url
text in JSON. Unknown fields are ignored unless their name ends in ``_`` ("must understand"),
which refuses the pack, as does a ``bver`` above 10.

A pack is taken whole or not at all: every record is checked first, so a device that gets a
refusal can send the same pack again. Packs are outside input: ``SenmlError`` (with a message a
device's developer can act on) and nothing else escapes, and every size is bounded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import cbor2

MAX_RECORDS = 1000
MAX_TEXT = 4096  # characters of a string value, bytes of a data value
MAX_NAME = 256
RELATIVE_LIMIT = 2**28  # resolved times below this are relative to now (RFC 8428 4.5.3)
_NAME_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")
_B64URL_RE = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")

# CBOR labels (RFC 8428 table 6)
_LABELS = {
    -1: "bver",
    -2: "bn",
    -3: "bt",
    -4: "bu",
    -5: "bv",
    -6: "bs",
    0: "n",
    1: "u",
    2: "v",
    3: "vs",
    4: "vb",
    5: "s",
    6: "t",
    7: "ut",
    8: "vd",
}
_NUMBERS = ("bt", "bv", "bs", "v", "s", "t", "ut")
_TEXTS = ("bn", "bu", "n", "u", "vs")
_VALUES = ("v", "vs", "vb", "vd")


class SenmlError(ValueError):
    """The pack is not SenML we can take; the message says which record and why."""


@dataclass(frozen=True, slots=True)
class Record:
    """A resolved record: full name, one value, unit, absolute time (seconds since the epoch)."""

    name: str
    value: float | int | bool | str | bytes
    unit: str | None
    time: float
    is_sum: bool = False  # the value is the record's sum (s), not its value


def parse(payload: bytes, content_format: str, now: float, max_records: int = MAX_RECORDS) -> list[Record]:
    """A pack in ``json`` or ``cbor`` (``auto``: by its first byte), resolved."""
    if content_format == "auto":
        content_format = "json" if payload.lstrip()[:1] in (b"[", b"{") else "cbor"
    if content_format == "json":
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
            raise SenmlError(f"not JSON: {str(e)[:100]}") from None
    elif content_format == "cbor":
        try:
            doc = cbor2.loads(payload)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
            raise SenmlError(f"not CBOR: {str(e)[:100]}") from None
    else:
        raise ValueError(f"content format {content_format!r}")
    return resolve(doc, now, max_records, cbor=content_format == "cbor")


def _fields(record: Any, i: int, cbor: bool) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise SenmlError(f"record {i} is not a map")
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(key, int) and not isinstance(key, bool) and cbor:
            name = _LABELS.get(key)
            if name is None:
                continue  # an extension we do not know (integer labels cannot be must-understand)
        elif isinstance(key, str):
            name = key
            if name.endswith("_"):
                raise SenmlError(f"record {i}: field {name[:40]!r} must be understood and is not")
            if name not in _LABELS.values():
                continue
        else:
            raise SenmlError(f"record {i}: field label {str(key)[:20]!r} is neither text nor an integer")
        if name in out:
            raise SenmlError(f"record {i}: field {name} given twice")
        if value is None:
            raise SenmlError(f"record {i}: field {name} is null")
        out[name] = value
    return out


def _check(fields: dict[str, Any], i: int, cbor: bool) -> None:
    for name in _NUMBERS:
        v = fields.get(name)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or abs(v) >= 2**63
        ):
            raise SenmlError(f"record {i}: {name} is not a finite number (within 64 bits)")
    for name in _TEXTS:
        v = fields.get(name)
        if v is not None and (not isinstance(v, str) or len(v) > (MAX_TEXT if name == "vs" else MAX_NAME)):
            raise SenmlError(f"record {i}: {name} is not text of at most {MAX_TEXT if name == 'vs' else MAX_NAME}")
    if "vb" in fields and not isinstance(fields["vb"], bool):
        raise SenmlError(f"record {i}: vb is not true or false")
    if "vd" in fields:
        vd = fields["vd"]
        if cbor:
            if not isinstance(vd, bytes):
                raise SenmlError(f"record {i}: vd is not a byte string")
        else:
            if not isinstance(vd, str) or len(vd) > 2 * MAX_TEXT or not _B64URL_RE.match(vd):
                raise SenmlError(f"record {i}: vd is not base64url text")
            try:
                fields["vd"] = base64.urlsafe_b64decode(vd + "=" * (-len(vd) % 4))
            except (binascii.Error, ValueError):
                raise SenmlError(f"record {i}: vd is not base64url") from None
        if len(fields["vd"]) > MAX_TEXT:
            raise SenmlError(f"record {i}: vd longer than {MAX_TEXT} bytes")
    if "bver" in fields:
        bver = fields["bver"]
        if isinstance(bver, bool) or not isinstance(bver, int) or bver < 1:
            raise SenmlError(f"record {i}: bver is not a positive integer")
        if bver > 10:
            raise SenmlError(f"record {i}: SenML version {bver} is newer than this receiver (10)")


def resolve(pack: Any, now: float, max_records: int = MAX_RECORDS, cbor: bool = False) -> list[Record]:
    """Records of a decoded pack (a list of maps), resolved; SenmlError for anything unusable."""
    if not isinstance(pack, list):
        raise SenmlError("a SenML pack is an array of records")
    if not pack:
        raise SenmlError("the pack has no records")
    if len(pack) > max_records:
        raise SenmlError(f"the pack has {len(pack)} records (at most {max_records})")
    bn, bt, bu, bv, bs = "", 0.0, None, None, None
    out: list[Record] = []
    for i, raw in enumerate(pack):
        fields = _fields(raw, i, cbor)
        _check(fields, i, cbor)
        bn = fields.get("bn", bn)
        bt = fields.get("bt", bt)
        bu = fields.get("bu", bu)
        bv = fields.get("bv", bv)
        bs = fields.get("bs", bs)
        given = [k for k in _VALUES if k in fields]
        if len(given) > 1:
            raise SenmlError(f"record {i}: more than one value ({', '.join(given)})")
        if not given and "s" not in fields:
            if "n" in fields or "u" in fields or "t" in fields:
                raise SenmlError(f"record {i}: no value (v, vs, vb, vd) and no sum (s)")
            continue  # base fields only
        name = bn + fields.get("n", "")
        if not name or len(name) > MAX_NAME or not _NAME_RE.match(name):
            raise SenmlError(f"record {i}: name {name[:60]!r} is not a SenML name (letters, digits, -:./_)")
        t = bt + fields.get("t", 0)
        if not math.isfinite(t):
            raise SenmlError(f"record {i}: time is not finite")
        time = now + t if t < RELATIVE_LIMIT else t
        unit = fields.get("u", bu)
        if given:
            key = given[0]
            value = fields[key]
            if key == "v":
                value = value + bv if bv is not None else value
                if not math.isfinite(value):
                    raise SenmlError(f"record {i}: bv + v is not finite")
            out.append(Record(name, value, unit, time))
        if "s" in fields:
            total = fields["s"] + (bs if bs is not None else 0)
            if not math.isfinite(total):
                raise SenmlError(f"record {i}: bs + s is not finite")
            out.append(Record(name, total, unit, time, is_sum=True))
    if not out:
        raise SenmlError("the pack has no record with a value")
    return out
