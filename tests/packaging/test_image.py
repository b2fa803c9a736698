"""`make image-check`: the gateway image booted as a whole machine under qemu-system-aarch64, with real systemd.

`deploy/image/build.sh` makes the image from the arm64 package; the test writes the folder a
technician puts on the boot partition (gateway id, TLS broker at the host's 10.0.2.2 as QEMU's
user networking shows it, the broker's CA, an ops key, an SSH key), boots the image with its own
kernel on `-M virt`, and over SSH checks: first boot provisioned, the unit is active (Type=notify:
READY=1 reached), a hung agent is caught by the watchdog and restarted, batches arrive verified
at a receiver on the host, and an unattended upgrade to a newer package inside the machine keeps
it delivering with no gap. Deselected from `make test` (marker ``image``): it runs in its own target.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.testing.procs import free_port
from hil.mosquitto import Mosquitto
from tests.gateway.tlsutil import make_pki
from tests.packaging.roots import ROOT, build_deb, edit, set_version, source_tree

pytestmark = [
    pytest.mark.slow,
    pytest.mark.image,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, binfmt_misc) as CI has"),
]
BOOT_OFFSET = 4 * 1024 * 1024


def _ssh(port: int, key: Path, *cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ssh", "-p", str(port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
                          "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes",
                          "root@127.0.0.1", *cmd], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def test_image_boots_provisions_survives_watchdog_and_upgrade(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(["make", "-s", "deb", "DEB_ARCH=arm64", f"DEB_OUT={dist}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=900)
    (deb,) = dist.glob("sensegate_*_arm64.deb")
    src = source_tree(tmp_path / "src-new")
    set_version(src, "9.9.9")
    edit(src / "gateway/provision.py", "  max_bytes: 256MiB ", "  max_bytes: 200MiB ")
    newer = build_deb(src, tmp_path / "dist-new", deb, "arm64")
    image = tmp_path / "gw.img"
    subprocess.run([str(ROOT / "deploy/image/build.sh"), str(image), str(deb)], check=True, capture_output=True,
                   timeout=3600)

    # the folder a technician copies onto the boot partition
    pki = make_pki(tmp_path / "pki", server_ips=("127.0.0.1", "10.0.2.2"))
    folder = tmp_path / "sensegate"
    folder.mkdir()
    broker = Mosquitto(tmp_path / "mq", tls={"cafile": pki["ca"], "certfile": pki["server_cert"],
                                             "keyfile": pki["server_key"]}, persistence=False)
    broker.start()
    (folder / "provision.conf").write_text(f"SENSEGATE_ID=gw-img-1\nSENSEGATE_BROKER=mqtts://10.0.2.2:{broker.port}\n")
    shutil.copy(pki["ca"], folder / "broker-ca.pem")
    subprocess.run([sys.executable, "-m", "gateway", "keys", "init", "--ops", "--dir", str(tmp_path / "ops")],
                   check=True, capture_output=True)
    shutil.copy(tmp_path / "ops" / "ops.pub.pem", folder / "ops.pub.pem")
    sshkey = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshkey)], check=True)
    shutil.copy(str(sshkey) + ".pub", folder / "authorized_keys")
    subprocess.run(["mcopy", "-s", "-i", f"{image}@@{BOOT_OFFSET}", str(folder), "::"], check=True)

    port = free_port()
    console = open(tmp_path / "console.log", "wb")  # noqa: SIM115 (closed in finally)
    qemu = subprocess.Popen(
        ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024", "-nographic",
         "-kernel", f"{image}.vmlinuz", "-initrd", f"{image}.initrd",
         "-append", "root=LABEL=RASPIROOT rw console=ttyAMA0 net.ifnames=0",
         "-drive", f"file={image},format=raw,if=virtio",
         "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0"],
        stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
    )
    receiver = None
    try:
        deadline = time.monotonic() + 900
        while _ssh(port, sshkey, "true", timeout=30, check=False).returncode != 0:
            assert qemu.poll() is None and time.monotonic() < deadline, (tmp_path / "console.log").read_text()[-4000:]
            time.sleep(5)
        # 1. first boot provisioned from the boot partition; the unit reached READY
        assert _ssh(port, sshkey, "test", "-f", "/boot/firmware/sensegate/provision.conf.done").returncode == 0
        _ssh(port, sshkey, "timeout 600 sh -c 'until systemctl is-active -q sensegate; do sleep 2; done'")
        show = _ssh(port, sshkey, "systemctl", "show", "sensegate", "-p", "Type,ActiveState,StatusText").stdout
        assert "Type=notify" in show and "ActiveState=active" in show and "drivers running" in show, show
        pub = tmp_path / "gw-img-1.pub.pem"
        pub.write_text(_ssh(port, sshkey, "cat", "/var/lib/sensegate/keys/device.pub.pem").stdout)
        _ssh(port, sshkey, "printf 'drivers:\\n  - {driver: sim, name: s, interval: 200ms, points: [{name: t, "
                           "pattern: sine}]}\\n' > /etc/sensegate/sensegate.yaml.d/50-local.yaml && "
                           "systemctl reload sensegate")
        receiver = subprocess.Popen(
            [sys.executable, "-m", "gateway", "receive", "--url", f"mqtts://127.0.0.1:{broker.port}", "--ca",
             pki["ca"], "--trust", str(pub), "--count", "400", "--timeout", "1500", "--json", "--out", ""],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # 2. a hung agent: the watchdog (WatchdogSec=30s) kills it and systemd restarts it
        pid = _ssh(port, sshkey, "systemctl", "show", "-p", "MainPID", "--value", "sensegate").stdout.strip()
        _ssh(port, sshkey, "kill", "-STOP", pid)
        _ssh(port, sshkey, f"timeout 300 sh -c 'until [ \"$(systemctl show -p MainPID --value sensegate)\" != {pid} ] "
                           "&& systemctl is-active -q sensegate; do sleep 2; done'")
        journal = _ssh(port, sshkey, "journalctl", "-u", "sensegate", "--no-pager").stdout
        assert "Watchdog timeout" in journal, journal[-3000:]
        # 3. an unattended upgrade inside the machine
        subprocess.run(["scp", "-P", str(port), "-i", str(sshkey), "-o", "StrictHostKeyChecking=no", "-o",
                        "UserKnownHostsFile=/dev/null", str(newer), "root@127.0.0.1:/tmp/"], check=True,
                       capture_output=True, timeout=300)
        _ssh(port, sshkey, f"DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/{newer.name} </dev/null",
             timeout=3600)
        assert _ssh(port, sshkey, "sensegate", "--version").stdout.strip() == "sensegate 9.9.9"
        _ssh(port, sshkey, "timeout 600 sh -c 'until systemctl is-active -q sensegate; do sleep 2; done'")
        out, err = receiver.communicate(timeout=1600)
        summary = json.loads(out)
        assert summary["readings"] >= 400 and summary["ok"] and summary["gaps"] == 0, (summary, err)
    finally:
        if receiver is not None and receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        qemu.kill()
        qemu.wait()
        console.close()
        broker.stop()
