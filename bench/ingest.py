"""The fleet ingest's benchmark: `python -m bench --group ingest [--only NAMES] [--tiny]`.

Everything on this machine, started here and stopped after: a 3-node NATS cluster with JetStream
and MQTT (hil/nats.py), PostgreSQL from initdb with fsync on (hil/postgres.py), `sensegate
ingest` workers and `sensegate fleet simulate` (the gateway's own batch and signing code,
spreading its gateways over the three nodes' MQTT listeners). Each scenario has its own topic
prefix, durable consumer and database.

* ``throughput_*``: a backlog of signed batches is published while no worker runs (their
  durable consumer exists, so NATS keeps every batch), then 1 worker drains it; a second backlog
  is drained by 2 workers: readings/s verified and stored, from the sample at 5% of the backlog
  to the one at 95%, and the CPU each component used in that window (/proc/<pid>/stat of the
  workers, the three nats-servers, and the postmaster with all its children), per stored
  reading. NATS's CPU while the backlog was published (taking the gateways' MQTT, replicating)
  is its own column. ``capacity`` is 2 cores divided by the CPU a stored reading costs in all:
  the rate if the components had this machine's two cores to themselves; ``with NATS in`` adds
  NATS's cost of taking the reading from the gateway (both happen at once in a running fleet).
* ``memory``: one worker's RSS at 100, 1,000 and 10,000 enrolled gateways, before any batch,
  after a first backlog and after a second as large (growth with the number of batches).
* ``latency`` (and ``latency_5k``): 200 gateways at a steady 20,000 (5,000) readings/s, each
  sending a batch a second, into 2 running workers: p50/p99 from a reading's timestamp to its row's commit
  (half a batch interval of that is the gateway's own batching), and from a batch's newest
  reading to its commit, from the workers' histograms over the steady window.

The two throughput scenarios at 10,000 gateways differ only in batch size (100 and 10 readings),
which splits the CPU into a cost per batch and a cost per reading (``cost model``).

The machine is shared with other work: each result carries the load average during its
measurement. Figures, never assertions; `make test` runs ``--tiny`` only to see that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.ingest.metrics import AGE_BOUNDS
from gateway.testing import free_port
from hil.nats import NatsCluster
from hil.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
PG_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min"}  # a database taking rows all day


# -- processes and what they cost ----------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """``pid`` and its direct children (PostgreSQL: the postmaster and its backends)."""
    out = [pid]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


class Site:
    """The cluster and the database, for the whole group."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cluster = NatsCluster(work / "nats", size=3)
        self.pg = Postgres(log_dir=work, settings=PG_SETTINGS)

    def __enter__(self) -> Site:
        self.cluster.start()
        try:
            self.pg.start()
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.pg.destroy()
        self.cluster.stop()

    @property
    def mqtt_urls(self) -> str:
        return ",".join(self.cluster.mqtt_url(i) for i in range(len(self.cluster.nodes)))

    def database(self, name: str) -> str:
        import psycopg

        admin = self.pg.dsn.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.pg.dsn.rsplit("/", 1)[0] + f"/{name}"

    def cpu(self, workers: list[Worker]) -> dict[str, float]:
        """CPU seconds so far of each component."""
        assert self.pg.pid is not None
        return {"workers": sum(cpu_seconds(w.proc.pid) for w in workers),
                "nats": sum(cpu_seconds(p) for p in self.cluster.pids().values()),
                "postgres": sum(cpu_seconds(p) for p in children(self.pg.pid))}


