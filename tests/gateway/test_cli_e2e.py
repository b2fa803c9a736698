"""The command line as users run it: keys, run, receive, demo (real processes, real broker)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hil.mosquitto import Mosquitto

SG = [sys.executable, "-m", "gateway"]


def test_keys_init_makes_a_private_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = subprocess.run([*SG, "keys", "init", "--dir", str(tmp_path / "k"), "--alg", "es256"],
                         capture_output=True, text=True, check=True).stdout
    key = tmp_path / "k" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "fingerprint:" in out and "es256" in out
    again = subprocess.run([*SG, "keys", "init", "--dir", str(tmp_path / "k")], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr


def _config(tmp: Path, url: str) -> Path:
    subprocess.run([*SG, "keys", "init", "--dir", str(tmp / "state" / "keys")], check=True, capture_output=True)
    cfg = {"gateway": {"id": "gw-cli", "state_dir": str(tmp / "state")},
           "uplinks": [{"type": "mqtt", "url": url}],
           "drivers": [{"driver": "sim", "interval": "50ms", "points": [{"name": "n", "pattern": "counter"}]}]}
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_daemon_refuses_a_world_readable_key(tmp_path: Path) -> None:
    config = _config(tmp_path, "mqtt://127.0.0.1:1")
    (tmp_path / "state/keys/device.key").chmod(0o644)
    r = subprocess.run([*SG, "run", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "readable by others" in r.stderr and "chmod 600" in r.stderr


def test_run_and_receive_report_a_complete_verified_stream(tmp_path: Path, broker: Mosquitto) -> None:
    config = _config(tmp_path, broker.url)
    trust = f"gw-cli={tmp_path / 'state/keys/device.pub.pem'}"
    rx = subprocess.Popen([*SG, "receive", "--url", broker.url, "--trust", trust,
                           "--count", "30", "--timeout", "30", "--json", "--out", str(tmp_path / "r.jsonl")],
                          stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    gw = subprocess.Popen([*SG, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        out, _ = rx.communicate(timeout=40)
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=20)
    assert gw.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert rx.returncode == 0
    assert summary["readings"] >= 30 and summary["gaps"] == 0 and summary["bad_signatures"] == 0 and summary["ok"]
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [x["v"] for x in lines[:30]] == list(range(30))
    assert lines[0]["node"] == "gw-cli" and lines[0]["path"] == "ip2" and lines[0]["gw"] == "gw-cli"


def test_sighup_reloads_and_sigterm_stops_cleanly(tmp_path: Path) -> None:
    cfg = {"gateway": {"id": "gw-hup", "state_dir": str(tmp_path / "s")}, "uplinks": [{"type": "jsonl"}],
           "drivers": [{"driver": "sim", "name": "a", "interval": "50ms", "points": [{"name": "x"}]}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.Popen([*SG, "run", "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert p.stdout is not None
        first = json.loads(p.stdout.readline())
        assert first["point"] == "x"
        path.write_text("gateway: [broken")  # a bad edit: reported, the running config stays
        p.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert p.poll() is None
        cfg["drivers"][0]["points"] = [{"name": "y"}]
        path.write_text(yaml.safe_dump(cfg))
        p.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if json.loads(p.stdout.readline())["point"] == "y":
                break
        else:
            raise AssertionError("reload did not take effect")
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=20)
    assert p.returncode == 0
    assert "reload refused, keeping the running config" in err
    assert "YAML syntax error" in err
    assert "sensegate stopped" in err


def test_demo_shows_verified_batches(tmp_path: Path) -> None:
    r = subprocess.run([*SG, "demo", "--seconds", "4", "--dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "signature verified" in r.stdout
    assert "OK: complete and verified" in r.stdout
    assert "boiler-room/temperature" in r.stdout
    assert "meter-1/power_total" in r.stdout, "the simulated Modbus energy meter delivers"
    assert "SHA-256 verified" in r.stdout, "a camera image arrives with a verified hash"


def test_demo_with_the_embedded_ingest_ends_with_a_complete_report(tmp_path: Path) -> None:
    """`sensegate demo --ingest` (make demo-ingest): the embedded ingest stores the demo gateway's
    readings in SQLite and its `fleet report` says complete, heartbeat included."""
    db = tmp_path / "kept.db"
    r = subprocess.run([*SG, "demo", "--seconds", "4", "--dir", str(tmp_path / "w"), "--ingest", str(db)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    report = r.stdout.split("$ sensegate fleet report", 1)[1]
    line = next(x for x in report.splitlines() if x.startswith("demo-gw-1"))
    assert line.endswith("complete") and "heartbeat" in report, report
    received = int(line.split()[1])
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT count(*), count(DISTINCT seq) FROM readings").fetchone()
    finally:
        conn.close()
    assert rows == (received, received) and received > 0, (rows, received)
