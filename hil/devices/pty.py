"""A simulated serial device end: a real pseudo-terminal behind a stable symlink path.

The driver opens ``path`` (a symlink to the current ``/dev/pts/N``), exactly as it would open
``/dev/ttyUSB0``. ``unplug()`` hangs the line up (the driver's reads fail with EIO, like a USB
adapter pulled out) and removes the path; ``plug()`` makes a new pty and points the path at it,
like the device node coming back. Writes never block: when the driver is not reading and the
kernel buffer is full, bytes are dropped and counted, as a real UART would overrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import tty


class PtyPort:
    """The device side of a serial line; ``path`` is what the driver's ``port:`` names."""

    def __init__(self, path: str | None = None) -> None:
        self._tmpdir: str | None = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="sensegate-pty-")
            path = os.path.join(self._tmpdir, "tty")
        self.path = path
        self.dropped = 0  # bytes lost because the line's buffer was full
        self._master = -1
        self._slave = -1  # held open so the master never sees a hang-up while no driver is attached

    @property
    def plugged(self) -> bool:
        """True while the device is connected (the path exists)."""
        return self._master >= 0

    def plug(self) -> None:
        """Connect: a fresh pty in raw mode, reachable at ``path``."""
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path + ".new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(os.ttyname(slave), tmp)
        os.replace(tmp, self.path)

    def unplug(self) -> None:
        """Disconnect: remove the path and hang up the line (the driver's next read fails)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        master, slave, self._master, self._slave = self._master, self._slave, -1, -1
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)

    def write(self, data: bytes) -> int:
        """Send bytes down the line; returns how many went (the rest are dropped)."""
        if not self.plugged:
            self.dropped += len(data)
            return 0
        try:
            n = os.write(self._master, data)
        except (BlockingIOError, OSError):
            n = 0
        self.dropped += len(data) - n
        return n

    def close(self) -> None:
        """Unplug for good and remove the temporary directory, if we made one."""
        self.unplug()
        if self._tmpdir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._tmpdir)
            self._tmpdir = None


class PtyDevice:
    """A simulated serial device: a PtyPort plus one task that talks on it from ``start`` to
    ``stop``. Subclasses write ``_run`` (the device's sending loop) and name the task."""

    task_name = "pty-device-sim"

    def __init__(self, path: str | None = None) -> None:
        self.port = PtyPort(path)
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        """The serial port path the driver opens."""
        return self.port.path

    async def start(self) -> str:
        """Plug the device in and start its loop; returns its port path."""
        self.port.plug()
        self._task = asyncio.create_task(self._run(), name=self.task_name)
        return self.path

    async def stop(self) -> None:
        """Stop the loop and unplug for good."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.port.close()

    def unplug(self) -> None:
        """The port disappears (USB adapter pulled)."""
        self.port.unplug()

    def plug(self) -> None:
        """The port comes back."""
        self.port.plug()

    async def _run(self) -> None:
        raise NotImplementedError
