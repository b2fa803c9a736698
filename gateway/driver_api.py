"""The driver contract, version 1: everything a driver author needs is in this file.

Lifecycle, called by the host (``gateway.scheduler``) one call at a time per instance:

1. ``Driver(config, ctx)``: store the validated config; no I/O here.
2. ``await setup()``: open the device. Raise ``ConfigError`` when the config cannot work
   (the instance stops, other drivers go on) or ``NotReady`` when it may work later (the
   host retries with backoff).
3. Polled drivers: ``await poll(emit)`` every ``interval``; the host applies ``timeout``.
   Streaming drivers (GPS, RFID, BLE): ``await run(emit)`` until cancelled; if it returns or
   raises, the host closes, waits with backoff, and calls ``setup`` again.
   Raise ``PollError`` for a transient failure (timeout, CRC error, device busy).
4. ``await write(point, value)``: optional actuation (Modbus register, relay, camera trigger).
5. ``await close()``: idempotent; called on shutdown, reload and after failures.

Drivers never sleep-loop, never touch the buffer or uplinks, and hold no module-level
mutable state, so two instances of one driver can run side by side. Blocking libraries go
through ``ctx.run_blocking``. Report capillary nodes (IP3) going offline/online with
``ctx.node_status``; the host logs each transition once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from gateway.edge.rules import ReportRule
from gateway.schema import Field, Model
from gateway.units import Duration

API_VERSION = 1
"""Bumped on any incompatible change; see docs/drivers.md and CHANGELOG.md."""

SUPPORTED_API_VERSIONS = frozenset({1})


class DriverError(Exception):
    """Base of the errors a driver raises to tell the host what happened."""


class ConfigError(DriverError):
    """The configuration cannot work (wrong port type, unknown register type): do not retry."""


class NotReady(DriverError):
    """The device is not there yet (port missing, host unreachable): retry ``setup`` later."""


class PollError(DriverError):
    """A transient failure of one poll or one stream read: counted, retried next interval."""


class MissingExtra(ConfigError):
    """A hardware library is not installed; names the pip extra that brings it."""

    def __init__(self, driver: str, module: str, extra: str) -> None:
        super().__init__(
            f"driver {driver!r} needs the Python package {module!r}: install it with: pip install 'sensegate[{extra}]'"
        )
        self.extra = extra


class Path(enum.IntEnum):
    """Interface point a reading crossed (BRIEF section 2)."""

    IP2 = 2  # terminal node uplinking directly under its own (the gateway's) identity
    IP3 = 3  # capillary network node (RS-485, BLE, serial reader) relayed by the gateway


class Quality(enum.IntEnum):
    """How far a value can be trusted; carried on the wire only when not GOOD."""

    GOOD = 0
    UNCERTAIN = 1  # e.g. GPS without a fix: the last position, stale
    BAD = 2  # e.g. sensor reported an error value


@dataclass(slots=True, frozen=True)
class Location:
    """A position fix; NaN-free, None where the receiver did not say."""

    lat: float
    lon: float
    alt: float | None = None
    speed: float | None = None  # m/s
    course: float | None = None  # degrees true
    fix: int = 1  # 0 no fix, 1 GPS, 2 DGPS, ... (NMEA GGA quality)
    sats: int | None = None
    hdop: float | None = None


@dataclass(slots=True, frozen=True)
class Blob:
    """A large binary observation (a camera image). The host stores it content-addressed and
    uploads it separately; the signed batch carries its SHA-256, size and content type."""

    data: bytes
    content_type: str  # e.g. "image/jpeg"


Value = float | int | bool | str | bytes | Location | Blob


@dataclass(slots=True)
class Reading:
    """One observation: what, from which node, when, over which interface path."""

    node: str  # node identity; the gateway's own id for IP2
    point: str  # point name within the node, e.g. "temperature" or "energy_total"
    ts_ns: int  # UTC, nanoseconds since the epoch
    value: Value
    unit: str | None = None  # SenML unit symbol (RFC 8428 section 12.1), e.g. "Cel", "%RH"
    quality: Quality = Quality.GOOD
    path: Path = Path.IP2
    instance: str = ""  # driver instance that produced it (filled in by the host)


class Emit(Protocol):
    """Hand a reading to the host; cheap and non-blocking.

    Without ``node`` the reading belongs to the instance's node (its ``node:`` option, else the
    gateway) on the instance's ``path``; naming a ``node`` marks it as relayed from a capillary
    node (IP3). ``ts_ns`` defaults to now. Raises TypeError/ValueError for an unusable value.
    """

    def __call__(
        self,
        point: str,
        value: Value,
        *,
        unit: str | None = None,
        node: str | None = None,
        ts_ns: int | None = None,
        quality: Quality = Quality.GOOD,
    ) -> None: ...


T = TypeVar("T")


class DriverContext(Protocol):
    """What the host offers a driver instance."""

    instance: str
    log: logging.Logger

    def node_status(self, node: str, online: bool, reason: str = "") -> None:
        """Report a capillary node online/offline; the host logs and publishes transitions."""

    def count(self, event: str, n: int = 1) -> None:
        """Count a driver-specific event (an unreadable advert, a frame-counter gap); the counts
        survive the instance's restarts and appear in metrics and the status report."""

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking library call in the host's executor, off the event loop."""


