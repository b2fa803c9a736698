"""doctor's look at the running agent: whether it runs and since when, which config it runs, what waits, what is down.

The files say what the gateway should do; the agent says what it does. A running agent
answers ``GET /status`` on its metrics endpoint (``metrics.listen``, loopback; the packaged
config turns it on) with the summary its status topic publishes. Under systemd the unit's
state also tells whether it runs, since when and why it stopped, when the endpoint is off or
the agent is down. A pushed config (remote config) wins over the local file at every start and
reload, so doctor compares the two and says what a technician's local edit will and will not do.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway import __version__

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.doctor import Finding

UNIT = "sensegate.service"
RESTART = "sudo systemctl restart sensegate"
MAX_STATUS = 1 << 20


@dataclass(frozen=True)
class UnitState:
    """What systemd says about the service (`systemctl show`)."""

    active: str  # active, activating, inactive, failed, ...
    sub: str
    result: str  # success, watchdog, exit-code, signal, start-limit-hit, ...
    since: float | None  # when it entered its current state (s since the epoch)
    restarts: int
    condition: bool  # False: skipped, a Condition*= (not provisioned) did not hold


def _timestamp(usec: str) -> float | None:
    try:
        n = int(usec)
    except ValueError:
        return None
    return n / 1e6 if n else None


def systemd_unit(unit: str = UNIT) -> UnitState | None:
    """The unit's state, or None where systemd does not run (a container, a test bench)."""
    if shutil.which("systemctl") is None:
        return None
    props = "ActiveState,SubState,Result,StateChangeTimestampMonotonic,NRestarts,ConditionResult,LoadState"
    try:
        res = subprocess.run(["systemctl", "show", unit, "-p", props, "-p", "StateChangeTimestamp",
                              "--timestamp=unix"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    p = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    if p.get("LoadState") != "loaded":
        return None
    since = p.get("StateChangeTimestamp", "").lstrip("@")
    return UnitState(p.get("ActiveState", "unknown"), p.get("SubState", ""), p.get("Result", ""),
                     float(since) if since.replace(".", "", 1).isdigit() else None,
                     int(p.get("NRestarts", "0") or 0), p.get("ConditionResult", "yes") != "no")


def fetch_status(listen: str, timeout: float) -> dict[str, Any] | str:
    """The running agent's summary from GET /status, or why it could not be had."""
    from gateway.metrics import parse_listen

    host, port = parse_listen(listen)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
            chunks: list[bytes] = []
            size = 0
            while chunk := s.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_STATUS:
                    return "the answer is too large"
    except OSError as e:
        return e.strerror or str(e)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        return f"it answered {first!r} (an older sensegate, or not sensegate)"
    try:
        data = json.loads(body)
    except ValueError:
        return "its answer is not JSON"
    return data if isinstance(data, dict) else "its answer is not a status"


@dataclass
class AgentView:
    """What doctor learnt about the running agent."""

    unit: UnitState | None
    status: dict[str, Any] | None
    why_not: str  # why there is no status ("" when there is one)
    listen: str


def look(cfg: GatewayConfig | None, unit: Callable[[], UnitState | None],
         fetch: Callable[[str, float], dict[str, Any] | str], timeout: float) -> AgentView:
    """Ask systemd and the agent itself (when the config lets doctor find its endpoint)."""
    state = unit()
    if cfg is None:
        return AgentView(state, None, "the config is invalid, so doctor cannot find the agent's endpoint", "")
    m = cfg.config.metrics
    if not m.enabled:
        return AgentView(state, None, "metrics.enabled is off, so the agent cannot be asked", "")
    got = fetch(m.listen, timeout)
    if isinstance(got, str):
        return AgentView(state, None, f"nothing answers on http://{m.listen}/status: {got}", m.listen)
    return AgentView(state, got, "", m.listen)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _ago(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


def check_running(view: AgentView, waiting: int, now: float) -> Finding:
    """Is the agent running, since when, and is it the version installed?"""
    from gateway.doctor import Finding

    if view.status is not None:
        proc = view.status.get("process") or {}
        start = proc.get("start_time")
        since = f"since {_when(start)} ({_ago(now - start)})" if isinstance(start, int | float) else ""
        version = view.status.get("version")
        if version and version != __version__:
            return Finding("agent", "warn", f"running {since}, but it is version {version} and {__version__} is "
                           "installed: the upgrade takes effect at the next start", RESTART)
        return Finding("agent", "ok", f"running {since}, version {version}".replace("running , ", "running, "))
    u = view.unit
    if u is not None and u.active in ("active", "reloading"):
        since = f" since {_when(u.since)} ({_ago(now - u.since)})" if u.since else ""
        if view.listen:  # it should answer and does not: busy, wedged or starting
            return Finding("agent", "warn", f"running under systemd{since}, but {view.why_not}",
                           "a wedged agent is restarted by the watchdog within 30 s; if this stays, "
                           f"`journalctl -u sensegate -n 50`, then {RESTART}")
        return Finding("agent", "ok" if view.why_not.startswith("metrics") else "warn",
                       f"running under systemd{since}; {view.why_not} (its drivers, config and delivery are not "
                       "checked)", "set metrics: {enabled: true} in a drop-in and reload, so doctor can see inside")
    if u is not None and u.active == "activating":
        return Finding("agent", "warn", f"starting (systemd: {u.sub})", "run doctor again in a minute")
    lost = f"; {waiting} reading(s) wait in the buffer and nothing sends them" if waiting else ""
    if u is not None:
        if not u.condition:
            return Finding("agent", "fail", "not running: systemd skipped it, the gateway is not provisioned (no "
                           f"device key){lost}", "sudo sensegate provision --id <GATEWAY-ID> ...")
        since = f" since {_when(u.since)}" if u.since else ""
        why = f", last result: {u.result}" if u.result and u.result != "success" else ""
        restarts = f", {u.restarts} automatic restart(s)" if u.restarts else ""
        return Finding("agent", "fail", f"not running (systemd: {u.active}{since}{why}{restarts}){lost}",
                       f"`journalctl -u sensegate -n 50` says why; then {RESTART}")
    if not view.listen:
        return Finding("agent", "warn", f"cannot tell whether the agent runs: no systemd here and {view.why_not}"
                       f"{lost}", "set metrics: {enabled: true} so doctor can ask the agent")
    return Finding("agent", "fail", f"not running: {view.why_not}{lost}",
                   "start it: `sensegate run` (in the foreground), or the service: sudo systemctl start sensegate")


def check_running_config(view: AgentView, local: GatewayConfig | None, local_path: str) -> Finding | None:
    """Which config the agent runs, and whether the local file's edits are what it runs."""
    from gateway.doctor import Finding

    if view.status is None:
        return None
    running = view.status.get("config") or {}
    names = sorted((view.status.get("drivers") or {}).keys())
    runs = f"{len(names)} driver instance(s){': ' + ', '.join(names) if names else ''}"
    if local is None:
        return Finding("running config", "warn", f"the agent runs the config it loaded before ({runs}); the local "
                       "file is invalid now, so a restart would fail",
                       f"fix the file first: sensegate check {local_path}")
    if running.get("source") != "pushed":
        return Finding("running config", "ok", f"the local file {local_path} and its drop-ins ({runs})")
    rev = running.get("revision")
    wanted = sorted(i.name for i in local.instances) + sorted(d.name for d in local.down)
    how = (f"have ops push the change (`sensegate config push FILE --to {local.config.gateway.id}`), or hand this "
           "gateway back to its local file: sudo sensegate config use-local")
    if wanted != names:
        has = f"{len(wanted)} driver instance(s){': ' + ', '.join(wanted) if wanted else ''}"
        return Finding("running config", "warn", f"the agent runs pushed config revision {rev} ({runs}), not the "
                       f"local file ({has}): a local edit and a reload do not take effect while a pushed config "
                       "is current", how)
    return Finding("running config", "ok", f"pushed config revision {rev} ({runs}); edits to {local_path} take "
                   f"effect only through a push or after `sensegate config use-local`")


def check_drivers_down(view: AgentView) -> Finding | None:
    """Driver instances the agent has down, each with its reason."""
    from gateway.doctor import Finding

    if view.status is None:
        return None
    drivers = view.status.get("drivers") or {}
    down = {n: d for n, d in drivers.items() if d.get("state") != "running"}
    if not drivers:
        return Finding("drivers", "warn", "the agent runs no driver instance", "add a drivers: section")
    if not down:
        return Finding("drivers", "ok", f"{len(drivers)}/{len(drivers)} instance(s) running")
    lines = [f"{n} ({d.get('driver')}): {d.get('state')}" + (f": {d['last_error']}" if d.get("last_error") else "")
             for n, d in sorted(down.items())]
    return Finding("drivers", "warn", f"{len(down)} of {len(drivers)} instance(s) down:\n" + "\n".join(lines),
                   "each line says why; `journalctl -u sensegate` has the detail; `sensegate drivers` lists what is "
                   "installed")


def check_delivery(view: AgentView, warn_age: float) -> Finding | None:
    """Readings waiting in the running agent and how long ago a batch was last acknowledged."""
    from gateway.doctor import Finding

    if view.status is None or not view.status.get("buffer"):
        return None
    buf = view.status["buffer"]
    waiting = int(buf.get("readings") or 0)
    oldest = float(buf.get("oldest_age_s") or 0.0)
    last = buf.get("last_ack_age_s")
    batches = view.status.get("batches") or {}
    acked = batches.get("acked", 0)
    sign_errors = int(batches.get("sign_errors") or 0)
    ack = (f"last batch acknowledged {_ago(last)} ago ({acked} since the start)" if last is not None
           else "no batch acknowledged since the agent started")
    text = f"{waiting} reading(s) waiting" + (f", the oldest {_ago(oldest)} old" if waiting else "") + f"; {ack}"
    if sign_errors:
        text += f"; the device key failed to sign {sign_errors} time(s) since the start"
    stuck = waiting and (last is None or last > warn_age) and oldest > warn_age
    if stuck:
        up = view.status.get("uplinks") or {}
        down = [n for n, u in up.items() if not u.get("connected")]
        why = f" (uplink(s) disconnected: {', '.join(down)})" if down else ""
        if sign_errors:  # nothing signed, nothing sent: the key (a token gone or refusing) comes first
            return Finding("delivery", "warn", text + why, "see the signing key and token checks; `journalctl -u "
                           "sensegate` says why the key does not sign")
        return Finding("delivery", "warn", text + why, "see the broker check; `journalctl -u sensegate` says why "
                       "batches are not acknowledged")
    return Finding("delivery", "ok", text)
