"""The batch header (wire format 1): the one place a receiver checks it (docs/wire-format.md).

``parse_header`` takes the decoded protected header of a COSE_Sign1 batch and returns its
fields, or raises ``ValueError`` naming the first field that is wrong. Every number must be an
integer (never a float, NaN, infinity or boolean) within its documented range, so nothing a
signer writes can turn into a bignum gap count or an unchecked comparison.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway.config.schema import MAX_BATCH_READINGS
from gateway.receiver.trust import GATEWAY_ID_RE

FORMAT = 1  # "sg"
SENML_CBOR = 112  # COSE content type (label 3) of the payload
MAX_UINT = 2**63 - 1  # every counter fits a signed 64-bit column (SQLite, PostgreSQL bigint)
MAX_DECLARED = 64  # drop ranges (and blob drops) one batch may declare
REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # a drop reason: buffer_full, expired, unclean_stop, ...
UNCLEAN_STOP = "unclean_stop"  # the drop reason of numbers a gateway skipped after an unclean stop


@dataclass(frozen=True)
class Header:
    """A batch header whose every field is of the right type and within its range."""

    gw: str
    st: int  # stream id
    bo: int  # boot counter
    bs: int  # batch number, 1 ..
    pv: bytes  # SHA-256 of the previous batch message
    sq: tuple[int, int]  # [first, last] reading numbers; last = first - 1 for an empty pack
    dr: list[tuple[int, int, str]] = field(default_factory=list)  # declared drops
    bd: list[tuple[bytes, str]] = field(default_factory=list)  # declared blob drops

    def to_json(self) -> dict[str, Any]:
        """The header as plain values (Feed.header)."""
        return {"gw": self.gw, "st": self.st, "bo": self.bo, "bs": self.bs, "pv": self.pv, "sq": list(self.sq),
                "dr": [list(d) for d in self.dr], "bd": [list(d) for d in self.bd]}


def _uint(v: Any, lo: int = 0) -> bool:
    return type(v) is int and lo <= v <= MAX_UINT


def _list(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) <= MAX_DECLARED


def parse_header(p: dict[Any, Any]) -> Header:
    """Check a batch's protected header and return its fields; ValueError says what is wrong.

    Rules (docs/wire-format.md, "Protected header"): ``sg`` is the integer 1; ``gw`` a gateway
    id; ``st`` and ``bo`` integers 0..2^63-1, ``bs`` 1..2^63-1; ``pv`` 32 bytes; ``sq`` a pair
    ``first <= last + 1`` with ``first >= 1``, ``last <= 2^63-1`` and at most 100,000 readings;
    ``dr`` at most 64 ``[first, last, reason]`` with ``1 <= first <= last <= 2^63-1``; ``bd``
    at most 64 ``[sha256, reason]``; content type, when present, 112.
    """
    if type(p.get("sg")) is not int or p["sg"] != FORMAT:
        raise ValueError(f"unknown batch format {p.get('sg')!r}")
    ct = p.get(3, SENML_CBOR)
    if type(ct) is not int or ct != SENML_CBOR:
        raise ValueError(f"payload content type {ct!r} is not SenML-CBOR (112)")
    gw, pv, sq = p.get("gw"), p.get("pv"), p.get("sq")
    bs, st, bo = p.get("bs", -1), p.get("st", -1), p.get("bo", -1)
    if not isinstance(gw, str) or not GATEWAY_ID_RE.match(gw):
        raise ValueError("bad gateway id")
    if not (_uint(st) and _uint(bo) and _uint(bs, 1)):
        raise ValueError("bad batch numbers (st, bo: integers 0..2^63-1; bs: 1..2^63-1)")
    if not (isinstance(pv, bytes) and len(pv) == 32):
        raise ValueError("bad previous-batch hash")
    if not (isinstance(sq, list | tuple) and len(sq) == 2 and _uint(sq[0], 1) and _uint(sq[1])
            and sq[0] <= sq[1] + 1):
        raise ValueError("bad sequence range")
    if sq[1] - sq[0] + 1 > MAX_BATCH_READINGS:
        raise ValueError(f"sequence range of {sq[1] - sq[0] + 1} readings is over the {MAX_BATCH_READINGS} limit")
    dr = p.get("dr", [])
    if not _list(dr) or not all(
        isinstance(d, list | tuple) and len(d) == 3 and _uint(d[0], 1) and _uint(d[1]) and d[0] <= d[1]
        and isinstance(d[2], str) and REASON_RE.match(d[2]) for d in dr
    ):
        raise ValueError("bad drop list")
    bd = p.get("bd", [])
    if not _list(bd) or not all(
        isinstance(d, list | tuple) and len(d) == 2 and isinstance(d[0], bytes) and len(d[0]) == 32
        and isinstance(d[1], str) and REASON_RE.match(d[1]) for d in bd
    ):
        raise ValueError("bad blob drop list")
    return Header(gw, st, bo, bs, pv, (sq[0], sq[1]), [(a, b, r) for a, b, r in dr], [(s, r) for s, r in bd])
