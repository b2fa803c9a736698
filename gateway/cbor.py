"""CBOR heads (RFC 8949, section 3.1), written by hand where parts already encoded are spliced
together without decoding them again: SenML records into a pack, a pack into a COSE_Sign1."""

from __future__ import annotations

UINT, NINT, BYTES, TEXT, ARRAY, MAP = 0, 1, 2, 3, 4, 5  # major types


def head(major: int, n: int) -> bytes:
    """The head of a data item of major type ``major`` with argument ``n`` (0 <= n < 2**64),
    in the shortest form (as deterministic encoding requires)."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 2**8:
        return bytes((m | 24, n))
    if n < 2**16:
        return bytes((m | 25,)) + n.to_bytes(2, "big")
    if n < 2**32:
        return bytes((m | 26,)) + n.to_bytes(4, "big")
    return bytes((m | 27,)) + n.to_bytes(8, "big")


def bstr(b: bytes) -> bytes:
    """A byte string: head and bytes."""
    return head(BYTES, len(b)) + b


def tstr(s: str) -> bytes:
    """A text string: head and UTF-8 bytes."""
    b = s.encode("utf-8")
    return head(TEXT, len(b)) + b
