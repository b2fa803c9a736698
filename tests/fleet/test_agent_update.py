"""Signed agent updates on a real gateway process through a real mosquitto, with update artefacts
built in the test from this source tree (wheels with other version numbers, two of them broken).

An update signed by an ops key instead of a release key is refused, and so is one below the
minimum version; one that crashes on start is rolled back by the gateway itself (its launcher,
when systemd starts it again); one whose drivers do not come up is rolled back by the new version
itself at its deadline; a good one stays, also across a restart, and takes along a driver that
`sensegate driver install` put into the installed agent.

The installed agent is a venv of its own (as /opt/venvs/sensegate on a gateway; its packages are
those of the test environment behind it), so the driver install does not touch the test environment.

The process runs under a small stand-in for systemd's ``Restart=on-failure`` (systemd does not run
in this container): when the process exits with a failure it is started again after a second,
as the unit file (systemd/sensegate.service, RestartSec=5s) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

from gateway import __version__
from gateway.keys import init_key
from hil.mosquitto import Mosquitto
from tests.fleet.helpers import ops_key, sg

ROOT = Path(__file__).parents[2]
GW = "gw-up"


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


def installed_agent(tmp: Path) -> Path:
    """A venv standing for the packaged agent's, with the test environment's packages behind it."""
    venv = tmp / "installed-agent"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_test_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return py


def driver_wheel(tmp: Path) -> Path:
    """The wheel of a driver package from outside the project (tests/fixtures/sgtestdrivers: `tick`)."""
    src = tmp / "sgtestdrivers"
    shutil.copytree(ROOT / "tests" / "fixtures" / "sgtestdrivers", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp / "driver-wheel"), str(src)], check=True, capture_output=True)
    return next((tmp / "driver-wheel").glob("sgtestdrivers-*.whl"))


def install_driver(tmp: Path, python: Path, state: Path) -> None:
    """`sensegate driver install WHEEL --sha256 HEX` with the installed agent, as a technician runs it."""
    wheel = driver_wheel(tmp)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    r = subprocess.run([str(python), "-m", "gateway", "driver", "install", str(wheel), "--sha256", digest,
                        "--dir", str(state / "drivers")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "driver(s) " in r.stdout and "tick" in r.stdout, r.stdout + r.stderr


def crash_on_start(src: Path) -> None:
    daemon = src / "gateway" / "daemon.py"
    daemon.write_text(daemon.read_text() + '\nraise RuntimeError("this build is broken")\n')


def sim_never_answers(src: Path) -> None:
    drv = src / "drivers" / "sim" / "driver.py"
    drv.write_text(drv.read_text().replace("    async def poll(self, emit: Emit) -> None:\n",
                                           "    async def poll(self, emit: Emit) -> None:\n"
                                           "        raise ConnectionError('the simulated bus is silent')\n"))


async def health(url: str) -> dict[str, Any]:
    r = await sg("fleet", "status", GW, "--url", url, "--json")
    rows = json.loads(r.stdout)["gateways"] if r.stdout else []
    return rows[0] if rows else {}


async def until_version(url: str, version: str, within: float = 60) -> dict[str, Any]:
    h: dict[str, Any] = {}
    async with asyncio.timeout(within):
        while h.get("version") != version or h.get("state") != "online":
            await asyncio.sleep(0.5)
            h = await health(url)
    return h


async def test_agent_updates_forged_downgrade_crash_unhealthy_and_good(tmp_path: Path, broker: Mosquitto) -> None:
    _, ops_file, ops_pub = ops_key(tmp_path)
    release = init_key(tmp_path / "release", name="release")
    init_key(tmp_path / GW / "keys")
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": GW, "state_dir": str(tmp_path / GW)},
        "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
        "metrics": {"status_interval": "1h"},
        "remote": {"ops_keys": [str(ops_pub)], "release_keys": [str(release.public_path)], "groups": ["lab"],
                   "allow_agent_update": True, "min_agent_version": __version__, "update_health_timeout": "15s"},
        "drivers": [{"driver": "sim", "name": "counter", "interval": "500ms", "points": [{"name": "n"}]},
                    {"driver": "tick", "name": "tick", "interval": "500ms"}]}))
    python = await asyncio.to_thread(installed_agent, tmp_path)
    good, crash, unhealthy, _ = await asyncio.gather(build_wheel(tmp_path, "0.9.1"),
                                                     build_wheel(tmp_path, "0.9.2", crash_on_start),
                                                     build_wheel(tmp_path, "0.9.3", sim_never_answers),
                                                     asyncio.to_thread(install_driver, tmp_path, python,
                                                                       tmp_path / GW))
    low = tmp_path / "wheels" / "sensegate-0.0.9-py3-none-any.whl"
    low.write_bytes(good.read_bytes())
    common = ["--to", GW, "--url", broker.url, "--rollouts", str(tmp_path / "rollouts"), "--wave-timeout", "120s"]
    rel = ["--release-key", str(release.private_path)]
    unit = Unit(python, config, tmp_path / "gateway.log")
    unit.start()
    try:
        h = await until_version(broker.url, __version__)
        assert h["drivers_up"] == 2, h  # sim and the installed tick

        r = await sg("agent", "update", str(good), "--release-key", str(ops_file), *common)
        assert r.returncode == 1 and "refused: not a valid release signature" in r.stdout, r.stdout + r.stderr
        assert "remote.release_keys" in r.stdout

        r = await sg("agent", "update", str(low), *rel, *common)
        assert r.returncode == 1 and f"version 0.0.9 is below the minimum version {__version__}" in r.stdout, r.stdout

        starts = unit.starts
        r = await sg("agent", "update", str(crash), *rel, *common)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "rolled back: version 0.9.2 did not come up healthy: started 1 time(s)" in r.stdout, r.stdout
        assert unit.starts > starts, "the crashed process was started again (Restart=on-failure)"
        h = await until_version(broker.url, __version__)
        assert h["agent"]["update"]["state"] == "rolled_back" and h["agent"]["release"] == "installed"
        assert "this build is broken" in (tmp_path / "gateway.log").read_text(), "its crash is in its log"

        r = await sg("agent", "update", str(unhealthy), *rel, *common)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "rolled back: version 0.9.3 was not healthy within 15 s: driver instance(s) not running: counter " \
               "(unavailable: ConnectionError: the simulated bus is silent)" in r.stdout, r.stdout
        await until_version(broker.url, __version__)

        r = await sg("agent", "update", str(good), *rel, *common)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "DONE: 1 ok, 0 failed" in r.stdout
        h = await until_version(broker.url, "0.9.1")
        assert h["agent"]["release"] == "0.9.1" and h["agent"]["update"]["state"] == "healthy", h
        assert h["drivers_up"] == 2 and "releases/0.9.1/venv" in unit.cmdline(), h
        release = tmp_path / GW / "agent" / "releases" / "0.9.1" / "venv"
        assert list(release.glob("lib/python*/site-packages/sgtestdrivers-*.dist-info")), \
            "the driver installed with `driver install` was installed into the release"
        releases = sorted(p.name for p in (tmp_path / GW / "agent" / "releases").iterdir())
        assert releases == ["0.9.1"], "failed releases are pruned once a good one is healthy"

        await unit.stop()  # `systemctl restart sensegate`: the good release stays
        unit.start()
        await asyncio.sleep(1)
        h = await until_version(broker.url, "0.9.1")
        assert "releases/0.9.1/venv" in unit.cmdline()
    finally:
        with contextlib.suppress(Exception):
            await unit.stop()
