"""Helpers for tests that start real servers on loopback: ports, child processes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port that is free right now (TCP by default, SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until a TCP port accepts connections; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def children(pid: int | None = None) -> dict[int, str]:
    """Live (non-zombie) child processes of ``pid`` (default: this process) with their command lines."""
    pid = os.getpid() if pid is None else pid
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) != pid or fields[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue
        found[int(entry.name)] = cmd
    return found


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise ProcessLookupError(f"no VmHWM for process {pid}")


async def stop_process(proc: asyncio.subprocess.Process, within: float = 20.0) -> int:
    """SIGTERM a child process, SIGKILL it if it has not ended within ``within`` seconds; its status."""
    if proc.returncode is None:
        proc.terminate()
        try:
            async with asyncio.timeout(within):
                return await proc.wait()
        except TimeoutError:
            proc.kill()
    return await proc.wait()
