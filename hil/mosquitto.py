"""A throw-away Mosquitto broker on a free loopback port, for tests, the demo and the bench."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from gateway.testing.procs import free_port, wait_port


def mosquitto_binary() -> str:
    """Path of the mosquitto executable, or a clear error naming the Debian package."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: sudo apt-get install mosquitto")
    return found


class Mosquitto:
    """Start/stop/restart a private broker; optional TLS listener (client certificates as user
    names), passwords, an ACL file (docs/topics.md, "Broker ACL"), persistence."""

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        tls: dict[str, str] | None = None,
        passwords: dict[str, str] | None = None,
        persistence: bool = True,
        acl: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        # {"cafile", "certfile", "keyfile", "require_certificate": "true"/"false",
        #  "use_identity_as_username": "true" (the client certificate's CN is the user name)}
        self.tls = tls
        self.passwords = passwords
        self.acl = acl  # the text of a mosquitto acl_file
        self.persistence = persistence
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error", "log_type warning",
                 f"user {pwd.getpwuid(os.getuid()).pw_name}"]  # as root it would switch to 'mosquitto'
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if self.passwords is not None:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("".join(f"{u}:{p}\n" for u, p in self.passwords.items()))
            pwfile.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(pwfile)], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        elif self.tls and self.tls.get("use_identity_as_username") == "true":
            lines.append("allow_anonymous false")
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            aclfile = self.workdir / "acl"
            aclfile.write_text(self.acl)
            aclfile.chmod(0o600)
            lines.append(f"acl_file {aclfile}")
        if self.tls:
            lines += [f"cafile {self.tls['cafile']}", f"certfile {self.tls['certfile']}",
                      f"keyfile {self.tls['keyfile']}",
                      f"require_certificate {self.tls.get('require_certificate', 'false')}"]
            if "use_identity_as_username" in self.tls:
                lines.append(f"use_identity_as_username {self.tls['use_identity_as_username']}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        conf = self._write_conf()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log,
                                         start_new_session=True)
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; see {self.log}:\n{self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        """Stop gracefully (it saves its persistence file), then make sure it is gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (no persistence saved)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
