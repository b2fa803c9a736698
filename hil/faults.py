"""Fault injection for the rig scenarios: devices, the link to the broker, the disk, the clock.

Each fault is a plain object with an "inject" and a "clear" step, usable from tests and by hand
on a bench (``python -c`` or a notebook). What needs root or a Debian package says so through
``unavailable_reason()`` (empty when it can run), so a scenario can fall back and say
which mechanism ran.

* devices: ``unplug``/``plug``, ``noise``, ``inject`` (raw bytes) on a rig device (simulated:
  the pty/server/bus itself; bench: the shell commands in the rig file);
* the daemon: ``kill9``;
* the broker: ``BrokerOutage`` (stop and start the private broker's process, or kill it: what
  the killed broker had acknowledged but not yet saved is read from its packet log);
* the network: ``Partition`` (the daemon in its own network namespace, joined to the broker by a
  veth pair; ``cut()`` takes the link down, silently, like a pulled cable or a dead 4G modem;
  ``delay()`` adds latency with netem where the kernel has it);
* the disk: ``DiskFull`` (the state directory on a small tmpfs; ``fill()`` takes the last free
  byte, ``free()`` gives it back);
* the clock: ``ClockJump`` (libfaketime in the daemon: the wall clock steps forward or back
  while the monotonic clock runs on, as when NTP corrects a gateway that booted without RTC;
  and hil/clockstate.c: whether the kernel calls the clock synchronised).

``FaultRecord`` notes when a fault was injected, cleared and recovered from, for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.mosquitto import AckedMessage, Mosquitto, acked_unsaved


@dataclass
class FaultRecord:
    """One fault in a scenario, for the report: what, how, and how long recovery took."""

    name: str
    mechanism: str = ""
    injected_at: float = 0.0
    cleared_at: float = 0.0
    recovered_at: float = 0.0

    def injected(self) -> FaultRecord:
        self.injected_at = time.monotonic()
        return self

    def cleared(self) -> None:
        self.cleared_at = time.monotonic()

    def recovered(self) -> None:
        self.recovered_at = time.monotonic()

    @property
    def duration_s(self) -> float:
        return max(0.0, self.cleared_at - self.injected_at) if self.cleared_at else 0.0

    @property
    def recovery_s(self) -> float | None:
        """From clearing the fault to the scenario's recovery condition (None: not measured)."""
        if not self.recovered_at:
            return None
        return max(0.0, self.recovered_at - (self.cleared_at or self.injected_at))


async def _maybe(result: Any) -> None:
    if asyncio.iscoroutine(result):
        await result


# -- devices and the daemon ---------------------------------------------------------------------


async def unplug(device: Any) -> None:
    """The device goes away (USB pulled, server down, sensor gone, adapter off)."""
    await _maybe(device.unplug())


async def plug(device: Any) -> None:
    """The device comes back under the same path/port."""
    await _maybe(device.plug())


async def noise(device: Any, on: bool = True) -> None:
    """Bus noise: garbage bytes, bad CRCs, malformed replies, hostile adverts (``on``) or clean again."""
    await _maybe(device.noise(on))


def inject(device: Any, data: bytes) -> None:
    """Raw bytes down a serial device's line."""
    device.inject(data)


async def kill9(daemon: Any) -> int:
    """``kill -9`` the daemon and reap it."""
    rc: int = await daemon.kill()
    return rc


# -- the broker ------------------------------------------------------------------------------------


