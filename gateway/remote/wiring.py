"""Driver instances expected absent (``health.expect_absent``): devices not wired yet.

Until such an instance first reaches ``running`` it does not count against a push's health gate
and the fleet view shows it as expected-absent rather than down. The first run is remembered in
``<state_dir>/remote/wired.json`` (so a reboot does not forget it): from then on the instance
counts like any other, and a push that breaks it rolls back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gateway.remote.store import write_atomic

log = logging.getLogger("sensegate.remote")


class Wiring:
    """The expected-absent instances that have come up at least once (persisted)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.up: set[str] = set()

    def open(self) -> None:
        try:
            raw = json.loads(self.path.read_bytes())
            self.up = {str(n) for n in raw.get("up", [])}
        except FileNotFoundError:
            self.up = set()
        except (ValueError, TypeError, AttributeError, OSError) as e:
            log.error("%s is unreadable (%s); every expected-absent instance counts as not wired yet", self.path, e)
            self.up = set()

    def absent(self, cfg: Any) -> set[str]:
        """Instances of ``cfg`` listed as expected-absent that have not come up yet."""
        if cfg is None:
            return set()
        return set(cfg.config.health.expect_absent) - self.up

    def observe(self, cfg: Any, supervisor: Any) -> None:
        """Record the expected-absent instances running now (their first run: they count from now on)."""
        runners = getattr(supervisor, "runners", None) or {}
        came = {n for n in self.absent(cfg) if n in runners and runners[n].stats.state == "running"}
        if not came:
            return
        self.up |= came
        for n in sorted(came):
            log.info("driver instance %s came up for the first time; it counts in the health gate from now on", n)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, json.dumps({"up": sorted(self.up)}).encode())
        except OSError as e:
            log.error("cannot record the first run of %s in %s: %s", ", ".join(sorted(came)), self.path, e)
