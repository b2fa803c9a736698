"""Read a serial port from the event loop: no threads, no polling, bounded work per wake-up.

Streaming serial drivers (GPS, RFID, barcode) share one shape: open the port non-blocking in
``setup``, hand every chunk of bytes to a pure protocol parser from a ``loop.add_reader``
callback, and let ``run`` wait until the port fails. This module is that shape, once::

    stream = SerialStream(cfg.port, cfg.baudrate, on_data=self._feed)
    await stream.open()   # setup(): NotReady when the port is missing or not permitted
    await stream.run()    # run(): returns never; raises PollError when the port goes away
    stream.close()        # close(): idempotent

An unplugged USB adapter (or a closed pseudo-terminal) makes the fd readable and then the read
fails with EIO or returns end-of-file: ``run`` raises ``PollError`` so the host closes, backs
off and calls ``setup`` again, which says ``NotReady`` until the device node comes back.
``idle_timeout`` turns silence into the same error, for devices that always talk (GPS).

pyserial is imported only in ``open`` (it is the ``serial`` optional extra), and used only to
open the port and set its line settings; reading is a plain ``os.read`` on the non-blocking fd.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from typing import Any

from gateway.driver_api import ConfigError, MissingExtra, NotReady, PollError

READ_CHUNK = 4096
"""Bytes read per wake-up; the parser sees at most this much at once."""


class SerialStream:
    """A serial port whose incoming bytes are passed to ``on_data`` from the event loop.

    ``on_data`` runs inside the loop's reader callback: it must be quick and must not block.
    If it raises, ``run`` raises ``PollError`` naming the error (the host counts and reopens).
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        on_data: Callable[[bytes], None],
        *,
        idle_timeout: float | None = None,
        driver: str = "serial",
        extra: str = "serial",
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.idle_timeout = idle_timeout if idle_timeout and idle_timeout > 0 else None
        self.bytes_read = 0
        self._on_data = on_data
        self._driver = driver
        self._extra = extra
        self._serial: Any = None
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[PollError] | None = None
        self._last_data = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        """True between a successful ``open`` and ``close``."""
        return self._serial is not None

    async def open(self) -> None:
        """Open the port non-blocking with its line settings (8N1, no flow control).

        Raises ``NotReady`` when the port is missing, busy or not permitted (naming the path,
        and the ``dialout`` group for a permission problem), ``ConfigError`` for settings the
        port refuses, ``MissingExtra`` when pyserial is not installed.
        """
        try:
            import serial
        except ImportError:
            raise MissingExtra(self._driver, "serial", self._extra) from None
        try:
            # Opening a tty with O_NONBLOCK (pyserial does) returns at once: no executor needed.
            ser = serial.Serial(self.port, self.baudrate, timeout=0, exclusive=True)
        except serial.SerialException as e:
            raise _describe_open_error(self.port, e) from e
        except ValueError as e:  # pyserial: unsupported baud rate or settings
            raise ConfigError(f"serial port {self.port}: {e}") from e
        self._serial = ser
        self._fd = ser.fileno()

    async def run(self) -> None:
        """Feed ``on_data`` until the port fails; always ends by raising ``PollError``."""
        if self._serial is None:
            raise PollError(f"serial port {self.port} is not open")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = loop.create_future()
        self._last_data = loop.time()
        loop.add_reader(self._fd, self._readable)
        if self.idle_timeout is not None:
            self._idle_timer = loop.call_later(self.idle_timeout, self._check_idle)
        try:
            failure = await self._done
        finally:
            self._stop_watching()
        raise failure

    def close(self) -> None:
        """Stop reading and close the port; safe to call twice or before ``open``."""
        self._stop_watching()
        ser, self._serial, self._fd = self._serial, None, -1
        if ser is not None:
            try:
                ser.close()
            except Exception:  # a vanished device may fail to close; nothing left to do
                pass

    # -- internals ---------------------------------------------------------------------

    def _stop_watching(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._done is not None and not self._done.done():
            self._done.set_result(PollError(f"serial port {self.port} closed by the driver"))
        self._done = None

    def _fail(self, why: str) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        if self._done is not None and not self._done.done():
            self._done.set_result(PollError(why))

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return  # spurious wake-up
        except OSError as e:
            self._fail(f"serial port {self.port} failed: {e.strerror or e} (unplugged?)")
            return
        if not data:
            self._fail(f"serial port {self.port} closed (unplugged?)")
            return
        self.bytes_read += len(data)
        assert self._loop is not None
        self._last_data = self._loop.time()
        try:
            self._on_data(data)
        except Exception as e:  # a parser or emit bug must reach the host, not the loop's log
            self._fail(f"handling data from {self.port}: {type(e).__name__}: {e}")

    def _check_idle(self) -> None:
        assert self._loop is not None and self.idle_timeout is not None
        silent = self._loop.time() - self._last_data
        if silent >= self.idle_timeout:
            self._idle_timer = None
            self._fail(f"serial port {self.port} silent for {silent:.1f}s")
        else:
            self._idle_timer = self._loop.call_later(self.idle_timeout - silent, self._check_idle)


def _describe_open_error(port: str, e: Exception) -> NotReady:
    """Turn pyserial's open error into a NotReady a technician can act on."""
    code = getattr(e, "errno", None)
    if code == errno.ENOENT or (code is None and "No such file" in str(e)):
        return NotReady(f"serial port {port} not found (device unplugged or wrong path)")
    if code in (errno.EACCES, errno.EPERM):
        return NotReady(f"permission denied opening serial port {port}: add the service user to the 'dialout' group")
    if code == errno.EBUSY or "exclusively lock" in str(e):
        return NotReady(f"serial port {port} is in use by another program")
    return NotReady(f"cannot open serial port {port}: {e}")
