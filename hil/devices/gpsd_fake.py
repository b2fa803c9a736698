"""A real gpsd fed by gpsfake (Debian gpsd-clients) from an NMEA log, on a free loopback port.

gpsfake starts its own gpsd (``-P port``) on a pty and replays the log in a loop, one sentence
every ``cycle`` seconds, once a client connects. Both run in their own process group, which
``stop()`` terminates (and kills if it must), so no gpsd outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile

from hil.devices.nmea_gps import DEFAULT_ROUTE, Waypoint, nmea_log


class GpsFake:
    """``await GpsFake(log).start(port)`` serves gpsd's JSON on ``127.0.0.1:port``."""

    def __init__(self, log: bytes | None = None, cycle: float = 0.02) -> None:
        self.log = log if log is not None else nmea_log(DEFAULT_ROUTE, 10)
        self.cycle = cycle
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: str | None = None

    @staticmethod
    def available() -> bool:
        """True when gpsfake and gpsd are installed (hil/system-deps.sh installs them)."""
        return shutil.which("gpsfake") is not None and (
            shutil.which("gpsd") is not None or os.path.exists("/usr/sbin/gpsd")
        )

    async def start(self, port: int) -> int:
        """Start gpsfake + gpsd on ``port``; gpsd accepts connections right after this returns."""
        self.port = port
        self._dir = tempfile.mkdtemp(prefix="sensegate-gpsfake-")
        log = os.path.join(self._dir, "route.nmea")
        with open(log, "wb") as f:  # noqa: ASYNC230 (a few KB into a fresh temp dir)
            f.write(self.log)
        env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
        self._proc = await asyncio.create_subprocess_exec(
            "gpsfake", "-q", "-P", str(port), "-c", str(self.cycle), log,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,  # gpsd complains about the missing system D-Bus
            start_new_session=True,
            cwd=self._dir,
            env=env,
        )  # fmt: skip
        await self._wait_listening()
        return port

    async def _wait_listening(self, within: float = 15.0) -> None:
        async with asyncio.timeout(within):
            while True:
                if self._proc is not None and self._proc.returncode is not None:
                    raise RuntimeError(f"gpsfake exited with status {self._proc.returncode}")
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
                return

    async def stop(self) -> None:
        """Terminate gpsfake and its gpsd (the whole process group); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    async with asyncio.timeout(grace):
                        await proc.wait()
                    break
                except TimeoutError:
                    continue
            with contextlib.suppress(ProcessLookupError):  # gpsd may outlive gpsfake by a moment
                os.killpg(proc.pid, signal.SIGKILL)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def parked_then_lost(at: Waypoint, fixes: int = 4, lost: int = 4) -> bytes:
    """A log: ``fixes`` epochs parked at ``at``, then ``lost`` epochs without a fix."""
    from datetime import UTC, datetime, timedelta

    from hil.devices.nmea_gps import epoch

    t0 = datetime(2024, 5, 1, 8, 0, 0, tzinfo=UTC)
    out: list[bytes] = []
    for i in range(fixes + lost):
        out += epoch(t0 + timedelta(seconds=i), *at, fix=i < fixes)
    return b"".join(out)