class Worker:
    """`sensegate ingest` with its metrics endpoint."""

    def __init__(self, site: Site, db: str, prefix: str, name: str, fetch: int = 256) -> None:
        self.port = free_port()
        self.log = site.work / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PY, "-m", "gateway", "ingest", "--db", db, "--broker", site.cluster.url, "--prefix", prefix,
                 "--name", f"ingest-{prefix}", "--metrics", f"127.0.0.1:{self.port}", "--fetch", str(fetch),
                 "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=log)

    def ready(self, within: float = 60.0) -> Worker:
        """Until its metrics say it is taking batches."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-2000:]}")
            if self.metrics().get("sensegate_ingest_source_up") == 1:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {within}s: {self.log.read_text()[-2000:]}")

    def metrics(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def stored(workers: list[Worker]) -> int:
    return int(sum(w.metrics().get("sensegate_ingest_readings_stored_total", 0) for w in workers))


def simulate(*args: str) -> tuple[dict[str, Any], float, float]:
    """`sensegate fleet simulate ... --json`: its summary, wall seconds and CPU seconds."""
    t, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([PY, "-m", "gateway", "fleet", "simulate", *args, "--json"], cwd=ROOT, capture_output=True,
                          timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise RuntimeError(f"simulate failed: {proc.stderr.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(proc.stdout)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return summary, wall, cpu


def fleet(site: Site, db: str, *args: str) -> str:
    r = subprocess.run([PY, "-m", "gateway", "fleet", *args, "--db", db], cwd=ROOT, capture_output=True, text=True,
                       timeout=1800)
    if r.returncode not in (0, 1):
        raise RuntimeError(f"fleet {args[0]} failed: {r.stderr[-2000:]}")
    return r.stdout


def prepare(site: Site, name: str, gateways: int) -> tuple[str, Path]:
    """A database with ``gateways`` enrolled, and the scenario's durable consumer made."""
    keys = site.work / "keys" / f"g{gateways}"
    if not keys.exists():
        simulate("--gateways", str(gateways), "--rate", "0", "--keys", str(keys), "--export-only")
    db = site.database(name)
    fleet(site, db, "enrol", str(keys))
    w = Worker(site, db, name, f"{name}-setup").ready()  # its consumer exists from now on: NATS keeps batches
    w.stop()
    return db, keys


def preload(site: Site, name: str, keys: Path, gateways: int, readings: int, batch: int) -> dict[str, Any]:
    """Publish a backlog while no worker runs; NATS's CPU per reading published."""
    n0 = {k: v for k, v in site.cpu([]).items() if k == "nats"}
    summary, wall, cpu = simulate("--gateways", str(gateways), "--rate", "0", "--batch-readings", str(batch),
                                  "--readings", str(readings), "--keys", str(keys), "--broker", site.mqtt_urls,
                                  "--prefix", name, "--heartbeat", "0", "--connections", str(min(gateways, 48)))
    n1 = site.cpu([])["nats"]
    issued = summary["totals"]["readings"]
    return {"readings": issued, "publish_s": wall, "sim_readings_per_s": summary["readings_per_s"],
            "nats_in_us": (n1 - n0["nats"]) / max(issued, 1) * 1e6, "simulator_us": cpu / max(issued, 1) * 1e6,
            "all_acked": summary["all_acked"]}


def drain(site: Site, db: str, name: str, workers: int, expect: int, within: float = 1800.0) -> dict[str, Any]:
    """Start ``workers`` and measure them taking the backlog; they are stopped after."""
    ws = [Worker(site, db, name, f"{name}-w{i}-{time.monotonic_ns()}") for i in range(workers)]
    samples: list[tuple[float, int, dict[str, float], float]] = []
    loads: list[float] = []
    before = stored(ws)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            n = stored(ws) - before
            samples.append((time.monotonic(), n, site.cpu(ws), os.getloadavg()[0]))
            if n >= expect:
                break
            time.sleep(0.25)
        rss = max(rss_mib(w.proc.pid) for w in ws)
    finally:
        for w in ws:
            w.stop()
    a = next(s for s in samples if s[1] >= expect * 0.05)
    b = next((s for s in samples if s[1] >= expect * 0.95), samples[-1])
    n = max(b[1] - a[1], 1)
    us = {k: (b[2][k] - a[2][k]) / n * 1e6 for k in a[2]}
    us["total"] = sum(us.values())
    loads = [s[3] for s in samples if a[0] <= s[0] <= b[0]] or [samples[-1][3]]
    return {"workers": workers, "readings_per_s": n / max(b[0] - a[0], 1e-6), "stored": samples[-1][1],
            "us_per_reading": us, "capacity_readings_per_s": CORES * 1e6 / max(us["total"], 1e-9),
            "worker_rss_mib": rss, "load_avg": sum(loads) / len(loads)}


