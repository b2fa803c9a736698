"""`make deb`, then install the package into a clean Debian 12 root, use it, upgrade it, purge it.

The clean root is a `debootstrap --variant=minbase --include=python3 bookworm` tree, made once
per machine (about 50 s from deb.debian.org) and cached as a tarball; each run unpacks a fresh
copy and works in it with chroot(8), as root. Inside, with the environment emptied, the test:
installs the .deb with dpkg (offline: the wheelhouse is in the package), runs `sensegate check`
and `sensegate doctor` on the packaged config, provisions the gateway against a mosquitto on the
host's loopback, runs the daemon as the `sensegate` user until it reports READY over
NOTIFY_SOCKET, reinstalls (the upgrade path keeps identity and key), and purges, after which no
file the package or its scripts made is left (only the system user remains, as Debian advises).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.packaging.roots import (
    CLEAN_ENV,
    ROOT,
    amd64_tarball,
    build_deb,
    edit,
    host_arch,
    set_version,
    sh,
    source_tree,
    unpack,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chroot/debootstrap (CI runs as root)"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a Debian system (no dpkg-deb)"),
]


def _arch() -> str:
    return host_arch()


@pytest.fixture
def debian_root(tmp_path: Path) -> Iterator[Path]:
    root = unpack(amd64_tarball(), tmp_path / "root")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def files(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = "/" + os.path.relpath(dirpath, root)
        if rel.startswith(("/proc", "/tmp", "/var/lib/dpkg", "/var/log", "/var/cache")):
            dirnames[:] = []
            continue
        out.update(os.path.normpath(f"{rel}/{n}") for n in dirnames + filenames)
    return out


def test_deb_builds_installs_runs_and_purges(tmp_path: Path, debian_root: Path, broker) -> None:  # type: ignore[no-untyped-def]
    root = debian_root
    # 1. the package, by the make target
    out = tmp_path / "dist"
    subprocess.run(["make", "-s", "deb", f"DEB_OUT={out}"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    (deb,) = out.glob(f"sensegate_*_{_arch()}.deb")
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    assert f"Architecture: {_arch()}" in info and "Depends: python3 (>= 3.11~), python3 (<< 3.12)" in info
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    for path in ("./lib/systemd/system/sensegate.service", "./etc/sensegate/sensegate.yaml", "./usr/bin/sensegate"):
        assert path in listing
    assert "/usr/share/sensegate/wheels/sensegate-" in listing and "/wheels/pip-" in listing

    before = files(root)
    shutil.copy(deb, root / "tmp" / deb.name)

    # 2. install, offline by construction: the root has no pip config and pip gets --no-index
    sh(root, "dpkg", "-i", f"/tmp/{deb.name}")
    assert (root / "opt/venvs/sensegate/bin/sensegate").exists()
    ident = sh(root, "id", "sensegate").stdout
    assert "dialout" in ident and "video" in ident  # groups this root has; i2c/gpio exist only on a Pi
    assert sh(root, "sensegate", "--version").stdout.startswith("sensegate ")
    assert "sim" in sh(root, "sensegate", "drivers").stdout

    # 3. check and doctor on the packaged config, before provisioning
    assert "ok (gateway CHANGE-ME" in sh(root, "sensegate", "check", "/etc/sensegate/sensegate.yaml").stdout
    doc = sh(root, "sensegate", "doctor", check=False)
    assert doc.returncode == 2, doc.stdout
    assert "[FAIL] identity: gateway id is still the placeholder" in doc.stdout
    assert "[FAIL] signing key: no signing key at /var/lib/sensegate/keys/device.key" in doc.stdout
    assert "fix: sudo sensegate provision --id" in doc.stdout

    # 4. first-boot provisioning from the boot partition, against a broker on the host's
    #    loopback (the chroot shares the network), then provision by hand again (idempotent)
    boot = root / "boot" / "firmware" / "sensegate"
    boot.mkdir(parents=True)
    (boot / "provision.conf").write_text(
        f"# from the office\nSENSEGATE_ID=gw-deb-1\nSENSEGATE_SITE='test rig'\r\nSENSEGATE_BROKER={broker.url}\n"
        "SENSEGATE_CSR=yes\n"
    )
    # a key the first boot would not know what to do with: it fails loudly, and doctor says so
    ops = root / "tmp" / "ops"
    sh(root, "sensegate", "keys", "init", "--ops", "--dir", "/tmp/ops")
    shutil.copy(ops / "ops.pub.pem", boot / "team-key.pem")
    bad = sh(root, "/usr/lib/sensegate/sensegate-firstboot", check=False)
    assert bad.returncode == 1 and "team-key.pem on the boot partition is not used" in bad.stderr
    assert (boot / "provision.conf").exists() and "FAILED" in (boot / "provision-report.txt").read_text()
    doc = sh(root, "sensegate", "doctor", check=False)
    assert "[FAIL] first boot: first-boot provisioning failed: team-key.pem" in doc.stdout
    # what `keys init --ops` makes, under the name it makes: used
    (boot / "team-key.pem").rename(boot / "ops.pub.pem")
    first = sh(root, "/usr/lib/sensegate/sensegate-firstboot")
    assert "trusted ops key /etc/sensegate/ops-keys/ops.pub.pem" in first.stdout
    assert not (root / "var/lib/sensegate/firstboot.failed").exists()
    assert "made the device key" in first.stdout, first.stdout + first.stderr
    assert (boot / "provision.conf.done").exists() and not (boot / "provision.conf").exists()
    assert (boot / "gw-deb-1.pub.pem").exists() and (boot / "tls.csr").exists()
    assert "[ ok ] identity: gateway gw-deb-1" in (boot / "provision-report.txt").read_text()
    assert sh(root, "/usr/lib/sensegate/sensegate-firstboot").returncode == 0  # once only: now a no-op
    # provisioned again from the card (a new id), the former run's results still beside the file:
    # its <gateway-id>.pub.pem is this gateway's own key, not a misnamed file to refuse
    (boot / "provision.conf").write_text(f"SENSEGATE_ID=gw-deb-2\nSENSEGATE_BROKER={broker.url}\n")
    again = sh(root, "/usr/lib/sensegate/sensegate-firstboot", check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (boot / "gw-deb-2.pub.pem").read_bytes() == (boot / "gw-deb-1.pub.pem").read_bytes()  # one key, renamed
    assert not (root / "var/lib/sensegate/keys/gw-deb-1.pub.pem").exists()  # no export binds it to the old id
    prov = sh(
        root, "sensegate", "provision", "--id", "gw-deb-1", "--site", "test rig", "--broker", broker.url, check=False
    )
    assert prov.returncode in (1, 2), prov.stdout + prov.stderr  # doctor's verdict: plain MQTT warns
    assert "kept the existing device key /var/lib/sensegate/keys/device.key" in prov.stdout
    assert "[ ok ] signing key" in prov.stdout and "[ ok ] identity: gateway gw-deb-1" in prov.stdout
    assert "[warn] broker mqtt: 127.0.0.1" in prov.stdout and "without TLS" in prov.stdout
    key = root / "var/lib/sensegate/keys/device.key"
    uid = int(sh(root, "id", "-u", "sensegate").stdout)
    assert key.stat().st_uid == uid and key.stat().st_mode & 0o777 == 0o600

    # 5. the daemon runs as the service user and reports READY over sd_notify
    log = _run_until_ready(root, WATCHDOG_USEC="2000000")
    assert "sensegate started: gateway gw-deb-1" in log, log
    assert (root / "var/lib/sensegate/buffer.db").exists()

    # 6. reinstall: identity, key and config survive, the venv is rebuilt
    fp = key.read_bytes()
    t0 = time.monotonic()
    sh(root, "dpkg", "-i", f"/tmp/{deb.name}")
    reinstall_s = time.monotonic() - t0
    assert key.read_bytes() == fp
    assert "gw-deb-1" in (root / "etc/sensegate/sensegate.yaml.d/10-provision.yaml").read_text()
    assert "ok (gateway gw-deb-1" in sh(root, "sensegate", "check", "/etc/sensegate/sensegate.yaml").stdout

    # 7. purge: nothing of ours is left
    (root / "tmp" / deb.name).unlink()
    shutil.rmtree(root / "boot" / "firmware")  # the test's provisioning files, not the package's
    shutil.rmtree(root / "tmp" / "ops")
    (root / "etc/sensegate/ops-keys/ops.pub.pem").unlink()
    (root / "etc/sensegate/sensegate.yaml.d" / "10-provision.yaml").unlink()  # provision's: purge takes /etc too
    sh(root, "dpkg", "--purge", "sensegate")
    left = files(root) - before
    user_db = {"/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-"}  # useradd's backups
    assert left <= user_db, sorted(left - user_db)
    assert not (root / "opt/venvs").exists() and not (root / "etc/sensegate").exists()
    print(f"deb {deb.stat().st_size / 1e6:.1f} MB, reinstall {reinstall_s:.1f}s")


# -- unattended upgrades ------------------------------------------------------------------------

BRANCH_POINT = "9cc11f3"  # the last commit whose provision edited the packaged sensegate.yaml itself
NEW_DEFAULT = (
    "  max_bytes: 256MiB        # bound on buffered readings",
    "  max_bytes: 200MiB        # bound on buffered readings",
)


@pytest.fixture(scope="module")
def this_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["make", "-s", "deb", f"DEB_OUT={out}"], cwd=ROOT, check=True, capture_output=True, timeout=600)
    (deb,) = out.glob(f"sensegate_*_{_arch()}.deb")
    return deb


def apt_install(root: Path, deb: Path) -> subprocess.CompletedProcess[str]:
    """What an unattended upgrade does: apt-get -y, no terminal, nothing on stdin, PATH with /usr/local first."""
    shutil.copy(deb, root / "tmp" / deb.name)
    res = subprocess.run(
        ["chroot", str(root), "apt-get", "install", "-y", "-q", f"/tmp/{deb.name}"],
        env={**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/local/bin:" + CLEAN_ENV["PATH"]},
        capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "*** sensegate.yaml (Y/I/N/O/D/Z)" not in res.stdout
    return res


def shadow_python(root: Path) -> Path:
    """A python3 first on PATH that the service user cannot use (a pyenv or /usr/local build)."""
    marker = root / "tmp" / "wrong-python-used"
    fake = root / "usr/local/bin/python3"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("#!/bin/sh\ntouch /tmp/wrong-python-used\nexit 1\n")
    fake.chmod(0o755)
    return marker


def test_unattended_upgrade_with_a_changed_default_keeps_everything(tmp_path: Path, debian_root: Path,
                                                                   this_deb: Path, broker) -> None:  # type: ignore[no-untyped-def]
    root = debian_root
    # the newer build: another version whose packaged default config differs
    src = source_tree(tmp_path / "src-new")
    set_version(src, "9.9.9")
    edit(src / "gateway/provision.py", *NEW_DEFAULT)
    newer = build_deb(src, tmp_path / "dist-new", this_deb, _arch())
    assert newer.name.startswith("sensegate_9.9.9-1_")

    marker = shadow_python(root)
    apt_install(root, this_deb)
    assert not marker.exists()  # postinst used /usr/bin/python3
    sh(root, "sensegate", "provision", "--id", "gw-up-1", "--site", "cabinet 9", "--broker", broker.url, check=False)
    local = root / "etc/sensegate/sensegate.yaml.d/50-local.yaml"
    local.write_text("gateway: {log_level: debug}\ndrivers:\n  - {driver: thermal, name: cpu, interval: 1s}\n")
    # a third-party driver, verified by its hash, installed where upgrades keep it
    wheel = _thermal_wheel(tmp_path)
    shutil.copy(wheel, root / "tmp" / wheel.name)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    bad = sh(root, "sensegate", "driver", "install", f"/tmp/{wheel.name}", "--sha256", "0" * 64, check=False)
    assert bad.returncode == 1 and "not installed" in bad.stderr
    sh(root, "sensegate", "driver", "install", f"/tmp/{wheel.name}", "--sha256", digest)
    assert "thermal" in sh(root, "sensegate", "drivers").stdout
    # the same driver again, as a bundle signed by an ops key this gateway trusts
    sh(root, "sensegate", "keys", "init", "--ops", "--dir", "/tmp/ops")
    sh(root, "sensegate", "provision", "--ops-key", "/tmp/ops/ops.pub.pem", "--no-doctor")
    sh(root, "sensegate", "driver", "bundle", f"/tmp/{wheel.name}", "--sign-key", "/tmp/ops/ops.key", "-o",
       "/tmp/thermal.sgdrv")
    bundled = sh(root, "sensegate", "driver", "install", "/tmp/thermal.sgdrv")
    assert "(bundle signed by ops key " in bundled.stdout, bundled.stdout
    # state: a buffer written by the daemon, and a pushed-config history
    _run_until_ready(root)
    history = root / "var/lib/sensegate/remote"
    (history / "configs").mkdir(parents=True, exist_ok=True)
    (history / "configs" / "r7.yaml").write_text("drivers: []\n")
    (history / "state.json").write_text('{"current": 7, "good": [7], "pending": null, "highest": 7, "seen": ""}')
    keep = ["var/lib/sensegate/keys/device.key", "var/lib/sensegate/buffer.db",
            "etc/sensegate/sensegate.yaml.d/10-provision.yaml", "etc/sensegate/sensegate.yaml.d/50-local.yaml",
            "var/lib/sensegate/remote/state.json", "var/lib/sensegate/remote/configs/r7.yaml"]
    before = {p: (root / p).read_bytes() for p in keep}

    res = apt_install(root, newer)
    assert not marker.exists()
    assert sh(root, "sensegate", "--version").stdout.strip() == "sensegate 9.9.9"
    # the new venv was built beside the old one and switched to; the old one is gone
    venvs = root / "opt/venvs"
    assert os.readlink(venvs / "sensegate").startswith("sensegate-9.9.9-1.")
    assert sorted(p.name for p in venvs.iterdir()) == ["sensegate", os.readlink(venvs / "sensegate")]
    assert {p: (root / p).read_bytes() for p in keep} == before
    assert NEW_DEFAULT[1] in (root / "etc/sensegate/sensegate.yaml").read_text()  # the new default, no prompt
    checked = sh(root, "sensegate", "check", "/etc/sensegate/sensegate.yaml").stdout
    assert "ok (gateway gw-up-1, 1 driver instance(s)" in checked
    listed = sh(root, "sensegate", "driver", "list").stdout
    assert "thermal" in listed and "loads" in listed and "bundle signed by ops key" in listed, listed + res.stdout
    assert "thermal" in sh(root, "sensegate", "drivers").stdout


def test_a_gateway_provisioned_in_the_old_layout_migrates(tmp_path: Path, debian_root: Path, this_deb: Path) -> None:
    root = debian_root
    old_src = source_tree(tmp_path / "src-old", BRANCH_POINT)
    set_version(old_src, "0.0.9")
    # the old tree still needs tenacity, which this package no longer ships: PyPI supplies it
    old = build_deb(old_src, tmp_path / "dist-old", this_deb, _arch(), wheelhouse_only=False)
    shutil.copy(old, root / "tmp" / old.name)
    sh(root, "dpkg", "-i", f"/tmp/{old.name}")
    sh(root, "sensegate", "provision", "--id", "gw-old-1", "--site", "old cabinet", "--broker",
       "mqtts://broker.example.net:8883", "--no-doctor")
    conf = root / "etc/sensegate/sensegate.yaml"
    edited = conf.read_text().replace("  log_level: info", "  log_level: warning")
    conf.write_text(edited)  # and a hand edit, as technicians did
    assert "gw-old-1" in edited
    key = (root / "var/lib/sensegate/keys/device.key").read_bytes()

    res = apt_install(root, this_deb)
    assert "moving local edits of /etc/sensegate/sensegate.yaml" in res.stdout, res.stdout
    dropins = root / "etc/sensegate/sensegate.yaml.d"
    prov = yaml.safe_load((dropins / "10-provision.yaml").read_text())
    assert prov["gateway"] == {"id": "gw-old-1", "site": "old cabinet"}
    assert prov["uplinks"][0]["url"] == "mqtts://broker.example.net:8883"
    assert yaml.safe_load((dropins / "50-local.yaml").read_text())["gateway"] == {"log_level": "warning"}
    assert (root / "etc/sensegate/sensegate.yaml.pre-upgrade").read_text() == edited
    assert "gw-old-1" not in conf.read_text()  # the package's file is the package's again
    assert (root / "var/lib/sensegate/keys/device.key").read_bytes() == key
    out = sh(root, "sensegate", "check", "/etc/sensegate/sensegate.yaml").stdout
    assert "ok (gateway gw-old-1" in out and "10-provision.yaml, 50-local.yaml" in out
    # provisioning again now changes the drop-in, and the next upgrade does not prompt either
    sh(root, "sensegate", "provision", "--broker", "mqtts://other.example.net:8883", "--no-doctor")
    apt_install(root, this_deb)
    assert "other.example.net" in (dropins / "10-provision.yaml").read_text()


def _thermal_wheel(tmp: Path) -> Path:
    out = tmp / "thermal-wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(ROOT / "examples" / "sensegate-thermal")], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


def _run_until_ready(root: Path, **env: str) -> str:
    """Run the daemon as the service user until it reports READY=1 over sd_notify; stop it, return its log."""
    notify = root / "tmp" / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    notify.chmod(0o777)
    daemon = subprocess.Popen(
        ["chroot", "--userspec=sensegate:sensegate", str(root), "/usr/bin/sensegate", "run"],
        env={**CLEAN_ENV, "NOTIFY_SOCKET": "/tmp/notify.sock", **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        listener.settimeout(60)
        while "READY=1" not in listener.recv(4096).decode():
            pass
        daemon.terminate()
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        log = daemon.communicate(timeout=30)[0].decode(errors="replace")
        listener.close()
        notify.unlink()
    return log
