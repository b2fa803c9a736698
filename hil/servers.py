"""Servers that tests start, kill and start again: ports they get back, and how they end."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.testing.procs import free_port

_GIVEN: set[int] = set()  # never hand out one port twice in a process (two nodes of one cluster)


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range: a server killed and started again
    gets its port back, because no outgoing connection is ever given a port from there (a port
    from ``free_port`` can be taken by one meanwhile, and the restart fails: address in use)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randint(10_000, max(10_001, low - 1))
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    return free_port()


def end(proc: subprocess.Popen[bytes], sig: int | None, within: float = 15.0) -> None:
    """End a server started in a session of its own: ``sig`` and a wait of ``within`` seconds,
    then SIGKILL to its whole process group (its children too); ``sig=None`` is kill -9 at once."""
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=within)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # children outlive their parent by a moment
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
