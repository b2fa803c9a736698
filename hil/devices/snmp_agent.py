"""Simulated device for drivers/snmp: Debian's real ``snmpd`` (net-snmp) on a loopback UDP port.

The agent runs with its own configuration in a temporary directory: a v2c read community and a
read-write community, an SNMPv3 USM user with SHA-256 authentication and AES privacy, and
``override`` objects under a private enterprise arc with known values of every SMI type the
agent can serve (Integer32, Counter32, Gauge32, TimeTicks, OCTET STRING, OBJECT IDENTIFIER);
the real MIB-2 tables (ifTable, ifXTable with Counter64, ipAddrTable with IpAddress) come from
the machine. ``set()`` changes a value with net-snmp's ``snmpset``; ``send_trap()`` sends a real
v2c or v3 trap with ``snmptrap``; ``trap_sink`` makes snmpd itself send a coldStart trap on start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path

from gateway.testing.procs import stop_process

ENTERPRISE = "1.3.6.1.4.1.99999"
SNMPD = "/usr/sbin/snmpd"
# override name -> (net-snmp override type, initial value)
OBJECTS: dict[str, tuple[str, str, str]] = {
    "temperature": (f"{ENTERPRISE}.1.1.0", "integer", "-215"),  # 0.1 Cel
    "energy": (f"{ENTERPRISE}.1.2.0", "counter", "4000000000"),
    "level": (f"{ENTERPRISE}.1.3.0", "unsigned", "1234"),
    "runtime": (f"{ENTERPRISE}.1.4.0", "timeticks", "12345"),
    "label": (f"{ENTERPRISE}.1.5.0", "octet_str", "cabinet-7"),
    "model": (f"{ENTERPRISE}.1.6.0", "object_id", "1.3.6.1.4.1.99999.2.7"),
    "load": (f"{ENTERPRISE}.1.7.0", "octet_str", "0.75"),
}
# snmpset type letters (a Counter32 cannot be set)
SET_TYPES = {"integer": "i", "unsigned": "u", "timeticks": "t", "octet_str": "s", "object_id": "o"}


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SnmpAgent:
    """A real snmpd child process with a v2c community and a v3 user, on a loopback UDP port."""

    def __init__(
        self,
        community: str = "public",
        rw_community: str = "private",
        user: str = "sguser",
        auth_key: str = "authpassword1",
        priv_key: str = "privpassword1",
        trap_sink: int | None = None,
    ) -> None:
        if not os.path.exists(SNMPD):
            raise RuntimeError("snmpd is not installed (Debian package snmpd)")
        self.community, self.rw_community = community, rw_community
        self.user, self.auth_key, self.priv_key = user, auth_key, priv_key
        self.trap_sink = trap_sink
        self.host = "127.0.0.1"
        self.port = 0
        self._dir = Path(tempfile.mkdtemp(prefix="snmpd-"))
        self._proc: asyncio.subprocess.Process | None = None
        self.env = {**os.environ, "SNMP_PERSISTENT_DIR": str(self._dir / "persist"), "MIBS": "", "MIBDIRS": "/dev/null"}

    def _config(self) -> str:
        lines = [
            f"agentAddress udp:{self.host}:{self.port}",
            f"rocommunity {self.community} {self.host}",
            f"rwcommunity {self.rw_community} {self.host}",
            f"createUser {self.user} SHA-256 {self.auth_key} AES {self.priv_key}",
            f"rouser {self.user} priv",
            "sysLocation street cabinet 7",
            "sysContact ops@example.org",
        ]
        lines += [f"override -rw {oid} {kind} {value}" for oid, kind, value in OBJECTS.values()]
        if self.trap_sink:
            lines.append(f"trap2sink {self.host}:{self.trap_sink} {self.community}")
        return "\n".join(lines) + "\n"

    async def start(self, port: int = 0) -> int:
        """Start snmpd on ``port`` (a free one by default) and wait until it answers."""
        self.port = port or free_udp_port(self.host)
        (self._dir / "persist").mkdir(exist_ok=True)
        conf = self._dir / "snmpd.conf"
        conf.write_text(self._config())
        self._proc = await asyncio.create_subprocess_exec(
            SNMPD, "-f", "-C", "-c", str(conf), "-Lf", str(self._dir / "snmpd.log"),
            "-p", str(self._dir / "snmpd.pid"), "-M", "/dev/null", "-m", "",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, env=self.env,
        )
        try:
            async with asyncio.timeout(15):
                while not await self._answers():
                    if self._proc.returncode is not None:
                        raise RuntimeError(f"snmpd exited: {self.log()[-500:]}")
                    await asyncio.sleep(0.1)
        except BaseException:
            await self.stop()
            raise
        return self.port

    async def _answers(self) -> bool:
        code, _out = await self._tool("snmpget", "-v2c", "-c", self.community, "-t", "0.3", "-r", "0",
                                      f"{self.host}:{self.port}", "1.3.6.1.2.1.1.3.0")
        return code == 0

    async def _tool(self, tool: str, *args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            tool, "-M", "/dev/null", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
        )
        try:
            async with asyncio.timeout(10):
                out, _ = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return proc.returncode or 0, out.decode(errors="replace")

    async def set(self, name: str, value: str) -> None:
        """Change one of OBJECTS on the running agent (net-snmp's snmpset, rw community)."""
        oid, kind, _ = OBJECTS[name]
        code, out = await self._tool("snmpset", "-v2c", "-c", self.rw_community, f"{self.host}:{self.port}",
                                     oid, SET_TYPES[kind], value)
        if code:
            raise RuntimeError(f"snmpset failed: {out}")

    async def send_trap(
        self, port: int, trap_oid: str, *varbinds: tuple[str, str, str], version: str = "v2c",
        engine_id: str = "", host: str = "127.0.0.1", community: str | None = None,
        user: str | None = None, auth_key: str | None = None, priv_key: str | None = None,
    ) -> None:
        """Send one trap with net-snmp's snmptrap to ``host:port``; varbinds are (oid, type letter, value)."""
        if version == "v2c":
            auth = ["-v2c", "-c", community or self.community]
        else:
            auth = ["-v3", "-e", engine_id, "-u", user or self.user, "-l", "authPriv", "-a", "SHA-256",
                    "-A", auth_key or self.auth_key, "-x", "AES", "-X", priv_key or self.priv_key]
        args = [*auth, f"{host}:{port}", "", trap_oid]
        for oid, kind, value in varbinds:
            args += [oid, kind, value]
        code, out = await self._tool("snmptrap", *args)
        if code:
            raise RuntimeError(f"snmptrap failed: {out}")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self._dir / "snmpd.log").read_text(errors="replace")
        return ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def stop(self) -> None:
        """Stop snmpd (SIGTERM, then SIGKILL after 5 s); the port stays reserved for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await stop_process(proc, within=5)

    async def close(self) -> None:
        """Stop and remove the temporary directory."""
        await self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
