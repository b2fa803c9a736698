"""Helpers of the fleet tests: the ops command line in a child process (awaited, since the
gateways under test run in this loop), and an ops key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.keys import init_key, load_private_key

SG = [sys.executable, "-m", "gateway"]


async def sg(*args: str, within: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`sensegate ARGS` in a child process; its output, awaited without blocking this loop."""
    proc = await asyncio.create_subprocess_exec(*SG, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env or os.environ.copy())
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out.decode(), err.decode())


def ops_key(tmp: Path, name: str = "ops") -> tuple[Any, Path, Path]:
    """An ops key pair: (private key, private file, public file)."""
    info = init_key(tmp / "ops", name=name)
    return load_private_key(info.private_path), info.private_path, info.public_path
