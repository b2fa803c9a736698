"""Health numbers: one summary dict (status topic, STATUS= line) and its Prometheus text form.

``summary(daemon)`` is the single source: the status topic publishes it as JSON, the
``/metrics`` endpoint renders it in the Prometheus text exposition format (version 0.0.4)
(``/status`` serves it as JSON, which `sensegate doctor` reads),
and ``status_line`` condenses it for `systemctl status`. The endpoint is a few lines of
HTTP/1.0 on the daemon's own event loop: no thread, no extra dependency, loopback by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway import __version__
from gateway.bounded import settle

if TYPE_CHECKING:
    from gateway.config.validate import GatewayConfig
    from gateway.daemon import Pipeline
    from gateway.remote.agent import RemoteAgent
    from gateway.scheduler import NodeTracker, Supervisor

log = logging.getLogger("sensegate.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


class _Daemon(Protocol):
    """What summary() reads from a running daemon (gateway.daemon.Daemon)."""

    cfg: GatewayConfig | None
    config_path: Path
    nodes: NodeTracker
    pipeline: Pipeline | None
    remote: RemoteAgent | None
    supervisor: Supervisor | None


# -- the summary --------------------------------------------------------------------------------


def process_stats() -> dict[str, float]:
    """RSS, CPU seconds, open files and start time of this process, from /proc."""
    out: dict[str, float] = {}
    cpu = os.times()
    out["cpu_seconds"] = cpu.user + cpu.system
    with contextlib.suppress(OSError, ValueError, IndexError):
        out["rss_bytes"] = float(int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE)
    with contextlib.suppress(OSError):
        out["open_fds"] = float(len(os.listdir("/proc/self/fd")))
    with contextlib.suppress(OSError, ValueError, IndexError):
        # only /proc/self is needed (the unit hides the rest of /proc with ProcSubset=pid)
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        out["start_time"] = booted + start_ticks / _TICKS
    return out


def summary(daemon: _Daemon) -> dict[str, Any]:
    """The gateway's health as one JSON-able dict: drivers, nodes, buffer, batches, uplinks, the
    clock (synchronised, its error, steps: gateway/clock.py), process."""
    cfg = daemon.cfg
    out: dict[str, Any] = {
        "version": __version__,
        "gateway": cfg.config.gateway.id if cfg is not None else None,
        "time": time.time(),
    }
    drivers: dict[str, Any] = {}
    runners = daemon.supervisor.runners if daemon.supervisor is not None else {}
    for name, runner in sorted(runners.items()):
        s = runner.stats
        drivers[name] = {
            "driver": runner.inst.manifest.name,
            "state": s.state,
            "readings": s.readings,
            "polls": s.polls,
            "errors": s.errors,
            "timeouts": s.timeouts,
            "restarts": s.restarts,
            "latency_sum_s": s.latency_sum,
            "latency_max_s": s.latency_max,
            "last_error": s.last_error,
            "events": dict(s.extra),
        }
        if runner.edge is not None:  # what the report rules did (docs/edge.md)
            c = runner.edge.counts(s.readings)
            drivers[name].update(readings_suppressed=c["suppressed"], readings_aggregated=c["aggregated"],
                                 aggregate_records=c["aggregates"])
    for d in cfg.down if cfg is not None else ():  # configured, but its driver does not load
        drivers[d.name] = {"driver": d.driver, "state": "failed", "readings": 0, "polls": 0, "errors": 0,
                           "timeouts": 0, "restarts": 0, "latency_sum_s": 0.0, "latency_max_s": 0.0,
                           "last_error": d.reason, "events": {}}
    out["drivers"] = drivers
    out["nodes"] = dict(sorted(daemon.nodes.state.items()))
    pipe: dict[str, Any] = {}
    if daemon.pipeline is not None:
        try:
            pipe = dict(daemon.pipeline.stats())
        except Exception as e:  # a metrics read must never hurt the daemon
            log.debug("pipeline stats failed: %r", e)
    out["config"] = _running_config(daemon)
    out["buffer"] = pipe.get("buffer")
    out["batches"] = pipe.get("batches")
    out["uplinks"] = pipe.get("uplinks") or {}
    if pipe.get("issued") is not None:
        out["issued"] = pipe["issued"]  # how far the buffer has numbered: the heartbeat's (gateway/heartbeat.py)
    proc = process_stats()
    if "start_time" in proc:
        proc["uptime_seconds"] = max(0.0, out["time"] - proc["start_time"])
    out["process"] = proc
    from gateway.remote.health import extras  # the fleet view's part: config, clock, disk, agent

    fleet = extras(daemon)
    if "config" in fleet:
        fleet["config"] = {**out["config"], **fleet["config"]}
    out.update(fleet)
    if pipe.get("clock"):  # the kernel's view (with the NTP offset) under what the clock watch saw (steps)
        out["clock"] = {**(out.get("clock") or {}), **pipe["clock"]}
    return out


def _running_config(daemon: _Daemon) -> dict[str, Any]:
    """Which config the daemon runs: a pushed revision, or its local file (doctor shows it)."""
    revision = daemon.remote.revision if daemon.remote is not None else None
    return {"source": "local" if revision is None else "pushed", "revision": revision,
            "file": str(daemon.config_path)}


def status_line(daemon: _Daemon) -> str:
    """A one-line STATUS= for `systemctl status`: drivers, nodes, buffer, uplinks."""
    s = summary(daemon)
    drivers = s["drivers"].values()
    running = sum(1 for d in drivers if d["state"] == "running")
    parts = [f"{running}/{len(s['drivers'])} drivers running"]
    if s["nodes"]:
        parts.append(f"{sum(s['nodes'].values())}/{len(s['nodes'])} nodes online")
    if s["buffer"]:
        parts.append(f"buffer {s['buffer'].get('readings', 0)} readings")
    for name, up in s["uplinks"].items():
        parts.append(f"{name} {'connected' if up.get('connected') else 'DISCONNECTED'}")
    if s.get("clock") and not s["clock"].get("synchronised"):
        parts.append("clock NOT synchronised")
    return ", ".join(parts)


# -- Prometheus text format -------------------------------------------------------------------


def _esc(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "NaN"
    return "NaN"


class _Family:
    def __init__(self, name: str, kind: str, help_: str) -> None:
        self.name, self.kind, self.help = name, kind, help_
        self.samples: list[tuple[dict[str, object], object]] = []

    def add(self, value: object, **labels: object) -> None:
        if value is not None:
            self.samples.append((labels, value))

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            yield f"{self.name}{{{lab}}} {_num(value)}" if lab else f"{self.name} {_num(value)}"


def render(s: dict[str, Any]) -> str:
    """A summary() in the Prometheus text exposition format."""
    fams: dict[str, _Family] = {}

    def fam(name: str, kind: str, help_: str) -> _Family:
        return fams.setdefault(name, _Family(name, kind, help_))

    fam("sensegate_build_info", "gauge", "Version of the running agent.").add(
        1, version=s.get("version", ""), gateway=s.get("gateway") or ""
    )
    per_driver = [
        ("readings", "sensegate_driver_readings_total", "counter", "Readings emitted per driver instance."),
        ("polls", "sensegate_driver_polls_total", "counter", "Polls completed per driver instance."),
        ("errors", "sensegate_driver_errors_total", "counter", "Failed setups and polls per driver instance."),
        ("timeouts", "sensegate_driver_timeouts_total", "counter", "Setups and polls cut off by their timeout."),
        ("restarts", "sensegate_driver_restarts_total", "counter", "Times a driver instance was reopened."),
        ("latency_sum_s", "sensegate_driver_poll_seconds_sum", "counter", "Total time spent in polls."),
        ("latency_max_s", "sensegate_driver_poll_seconds_max", "gauge", "Longest poll so far."),
        ("readings_suppressed", "sensegate_driver_readings_suppressed_total", "counter",
         "Readings the instance's report rules left out (unchanged, within the deadband, too soon)."),
        ("readings_aggregated", "sensegate_driver_readings_aggregated_total", "counter",
         "Readings folded into aggregation windows."),
        ("aggregate_records", "sensegate_driver_aggregate_records_total", "counter",
         "Window records (min, max, mean, count, last) reported."),
    ]
    for inst, d in s.get("drivers", {}).items():
        labels = {"instance": inst, "driver": d.get("driver", "")}
        for key, name, kind, help_ in per_driver:
            fam(name, kind, help_).add(d.get(key), **labels)
        fam("sensegate_driver_up", "gauge", "1 while the driver instance is running normally.").add(
            d.get("state") == "running", **labels
        )
        for event, n in sorted((d.get("events") or {}).items()):
            fam("sensegate_driver_events_total", "counter",
                "Driver-specific events per instance (decode errors, frame-counter gaps, ...).").add(
                n, **labels, event=event)
    for node, online in s.get("nodes", {}).items():
        fam("sensegate_node_online", "gauge", "1 if the node is online, 0 if offline.").add(bool(online), node=node)
    buf = s.get("buffer") or {}
    for key, name, kind, help_ in [
        ("readings", "sensegate_buffer_readings", "gauge", "Readings buffered and not yet acknowledged upstream."),
        ("bytes", "sensegate_buffer_bytes", "gauge", "Bytes of buffered readings."),
        ("oldest_age_s", "sensegate_buffer_oldest_age_seconds", "gauge", "Age of the oldest buffered reading."),
        ("dropped", "sensegate_buffer_dropped_total", "counter", "Readings dropped by the buffer policy."),
        ("committed", "sensegate_buffer_committed_total", "counter", "Readings committed to the buffer."),
        ("group_commits", "sensegate_buffer_transactions_total", "counter", "Group transactions committed."),
        ("fsyncs", "sensegate_buffer_fsyncs_total", "counter",
         "Disk flushes: reserving blocks of numbers, and readings waiting unacknowledged."),
        ("skipped_unclean", "sensegate_buffer_unclean_skipped", "gauge",
         "Reading numbers skipped at this start after an unclean stop (declared to receivers)."),
    ]:
        fam(name, kind, help_).add(buf.get(key))
    bat = s.get("batches") or {}
    for key, name, kind, help_ in [
        ("sent", "sensegate_batches_sent_total", "counter", "Signed batches sent (including re-sends)."),
        ("acked", "sensegate_batches_acked_total", "counter", "Batches acknowledged by an uplink."),
        ("sign_errors", "sensegate_batch_sign_errors_total", "counter",
         "Batches the device key could not sign (a token gone or refusing); readings stay buffered."),
        ("last_readings", "sensegate_batch_last_readings", "gauge", "Readings in the last batch."),
        ("last_bytes", "sensegate_batch_last_bytes", "gauge", "Encoded size of the last batch."),
    ]:
        fam(name, kind, help_).add(bat.get(key))
    for up_name, up in (s.get("uplinks") or {}).items():
        for key, name, kind, help_ in [
            ("connected", "sensegate_uplink_connected", "gauge", "1 while the uplink is connected."),
            ("inflight", "sensegate_uplink_inflight", "gauge", "Batches sent and not yet acknowledged."),
            ("acked", "sensegate_uplink_acked_total", "counter", "Batches acknowledged by this uplink."),
            ("errors", "sensegate_uplink_errors_total", "counter", "Connection and publish errors."),
            ("latency_s", "sensegate_uplink_latency_seconds", "gauge", "Last send-to-acknowledgement time."),
        ]:
            fam(name, kind, help_).add(up.get(key), uplink=up_name)
    clk = s.get("clock") or {}
    for key, name, kind, help_ in [
        ("synchronised", "sensegate_clock_synchronised", "gauge",
         "1 while the kernel calls the clock synchronised (NTP); readings stamped otherwise are flagged."),
        ("max_error_s", "sensegate_clock_max_error_seconds", "gauge", "The kernel's maximum error of the clock."),
        ("steps", "sensegate_clock_steps_total", "counter", "Steps of the wall clock seen (against the monotonic)."),
        ("last_step_s", "sensegate_clock_last_step_seconds", "gauge", "Size of the last step, signed."),
        ("last_step_at", "sensegate_clock_last_step_timestamp_seconds", "gauge", "When the last step was seen."),
    ]:
        fam(name, kind, help_).add(clk.get(key))
    proc = s.get("process") or {}
    for key, name, kind, help_ in [
        ("rss_bytes", "process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
        ("cpu_seconds", "process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds."),
        ("open_fds", "process_open_fds", "gauge", "Number of open file descriptors."),
        ("start_time", "process_start_time_seconds", "gauge", "Start time of the process since the epoch."),
    ]:
        fam(name, kind, help_).add(proc.get(key))
    return "\n".join(line for f in fams.values() if f.samples for line in f.lines()) + "\n"


# -- the endpoint -------------------------------------------------------------------------------


def parse_listen(listen: str) -> tuple[str, int]:
    """'127.0.0.1:9108' or '[::1]:9108' -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class MetricsServer:
    """GET /metrics on a loopback port, served from the daemon's loop."""

    REQUEST_TIMEOUT = 5.0

    def __init__(self, daemon: _Daemon | None) -> None:
        self.daemon = daemon
        self.listen = ""  # where it listens now ("" when it does not)
        self.error = ""  # why the last apply could not listen where the config asked
        self._server: asyncio.Server | None = None

    def page(self) -> str:
        """The text served at /metrics (the fleet ingest serves its own: gateway.ingest.metrics)."""
        assert self.daemon is not None
        return render(summary(self.daemon))

    async def route(self, path: str, query: str) -> tuple[str, str, str] | None:
        """(status, body, content type) for a path a subclass serves besides /metrics (the fleet page)."""
        return None

    def status(self) -> str | None:
        """The daemon's summary as JSON, served at /status for `sensegate doctor` (None: not served)."""
        return json.dumps(summary(self.daemon)) if self.daemon is not None else None

    @property
    def port(self) -> int | None:
        """The bound port (useful when listening on port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def apply(self, enabled: bool, listen: str) -> None:
        """Start, stop or move the endpoint to match the config; a bind failure is logged, not fatal."""
        want = listen if enabled else ""
        if want == self.listen and (self._server is not None or not want):
            return
        await self.close()
        self.error = ""
        if not want:
            return
        host, port = parse_listen(want)
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as e:
            self.error = f"cannot listen on {want}: {e.strerror or e}"
            log.error("metrics endpoint not started: %s", self.error)
            return
        self.listen = want
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics endpoint listens on %s, beyond loopback; it has no authentication", want)
        log.info("metrics on http://%s/metrics", want)

    async def close(self) -> None:
        """Stop listening and wait (bounded: requests have REQUEST_TIMEOUT) for open requests to finish."""
        server, self._server = self._server, None
        self.listen = ""
        if server is not None:
            server.close()
            await settle(server.wait_closed(), self.REQUEST_TIMEOUT, "closing the metrics endpoint")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.REQUEST_TIMEOUT):
                request = await reader.readline()
                while await reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
            method, target, *_ = request.decode("latin-1").split() or ["", ""]
            path, _, query = (target or "").partition("?")
            routed = await self.route(path, query) if method in ("GET", "HEAD") else None
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
            elif routed is not None:
                status, body, ctype = routed
            elif path == "/metrics":
                status, body, ctype = "200 OK", self.page(), CONTENT_TYPE
            elif path == "/status" and (doc := self.status()) is not None:  # for `sensegate doctor`
                status, body, ctype = "200 OK", doc, "application/json"
            elif path == "/":
                also = ", status at /status" if self.daemon is not None else ""
                status, body, ctype = "200 OK", f"sensegate: metrics at /metrics{also}\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", "not found; try /metrics\n", "text/plain"
            data = body.encode()
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + data)
            await writer.drain()
        except (TimeoutError, ValueError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a slow or broken client: just hang up
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
