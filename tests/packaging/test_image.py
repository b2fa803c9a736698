"""`make image-check`: the gateway image booted as a whole machine under qemu-system-aarch64, with real systemd.

What a technician does, step by step, on an emulated machine: `deploy/image/build.sh` makes the
image from the arm64 package; it is flashed onto a card (an 8 GB file); the provisioning folder
goes onto the card's boot partition (gateway id, TLS broker at the host's 10.0.2.2 as QEMU's
user networking shows it, the broker's CA, an ops key, an SSH key for the field team, and the
office's settings with a simulated sensor); the machine is powered on with the kernel, initrd
and command line the Pi's firmware would load from that boot partition. Then, over SSH:

- first boot provisioned from the boot partition, and the unit reached READY (Type=notify);
- a third-party driver installed with `sensegate driver install` (verified by its hash) that
  blocks the event loop for real (a blocking call in a coroutine) is caught by the systemd
  watchdog, which aborts the process (faulthandler's stack shows the culprit), and systemd
  restarts it;
- an unattended upgrade to a newer package (`apt-get install -y`, no terminal) inside the
  machine keeps the driver, and the gateway goes on delivering;
- a receiver on the host verifies every batch from first boot to after the upgrade: no gap, no
  bad signature.

The time of each on-site step is written to ``$SENSEGATE_IMAGE_REPORT`` when set (make
image-check: out/image-check.txt); emulated timings are no performance figures. Deselected from
`make test` (marker ``image``): it runs in its own target (docs/deploying.md says why).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
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
MIB = 1024 * 1024
BOOT = f"@@{4 * MIB}"  # mtools: the FAT boot partition starts 4 MiB into the image
CARD_BYTES = 8 * 1024 * MIB
GW = "gw-img-1"
OFFICE_YAML = """\
# prepared in the office: the gateway's sensors (here a simulated one)
batch: {max_readings: 50, min_interval: 100ms}
drivers:
  - {driver: sim, name: s, interval: 200ms, points: [{name: t, unit: Cel, pattern: sine}]}
"""
WEDGE_YAML = """\
drivers:
  - {driver: sim, name: s, interval: 200ms, points: [{name: t, unit: Cel, pattern: sine}]}
  - {driver: wedge, name: w, interval: 1s}
