"""Drivers come from any installed package through the `sensegate.drivers` entry point;
bad plugins are reported, not fatal, and misbehaving ones cannot stall the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PKG = Path(__file__).parents[1] / "fixtures" / "sgtestdrivers"


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """pip-install the test plugin package into its own directory, as a separate distribution."""
    target = tmp_path_factory.mktemp("plugins")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(PKG)], check=True, capture_output=True)
    assert (target / "sgtestdrivers-0.0.1.dist-info" / "entry_points.txt").exists()
    return {**os.environ, "PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}


def test_drivers_lists_plugins_and_reports_broken_ones(plugin_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "drivers", "--json"], env=plugin_env,
                         capture_output=True, text=True, check=True).stdout
    listing = json.loads(out)
    names = {d["name"] for d in listing["drivers"]}
    assert {"tick", "hang", "boom", "badsetup", "fatal", "flaky", "sim", "example"} <= names
    broken = {b["name"]: b["reason"] for b in listing["broken"]}
    assert "not supported" in broken["wrongapi"]
    assert "does not match entry point name 'misnamed'" in broken["misnamed"]
    assert "must name a gateway.driver_api.Manifest" in broken["notamanifest"]
    human = subprocess.run([sys.executable, "-m", "gateway", "drivers"], env=plugin_env, capture_output=True,
                           text=True, check=True).stdout
    assert "BROKEN" in human and "tick" in human


def test_misbehaving_plugins_do_not_stall_the_daemon(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    fast = {"interval": "50ms", "timeout": "200ms", "jitter": 0}
    cfg = {"gateway": {"id": "gw-ep", "state_dir": str(tmp_path / "s")}, "uplinks": [{"type": "jsonl"}],
           "drivers": [{"driver": d, "name": d, **fast} for d in ("hang", "boom", "badsetup", "fatal", "tick")]
           + [{"driver": "sim", "name": "sim", **fast, "points": [{"name": "c", "pattern": "counter"}]}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)], env=plugin_env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    ticks = [x["v"] for x in lines if x["instance"] == "tick"]
    sims = [x["v"] for x in lines if x["instance"] == "sim"]
    assert len(ticks) >= 20 and ticks == list(range(1, len(ticks) + 1)), "tick polled on schedule throughout"
    assert len(sims) >= 20
    assert {x["instance"] for x in lines} == {"tick", "sim"}
    for name in ("hang", "boom", "badsetup"):
        assert err.count(f"{name} unavailable") == 1, f"{name}: one line per outage\n{err}"
    assert "fatal stopped: register map" in err
