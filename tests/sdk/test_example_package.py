"""examples/sensegate-thermal, the example out-of-tree driver package: installed (pip --target,
offline, see test_scaffold.py for why), its own tests pass with sensegate's pytest plugin, and
the real daemon runs it through its `sensegate.drivers` entry point."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sdk.installs import BIN, ROOT, ok, passed, pip_install_target, run

EXAMPLE = ROOT / "examples" / "sensegate-thermal"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(site dir with the example installed, a copy of the project without its package source)."""
    tmp = tmp_path_factory.mktemp("example")
    project = tmp / "sensegate-thermal"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    site = tmp / "site"
    pip_install_target(project, site)
    shutil.rmtree(project / "sensegate_thermal")  # from now on only the installed copy imports
    return site, project


def test_passes_the_checker() -> None:
    assert ok(run([str(BIN / "sensegate"), "driver", "check", str(EXAMPLE)], ROOT)).endswith(": ok\n")


def test_its_own_tests_pass_when_installed(installed: tuple[Path, Path]) -> None:
    site, project = installed
    assert passed(ok(run([str(BIN / "pytest"), "-q"], project, [site]))) >= 15


def test_daemon_runs_it_through_the_entry_point(installed: tuple[Path, Path], tmp_path: Path) -> None:
    site, _ = installed
    sys.path.insert(0, str(site))
    try:
        from sensegate_thermal.sim_device import FakeThermal
    finally:
        sys.path.remove(str(site))
    sysfs = FakeThermal(str(tmp_path / "thermal"))
    (tmp_path / "thermal").mkdir()
    sysfs.add("cpu-thermal", 51.25)
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-thermal, state_dir: {tmp_path / 'state'}}}\n"
        f"uplinks: [{{type: jsonl, path: {out}}}]\n"
        f"drivers:\n  - {{driver: thermal, interval: 100ms, base_path: {sysfs.path}}}\n"
    )
    check = run([str(BIN / "sensegate"), "check", str(cfg)], tmp_path, [site])
    assert ok(check).startswith(f"{cfg}: ok")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(
        [str(BIN / "sensegate"), "run", "-c", str(cfg)],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(site)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        rows: list[dict[str, object]] = []
        while not rows and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if out.exists():
                rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        assert rows, f"no readings from the daemon; stderr:\n{_stop(proc)}"
        first = rows[0]
        assert (first["node"], first["point"], first["v"], first["u"]) == ("gw-thermal", "cpu_thermal", 51.25, "Cel")
        assert first["instance"] == "thermal" and first["path"] == "ip2"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    _, err = proc.communicate(timeout=15)
    return err.decode(errors="replace")
