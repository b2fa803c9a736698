"""The ingest worker's numbers and their Prometheus text form (the gateway's format helpers).

Counters are this worker's since it started (Prometheus adds the workers up); the ledger's
missing readings are read from the database, so every worker reports the fleet's figure.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway import __version__
from gateway.ingest.contract import StoreReport, VerifiedBatch
from gateway.metrics import MetricsServer, _Family, _num, process_stats

AGE_BOUNDS = tuple(round(0.001 * 2 ** (k / 2), 6) for k in range(44))  # 1 ms ... 49 min, each ~1.41x the last


class Histogram:
    """Counts of seconds in AGE_BOUNDS buckets (a Prometheus histogram)."""

    def __init__(self) -> None:
        self._bounds_ns = [int(b * 1e9) for b in AGE_BOUNDS]
        self.counts = [0] * (len(AGE_BOUNDS) + 1)  # the last: above every bound
        self.sum_ns = 0

    def observe_ns(self, values: Iterable[int]) -> None:
        counts, bounds, total = self.counts, self._bounds_ns, 0
        for v in values:
            counts[bisect.bisect_left(bounds, v)] += 1
            total += v
        self.sum_ns += total

    def lines(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        running = 0
        for bound, n in zip(AGE_BOUNDS, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        running += self.counts[-1]
        out += [f'{name}_bucket{{le="+Inf"}} {running}', f"{name}_sum {_num(self.sum_ns / 1e9)}",
                f"{name}_count {running}"]
        return out


@dataclass
class IngestMetrics:
    """What one worker did; ``render`` turns it into the exposition format."""

    worker: str = ""
    batches: int = 0
    readings: int = 0
    time_uncertain: int = 0  # readings stored that were stamped on an unsynchronised clock
    time_redated: int = 0  # readings given a corrected time
    duplicates: int = 0
    blobs: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    transactions: int = 0
    store_seconds: float = 0.0
    store_failures: int = 0  # transactions that could not reach the database
    handed_back: int = 0  # messages given back to the broker for another try
    ignored: int = 0  # messages on topics the ingest does not store (status, unknown)
    storage_up: bool = False
    source_up: bool = False
    lag_messages: int = 0
    lag_seconds: float = 0.0
    gateways_missing: int = 0  # gateways whose ledger has readings unaccounted for
    readings_missing: int = 0
    reading_age: Histogram = field(default_factory=Histogram)  # a reading's time -> its commit
    batch_age: Histogram = field(default_factory=Histogram)  # a batch's newest reading -> its commit
    heartbeats: int = 0

    def committed(self, batches: Iterable[VerifiedBatch], at_ns: int) -> None:
        """How old the readings of a committed transaction's batches were (re-deliveries too)."""
        for b in batches:
            if b.readings:
                self.reading_age.observe_ns(at_ns - r.ts_ns for r in b.readings)
                self.batch_age.observe_ns((at_ns - b.ts_max,))

    def stored(self, report: StoreReport, seconds: float) -> None:
        self.batches += report.batches
        self.readings += report.readings
        self.time_uncertain += report.time_uncertain
        self.time_redated += report.time_redated
        self.duplicates += report.duplicates
        self.blobs += report.blobs
        for reason, n in report.refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + n
        self.heartbeats += report.heartbeats
        self.transactions += 1
        self.store_seconds += seconds

    def render(self) -> str:
        fams: list[_Family] = []

        def fam(name: str, kind: str, help_: str, value: object = None, **labels: object) -> _Family:
            f = _Family(name, kind, help_)
            if value is not None:
                f.add(value, **labels)
            fams.append(f)
            return f

        fam("sensegate_ingest_build_info", "gauge", "Version of the ingest worker.", 1, version=__version__,
            worker=self.worker)
        fam("sensegate_ingest_batches_stored_total", "counter", "New batches stored.", self.batches)
        fam("sensegate_ingest_readings_stored_total", "counter", "New reading rows stored.", self.readings)
        fam("sensegate_ingest_readings_time_uncertain_total", "counter",
            "Readings stored that their gateway stamped on a clock it did not call synchronised.", self.time_uncertain)
        fam("sensegate_ingest_readings_redated_total", "counter",
            "Such readings given a corrected time (a later synchronised clock of the same run).", self.time_redated)
        fam("sensegate_ingest_duplicates_total", "counter",
            "Batches received again (re-sends, replays, re-deliveries): nothing inserted.", self.duplicates)
        fam("sensegate_ingest_blobs_stored_total", "counter", "Blobs completed and verified.", self.blobs)
        refused = fam("sensegate_ingest_refused_total", "counter", "Messages quarantined, by reason.")
        for reason, n in sorted(self.refused.items()):
            refused.add(n, reason=reason)
        fam("sensegate_ingest_transactions_total", "counter", "Store transactions committed.", self.transactions)
        fam("sensegate_ingest_store_seconds_total", "counter", "Time spent in store transactions.",
            self.store_seconds)
        fam("sensegate_ingest_store_failures_total", "counter", "Transactions that could not reach the database.",
            self.store_failures)
        fam("sensegate_ingest_handed_back_total", "counter", "Messages handed back to the broker for another try.",
            self.handed_back)
        fam("sensegate_ingest_ignored_total", "counter", "Messages on topics the ingest does not store.",
            self.ignored)
        fam("sensegate_ingest_storage_up", "gauge", "1 while the database answers.", self.storage_up)
        fam("sensegate_ingest_source_up", "gauge", "1 while the broker answers.", self.source_up)
        fam("sensegate_ingest_lag_messages", "gauge", "Messages waiting in the broker for the ingest.",
            self.lag_messages)
        fam("sensegate_ingest_lag_seconds", "gauge", "Age of the last message taken from the broker.",
            self.lag_seconds)
        fam("sensegate_ingest_ledger_gateways_missing", "gauge",
            "Gateways whose ledger has readings neither received nor declared.", self.gateways_missing)
        fam("sensegate_ingest_ledger_readings_missing", "gauge",
            "Readings neither received nor declared, over every gateway.", self.readings_missing)
        fam("sensegate_ingest_heartbeats_total", "counter", "Gateway heartbeats taken into the ledger.",
            self.heartbeats)
        proc = process_stats()
        fam("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", proc.get("rss_bytes"))
        fam("process_cpu_seconds_total", "counter", "Total user and system CPU time in seconds.",
            proc.get("cpu_seconds"))
        lines = [line for f in fams if f.samples for line in f.lines()]
        lines += self.reading_age.lines("sensegate_ingest_reading_age_seconds",
                                        "From a reading's timestamp to the commit that stored it.")
        lines += self.batch_age.lines("sensegate_ingest_batch_age_seconds",
                                      "From a batch's newest reading to the commit that stored it.")
        return "\n".join(lines) + "\n"


class IngestMetricsServer(MetricsServer):
    """GET /metrics of an ingest worker (the gateway's endpoint, serving these numbers)."""

    def __init__(self, metrics: IngestMetrics, fleet: Any = None) -> None:
        super().__init__(None)
        self.metrics = metrics
        self.fleet = fleet  # gateway.fleet.web.FleetPage: the fleet page at /fleet, with ledger verdicts

    def page(self) -> str:
        return self.metrics.render()

    async def route(self, path: str, query: str) -> tuple[str, str, str] | None:
        return None if self.fleet is None else await self.fleet.route(path, query)
