"""A throw-away Mosquitto broker on a free loopback port, for tests, the demo and the bench.

Mosquitto acknowledges a QoS 1 PUBLISH (PUBACK) as soon as it has handled it in memory and
writes its database later (``autosave_interval``, or after the loop pass that queued it with
``autosave_on_changes``; src/handle_publish.c sends the PUBACK, src/loop.c saves after
``mux__handle``). So a SIGKILL loses what it acknowledged since its last save that no subscriber
had acknowledged yet. ``acked_unsaved()`` reads that window out of a packet log
(``log_packets``), which is how the rig tells a broker's loss from a gateway's.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
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
    names), passwords, an ACL file (docs/topics.md, "Broker ACL"), persistence, a packet log."""

    def __init__(
        self,
        workdir: Path,
        port: int = 0,
        tls: dict[str, str] | None = None,
        passwords: dict[str, str] | None = None,
        persistence: bool = True,
        acl: str | None = None,
        autosave_on_changes: bool = False,
        log_packets: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        # {"cafile", "certfile", "keyfile", "require_certificate": "true"/"false",
        #  "use_identity_as_username": "true" (the client certificate's CN is the user name)}
        self.tls = tls
        self.passwords = passwords
        self.acl = acl  # the text of a mosquitto acl_file
        self.persistence = persistence
        self.autosave_on_changes = autosave_on_changes  # save after every pass that queued a message
        self.log_packets = log_packets  # log every packet (log_type all): what acked_unsaved() reads
        self.extra = extra or []  # more mosquitto.conf lines (e.g. "max_queued_messages 5")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "mosquitto.log"
        self._log_from = 0  # where this instance's lines start in the (appended) log

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error", "log_type warning",
                 f"user {pwd.getpwuid(os.getuid()).pw_name}"]  # as root it would switch to 'mosquitto'
        if self.log_packets:
            lines.append("log_type all")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
            if self.autosave_on_changes:
                lines.append("autosave_on_changes true")
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
        lines += self.extra
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> None:
        """Start and wait until the port accepts connections."""
        conf = self._write_conf()
        self._log_from = self.log.stat().st_size if self.log.exists() else 0
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
        proc.send_signal(signal.SIGCONT)  # a frozen broker takes its SIGTERM once it runs again
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): no DISCONNECT, connections reset, the database as last saved."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def freeze(self) -> None:
        """SIGSTOP: the broker hangs with its connections open; the kernel takes what clients send,
        nothing is answered (no PUBACK) until it is killed or stopped."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def instance_log(self) -> str:
        """The log of the instance started last (the one running, or the one just stopped or killed)."""
        with open(self.log, "rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

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


@dataclass(frozen=True)
class AckedMessage:
    """A QoS 1 PUBLISH the broker acknowledged, as its packet log shows it."""

    client: str
    mid: int
    topic: str
    size: int


# mosquitto 2.0's debug lines (log_type all), src/handle_publish.c and lib/send_mosq.c
_PUBLISH_IN = re.compile(r"Received PUBLISH from (\S+) \(d\d, q1, r\d, m(\d+), '(.*)', \.\.\. \((\d+) bytes\)\)$")
_PUBACK_OUT = re.compile(r"Sending PUBACK to (\S+) \(m(\d+), rc0\)$")  # 0: taken for delivery
_SAVING = "Saving in-memory database"


def acked_unsaved(log: str, topic_suffix: str = "") -> list[AckedMessage]:
    """The QoS 1 messages (on topics ending in ``topic_suffix``) that one broker instance
    acknowledged as taken for delivery (PUBACK reason 0: it had a subscriber) after its last
    completed database save: what a crash of it could lose.

    ``log`` is one instance's packet log (``instance_log()`` with ``log_packets``). A save is
    logged as it begins, and the broker's one thread logs nothing else until it ends: a save is
    complete when another line follows that is not its error."""
    lines = [line for line in log.splitlines() if line.strip()]
    pending: dict[tuple[str, int], AckedMessage] = {}
    acked: list[AckedMessage] = []
    for i, line in enumerate(lines):
        if _SAVING in line:
            if i + 1 < len(lines) and "Error saving" not in lines[i + 1]:
                acked.clear()
            continue
        m = _PUBLISH_IN.search(line)
        if m is not None:
            if m.group(3).endswith(topic_suffix):
                msg = AckedMessage(m.group(1), int(m.group(2)), m.group(3), int(m.group(4)))
                pending[(msg.client, msg.mid)] = msg
            continue
        m = _PUBACK_OUT.search(line)
        if m is not None:
            got = pending.pop((m.group(1), int(m.group(2))), None)
            if got is not None:
                acked.append(got)
    return acked
