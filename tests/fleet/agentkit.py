"""Helpers of the agent update tests: a gateway process restarted on failure as systemd would, and
update artefacts built from this source tree with another version number (and a patch)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway import __version__
from gateway.keys import init_key
from tests.fleet.helpers import sg

ROOT = Path(__file__).parents[2]
COUNTER = {"driver": "sim", "name": "counter", "interval": "500ms", "points": [{"name": "n"}]}


def gateway_config(tmp: Path, gw: str, url: str, ops_pub: Path, release_pub: Path,
                   drivers: list[dict[str, Any]]) -> Path:
    """A gateway in group ``lab`` that takes agent updates signed by the release key (its own device key)."""
    init_key(tmp / gw / "keys")
    config = tmp / f"{gw}.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": gw, "state_dir": str(tmp / gw)},
        "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
        "metrics": {"status_interval": "1h"},
        "remote": {"ops_keys": [str(ops_pub)], "release_keys": [str(release_pub)], "groups": ["lab"],
                   "allow_agent_update": True, "min_agent_version": __version__, "update_health_timeout": "15s"},
        "drivers": drivers}))
    return config


class Unit:
    """`sensegate run` restarted on failure, like systemd's Restart=on-failure."""

    def __init__(self, python: Path, config: Path, log: Path) -> None:
        self.python = python
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def _run(self) -> None:
        with self.log.open("ab") as out:
            while not self._stopping:
                self.starts += 1
                self.proc = await asyncio.create_subprocess_exec(str(self.python), "-m", "gateway", "run", "-c",
                                                                 str(self.config), stdout=out, stderr=out,
                                                                 env=os.environ.copy())
                code = await self.proc.wait()
                if code == 0 or self._stopping:
                    return
                await asyncio.sleep(1.0)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="unit")

    async def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)

    def cmdline(self) -> str:
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def copy_tree(src: Path, version: str, patch: Any) -> None:
    """This source tree (tracked and new files) with another version number and a patch."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.split(b"\0")
    for f in files:
        name = f.decode()
        if name and (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    init = src / "gateway" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{__version__}"', f'__version__ = "{version}"'))
    if patch is not None:
        patch(src)


async def build_wheel(tmp: Path, version: str, patch: Any = None) -> Path:
    """A wheel of this source tree with another version number (and a patch applied)."""
    src = tmp / f"src-{version}"
    await asyncio.to_thread(copy_tree, src, version, patch)
    out = tmp / "wheels" / version
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                                                "--no-build-isolation", "-w", str(out), str(src),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    text, _ = await proc.communicate()
    assert proc.returncode == 0, text.decode()
    return next(out.glob("sensegate-*.whl"))


def crash_on_start(src: Path) -> None:
    daemon = src / "gateway" / "daemon.py"
    daemon.write_text(daemon.read_text() + '\nraise RuntimeError("this build is broken")\n')


async def health(url: str, gw: str) -> dict[str, Any]:
    """The gateway's row in `sensegate fleet status --json` ({} before it reported)."""
    r = await sg("fleet", "status", gw, "--url", url, "--json")
    rows = json.loads(r.stdout)["gateways"] if r.stdout else []
    return rows[0] if rows else {}


async def until_version(url: str, gw: str, version: str, within: float = 60) -> dict[str, Any]:
    """Wait until the gateway reports itself online at this agent version; its row."""
    h: dict[str, Any] = {}
    async with asyncio.timeout(within):
        while h.get("version") != version or h.get("state") != "online":
            await asyncio.sleep(0.5)
            h = await health(url, gw)
    return h


def deb_of(wheel: Path, out: Path) -> Path:
    """A release .deb as deploy/debian/build.sh lays it out (the wheelhouse), made with dpkg-deb."""
    version = wheel.name.split("-")[1]
    root = out / f"root-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: sensegate\nVersion: {version}-1\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: sensegate release for the agent update test\n")
    (root / "usr" / "share" / "sensegate" / "wheels").mkdir(parents=True)
    (root / "usr" / "share" / "sensegate" / "wheels" / wheel.name).write_bytes(wheel.read_bytes())
    deb = out / f"sensegate_{version}-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb
