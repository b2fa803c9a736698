"""Talk to the service manager: sd_notify(3) readiness, status, reload, stop and watchdog pings.

systemd starts us with ``NOTIFY_SOCKET`` (a datagram socket path, or ``@name`` for an abstract
one) and, when the unit sets ``WatchdogSec=``, with ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``).
Outside systemd every call here is a cheap no-op, so the daemon never needs to ask.

The watchdog is pinged from a task on the daemon's event loop at half the interval systemd
expects: if anything blocks the loop (a driver calling ``time.sleep`` in a coroutine, a
deadlock), the pings stop and systemd kills and restarts the service.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("sensegate.service")

SERVICE_ENV = {"PYTHONOPTIMIZE": "2"}
"""Environment the packaged unit (systemd/sensegate.service) gives the daemon, kept equal to it
by a test: docstrings and asserts are left out of the loaded code, about 2 MB less resident.
The unit also sets PYTHONPYCACHEPREFIX to a cache directory, so the optimised byte code is
compiled once, on the first start, and read from there after."""


def service_env(pycache: str | os.PathLike[str]) -> dict[str, str]:
    """``SERVICE_ENV`` plus where the optimised byte code is cached (the rig and the benchmark
    run the daemon this way, as the unit does)."""
    # the unit's environment is clean; a developer's shell may say not to write byte code
    return {**SERVICE_ENV, "PYTHONPYCACHEPREFIX": os.fspath(pycache), "PYTHONDONTWRITEBYTECODE": ""}


class Notifier:
    """An sd_notify client for one process; every method is safe to call without systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec = _watchdog_usec(env)
        self._sock: socket.socket | None = None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        """True when a service manager listens for our notifications."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the manager's timeout), or None if no watchdog is set."""
        if self.address is None or not self.watchdog_usec:
            return None
        return self.watchdog_usec / 2e6

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if nobody listens or sending failed."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.address)
        except OSError as e:  # the manager went away or its queue is full: never fatal
            log.debug("sd_notify %r failed: %s", payload[:40], e)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """Startup (or a reload) finished: systemd moves the unit to 'active'."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """A reload began (ExecReload / SIGHUP); follow it with ready()."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown began."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """One line for `systemctl status`; sent only when it changed."""
        if text == self._last_status:
            return True
        self._last_status = text
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        """One keep-alive ping."""
        return self.notify("WATCHDOG=1")

    async def watchdog_loop(self, status: Callable[[], str] | None = None) -> None:
        """Ping from the event loop until cancelled; optionally refresh STATUS= on each ping.

        Also turns on faulthandler, so that the SIGABRT systemd sends to a wedged process
        writes every thread's stack to the journal: the log shows where the loop was stuck.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        if not faulthandler.is_enabled():
            faulthandler.enable(file=sys.stderr, all_threads=True)
        log.debug("watchdog: pinging every %.3gs", interval)
        while True:
            self.watchdog()
            if status is not None:
                try:
                    self.status(status())
                except Exception as e:  # a status line is never worth the watchdog
                    log.debug("status line failed: %r", e)
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket (notifications after this reopen it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    """The socket address in NOTIFY_SOCKET: a path, or '@name' for the abstract namespace."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value:  # e.g. vsock:CID:PORT (systemd 254+, for VMs): not a case a gateway meets
        log.warning("NOTIFY_SOCKET=%r is not a unix socket; service notifications disabled", value)
    return None


def _watchdog_usec(env: Mapping[str, str]) -> int:
    """WATCHDOG_USEC, if it is meant for this process (WATCHDOG_PID unset or ours)."""
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0
    return max(usec, 0)