class DriverConfig(Model):
    """Options every driver instance has; a driver's own schema subclasses this."""

    driver: str = Field(description="Driver name, as listed by `sensegate drivers`.")
    name: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Instance name, unique in the config; defaults to the driver name.",
    )
    enabled: bool = Field(default=True, description="Set false to keep the section but not run it.")
    interval: Duration = Field(default=10.0, gt=0, description="Poll period for polled drivers (e.g. 500ms, 10s, 5m).")
    jitter: float = Field(
        default=0.1, ge=0, le=1, description="Random spread of each poll period, as a fraction of it."
    )
    timeout: Duration = Field(default=5.0, gt=0, description="Longest a setup or poll may take before it is abandoned.")
    node: str = Field(
        default="",
        pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$",
        description="Node identity for readings that do not name one; defaults to the gateway id.",
    )
    path: Literal["ip2", "ip3"] = Field(
        default="ip2",
        description="Interface path of this instance's readings: ip2 direct, ip3 via a capillary network.",
    )
    report: list[ReportRule] = Field(
        default_factory=list,
        description="Edge processing before the buffer, per point: report on change, outside a deadband, "
        "at least or at most every T, or aggregated over windows (docs/edge.md). The first rule that "
        "matches a point applies; points no rule matches are reported as they come.",
    )


@dataclass(frozen=True)
class Manifest:
    """A driver's identity card, checked when the host loads it (see gateway.registry)."""

    name: str  # = folder name = YAML `driver:` value = logger name
    version: str
    api_version: int
    description: str
    config: type[DriverConfig]
    factory: str  # "package.module:Class", imported only when an instance is configured
    kind: Literal["poll", "stream"] = "poll"
    extra: str | None = None  # pip extra with the hardware libraries
    requires: tuple[str, ...] = ()  # import names checked before the factory is imported
    writable: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class Driver:
    """Base class: override ``setup`` and ``poll`` or ``run``; the rest is optional."""

    manifest: ClassVar[Manifest]

    def __init__(self, config: DriverConfig, ctx: DriverContext) -> None:
        self.config = config
        self.ctx = ctx

    async def setup(self) -> None:
        """Open the device; raise ConfigError (fatal) or NotReady (retry)."""

    async def poll(self, emit: Emit) -> None:
        """Read once and emit readings (polled drivers)."""
        raise NotImplementedError

    async def run(self, emit: Emit) -> None:
        """Read forever and emit readings (streaming drivers); cancelled on stop."""
        raise NotImplementedError

    async def write(self, point: str, value: Value) -> None:
        """Actuate a point; drivers without outputs keep this refusal."""
        raise ConfigError(f"driver {self.manifest.name!r} has no writable points")

    async def close(self) -> None:
        """Release the device; must be safe to call twice and after a failed setup."""


def now_ns() -> int:
    """Wall-clock UTC timestamp in nanoseconds, the one clock readings use."""
    return time.time_ns()


async def sleep_until_cancelled() -> None:
    """For streaming drivers whose work is all in callbacks (e.g. a BLE scanner)."""
    await asyncio.Event().wait()