class BrokerOutage:
    """Stop the broker process (its listener is gone: connections refused) and start it again;
    ``abrupt``: kill it (SIGKILL), a crash; with ``hang_until``, it first hangs (SIGSTOP) for
    ``hang_at_least`` seconds and until that condition holds (e.g. the gateway has a batch in
    flight that will never be acknowledged)."""

    mechanism = "broker process stopped (listener closed)"

    def __init__(self, broker: Mosquitto, abrupt: bool = False, hang_until: Callable[[], Any] | None = None,
                 hang_what: str = "", hang_at_least: float = 0.0) -> None:
        self.broker = broker
        self.abrupt = abrupt
        self.hang_until = hang_until
        self.hang_what = hang_what
        self.hang_at_least = hang_at_least
        self.crash_log = ""  # the killed instance's log, kept for acked_unsaved()
        if abrupt:
            hang = f"hung (SIGSTOP) until {hang_what or 'a condition held'}, then " if hang_until else ""
            self.mechanism = (f"broker process {hang}killed (SIGKILL: no DISCONNECT, connections reset, "
                              "database as last saved)")

    async def cut(self) -> None:
        if not self.abrupt:
            await asyncio.to_thread(self.broker.stop)
            return
        if self.hang_until is not None:
            self.broker.freeze()
            try:
                await asyncio.sleep(self.hang_at_least)
                await until(self.hang_until, within=60, what=self.hang_what or "the hang's condition")
            except BaseException:
                await asyncio.to_thread(self.broker.kill)
                raise
        await asyncio.to_thread(self.broker.kill)
        self.crash_log = await asyncio.to_thread(self.broker.instance_log)

    async def heal(self) -> None:
        await asyncio.to_thread(self.broker.start)

    def acked_unsaved(self, topic_suffix: str) -> list[AckedMessage]:
        """What the killed broker had acknowledged since its last save (needs ``log_packets``)."""
        return acked_unsaved(self.crash_log, topic_suffix)


# -- the network --------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Partition:
    """A network namespace for the daemon, joined to the host by a veth pair.

    The broker listens on ``host_address`` too (RigRun(broker_addresses=[...])); the daemon,
    started with ``prefix``, reaches it as ``host_address``. ``cut()`` takes the host end of the
    link down: packets vanish without a reset, as when a cable is pulled upstream, and only
    the MQTT keepalive notices. Needs root and iproute2.
    """

    mechanism = "network namespace + veth, link down"

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns = f"sg-rig-{tag}"
        self.host_if, self.ns_if = f"sgh{tag}", f"sgn{tag}"
        octet = 16 + secrets.randbelow(200)
        self.host_address, self.ns_address = f"10.231.{octet}.1", f"10.231.{octet}.2"
        self.up = False

    @staticmethod
    def unavailable_reason() -> str:
        """Empty when namespaces can be made here, else why not."""
        if shutil.which("ip") is None:
            return "iproute2 is not installed"
        if os.geteuid() != 0:
            return "network namespaces need root"
        probe = f"sg-probe-{secrets.token_hex(3)}"
        try:
            _ip("netns", "add", probe)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            return f"ip netns add failed: {getattr(e, 'stderr', b'') or e}"
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", probe)
        return ""

    @property
    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def setup(self) -> None:
        _ip("netns", "add", self.ns)
        self.up = True
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.ns)
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_address}/30", "dev", self.ns_if)
            _ip("netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
            _ip("netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.teardown()
            raise

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def delay(self, ms: int) -> str:
        """Add ``ms`` of latency each way (netem); returns why not when the kernel lacks netem."""
        try:
            for dev, ns in ((self.host_if, None), (self.ns_if, self.ns)):
                cmd = ["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", f"{ms}ms"]
                subprocess.run((["ip", "netns", "exec", ns] if ns else []) + cmd, check=True, capture_output=True,
                               timeout=10)
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            return f"netem not available: {getattr(e, 'stderr', b'') or e}"
        return ""

    def teardown(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            _ip("link", "del", self.host_if)
        if self.up:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", self.ns)
            self.up = False

    def __enter__(self) -> Partition:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


# -- the disk ------------------------------------------------------------------------------------


class DiskFull:
    """The state directory on its own small tmpfs, which ``fill()`` fills to the last byte."""

    mechanism = "state directory on a size-limited tmpfs, filled by a file"

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.filler = path / ".rig-filler"

    @staticmethod
    def unavailable_reason() -> str:
        if os.geteuid() != 0:
            return "mounting a tmpfs needs root"
        return ""

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path)],
                       check=True, capture_output=True, timeout=10)
        self.mounted = True

    def fill(self) -> int:
        """Write until ENOSPC; returns the bytes taken."""
        n = 0
        chunk = b"\0" * 65536
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        n += os.write(fd, chunk[:size])
        finally:
            os.close(fd)
        return n

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def usage(self) -> tuple[int, int]:
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True, timeout=10)
            self.mounted = False

    def __enter__(self) -> DiskFull:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()


