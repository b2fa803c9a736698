"""EM4100 frames as 125 kHz serial readers (RDM6300, ID-12/ID-20 class) send them.

A frame is ``STX`` (0x02), 10 ASCII hex data characters (5 bytes: 1 version/customer byte and
a 4-byte card number), 2 ASCII hex checksum characters (XOR of the 5 data bytes), optionally
``CR LF`` (ID-12 style), and ``ETX`` (0x03). The tag id we report is the 10 data characters in
upper case, e.g. ``"0F00A3B2C1"``; its last 8 characters as a decimal number are what is often
printed on the card (``card_number``).

``Em4100Framer.feed(bytes)`` -> tag ids; corrupt frames and stray bytes are counted, never
raised, and the buffer never holds more than one frame. This module never imports ``gateway``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STX, ETX = 0x02, 0x03
MAX_FRAME = 16  # STX + 10 + 2 + CR LF + ETX
_BODY = re.compile(rb"^([0-9A-Fa-f]{10})([0-9A-Fa-f]{2})(?:\r\n)?$")


class FrameError(ValueError):
    """A frame with the wrong length, non-hex characters or a bad checksum."""


def parse_frame(frame: bytes) -> str:
    """One whole frame (``STX ... ETX``) -> tag id (10 upper-case hex characters)."""
    if len(frame) < 2 or frame[0] != STX or frame[-1] != ETX:
        raise FrameError("not delimited by STX/ETX")
    m = _BODY.match(frame[1:-1])
    if m is None:
        raise FrameError(f"bad frame body {frame[1:-1][:16]!r}")
    data = bytes.fromhex(m.group(1).decode())
    expected = data[0] ^ data[1] ^ data[2] ^ data[3] ^ data[4]
    if int(m.group(2), 16) != expected:
        raise FrameError(f"checksum mismatch (got {m.group(2).decode()}, computed {expected:02X})")
    return m.group(1).decode().upper()


def encode_frame(tag: str) -> bytes:
    """The frame a reader sends for a 10-hex-character tag id (for simulators and tests)."""
    data = bytes.fromhex(tag)
    if len(data) != 5:
        raise ValueError("an EM4100 tag id is 5 bytes (10 hex characters)")
    cs = data[0] ^ data[1] ^ data[2] ^ data[3] ^ data[4]
    return bytes([STX]) + tag.upper().encode() + f"{cs:02X}".encode() + bytes([ETX])


def card_number(tag: str) -> int:
    """The decimal number usually printed on the card: the last 4 bytes of the tag id."""
    return int(tag[2:], 16)


@dataclass(slots=True)
class FrameCounters:
    frames: int = 0  # valid frames
    bad_frames: int = 0  # delimited but corrupt (checksum, non-hex, wrong length)
    stray_bytes: int = 0  # bytes outside any frame (noise, a frame cut short)


class Em4100Framer:
    """Find frames in a byte stream; resync on STX, bounded to one frame of buffer."""

    def __init__(self) -> None:
        self.counters = FrameCounters()
        self._buf = bytearray()  # empty, or starts with STX

    def feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        buf = self._buf
        for b in data:
            if not buf:
                if b == STX:
                    buf.append(b)
                else:
                    self.counters.stray_bytes += 1
                continue
            if b == STX:  # a new frame starts before the old one ended: the old one is lost
                self.counters.stray_bytes += len(buf)
                buf[:] = b"\x02"
                continue
            buf.append(b)
            if b == ETX:
                try:
                    out.append(parse_frame(bytes(buf)))
                    self.counters.frames += 1
                except FrameError:
                    self.counters.bad_frames += 1
                buf.clear()
            elif len(buf) >= MAX_FRAME:
                self.counters.bad_frames += 1
                buf.clear()
        return out
