"""Work out what a new config changes, so only the affected parts restart."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.validate import GatewayConfig


@dataclass(frozen=True)
class Plan:
    """Instances to stop and start, and whether the pipeline (buffer/uplinks) must restart."""

    stop: tuple[str, ...]
    start: tuple[str, ...]
    keep: tuple[str, ...]
    restart_pipeline: bool

    @property
    def empty(self) -> bool:
        """Nothing changes."""
        return not (self.stop or self.start or self.restart_pipeline)


def plan(old: GatewayConfig, new: GatewayConfig) -> Plan:
    """Compare two validated configs; an instance restarts only if its own section changed."""
    old_by = {i.name: i for i in old.instances}
    new_by = {i.name: i for i in new.instances}
    stop = [
        n
        for n, i in old_by.items()
        if n not in new_by or new_by[n].config != i.config or new_by[n].manifest is not i.manifest
    ]
    start = [n for n in new_by if n not in old_by or n in stop]
    keep = [n for n in new_by if n in old_by and n not in stop]
    a, b = old.config, new.config
    restart_pipeline = (a.gateway, a.buffer, a.batch, a.uplinks) != (b.gateway, b.buffer, b.batch, b.uplinks)
    return Plan(tuple(stop), tuple(start), tuple(keep), restart_pipeline)