def ledger_totals(db: str) -> tuple[int, int, int]:
    """(readings in the ledgers, rows in the readings table, readings missing)."""
    import psycopg

    with psycopg.connect(db) as c:
        led = c.execute("SELECT coalesce(sum(readings), 0), coalesce(sum(missing), 0) FROM ledger").fetchone()
        rows = c.execute("SELECT count(*) FROM readings").fetchone()
    assert led is not None and rows is not None
    return int(led[0]), int(rows[0]), int(led[1])


# -- the scenarios ----------------------------------------------------------------------------------

def throughput(site: Site, name: str, gateways: int, batch: int, readings: int) -> dict[str, Any]:
    db, keys = prepare(site, name, gateways)
    out: dict[str, Any] = {"gateways": gateways, "batch_readings": batch, "backlog_readings": readings}
    total = 0
    for workers in (1, 2):
        pre = preload(site, name, keys, gateways, readings, batch)
        total += pre["readings"]
        run = drain(site, db, name, workers, pre["readings"])
        run["capacity_with_publish_readings_per_s"] = CORES * 1e6 / max(run["us_per_reading"]["total"]
                                                                        + pre["nats_in_us"], 1e-9)
        out[f"{workers}w"] = {**run, **{k: v for k, v in pre.items() if k != "readings"}}
    in_ledger, rows, missing = ledger_totals(db)
    out["ratio_2w_1w"] = out["2w"]["readings_per_s"] / out["1w"]["readings_per_s"]
    out["verified_ok"] = in_ledger == rows == total and missing == 0
    out["stored_rows"] = rows
    return out


