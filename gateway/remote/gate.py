"""The health gate of an apply (docs/remote.md, "Apply, health gate, rollback").

After a pushed config (or a revert, or a SIGHUP-free apply) is running, it must prove itself
within set times: the uplinks answer (every one with ``uplink_mode: all``; with ``failover`` one,
and it must carry the MQTT downlink when pushes cannot come over CoAP), a metrics endpoint listens
where the config says, and driver instances whose sections changed reach ``running`` (unchanged
ones restarted with the pipeline must only not fail; expected-absent ones not wired yet do not
count). The result is None, or why not in words that quote what the gateway saw.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.config.apply import Plan
from gateway.remote.wiring import Wiring
from gateway.uplinks import Downlink

if TYPE_CHECKING:
    from gateway.daemon import Pipeline


def downlinks(pipeline: Pipeline | None) -> Iterator[Downlink]:
    """The receiving halves of the pipeline's uplinks (the MQTT ones)."""
    for up in pipeline.uplinks if pipeline is not None else []:
        if up.downlink is not None:
            yield up.downlink


def describe(p: Plan) -> str:
    """What an apply restarted, for the ``applied`` status."""
    if p.empty:
        return "nothing (no change)"
    parts = []
    if p.restart_pipeline:
        parts.append(f"pipeline ({', '.join(p.restart_for)} changed)")
    if p.metrics:
        parts.append("metrics")
    if p.log_level:
        parts.append("log level")
    if p.health:
        parts.append("health (expected-absent instances)")
    if p.start:
        parts.append("drivers " + ", ".join(p.start))
    stopped = [n for n in p.stop if n not in p.start]
    if stopped:
        parts.append("stopped " + ", ".join(stopped))
    if p.retune and not p.restart_pipeline:
        parts.append("report rules of " + ", ".join(p.retune) + " (no restart)")
    return "; ".join(parts)


def _last_error(ups: list[Any], name: str) -> str:
    """What the named uplink last saw going wrong ("connection refused by ..."), or ''."""
    return next((str(getattr(u, "last_error", "") or "") for u in ups if u.name == name), "")


async def check(host: Any, settings: Any, wiring: Wiring, p: Plan, new: GatewayConfig) -> str | None:
    """None when the uplinks answer, restarted drivers came up and the metrics endpoint
    listens, each in time; else why not."""
    s = settings
    why = await uplinks_up(host, settings, new)
    if why is not None:
        return why
    m = new.config.metrics
    if m.enabled and host.metrics.listen != m.listen:
        return f"the metrics endpoint did not start: {host.metrics.error or 'not listening on ' + m.listen}"
    # instances whose sections changed must come up; unchanged ones restarted with the pipeline
    # must only not fail (a device that was offline before is not the new config's fault)
    names = [i.name for i in new.instances] if p.restart_pipeline else list(p.start)
    wiring.observe(new, host.supervisor)
    absent = wiring.absent(new)  # not wired yet: they do not count until their first run
    names = [n for n in names if n not in absent]
    strict = ("running",) if s.require_drivers_running else ("running", "unavailable")
    loose = ("running", "unavailable")

    def want(n: str) -> tuple[str, ...]:
        return strict if n in p.start else loose

    try:
        async with asyncio.timeout(s.driver_timeout):
            while True:
                sup = host.supervisor
                runners = [sup.runners[n] for n in names if sup is not None and n in sup.runners]
                for r in runners:
                    if r.stats.state == "failed":
                        return f"driver instance {r.name} failed: {r.stats.last_error}"
                if len(runners) == len(names) and all(r.stats.state in want(r.name) for r in runners):
                    return None
                await asyncio.sleep(0.1)
    except TimeoutError:
        runs = host.supervisor.runners if host.supervisor is not None else {}
        late = [f"{n} (not started yet)" if n not in runs else
                f"{n} ({runs[n].stats.state}: {runs[n].stats.last_error or 'no error'})"
                for n in names if n not in runs or runs[n].stats.state not in want(n)]
        return f"driver instance(s) not up within {s.driver_timeout:g} s: {', '.join(late)}"


async def uplinks_up(host: Any, settings: Any, new: GatewayConfig) -> str | None:
    """The uplink part of the health gate: with ``uplink_mode: all`` every uplink must answer (one
    that never does would hold every batch); with ``failover`` one must, and it must carry the
    MQTT downlink when pushes cannot come over CoAP."""
    s = settings
    ups = list(host.pipeline.uplinks) if host.pipeline is not None else []
    if not ups:  # JSON lines only: nothing to reach
        return None
    need_all = new.config.uplink_mode == "all"
    need_downlink = not s.coap_listen
    probes: dict[str, asyncio.Task[None]] = {}

    def missing() -> list[str]:
        if need_all:
            return [u.name for u in ups if not u.reachable]
        if need_downlink and not any(u.reachable for u in downlinks(host.pipeline)):
            return [u.name for u in downlinks(host.pipeline)] or ["an MQTT uplink"]
        return [] if any(u.reachable for u in ups) else [u.name for u in ups]

    try:
        async with asyncio.timeout(s.uplink_timeout):
            while late := missing():
                for u in ups:  # nothing to send yet: ask the far end (a CoAP GET)
                    if u.connected and not u.reachable and (u.name not in probes or probes[u.name].done()):
                        probes[u.name] = asyncio.create_task(u.probe(), name=f"probe:{u.name}")
                await asyncio.sleep(0.1)
    except TimeoutError:
        seen = "; ".join(f"{n}: {why}" for n in late if (why := _last_error(ups, n)))
        cause = f"; {seen}" if seen else ""
        if need_all:
            return (f"uplink(s) {', '.join(late)} did not connect within {s.uplink_timeout:g} s "
                    f"(uplink_mode all would hold every batch for them){cause}")
        if need_downlink:
            return (f"the uplink did not connect within {s.uplink_timeout:g} s "
                    f"({', '.join(late)}; the gateway would be locked out){cause}")
        return f"no uplink connected within {s.uplink_timeout:g} s ({', '.join(late)}){cause}"
    finally:
        for t in probes.values():
            t.cancel()
        await asyncio.gather(*probes.values(), return_exceptions=True)
    return None
