"""`make arm64-check`: the arm64 package, installed and run on arm64 (Debian 12 under qemu-user-static).

`make deb DEB_ARCH=arm64` is checked to hold arm64 wheels only; the package is installed with
dpkg into the gateway image's arm64 root file system (deploy/image/rootfs.sh, cached), whose
programs run under qemu-user-static through binfmt_misc. Inside, with no systemd (the path
documented for containers and test benches): `sensegate provision` against a mosquitto on the
host's loopback (a chroot shares the host's network), `sensegate doctor` (its clock check must
not fail where the NTP state cannot be seen), then `sensegate run` in the foreground as the
`sensegate` user, whose batches a receiver on the host verifies: complete, no gap, every
signature good. Times under emulation say nothing about a Pi's speed and are not reported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.doctor_agent import fetch_status
from gateway.testing.procs import free_port
from tests.packaging.roots import ROOT, arm64_tarball, sh, unpack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.arm64,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chroot/debootstrap/binfmt_misc (CI runs as root)"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (no dpkg-deb)"),
]

READINGS = 300


@pytest.fixture(scope="module")
def arm64_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["make", "-s", "deb", "DEB_ARCH=arm64", f"DEB_OUT={out}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    (deb,) = out.glob("sensegate_*_arm64.deb")
    return deb


@pytest.fixture
def arm64_root(tmp_path: Path) -> Iterator[Path]:
    root = unpack(arm64_tarball(), tmp_path / "root")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_arm64_package_holds_arm64_wheels_only(arm64_deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-f", str(arm64_deb), "Architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert info == "arm64"
    listing = subprocess.run(["dpkg-deb", "-c", str(arm64_deb)], capture_output=True, text=True, check=True).stdout
    wheels = [line.rsplit("/", 1)[1] for line in listing.splitlines() if "/usr/share/sensegate/wheels/" in line
              and line.endswith(".whl")]
    compiled = [w for w in wheels if not w.endswith(("-none-any.whl", "-py3-none-any.whl"))]
    assert {w.split("-")[0].lower() for w in compiled} >= {"cryptography", "pynacl", "pyyaml", "cbor2"}, wheels
    assert all("aarch64" in w for w in compiled), compiled
    assert not [w for w in wheels if "x86_64" in w or "i686" in w]


def test_installs_provisions_and_delivers_verified_batches_on_arm64(arm64_deb: Path, arm64_root: Path, broker,
                                                                    tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = arm64_root
    assert sh(root, "uname", "-m").stdout.strip() == "aarch64"  # the root's own programs, emulated
    shutil.copy(arm64_deb, root / "tmp" / arm64_deb.name)
    sh(root, "dpkg", "-i", f"/tmp/{arm64_deb.name}", timeout=1800)
    venv_python = (root / "opt/venvs/sensegate/bin/python3").resolve()
    assert str(venv_python).endswith("/usr/bin/python3.11")  # the distribution's Python
    header = (root / "usr/bin/python3.11").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    version = sh(root, "sensegate", "--version").stdout
    assert version.startswith("sensegate ")

    gw = "gw-arm64"
    prov = sh(root, "sensegate", "provision", "--id", gw, "--site", "arm64 bench", "--broker", broker.url,
              check=False, timeout=600)
    assert prov.returncode in (0, 1), prov.stdout + prov.stderr  # 1: doctor warns (plain MQTT, clock unseen)
    assert "made the device key" in prov.stdout
    local = root / "etc/sensegate/sensegate.yaml.d/50-local.yaml"
    metrics = free_port()  # the host's network: not the packaged 9108, which may be taken here
    local.write_text(
        "batch: {max_readings: 50, min_interval: 50ms}\n"
        f"metrics: {{listen: '127.0.0.1:{metrics}'}}\n"
        "drivers:\n"
        "  - {driver: sim, name: bench, interval: 100ms, points: [{name: t, unit: Cel, pattern: sine}]}\n"
    )
    assert "ok (gateway gw-arm64" in sh(root, "sensegate", "check", "/etc/sensegate/sensegate.yaml").stdout
    stopped = sh(root, "sensegate", "doctor", check=False, timeout=600)  # before the agent runs: it says so
    assert "[FAIL] agent: not running: nothing answers on http://127.0.0.1:" in stopped.stdout, stopped.stdout

    trust = tmp_path / f"{gw}.pub.pem"  # what provision exported for the receiver, named by the gateway id
    shutil.copy(root / f"var/lib/sensegate/keys/{gw}.pub.pem", trust)
    receiver = subprocess.Popen(
        [sys.executable, "-m", "gateway", "receive", "--url", broker.url, "--trust", str(trust), "--count",
         str(READINGS), "--timeout", "600", "--json", "--out", ""],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    daemon = subprocess.Popen(
        ["chroot", "--userspec=sensegate:sensegate", str(root), "/usr/bin/sensegate", "run"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not isinstance(fetch_status(f"127.0.0.1:{metrics}", 2.0), dict):
            assert daemon.poll() is None and time.monotonic() < deadline, "the daemon did not come up"
            time.sleep(1)
        doc = sh(root, "sensegate", "doctor", check=False, timeout=600)  # with the agent running
        assert "[FAIL]" not in doc.stdout and doc.returncode in (0, 1), doc.stdout
        assert "[ ok ] agent: running since" in doc.stdout and "[ ok ] drivers: 1/1 instance(s) running" in doc.stdout
        assert "[ ok ] identity: gateway gw-arm64" in doc.stdout and "[ ok ] signing key" in doc.stdout
        out, err = receiver.communicate(timeout=660)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = -9
        log = daemon.communicate(timeout=30)[0].decode(errors="replace")
    summary = json.loads(out)
    assert summary["readings"] >= READINGS and summary["ok"], (summary, err, log[-3000:])
    assert summary["gaps"] == 0 and summary["bad_signatures"] == 0 and summary["chain_breaks"] == 0
    assert code == 0, log[-3000:]
    assert f"sensegate started: gateway {gw}" in log
