"""Simulated serial barcode/QR scanner for drivers/barcode: codes over a real pty.

``scan(code)`` sends one code with the configured prefix, suffix and terminator, like a handheld
scanner in serial/USB-CDC mode. Faults for tests and demos: ``send_garbage()`` (line noise),
``send_raw(bytes)``, ``silent``, ``unplug()`` / ``plug()`` (the port path disappears and returns).
"""

from __future__ import annotations

from hil.devices.pty import PtyPort


class BarcodeScanner:
    """A scanner on a pty at ``path``."""

    def __init__(
        self, terminator: bytes = b"\r\n", prefix: bytes = b"", suffix: bytes = b"", path: str | None = None
    ) -> None:
        self.port = PtyPort(path)
        self.terminator = terminator
        self.prefix = prefix
        self.suffix = suffix
        self.silent = False
        self.scans = 0

    @property
    def path(self) -> str:
        return self.port.path

    async def start(self) -> str:
        self.port.plug()
        return self.path

    async def stop(self) -> None:
        self.port.close()

    def scan(self, code: str | bytes) -> None:
        """One scan: prefix + code + suffix + terminator (str codes are sent as UTF-8)."""
        if self.silent:
            return
        raw = code.encode() if isinstance(code, str) else code
        self.port.write(self.prefix + raw + self.suffix + self.terminator)
        self.scans += 1

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def send_garbage(self) -> None:
        """Line noise ending in a terminator (discarded by the driver as noise)."""
        self.port.write(b"\x00\x13\xff\x01\x7f~" + self.terminator)

    def unplug(self) -> None:
        self.port.unplug()

    def plug(self) -> None:
        self.port.plug()
