"""The rig report: a short markdown summary of one rig run (the JUnit XML comes from pytest).

Each scenario adds a ``ScenarioResult`` with the receiver's counts and its faults; the summary
(``summary.md`` next to ``junit.xml``, in ``out/rig/`` by default) has one table row per
scenario, then per-fault recovery times, notes and the soak's samples.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hil.faults import FaultRecord


@dataclass
class ScenarioResult:
    """What one scenario saw: produced (numbered by the buffer) vs received, and its faults."""

    name: str
    produced: int = 0  # readings the daemon accepted (buffer next_seq - 1 over all runs)
    received: int = 0  # distinct readings the receiver verified
    gaps: int = 0  # readings missing with no declared drop: lost by the gateway (never the broker's below)
    broker_lost: int = 0  # in batches a crashed broker acknowledged to the gateway and lost (its log, the buffer agree)
    duplicate_batches: int = 0
    duplicate_readings: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # declared drops by reason
    skipped: int = 0  # numbers skipped after an unclean stop (kill -9) that never arrived
    faults: list[FaultRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_device: dict[str, int] = field(default_factory=dict)  # readings received per rig device
    outcome: str = "?"  # passed / failed / skipped (filled in from pytest)
    wall_s: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)  # soak: RSS, CPU, buffer depth over time

    def take(self, summary: Any) -> None:
        """Copy the receiver's counts (a gateway.receiver.Summary)."""
        self.received = summary.readings
        self.gaps = summary.gaps
        self.duplicate_batches = summary.duplicates
        self.duplicate_readings = summary.duplicate_readings
        self.dropped = dict(summary.drop_reasons)
        self.skipped = summary.skipped

    def note(self, text: str) -> None:
        self.notes.append(text)


class RigReport:
    """All scenarios of one rig run; ``write()`` renders ``summary.md`` (and ``summary.json``)."""

    def __init__(self, rig: str, out_dir: Path) -> None:
        self.rig = rig
        self.out_dir = out_dir
        self.started = time.time()
        self.scenarios: dict[str, ScenarioResult] = {}
        self.skipped_devices: dict[str, str] = {}

    def scenario(self, key: str, name: str) -> ScenarioResult:
        res = self.scenarios[key] = ScenarioResult(name)
        return res

    def markdown(self) -> str:
        took = time.time() - self.started
        lines = [f"# Rig run: {self.rig}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}, {took:.0f} s wall time. "
                 "Produced = readings the daemon numbered (buffer `next_seq - 1`); received = distinct readings "
                 "the reference receiver verified; gaps = missing and not declared dropped, not explained by a broker "
                 "crash: lost by the gateway; lost in broker = in batches a crashed broker had acknowledged "
                 "(PUBACK) to the gateway and not saved, proven from the broker's packet log and the gateway's "
                 "buffer (hil/README.md, \"Broker restart\"); skipped = numbers "
                 "declared after an unclean stop (kill -9) that never arrived: lost in it, or never used.", ""]
        if self.skipped_devices:
            lines.append("Devices left out: " + "; ".join(f"`{k}`: {v}" for k, v in self.skipped_devices.items()))
            lines.append("")
        lines += ["| scenario | result | produced | received | gaps | lost in broker | duplicates (batches/readings) | "
                  "dropped (declared) | skipped | wall s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
        for r in self.scenarios.values():
            drops = ", ".join(f"{n} {why}" for why, n in r.dropped.items()) or "0"
            lines.append(f"| {r.name} | {r.outcome} | {r.produced} | {r.received} | {r.gaps} | {r.broker_lost} | "
                         f"{r.duplicate_batches}/{r.duplicate_readings} | {drops} | {r.skipped} | {r.wall_s:.1f} |")
        faults = [(r.name, f) for r in self.scenarios.values() for f in r.faults]
        if faults:
            lines += ["", "## Faults and recovery", "",
                      "Recovery: from clearing the fault to the scenario's recovery condition (named per fault).", "",
                      "| scenario | fault | mechanism | lasted s | recovery s |", "| --- | --- | --- | ---: | ---: |"]
            for name, f in faults:
                rec = "-" if f.recovery_s is None else f"{f.recovery_s:.2f}"
                lines.append(f"| {name} | {f.name} | {f.mechanism} | {f.duration_s:.1f} | {rec} |")
        per_dev = [(r.name, r.per_device) for r in self.scenarios.values() if r.per_device]
        if per_dev:
            lines += ["", "## Readings received per device", ""]
            for name, d in per_dev:
                lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in d.items()))
        notes = [(r.name, n) for r in self.scenarios.values() for n in r.notes]
        if notes:
            lines += ["", "## Notes", ""]
            lines += [f"- {name}: {n}" for name, n in notes]
        soaks = [r for r in self.scenarios.values() if r.samples]
        for r in soaks:
            lines += ["", f"## {r.name}: samples", "", "| t s | RSS MiB | CPU % | buffered readings |",
                      "| ---: | ---: | ---: | ---: |"]
            step = max(1, len(r.samples) // 12)
            for s in r.samples[::step]:
                lines.append(f"| {s['t']:.0f} | {s['rss_mib']:.1f} | {s['cpu_pct']:.1f} | {s['buffered']:.0f} |")
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "summary.md"
        path.write_text(self.markdown())
        data = {"rig": self.rig, "skipped_devices": self.skipped_devices,
                "scenarios": {k: {**asdict(v), "faults": [{**asdict(f), "recovery_s": f.recovery_s,
                                                             "duration_s": f.duration_s} for f in v.faults]}
                              for k, v in self.scenarios.items()}}
        (self.out_dir / "summary.json").write_text(json.dumps(data, indent=1, default=str))
        return path
