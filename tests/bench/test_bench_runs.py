"""The benchmark runs end to end on a tiny load (figures are not asserted: see bench/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())["results"]["tiny"]
    assert data["readings_received"] > 0 and data["verified_ok"] and data["gaps"] == 0
    assert "readings_per_s" in r.stdout


def test_signing_bench_tiny(tmp_path: Path) -> None:
    """bench/signing.py runs every key kind (PEM, SoftHSM2, the simulated TPM) and prints its table."""
    out = tmp_path / "signing.json"
    r = subprocess.run([sys.executable, "-m", "bench.signing", "--tiny", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(out.read_text())["results"]
    assert {"PEM ed25519", "PEM es256", "SoftHSM2 es256", "SoftHSM2 ed25519"} <= results.keys()
    assert all(results[k]["signatures"] >= 3 for k in ("SoftHSM2 es256", "SoftHSM2 ed25519"))
    assert "ceiling readings/s" in r.stdout


def test_edge_savings_pair_each_deadband_run_with_its_plain_run() -> None:
    from bench.__main__ import _mqtt_framing, edge_savings

    plain = {"uplink_bytes_per_s": 1000.0, "disk_bytes_per_s": 500.0, "readings_per_s": 100.0, "batches_per_s": 10.0}
    after = {"uplink_bytes_per_s": 100.0, "disk_bytes_per_s": 50.0, "readings_per_s": 5.0, "batches_per_s": 2.0}
    got = edge_savings({"m": plain, "m_deadband": after, "lonely_deadband": after, "other": plain})
    assert set(got) == {"m"}
    assert got["m"]["uplink_bytes_per_s_ratio"] == 0.1 and got["m"]["readings_per_s_after"] == 5.0
    # an MQTT 5 QoS 1 PUBLISH of a 1,000-byte batch on sensegate/gw-1/batch: 1 + 2 + 2 + 20 + 2 + 1
    assert _mqtt_framing("gw-1", 1000) == 28


@pytest.mark.slow
def test_ingest_bench_tiny(tmp_path: Path) -> None:
    """bench/ingest.py runs its three kinds of scenario (a NATS cluster, PostgreSQL, the simulator,
    workers) and prints its tables; what it stored is checked against what was published."""
    out = tmp_path / "ingest.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--group", "ingest", "--tiny", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(out.read_text())["results"]
    t = results["throughput_tiny"]
    assert t["verified_ok"] and t["stored_rows"] == 40_000 and t["2w"]["us_per_reading"]["workers"] > 0, t
    assert results["latency_tiny"]["stored_readings_per_s"] > 0 and results["memory_tiny"]["sizes"]
    assert "2 workers r/s" in r.stdout and "worker RSS MiB" in r.stdout
