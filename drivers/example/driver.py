"""The example driver: glue between the protocol module and the host's contract."""

from __future__ import annotations

import asyncio

from drivers.example import protocol
from drivers.example.config import ExampleConfig
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError, Value


class ExampleDriver(Driver):
    """Polls a TCP thermometer; ``write("setpoint", x)`` changes its set-point."""

    config: ExampleConfig

    def __init__(self, config: ExampleConfig, ctx: DriverContext) -> None:
        # No I/O here: the host may construct a driver it never sets up.
        super().__init__(config, ctx)
        # Per-instance state lives on self, never at module level.
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def setup(self) -> None:
        # The host wraps this in the instance's timeout and retries NotReady with backoff.
        if self.config.setpoint_min > self.config.setpoint_max:
            raise ConfigError("setpoint_min is above setpoint_max")  # fatal: no retry helps
        try:
            self._reader, self._writer = await asyncio.open_connection(self.config.host, self.config.port)
        except OSError as e:
            raise NotReady(f"cannot connect to {self.config.host}:{self.config.port}: {e.strerror or e}") from e

    async def _ask(self, request: bytes) -> bytes:
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(request)
            await self._writer.drain()
            line = await self._reader.readline()
        except OSError as e:
            raise PollError(f"connection lost: {e}") from e
        if not line:
            raise PollError("device closed the connection")
        return line

    async def poll(self, emit: Emit) -> None:
        # One call at a time: the host never overlaps poll, write and close, so no locks.
        # Raise PollError for a transient failure; after a few in a row the host reopens.
        line = await self._ask(protocol.encode_read())
        try:
            value = protocol.parse_temperature(line)
        except protocol.ProtocolError as e:
            raise PollError(str(e)) from e
        emit("temperature", value, unit=self.config.unit)

    async def write(self, point: str, value: Value) -> None:
        # Writes are bounded by config: refuse unknown points and out-of-range values.
        if point != "setpoint":
            raise ConfigError(f"unknown writable point {point!r} (writable: setpoint)")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError("setpoint must be a number")
        if not self.config.setpoint_min <= value <= self.config.setpoint_max:
            raise ConfigError(f"setpoint {value} outside [{self.config.setpoint_min}, {self.config.setpoint_max}]")
        line = await self._ask(protocol.encode_set(float(value)))
        try:
            protocol.parse_ack(line)
        except protocol.ProtocolError as e:
            raise PollError(str(e)) from e

    async def close(self) -> None:
        # Idempotent: called after failed setups too, and maybe twice.
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
