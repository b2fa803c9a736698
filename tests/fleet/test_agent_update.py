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
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from gateway import __version__
from gateway.keys import init_key
from hil.mosquitto import Mosquitto
from tests.fleet.agentkit import COUNTER, ROOT, Unit, build_wheel, crash_on_start, gateway_config, until_version
from tests.fleet.helpers import ops_key, sg

GW = "gw-up"


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


def sim_never_answers(src: Path) -> None:
    drv = src / "drivers" / "sim" / "driver.py"
    drv.write_text(drv.read_text().replace("    async def poll(self, emit: Emit) -> None:\n",
                                           "    async def poll(self, emit: Emit) -> None:\n"
                                           "        raise ConnectionError('the simulated bus is silent')\n"))


async def test_agent_updates_forged_downgrade_crash_unhealthy_and_good(tmp_path: Path, broker: Mosquitto) -> None:
    _, ops_file, ops_pub = ops_key(tmp_path)
    release = init_key(tmp_path / "release", name="release")
    config = gateway_config(tmp_path, GW, broker.url, ops_pub, release.public_path,
                            [COUNTER, {"driver": "tick", "name": "tick", "interval": "500ms"}])
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
        h = await until_version(broker.url, GW, __version__)
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
        h = await until_version(broker.url, GW, __version__)
        assert h["agent"]["update"]["state"] == "rolled_back" and h["agent"]["release"] == "installed"
        assert "this build is broken" in (tmp_path / "gateway.log").read_text(), "its crash is in its log"

        r = await sg("agent", "update", str(unhealthy), *rel, *common)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "rolled back: version 0.9.3 was not healthy within 15 s: driver instance(s) not running: counter " \
               "(unavailable: ConnectionError: the simulated bus is silent)" in r.stdout, r.stdout
        await until_version(broker.url, GW, __version__)

        r = await sg("agent", "update", str(good), *rel, *common)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "DONE: 1 ok, 0 failed" in r.stdout
        h = await until_version(broker.url, GW, "0.9.1")
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
        h = await until_version(broker.url, GW, "0.9.1")
        assert "releases/0.9.1/venv" in unit.cmdline()
    finally:
        with contextlib.suppress(Exception):
            await unit.stop()