def memory(site: Site, sizes: tuple[int, ...], readings: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}}
    for gateways in sizes:
        name = f"mem{gateways}"
        db, keys = prepare(site, name, gateways)
        batch = max(1, min(100, readings // gateways))
        w = Worker(site, db, name, f"{name}-w").ready()
        try:
            idle = rss_mib(w.proc.pid)
            marks = []
            for _ in range(2):
                before = stored([w])
                pre = preload(site, name, keys, gateways, readings, batch)  # taken as it comes
                deadline = time.monotonic() + 600
                while stored([w]) - before < pre["readings"] and time.monotonic() < deadline:
                    time.sleep(0.25)
                marks.append(rss_mib(w.proc.pid))
            batches = w.metrics().get("sensegate_ingest_batches_stored_total", 0)
        finally:
            w.stop()
        out["sizes"][gateways] = {"rss_idle_mib": idle, "rss_after_1_mib": marks[0], "rss_after_2_mib": marks[1],
                                  "batches": batches, "batch_readings": batch}
    lo, hi = out["sizes"][sizes[0]], out["sizes"][sizes[-1]]
    # a gateway costs a worker its registry entry (the key, loaded once): the idle RSS; the backlog's
    # working set (a fetch of messages, their readings, the COPY stream) is the same for any fleet
    out["kib_per_gateway"] = (hi["rss_idle_mib"] - lo["rss_idle_mib"]) * 1024 / (sizes[-1] - sizes[0])
    out["growth_mib_per_backlog"] = max(s["rss_after_2_mib"] - s["rss_after_1_mib"] for s in out["sizes"].values())
    out["verified_ok"] = True
    return out


def _quantile(counts: list[float], q: float) -> float:
    """Seconds at quantile ``q`` of a histogram's bucket counts (linear within a bucket)."""
    total = sum(counts)
    if not total:
        return float("nan")
    want, running, lower = q * total, 0.0, 0.0
    for bound, n in zip([*AGE_BOUNDS, AGE_BOUNDS[-1] * 2], counts, strict=True):
        if running + n >= want:
            return lower + (bound - lower) * ((want - running) / n if n else 0.0)
        running, lower = running + n, bound
    return lower


def _buckets(workers: list[Worker], name: str) -> list[float]:
    """Per-bucket counts (not cumulative), summed over the workers."""
    les = [f"{b:g}" for b in AGE_BOUNDS] + ["+Inf"]
    total = [0.0] * len(les)
    for w in workers:
        m = w.metrics()
        cum = [m.get(f'{name}_bucket{{le="{le}"}}', 0.0) for le in les]
        for i, c in enumerate(cum):
            total[i] += c - (cum[i - 1] if i else 0.0)
    return total


def latency(site: Site, gateways: int, rate: float, seconds: float, warmup: float = 8.0) -> dict[str, Any]:
    name = f"lat{int(rate)}"
    db, keys = prepare(site, name, gateways)
    ws = [Worker(site, db, name, f"{name}-w{i}").ready() for i in range(2)]
    try:
        sim = subprocess.Popen(
            [PY, "-m", "gateway", "fleet", "simulate", "--gateways", str(gateways), "--rate", str(rate),
             "--interval", "1", "--seconds", str(seconds + warmup + 2), "--keys", str(keys), "--broker",
             site.mqtt_urls, "--prefix", name, "--connections", str(min(gateways, 48)), "--json"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(warmup)
        hists = ("sensegate_ingest_reading_age_seconds", "sensegate_ingest_batch_age_seconds")
        r0 = {k: _buckets(ws, k) for k in hists}
        n0, t0, loads = stored(ws), time.monotonic(), []
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            loads.append(os.getloadavg()[0])
        r1 = {k: _buckets(ws, k) for k in r0}
        n1, t1 = stored(ws), time.monotonic()
        out, err = sim.communicate(timeout=600)
        if sim.returncode != 0:
            raise RuntimeError(f"simulate failed: {err.decode()[-2000:]}")
    finally:
        for w in ws:
            w.stop()
    reading = [b - a for a, b in zip(r0["sensegate_ingest_reading_age_seconds"],
                                     r1["sensegate_ingest_reading_age_seconds"], strict=True)]
    batch = [b - a for a, b in zip(r0["sensegate_ingest_batch_age_seconds"],
                                   r1["sensegate_ingest_batch_age_seconds"], strict=True)]
    sim_out = json.loads(out)
    return {"gateways": gateways, "offered_readings_per_s": rate, "batch_interval_s": 1.0,
            "simulated_readings_per_s": sim_out["readings_per_s"],
            "stored_readings_per_s": (n1 - n0) / (t1 - t0),
            "reading_p50_ms": _quantile(reading, 0.5) * 1000, "reading_p99_ms": _quantile(reading, 0.99) * 1000,
            "batch_p50_ms": _quantile(batch, 0.5) * 1000, "batch_p99_ms": _quantile(batch, 0.99) * 1000,
            "load_avg": sum(loads) / max(len(loads), 1), "verified_ok": sim_out["all_acked"]}


def scenarios(tiny: bool, seconds: float) -> dict[str, Callable[[Site], dict[str, Any]]]:
    if tiny:
        return {
            "throughput_tiny": lambda s: throughput(s, "ttiny", 50, 20, 20_000),
            "memory_tiny": lambda s: memory(s, (20, 50), 4_000),
            "latency_tiny": lambda s: latency(s, 50, 1_000, 4.0, warmup=4.0),
        }
    return {
        "throughput_1k": lambda s: throughput(s, "t1k", 1_000, 100, 1_000_000),
        "throughput_10k": lambda s: throughput(s, "t10k", 10_000, 100, 1_000_000),
        "throughput_10k_small": lambda s: throughput(s, "t10ks", 10_000, 10, 300_000),
        "memory": lambda s: memory(s, (100, 1_000, 10_000), 200_000),
        "latency": lambda s: latency(s, 200, 20_000, seconds),
        "latency_5k": lambda s: latency(s, 200, 5_000, seconds),
    }


# -- the report -------------------------------------------------------------------------------------

def cost_model(big: dict[str, Any], small: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per component, (us per batch, us per reading) from two runs that differ in batch size."""
    nb, ns = big["batch_readings"], small["batch_readings"]
    out = {}
    for k in ("workers", "nats", "postgres", "total"):
        tb, ts_ = big["2w"]["us_per_reading"][k], small["2w"]["us_per_reading"][k]
        per_batch = (ts_ - tb) / (1 / ns - 1 / nb)
        out[k] = (per_batch, tb - per_batch / nb)
    tb, ts_ = big["2w"]["nats_in_us"], small["2w"]["nats_in_us"]
    per_batch = (ts_ - tb) / (1 / ns - 1 / nb)
    out["nats in"] = (per_batch, tb - per_batch / nb)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    head = ("scenario", "gateways", "rd/batch", "1 worker r/s", "2 workers r/s", "2w/1w", "worker us/r", "NATS us/r",
            "PG us/r", "total us/r", "capacity r/s", "NATS in us/r", "with NATS in", "worker MiB", "load")
    rows = [head]
    for name, r in results.items():
        if "1w" not in r:
            continue
        one, two = r["1w"], r["2w"]
        us = two["us_per_reading"]
        rows.append((name, f"{r['gateways']:,}", str(r["batch_readings"]), f"{one['readings_per_s']:,.0f}",
                     f"{two['readings_per_s']:,.0f}", f"{r['ratio_2w_1w']:.2f}", f"{us['workers']:.1f}",
                     f"{us['nats']:.1f}", f"{us['postgres']:.1f}", f"{us['total']:.1f}",
                     f"{two['capacity_readings_per_s']:,.0f}", f"{two['nats_in_us']:.1f}",
                     f"{two['capacity_with_publish_readings_per_s']:,.0f}",
                     f"{max(one['worker_rss_mib'], two['worker_rss_mib']):.1f}",
                     f"{one['load_avg']:.1f}/{two['load_avg']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    big, small = results.get("throughput_10k"), results.get("throughput_10k_small")
    if big and small:
        model = cost_model(big, small)
        lines.append("")
        lines.append("cost model (10,000 gateways, 100 vs 10 readings a batch): "
                     "us a reading = us a batch / batch size + us a reading")
        for k, (per_batch, per_reading) in model.items():
            lines.append(f"  {k:<9} {per_batch:7.0f} us a batch + {per_reading:5.1f} us a reading")
    for name, r in results.items():
        if "sizes" in r:
            lines.append("")
            lines.append(f"{name}: worker RSS MiB (idle / after a backlog / after a second one)")
            for g, s in r["sizes"].items():
                lines.append(f"  {int(g):>6,} gateways: {s['rss_idle_mib']:.1f} / {s['rss_after_1_mib']:.1f} / "
                             f"{s['rss_after_2_mib']:.1f}  ({s['batches']:,.0f} batches of {s['batch_readings']})")
            lines.append(f"  per enrolled gateway: {r['kib_per_gateway']:.2f} KiB (idle); growth from a second "
                         f"backlog: {r['growth_mib_per_backlog']:+.1f} MiB at most")
        if "reading_p50_ms" in r:
            lines.append("")
            lines.append(f"{name}: {r['gateways']:,} gateways, {r['offered_readings_per_s']:,.0f} readings/s asked "
                         f"({r['simulated_readings_per_s']:,.0f}/s simulated, a batch a second each), "
                         f"{r['stored_readings_per_s']:,.0f}/s stored; reading -> committed "
                         f"p50 {r['reading_p50_ms']:.0f} ms, p99 {r['reading_p99_ms']:.0f} ms; a batch's newest "
                         f"reading -> committed p50 {r['batch_p50_ms']:.0f} ms, p99 {r['batch_p99_ms']:.0f} ms "
                         f"(load {r['load_avg']:.1f})")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    chosen = scenarios(args.tiny, args.seconds if args.seconds != 12.0 else 30.0)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sensegate-bench-ingest-") as tmp, Site(Path(tmp)) as site:
        for name, fn in chosen.items():
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = fn(site)
            except Exception as e:  # one broken scenario must not hide the others
                errors[name] = f"{type(e).__name__}: {e}"
                print(f"  {name} failed: {errors[name]}", file=sys.stderr, flush=True)
    print(table(results))
    for name, e in errors.items():
        print(f"FAILED   {name}: {e}")
    out = Path(args.out if args.out != "bench/results/latest.json" else "bench/results/ingest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {"cost_model": cost_model(results["throughput_10k"], results["throughput_10k_small"])} \
        if "throughput_10k" in results and "throughput_10k_small" in results else {}
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(), "cpus": CORES,
                               "postgres_settings": PG_SETTINGS, "results": results, "errors": errors, **extra},
                              indent=2, default=str))
    print(f"written to {out}")
    return 0 if not errors and all(r.get("verified_ok") for r in results.values()) else 1

