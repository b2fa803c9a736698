"""Line-terminated codes from serial barcode/QR scanners: framing, affixes, text decoding.

A scanner in serial (or USB-CDC) mode sends each code followed by a terminator (CR, LF, CRLF
or a configured byte), often with a configured prefix/suffix (an AIM symbology id, STX/ETX).
``CodeFramer.feed(bytes)`` -> codes as ``str``; everything unusable is counted, never raised,
and the buffer never holds more than ``max_length`` bytes. This module never imports ``gateway``.

Text: codes are decoded as UTF-8. Bytes that are not UTF-8 are handled by ``invalid_utf8``:
``replace`` (U+FFFD for each bad sequence, the default), ``latin-1`` (the whole code decoded
as ISO 8859-1, for scanners set to a single-byte code page), or ``drop`` (the code is discarded
and counted). C0 control characters other than TAB and the GS1 / ISO 15434 separators
(EOT 0x04, FS 0x1C, GS 0x1D, RS 0x1E) mean line noise, not a code: such lines are discarded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

NAMED_TERMINATORS = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n", "TAB": b"\t", "ETX": b"\x03", "EOT": b"\x04"}
_NOISE = re.compile(rb"[\x00-\x03\x05-\x08\x0a-\x1b\x1f\x7f]")  # C0 controls except TAB, EOT, FS, GS, RS
_HEX_BYTE = re.compile(r"^0[xX]([0-9A-Fa-f]{2})$")

InvalidUtf8 = Literal["replace", "latin-1", "drop"]


def parse_terminator(spec: str) -> bytes:
    """``CR``, ``LF``, ``CRLF``, ``TAB``, ``ETX``, ``EOT``, a byte as ``0xNN``, or one ASCII character."""
    if spec.upper() in NAMED_TERMINATORS:
        return NAMED_TERMINATORS[spec.upper()]
    m = _HEX_BYTE.match(spec)
    if m:
        return bytes([int(m.group(1), 16)])
    if len(spec) == 1 and spec.isascii():
        return spec.encode("ascii")
    raise ValueError(f"terminator {spec!r}: use CR, LF, CRLF, TAB, ETX, EOT, a byte like 0x03, or one ASCII character")


@dataclass(slots=True)
class CodeCounters:
    codes: int = 0  # codes delivered
    too_long: int = 0  # lines over max_length: discarded whole
    noise: int = 0  # lines with control characters: discarded
    empty: int = 0  # empty after stripping (e.g. a CR LF when the terminator is CR)
    invalid_utf8: int = 0  # codes that were not UTF-8 (replaced, decoded as latin-1 or dropped)


class CodeFramer:
    """Split scanner output into codes, strip affixes, decode text; bounded and never raising."""

    def __init__(
        self,
        terminator: bytes = b"\r\n",
        *,
        max_length: int = 4096,
        prefix: bytes = b"",
        suffix: bytes = b"",
        strip_whitespace: bool = True,
        invalid_utf8: InvalidUtf8 = "replace",
    ) -> None:
        if not terminator:
            raise ValueError("the terminator must be at least one byte")
        self.terminator = terminator
        self.max_length = max_length
        self.prefix = prefix
        self.suffix = suffix
        self.strip_whitespace = strip_whitespace
        self.invalid_utf8 = invalid_utf8
        self.counters = CodeCounters()
        self._buf = bytearray()
        self._skipping = False  # inside an over-long line: discard up to its terminator

    def feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        buf, term = self._buf, self.terminator
        buf += data
        while (end := buf.find(term)) >= 0:
            line = bytes(buf[:end])
            del buf[: end + len(term)]
            if self._skipping:
                self._skipping = False
                continue
            code = self._code(line)
            if code is not None:
                out.append(code)
        # Keep at most max_length bytes, plus a possible partial terminator at the end.
        if len(buf) > self.max_length + len(term) - 1:
            if not self._skipping:
                self.counters.too_long += 1
                self._skipping = True
            keep = len(term) - 1  # a terminator may be split across reads
            del buf[: len(buf) - keep]
        return out

    def _code(self, line: bytes) -> str | None:
        if len(line) > self.max_length:
            self.counters.too_long += 1
            return None
        if self.strip_whitespace:
            line = line.strip(b" \t\r\n")
        if self.prefix and line.startswith(self.prefix):
            line = line[len(self.prefix) :]
        if self.suffix and line.endswith(self.suffix):
            line = line[: -len(self.suffix)]
        if self.strip_whitespace:
            line = line.strip(b" \t\r\n")
        if not line:
            self.counters.empty += 1
            return None
        if _NOISE.search(line):
            self.counters.noise += 1
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.counters.invalid_utf8 += 1
            if self.invalid_utf8 == "drop":
                return None
            text = line.decode("latin-1") if self.invalid_utf8 == "latin-1" else line.decode("utf-8", "replace")
        self.counters.codes += 1
        return text
