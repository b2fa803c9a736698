"""Simulated 125 kHz RFID reader (RDM6300 class) for drivers/rfid: EM4100 frames over a real pty.

``present(tag)`` holds a tag in the field: the reader repeats its frame every ``period`` seconds,
as an RDM6300 does, until ``remove()``. ``send(tag)`` sends one frame. Faults for tests and demos:
``send_corrupt(tag)`` (checksum wrong), ``send_garbage()`` (noise, cut frames), ``silent``,
``unplug()`` / ``plug()`` (the port path disappears and returns).
"""

from __future__ import annotations

import asyncio

from drivers.rfid.em4100 import ETX, STX, encode_frame
from hil.devices.pty import PtyDevice


class Rdm6300(PtyDevice):
    """A reader on a pty at ``path``."""

    task_name = "rdm6300-sim"

    def __init__(self, path: str | None = None, period: float = 0.02) -> None:
        super().__init__(path)
        self.period = period
        self.silent = False
        self.frames_sent = 0
        self._tag: str | None = None

    def present(self, tag: str) -> None:
        """Hold ``tag`` in the field (frames repeat until ``remove``)."""
        self._tag = tag

    def remove(self) -> None:
        self._tag = None

    def send(self, tag: str) -> None:
        """One valid frame."""
        if not self.silent:
            self.port.write(encode_frame(tag))
            self.frames_sent += 1

    def send_corrupt(self, tag: str) -> None:
        """A frame whose checksum is wrong, then one with a non-hex character."""
        frame = bytearray(encode_frame(tag))
        frame[11] = ord("0") if frame[11] != ord("0") else ord("1")
        self.port.write(bytes(frame) + bytes([STX]) + b"0F00ZZ3B2C" + b"00" + bytes([ETX]))

    def send_garbage(self) -> None:
        """Line noise, a frame cut short by the next STX, and a stray ETX."""
        self.port.write(b"\x00\xff\x13noise" + bytes([STX]) + b"0F00A3" + bytes([ETX]) + b"\x03\x03")

    async def _run(self) -> None:
        while True:
            if self._tag is not None and self.port.plugged:
                self.send(self._tag)
            await asyncio.sleep(self.period)
