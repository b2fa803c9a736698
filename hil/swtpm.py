"""A simulated TPM 2.0 behind tpm2-pkcs11: swtpm on loopback, tpm2-abrmd (the resource manager a
real gateway gets from the kernel's /dev/tpmrm0) on a private D-Bus, and a tpm2-pkcs11 token.

Everything lives in ``root`` and on free loopback ports; ``stop()`` ends the three processes.
A process that signs through the token needs ``env()`` (the TCTI, the token store, the bus).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gateway.pkcs11uri import build
from gateway.testing.procs import free_port, wait_port

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:path={path}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>
<allow user="*"/></policy></busconfig>
"""


def tpm2_module() -> str:
    """The tpm2-pkcs11 library, or a clear error naming the Debian packages."""
    found = sorted(glob.glob("/usr/lib/*/pkcs11/libtpm2_pkcs11.so"))
    missing = [c for c in ("swtpm", "tpm2_ptool", "dbus-daemon") if not shutil.which(c)]
    if not os.path.exists("/usr/sbin/tpm2-abrmd"):
        missing.append("tpm2-abrmd")
    if not found or missing:
        raise RuntimeError("the TPM simulator needs: sudo apt-get install swtpm tpm2-abrmd libtss2-tcti-tabrmd0 "
                           "libtss2-tcti-swtpm0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools")
    return found[0]


def _port_pair() -> tuple[int, int]:
    """Two free neighbouring loopback ports: the swtpm TCTI takes the control port to be port + 1."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port, port + 1
    raise RuntimeError("no two neighbouring free loopback ports")


class SimulatedTpm:
    """swtpm + tpm2-abrmd + one tpm2-pkcs11 token (label, user PIN in a 0600 file)."""

    def __init__(self, root: Path, label: str = "sensegate", pin: str = "2718-2818") -> None:
        self.root = root
        self.label = label
        self.pin = pin
        self.pin_file = root / "token.pin"
        self.store = root / "store"
        self.bus = root / "bus"
        self.module = ""
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        """The environment a process needs to reach this TPM's token."""
        return {**os.environ, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.bus}",
                "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session", "TPM2TOOLS_TCTI": "tabrmd:bus_type=session",
                "TPM2_PKCS11_STORE": str(self.store), "TSS2_LOG": "all+NONE"}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.root / log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env())
        self.procs.append(proc)
        return proc

    def start(self) -> SimulatedTpm:
        """Start the TPM, its resource manager and make the token; raise RuntimeError if one fails."""
        self.module = tpm2_module()
        for d in (self.root / "state", self.store):
            d.mkdir(parents=True, exist_ok=True)
        try:
            port, ctrl = _port_pair()
            self._spawn(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.root / 'state'}",
                         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                         "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
                         "--flags", "not-need-init,startup-clear"], "swtpm.log")
            wait_port(ctrl)  # (a probe on the command port would take swtpm's one client slot)
            (self.root / "bus.conf").write_text(_BUS_CONF.format(path=self.bus))
            self._spawn(["dbus-daemon", "--nofork", f"--config-file={self.root / 'bus.conf'}"], "dbus.log")
            self._wait(self.bus.exists, "the private D-Bus")
            self._spawn(["/usr/sbin/tpm2-abrmd", "--session", "--allow-root",
                         f"--tcti=swtpm:host=127.0.0.1,port={port}"], "abrmd.log")
            self._wait(self._abrmd_ready, "tpm2-abrmd")
            fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.pin + "\n")
            for args in (["init"], ["addtoken", "--pid=1", f"--sopin={self.pin}-so", f"--userpin={self.pin}",
                                    f"--label={self.label}"]):
                r = subprocess.run(["tpm2_ptool", *args, f"--path={self.store}"], env=self.env(),
                                   capture_output=True, text=True, timeout=60)
                if r.returncode:
                    raise RuntimeError(f"tpm2_ptool {args[0]} failed: {r.stderr.strip()[-500:]}")
        except BaseException:
            self.stop()
            raise
        return self

    def _abrmd_ready(self) -> bool:
        r = subprocess.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                            "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                            "string:com.intel.tss2.Tabrmd"], env=self.env(), capture_output=True, text=True)
        return "true" in r.stdout

    def _wait(self, ready: object, what: str, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while not ready():  # type: ignore[operator]
            if any(p.poll() is not None for p in self.procs) or time.monotonic() > deadline:
                logs = {p.name: p.read_text()[-300:] for p in self.root.glob("*.log")}
                raise RuntimeError(f"{what} did not start: {logs}")
            time.sleep(0.05)

    def uri(self, label: str = "device") -> str:
        """The key URI of ``label`` on the TPM's token, PIN from the 0600 file."""
        return build(self.module, self.label, label, f"file:{self.pin_file}")

    def stop(self) -> None:
        """End tpm2-abrmd, the bus and swtpm (newest first), each within a few seconds."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