# -- the clock -------------------------------------------------------------------------------------

LIBFAKETIME = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
               "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
               "/usr/lib/arm-linux-gnueabihf/faketime/libfaketimeMT.so.1")


class ClockJump:
    """The daemon's wall clock, offset through libfaketime (Debian package ``faketime``), and
    what the kernel says about it (``hil/clockstate.c``, built here with the C compiler).

    Only CLOCK_REALTIME moves (``DONT_FAKE_MONOTONIC``), as with an NTP step; the offset file
    is re-read at most once a second, so a jump takes effect within a second. The sync state
    (``synchronise``) is what adjtimex(2) answers the daemon from then on: a real step by NTP
    or by hand leaves the kernel unsynchronised until NTP declares it synchronised. The system
    clock is never touched.
    """

    mechanism = "libfaketime (LD_PRELOAD) with an offset file, monotonic clock untouched"

    def __init__(self, workdir: Path, synchronised: bool = True) -> None:
        self.file = workdir / "faketime.rc"
        self.state_file = workdir / "clockstate"
        self.state_library = workdir / "libclockstate.so"
        self.offset = 0.0
        self.file.write_text("+0\n")
        self.synchronise(synchronised)

    @staticmethod
    def library() -> str:
        return next((p for p in LIBFAKETIME if os.path.exists(p)), "")

    @staticmethod
    def unavailable_reason() -> str:
        if not ClockJump.library():
            return "libfaketime is not installed (Debian package faketime)"
        if not shutil.which("cc"):
            return "no C compiler to build hil/clockstate.c (Debian package gcc)"
        return ""

    def build(self) -> None:
        """Build the adjtimex stand-in (a fraction of a second; once per scenario)."""
        src = Path(__file__).with_name("clockstate.c")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(self.state_library), str(src), "-ldl"],
                       check=True, capture_output=True, timeout=60)

    def env(self) -> dict[str, str]:
        if not self.state_library.exists():
            self.build()
        return {"LD_PRELOAD": f"{self.library()} {self.state_library}", "FAKETIME_TIMESTAMP_FILE": str(self.file),
                "FAKETIME_CACHE_DURATION": "1", "DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1",
                "SENSEGATE_CLOCKSTATE_FILE": str(self.state_file)}

    def jump(self, seconds: float) -> None:
        """Step the daemon's wall clock by ``seconds`` (relative to the current offset)."""
        self.offset += seconds
        tmp = self.file.with_suffix(".new")
        tmp.write_text(f"{self.offset:+.0f}\n")
        tmp.replace(self.file)

    def synchronise(self, on: bool, max_error_us: int = 20_000) -> None:
        """What adjtimex tells the daemon from its next read on (at most a second later)."""
        tmp = self.state_file.with_suffix(".new")
        tmp.write_text(f"sync {max_error_us}\n" if on else "unsync\n")
        tmp.replace(self.state_file)

    def now_ns(self) -> int:
        """What the daemon's wall clock says now."""
        return time.time_ns() + int(self.offset * 1e9)


# -- waiting for recovery ------------------------------------------------------------------------


async def until(cond: Callable[[], Any], within: float = 30.0, what: str = "", every: float = 0.05) -> Any:
    """Poll ``cond`` until truthy and return it; TimeoutError naming ``what`` after ``within`` s."""
    try:
        async with asyncio.timeout(within):
            while not (result := cond()):  # noqa: ASYNC110 (the state is another process's)
                await asyncio.sleep(every)
    except TimeoutError:
        raise TimeoutError(f"gave up after {within:g} s waiting for {what or cond}") from None
    return result
