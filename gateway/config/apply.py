"""Work out what a new config changes, so only the affected parts restart.

Every top-level section of the config (gateway.config.schema.Config) says here how it takes
effect when it changes, by SIGHUP or by a remote push (``APPLY``). A section added to the schema
without an entry fails a test: a section nobody applies would be accepted and silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.config.validate import GatewayConfig, Instance

How = Literal["read", "pipeline", "metrics", "instances"]

APPLY: dict[str, tuple[How, str]] = {
    "config_version": ("read", "the file's format version: read at load (older files are migrated); "
                               "nothing runs on it"),
    "gateway": ("pipeline", "the pipeline restarts (identity: id, state_dir and key_file cannot be pushed); "
                            "log_level alone changes the log level at once"),
    "buffer": ("pipeline", "the pipeline restarts on the same buffer file"),
    "batch": ("pipeline", "the pipeline restarts"),
    "uplinks": ("pipeline", "the pipeline restarts with the new uplinks"),
    "uplink_mode": ("pipeline", "the pipeline restarts in the new mode"),
    "metrics": ("metrics", "the endpoint starts, stops or moves; the status interval restarts its timer"),
    "remote": ("pipeline", "local file only (a push that changes it is refused); on SIGHUP the pipeline "
                           "restarts so the uplinks subscribe for the new groups, and the CoAP listener moves"),
    "drivers": ("instances", "only the instances whose sections changed restart; a change to an instance's "
                             "report rules alone applies without a restart (open windows are reported)"),
    "health": ("read", "nothing restarts: the next health gate and health summary read it"),
}
LIVE_GATEWAY = {"log_level"}  # gateway fields applied without a restart


@dataclass(frozen=True)
class Plan:
    """What changes: instances to stop and start, the pipeline, the metrics endpoint, the log level."""

    stop: tuple[str, ...]
    start: tuple[str, ...]
    keep: tuple[str, ...]
    restart_pipeline: bool
    retune: tuple[str, ...] = ()  # kept instances whose report rules alone changed (applied live)
    metrics: bool = False
    log_level: bool = False
    health: bool = False  # the expected-absent instances changed (read, nothing restarts)
    sections: tuple[str, ...] = ()  # the top-level sections that differ
    restart_for: tuple[str, ...] = ()  # the sections that restart the pipeline

    @property
    def empty(self) -> bool:
        """Nothing changes."""
        return not (self.stop or self.start or self.retune or self.restart_pipeline or self.metrics
                    or self.log_level or self.health)


def plan(old: GatewayConfig, new: GatewayConfig) -> Plan:
    """Compare two validated configs; an instance restarts only if its own section changed."""
    old_by = {i.name: i for i in old.instances}
    new_by = {i.name: i for i in new.instances}
    retune = [n for n, i in old_by.items() if n in new_by and _only_report(i, new_by[n])]
    stop = [
        n
        for n, i in old_by.items()
        if n not in retune and (n not in new_by or new_by[n].config != i.config or new_by[n].manifest is not i.manifest)
    ]
    start = [n for n in new_by if n not in old_by or n in stop]
    keep = [n for n in new_by if n in old_by and n not in stop]
    a, b = old.config, new.config
    sections = tuple(k for k in APPLY if getattr(a, k) != getattr(b, k))
    lives = {f: getattr(b.gateway, f) for f in LIVE_GATEWAY}
    gateway_restart = a.gateway.model_copy(update=lives) != b.gateway
    restart_for = tuple(k for k in sections if APPLY[k][0] == "pipeline" and (k != "gateway" or gateway_restart))
    return Plan(tuple(stop), tuple(start), tuple(keep), bool(restart_for), tuple(retune),
                metrics="metrics" in sections, log_level=a.gateway.log_level != b.gateway.log_level,
                health="health" in sections,
                sections=sections, restart_for=restart_for)


def _only_report(old: Instance, new: Instance) -> bool:
    """The instance's section changed in its report rules and nowhere else: no restart needed."""
    a, b = old.config, new.config
    return (new.manifest is old.manifest and a.report != b.report
            and a.model_copy(update={"report": b.report}) == b)