"""


class Machine:
    """The booted gateway, reached over SSH through QEMU's port forward."""

    def __init__(self, port: int, key: Path) -> None:
        self.port, self.key = port, key

    def _args(self) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "BatchMode=yes", "-o",
                "LogLevel=ERROR", "root@127.0.0.1"]

    def sh(self, script: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self._args(), script], capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
        if check and res.returncode != 0:
            raise AssertionError(f"{script} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
        return res

    def put(self, src: Path, dest: str) -> None:
        """Copy a file in (over the SSH channel: no sftp needed)."""
        with open(src, "rb") as f:
            res = subprocess.run([*self._args(), f"cat > {shlex.quote(dest)}"], stdin=f, capture_output=True,
                                 timeout=600)
        assert res.returncode == 0, res.stderr

    def wait(self, condition: str, timeout: float) -> None:
        """Run a shell condition in the machine until it holds (bounded there and here)."""
        self.sh(f"timeout {int(timeout)} sh -c {shlex.quote(f'until {condition}; do sleep 1; done')}",
                timeout=timeout + 60)


class Report:
    """The on-site steps' durations, in the order they happened."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float]] = []
        self.t = time.monotonic()
        self.doctor = ""  # doctor's report on the booted gateway

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.t))
        self.t = now

    def write(self) -> None:
        path = os.environ.get("SENSEGATE_IMAGE_REPORT")
        lines = [f"{name}: {secs:.0f} s" for name, secs in self.steps]
        print("\n".join(lines))
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text("make image-check (emulated: qemu-system-aarch64 TCG)\n" + "\n".join(lines)
                                  + "\n\n" + self.doctor)


def _wedge_wheel(tmp: Path) -> Path:
    out = tmp / "wedge-wheel"
    build = tmp / "wedge-src"
    shutil.copytree(ROOT / "tests/packaging/wedge_driver", build)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(build)], check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


def _readings(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _longest_pause(path: Path) -> float:
    """The longest time between two consecutive readings of the simulated sensor (seconds)."""
    stamps = sorted(json.loads(line)["t_ns"] for line in path.read_text().splitlines() if '"point":"t"' in line)
    return max(((b - a) / 1e9 for a, b in itertools.pairwise(stamps)), default=0.0)


def _until(what: str, cond, timeout: float, qemu: subprocess.Popen[bytes], console: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert qemu.poll() is None, f"the machine stopped while waiting for {what}:\n{console.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s:\n{console.read_text()[-4000:]}"
        time.sleep(1)


def test_image_boots_provisions_survives_watchdog_and_upgrade(tmp_path: Path) -> None:
    report = Report()
    dist = tmp_path / "dist"
    subprocess.run(["make", "-s", "deb", "DEB_ARCH=arm64", f"DEB_OUT={dist}"], cwd=ROOT, check=True,
                   capture_output=True, timeout=1800)
    (deb,) = dist.glob("sensegate_*_arm64.deb")
    src = source_tree(tmp_path / "src-new")
    set_version(src, "9.9.9")
    edit(src / "gateway/provision.py", "  max_bytes: 256MiB ", "  max_bytes: 200MiB ")
    newer = build_deb(src, tmp_path / "dist-new", deb, "arm64")
    wheel = _wedge_wheel(tmp_path)
    report.step("packages built (arm64 .deb, a newer one, the test driver's wheel)")
    image = tmp_path / "sensegate-pi-arm64.img"
    built = subprocess.run([str(ROOT / "deploy/image/build.sh"), str(image), str(deb)], capture_output=True,
                           text=True, timeout=7200)
    assert built.returncode == 0, built.stderr[-4000:]
    report.step("make image (deploy/image/build.sh, root file system cached)")

    # the technician: flash the card, put the folder on its boot partition
    card = tmp_path / "card.img"
    subprocess.run(["dd", f"if={image}", f"of={card}", "bs=4M", "conv=sparse,fsync", "status=none"], check=True)
    os.truncate(card, CARD_BYTES)
    report.step("flash (dd the image onto an 8 GB card)")
    pki = make_pki(tmp_path / "pki", server_ips=("127.0.0.1", "10.0.2.2"))
    folder = tmp_path / "sensegate"
    folder.mkdir()
    broker = Mosquitto(tmp_path / "mq", tls={"cafile": pki["ca"], "certfile": pki["server_cert"],
                                             "keyfile": pki["server_key"]}, persistence=False)
    shutil.copy(pki["ca"], folder / "broker-ca.pem")
    subprocess.run([sys.executable, "-m", "gateway", "keys", "init", "--ops", "--dir", str(tmp_path / "ops")],
                   check=True, capture_output=True)
    shutil.copy(tmp_path / "ops" / "ops.pub.pem", folder / "ops.pub.pem")
    (folder / "sensegate.yaml").write_text(OFFICE_YAML)
    sshkey = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(sshkey)], check=True)
    shutil.copy(str(sshkey) + ".pub", folder / "authorized_keys")

    # what the Pi's firmware loads from the boot partition: kernel, initrd and command line
    def boot_file(name: str) -> Path:
        subprocess.run(["mcopy", "-o", "-i", f"{card}{BOOT}", f"::{name}", str(tmp_path / name)], check=True)
        return tmp_path / name

    firmware = dict(
        line.replace("=", " ", 1).split(None, 1) for line in boot_file("config.txt").read_text().splitlines()
        if line.startswith(("kernel=", "initramfs "))
    )
    kernel, initrd = boot_file(firmware["kernel"]), boot_file(firmware["initramfs"].split()[0])
    cmdline = boot_file("cmdline.txt").read_text().split()
    assert "root=LABEL=RASPIROOT" in cmdline, cmdline
    # the virt machine's serial port is a PL011 (ttyAMA0), the Pi 4's console is ttyS1
    cmdline = [a for a in cmdline if not a.startswith("console=")] + ["console=ttyAMA0"]

    receiver = None
    qemu = None
    console_log = tmp_path / "console.log"
    console = open(console_log, "wb")  # noqa: SIM115 (closed in finally)
    readings = tmp_path / "readings.jsonl"
    try:
        broker.start()
        (folder / "provision.conf").write_text(
            f"SENSEGATE_ID={GW}\nSENSEGATE_SITE=image check\nSENSEGATE_BROKER=mqtts://10.0.2.2:{broker.port}\n")
        subprocess.run(["mcopy", "-s", "-i", f"{card}{BOOT}", str(folder), "::"], check=True)
        report.step("put the provisioning folder on the boot partition (mcopy)")
        t0 = time.monotonic()

        port = free_port()
        qemu = subprocess.Popen(
            ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024", "-nographic",
             "-kernel", str(kernel), "-initrd", str(initrd),
             "-append", " ".join(cmdline), "-drive", f"file={card},format=raw,if=virtio",
             "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0,romfile="],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
        )
        m = Machine(port, sshkey)
        _until("SSH", lambda: m.sh("true", timeout=30, check=False).returncode == 0, 1200, qemu, console_log)
        report.step("power on: boot to SSH")

        # 1. first boot provisioned from the boot partition; the unit reached READY
        m.wait("systemctl is-active -q sensegate", 600)
        report.step("power on: SSH to sensegate READY")
        m.sh(f"test -f /boot/firmware/sensegate/provision.conf.done && test ! -e /var/lib/sensegate/firstboot.failed"
             f" && grep -q {GW} /boot/firmware/sensegate/provision-report.txt")
        # the root file system grew to the card's size
        size = int(m.sh("df --output=size -B1 / | tail -n 1").stdout)
        assert size > CARD_BYTES * 0.8, size
        show = m.sh("systemctl show sensegate -p Type,ActiveState,StatusText").stdout
        assert "Type=notify" in show and "ActiveState=active" in show and "drivers running" in show, show
        # the technician collects the gateway's public key, named by its id, from the boot partition
        pub = tmp_path / f"{GW}.pub.pem"
        pub.write_text(m.sh(f"cat /boot/firmware/sensegate/{GW}.pub.pem").stdout)
        receiver = subprocess.Popen(
            [sys.executable, "-m", "gateway", "receive", "--url", f"mqtts://127.0.0.1:{broker.port}", "--ca",
             pki["ca"], "--trust", str(pub), "--json", "--out", str(readings)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _until("verified reading", lambda: _readings(readings) > 0, 300, qemu, console_log)
        report.step("power on: first verified batch at the receiver")
        report.steps.append(("power on to first verified batch, total", time.monotonic() - t0))
        doctor = m.sh("sensegate doctor", check=False, timeout=900).stdout
        # doctor under real systemd: the agent runs the local file and delivers; the only failure
        # allowed is the clock, when this machine cannot reach an NTP server (QEMU's user network)
        assert "[ ok ] agent: running since" in doctor and "[ ok ] running config: the local file" in doctor, doctor
        assert "[ ok ] drivers: 1/1 instance(s) running" in doctor and "[ ok ] delivery:" in doctor, doctor
        failed = [line for line in doctor.splitlines() if line.startswith("[FAIL]")]
        assert all(line.startswith("[FAIL] clock: the clock is not synchronised") for line in failed), doctor

        # 2. a driver that blocks the event loop: the watchdog aborts it, systemd restarts it
        m.put(wheel, f"/tmp/{wheel.name}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        m.sh(f"sensegate driver install /tmp/{wheel.name} --sha256 {digest}", timeout=900)
        m.sh(f"cat > /etc/sensegate/sensegate.yaml.d/50-local.yaml <<'EOF'\n{WEDGE_YAML}EOF\n"
             "sensegate check /etc/sensegate/sensegate.yaml && systemctl reload sensegate")
        m.wait("systemctl show sensegate -p StatusText --value | grep -q '2 drivers running'", 300)
        pid = m.sh("systemctl show -p MainPID --value sensegate").stdout.strip()
        since = m.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        m.sh("touch /var/lib/sensegate/wedge")
        wedged = time.monotonic()
        m.wait(f"[ \"$(systemctl show -p MainPID --value sensegate)\" != {pid} ] && systemctl is-active -q sensegate",
               300)
        journal = m.sh(f"journalctl -u sensegate --no-pager --since '{since}'").stdout
        assert "Watchdog timeout" in journal, journal[-4000:]
        assert "wedging the event loop" in journal and "sensegate_wedge" in journal, journal[-4000:]  # the stack
        assert m.sh("test -e /var/lib/sensegate/wedge", check=False).returncode == 1
        report.steps.append(("wedged loop to restarted and READY (WatchdogSec=30s, RestartSec=5s)",
                             time.monotonic() - wedged))

        # 3. an unattended upgrade inside the machine; the driver is kept and delivery goes on
        m.put(newer, f"/tmp/{newer.name}")
        before = _readings(readings)
        up = time.monotonic()
        m.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y /tmp/{newer.name} </dev/null", timeout=3600)
        assert m.sh("sensegate --version").stdout.strip() == "sensegate 9.9.9"
        m.wait("systemctl is-active -q sensegate", 600)
        report.steps.append(("unattended upgrade inside the machine (apt-get install -y)", time.monotonic() - up))
        assert "wedge" in m.sh("sensegate drivers").stdout
        assert "2 drivers running" in m.sh("systemctl show sensegate -p StatusText --value").stdout
        after = _readings(readings)
        _until("readings after the upgrade", lambda: _readings(readings) >= after + 50, 600, qemu, console_log)
        assert after > before
        receiver.send_signal(signal.SIGTERM)
        out, err = receiver.communicate(timeout=120)
        summary = json.loads(out)
        assert summary["ok"] and summary["gaps"] == 0 and summary["bad_signatures"] == 0, (summary, err)
        assert summary["readings"] == _readings(readings)
        report.steps.append(("longest pause between two sensor readings (the watchdog restart, the upgrade)",
                             _longest_pause(readings)))
        report.doctor = doctor
    finally:
        report.write()
        if receiver is not None and receiver.poll() is None:
            receiver.kill()
            receiver.communicate()
        if qemu is not None:
            qemu.kill()
            qemu.wait()
        console.close()
        broker.stop()
