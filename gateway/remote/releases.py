"""Agent releases beside the installed one: install, switch, launch, go back (docs/fleet.md, "Agent updates").

Layout under ``<state_dir>/agent/`` (writable by the service: the packaged unit makes the rest of
the system read-only, so neither dpkg nor /opt is within reach of the running agent)::

    factory.json              the installed (packaged) agent: version, interpreter, its site-packages
    releases/<version>/venv   a release: a venv whose own site-packages hold the new wheels, with
                              the factory's site-packages behind them (dependencies the release does
                              not bring come from there)
    state.json                {"current": "0.2.0" | null, "floor": "0.1.0", "trial": {...} | null,
                               "outcome": {...}}

``launch`` runs first in every `sensegate run` of the factory install (``/usr/bin/sensegate``):
it execs the current release's interpreter, or returns to run the factory itself. A release on
trial (just installed, not yet healthy) gets one start: if it is started again without having
reported healthy (it crashed, hung and was killed by the watchdog, or the machine lost power),
the launcher goes back to the previous version on its own, before anything of the new one runs.
systemd's ``Restart=on-failure`` brings the crashed process back into the launcher.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.remote.store import write_atomic

log = logging.getLogger("sensegate.update")
ENV_RELEASE = "SENSEGATE_RELEASE"  # set by the launcher in the release it execs
ENV_FACTORY_ARGV = "SENSEGATE_FACTORY_ARGV"  # how to start the launcher again (JSON list)
FACTORY_WHEELS = Path("/usr/share/sensegate/wheels")  # the .deb's wheelhouse (pip itself is in it)
TRIAL_STARTS = 1  # starts a release on trial gets before the launcher goes back
INSTALL_TIMEOUT = 600.0
KEEP_RELEASES = 2  # the current and the previous release stay on disk
_VERSION = re.compile(r"^(\d+(?:\.\d+){0,3})(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?(?:\+[A-Za-z0-9.]+)?$")


class ReleaseError(Exception):
    """A release cannot be installed or used; the message says why."""


def version_key(v: str) -> tuple[Any, ...]:
    """Order PEP 440 release versions (N.N[.N[.N]][aN|bN|rcN][.postN][.devN]); ValueError otherwise."""
    m = _VERSION.match(v or "")
    if m is None:
        raise ValueError(f"not a release version: {v!r}")
    nums = tuple(int(x) for x in m.group(1).split("."))
    nums = nums + (0,) * (4 - len(nums))
    pre = ({"a": 0, "b": 1, "rc": 2}[m.group(2)], int(m.group(3))) if m.group(2) else (3, 0)
    if not m.group(2) and m.group(4) is None and m.group(5) is not None:
        pre = (-1, 0)  # 1.0.dev1 comes before 1.0a1
    post = int(m.group(4)) if m.group(4) is not None else -1
    dev = int(m.group(5)) if m.group(5) is not None else 1 << 30
    return (nums, pre, post, dev)


@dataclass
class Trial:
    """A release installed and started, not yet healthy."""

    version: str
    previous: str | None  # None: the factory install
    since: float
    deadline: float
    starts: int = 0
    baseline: dict[str, Any] = field(default_factory=dict)  # what was up before: drivers, uplinks


@dataclass
class AgentState:
    """``state.json``: the release in use, the version floor, a trial and the last outcome."""

    current: str | None = None
    floor: str = ""
    trial: Trial | None = None
    outcome: dict[str, Any] | None = None
    seen: list[str] = field(default_factory=list)  # SHA-256 of the manifests taken (a retained one comes again)
    factory: str = ""  # the installed agent's version when ``current`` was chosen (dpkg may replace it since)

    @classmethod
    def load(cls, root: Path) -> AgentState:
        try:
            raw = json.loads((root / "state.json").read_bytes())
            trial = Trial(**raw["trial"]) if raw.get("trial") else None
            return cls(raw.get("current"), str(raw.get("floor") or ""), trial, raw.get("outcome"),
                       [str(s) for s in raw.get("seen") or []], str(raw.get("factory") or ""))
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError, KeyError) as e:
            log.error("%s is unreadable (%s); running the installed agent", root / "state.json", e)
            return cls()

    def save(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o750)
        write_atomic(root / "state.json", json.dumps(asdict(self), indent=1).encode())


def agent_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "agent"


def release_python(root: Path, version: str) -> Path:
    return root / "releases" / version / "venv" / "bin" / "python"


def factory_info(root: Path) -> dict[str, Any]:
    """What the launcher recorded about the installed agent (its site-packages, how to start it)."""
    try:
        raw = json.loads((root / "factory.json").read_bytes())
        return raw if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}


def factory_argv() -> list[str]:
    """The command that starts the launcher again (the factory's `sensegate run`)."""
    with contextlib.suppress(ValueError, TypeError):
        argv = json.loads(os.environ.get(ENV_FACTORY_ARGV, ""))
        if isinstance(argv, list) and argv:
            return [str(a) for a in argv]
    return list(sys.orig_argv)


def _state_dir_of(config_path: Path) -> str:
    """The state directory named in the local config file (identity cannot be pushed)."""
    import yaml

    try:
        doc = yaml.safe_load(config_path.read_text()) or {}
        return str((doc.get("gateway") or {}).get("state_dir") or "/var/lib/sensegate")
    except (OSError, yaml.YAMLError, AttributeError):
        return "/var/lib/sensegate"


def launch(config_path: str | Path) -> None:
    """At `sensegate run`: exec the current release, or return to run this (factory) install.

    Never raises: a launcher problem runs the factory install, which can always be reached."""
    if os.environ.get(ENV_RELEASE):
        return  # this process is the release the launcher started
    try:
        root = agent_dir(_state_dir_of(Path(config_path)))
        if not root.exists():
            return
        _record_factory(root)
        st = AgentState.load(root)
        target = _decide(root, st)
    except Exception as e:  # the factory must always run when something here is wrong
        log.error("agent launcher: %s; running the installed agent %s", e, __version__)
        return
    if target is None:
        return
    env = dict(os.environ)
    env[ENV_RELEASE] = target
    env[ENV_FACTORY_ARGV] = json.dumps(list(sys.orig_argv))
    python = str(release_python(root, target))
    args = [python, "-P", "-m", "gateway", *sys.argv[1:]]  # -P: never a gateway/ in the working directory
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.execve(python, args, env)


def _record_factory(root: Path) -> None:
    import sysconfig

    info = {"version": __version__, "python": sys.executable, "purelib": sysconfig.get_paths()["purelib"],
            "argv": list(sys.orig_argv), "wheels": str(FACTORY_WHEELS) if FACTORY_WHEELS.is_dir() else ""}
    if factory_info(root) != info:
        write_atomic(root / "factory.json", json.dumps(info, indent=1).encode())


def _decide(root: Path, st: AgentState) -> str | None:
    """The release to exec (None: the factory), going back from a trial that never became healthy."""
    if st.current and st.factory and st.factory != __version__:
        # the installed package was replaced (dpkg, apt) since the release was chosen: it takes over
        log.warning("agent launcher: the installed agent is now %s (was %s); it replaces release %s",
                    __version__, st.factory, st.current)
        st.outcome = {"state": "replaced", "version": st.current, "ts": time.time(), "reported": False,
                      "reason": f"the installed agent was replaced by {__version__} (package upgrade); it runs now"}
        st.current, st.trial, st.factory = None, None, __version__
        st.save(root)
        return None
    t = st.trial
    if t is not None:
        if t.starts >= TRIAL_STARTS or time.time() > t.deadline + 60:
            reason = (f"version {t.version} did not come up healthy: started {t.starts} time(s) and never reported "
                      "healthy (it crashed, hung, or the power went; its log is in the journal)")
            log.error("agent update: %s; going back to %s", reason, t.previous or f"the installed {__version__}")
            st.current, st.trial = t.previous, None
            st.outcome = {"state": "rolled_back", "version": t.version, "reason": reason, "ts": time.time(),
                          "reported": False}
        else:
            t.starts += 1
        st.save(root)
    if st.current and st.current != __version__ and release_python(root, st.current).exists():
        return st.current
    if st.current and st.current != __version__:
        log.error("agent release %s is missing from %s; running the installed agent", st.current, root)
    return None


# -- installing a release -------------------------------------------------------------------------


def unpack(bundle: Path, fmt: str, into: Path) -> Path:
    """The wheels of a bundle in a directory: a tar of wheels, or the wheelhouse inside a .deb."""
    import tarfile  # the heavier modules of an update are loaded when one comes, not by every daemon

    into.mkdir(parents=True, exist_ok=True)
    if fmt == "wheels":
        with tarfile.open(bundle) as tar:
            for m in tar.getmembers():
                name = Path(m.name).name
                if m.isfile() and name.endswith(".whl") and "/" not in name:
                    src = tar.extractfile(m)
                    assert src is not None
                    (into / name).write_bytes(src.read())
    elif fmt == "deb":
        for name, data in _deb_wheels(bundle.read_bytes()):
            (into / name).write_bytes(data)
    else:
        raise ReleaseError(f"unknown bundle format {fmt!r}")
    if not any(into.glob("sensegate-*.whl")):
        raise ReleaseError("the bundle holds no sensegate wheel")
    return into


def _deb_wheels(deb: bytes) -> list[tuple[str, bytes]]:
    """The wheels under usr/share/sensegate/wheels of a .deb (an ar archive with data.tar.*)."""
    import lzma
    import tarfile
    import zlib

    try:
        return _deb_members(deb)
    except (ValueError, tarfile.TarError, EOFError, OSError, LookupError, lzma.LZMAError, zlib.error) as e:
        raise ReleaseError(f"not a readable .deb: {e}") from None


def _deb_members(deb: bytes) -> list[tuple[str, bytes]]:
    import io
    import tarfile

    if not deb.startswith(b"!<arch>\n"):
        raise ReleaseError("not a .deb (no ar header)")
    pos, data = 8, None
    while pos + 60 <= len(deb):
        head = deb[pos:pos + 60]
        name = head[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        body = deb[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            data = body
        pos += 60 + size + (size % 2)
    if data is None:
        raise ReleaseError("the .deb has no data.tar member")
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            path = m.name.lstrip("./")
            if m.isfile() and path.startswith("usr/share/sensegate/wheels/") and path.endswith(".whl"):
                src = tar.extractfile(m)
                assert src is not None
                out.append((Path(path).name, src.read()))
    return out


def install(root: Path, version: str, wheels: Path) -> Path:
    """Make ``releases/<version>/venv`` from the wheels (no network), beside the running agent."""
    import shutil

    rel = root / "releases" / version
    shutil.rmtree(rel, ignore_errors=True)
    rel.mkdir(parents=True, mode=0o750)
    if not os.environ.get(ENV_RELEASE):
        _record_factory(root)  # this process is the installed agent: the first release is made from it
    factory = factory_info(root)
    if not factory:
        raise ReleaseError(f"{root / 'factory.json'} is missing: start the installed agent once to record it")
    base_python = factory.get("python") or sys.executable
    venv = rel / "venv"
    _run([base_python, "-m", "venv", "--without-pip", str(venv)], "making the release's venv")
    py = str(venv / "bin" / "python")
    purelib = _run([py, "-P", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   "reading the venv").strip()
    if factory.get("purelib"):  # the dependencies the release does not bring come from the installed agent
        # as a site directory, so the installed agent's own .pth files count too (and its pip)
        Path(purelib, "_sensegate_factory.pth").write_text(
            f"import site; site.addsitedir({factory['purelib']!r})\n")
    links = ["--find-links", str(wheels)]
    if factory.get("wheels"):
        links += ["--find-links", factory["wheels"]]
    pip = sorted(wheels.glob("pip-*.whl")) or (sorted(Path(factory["wheels"]).glob("pip-*.whl"))
                                                if factory.get("wheels") else [])
    runner = [py, f"{pip[-1]}/pip"] if pip else [py, "-m", "pip"]
    _run([*runner, "install", "--no-index", *links, "--no-cache-dir", "--disable-pip-version-check", "--quiet",
          "--no-warn-script-location", f"sensegate=={version}"], f"installing sensegate {version}")
    got = _run([py, "-P", "-c", "import gateway; print(gateway.__version__)"], "checking the installed release").strip()
    if got != version:
        raise ReleaseError(f"the release's venv runs sensegate {got}, not {version}")
    _carry_drivers(root.parent, py)
    return venv


def driver_dirs(state_dir: Path) -> list[Path]:
    """Where `sensegate driver install` keeps its verified wheels: the state directory's, the default."""
    from gateway.driverstore import DEFAULT_DIR

    found: list[Path] = []
    for d in (state_dir / "drivers", DEFAULT_DIR):
        if (d / "installed.json").exists() and d.resolve() not in [f.resolve() for f in found]:
            found.append(d)
    return found


def _carry_drivers(state_dir: Path, python: str) -> None:
    """Drivers installed with `sensegate driver install` go into the release, as the package's postinst
    puts them back into an upgraded venv; one that does not install fails the update before any restart."""
    from gateway.driverstore import DriverStore

    for d in driver_dirs(state_dir):
        failed = DriverStore(d, python=python).reinstall()
        if failed:
            names = "; ".join(f"{r.dist} ({', '.join(r.drivers)}): {why}" for r, why in failed)
            raise ReleaseError(f"driver(s) installed with `sensegate driver install` do not install into the new "
                               f"release: {names}")
        log.info("agent update: driver(s) from %s installed into the new release", d)


def _run(cmd: list[str], what: str) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd="/",
                             env={**os.environ, "PIP_NO_INPUT": "1", ENV_RELEASE: ""})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReleaseError(f"{what}: {e}") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise ReleaseError(f"{what} failed: {' / '.join(tail) or f'exit status {res.returncode}'}")
    return res.stdout


def prune(root: Path, keep: list[str | None]) -> None:
    """Remove releases other than those named (the current and the previous one)."""
    import shutil

    d = root / "releases"
    if not d.is_dir():
        return
    for rel in d.iterdir():
        if rel.name not in keep:
            shutil.rmtree(rel, ignore_errors=True)
