"""The barcode driver: a serial stream cut into codes by the protocol module."""

from __future__ import annotations

from drivers.barcode.config import BarcodeConfig
from drivers.barcode.protocol import CodeFramer, parse_terminator
from gateway.driver_api import Driver, DriverContext, Emit
from gateway.serial_stream import SerialStream


class BarcodeDriver(Driver):
    """Emits each scanned code as a string reading on point ``code``."""

    config: BarcodeConfig

    def __init__(self, config: BarcodeConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._emit: Emit | None = None
        self._stream: SerialStream | None = None
        self._framer = CodeFramer(
            parse_terminator(config.terminator),
            max_length=config.max_length,
            prefix=config.prefix.encode(),
            suffix=config.suffix.encode(),
            strip_whitespace=config.strip_whitespace,
            invalid_utf8=config.invalid_utf8,
        )

    @property
    def counters(self) -> dict[str, int]:
        """What the framer saw (for tests and status)."""
        c = self._framer.counters
        return {k: getattr(c, k) for k in c.__slots__}

    async def setup(self) -> None:
        cfg = self.config
        self._stream = SerialStream(cfg.port, cfg.baudrate, self._on_data, driver="barcode", extra="barcode")
        await self._stream.open()

    async def run(self, emit: Emit) -> None:
        assert self._stream is not None
        self._emit = emit
        await self._stream.run()  # returns only by raising PollError (port gone)

    def _on_data(self, data: bytes) -> None:
        emit = self._emit
        for code in self._framer.feed(data):
            if emit is not None:
                emit(self.config.point, code)

    async def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
