"""`sensegate driver install|remove|list|reinstall`: drivers from outside the project, kept across upgrades.

A packaged gateway's venv is rebuilt by every upgrade, so what `driver install` puts into it
is also kept where upgrades do not reach: ``/var/lib/sensegate/drivers/`` holds the verified
wheels (``wheels/``) and what was installed from them (``installed.json``). The package's
postinst runs `sensegate driver reinstall`, which puts each of them back into the new venv,
offline, from those wheels (plus the package's own wheelhouse for shared dependencies).

Nothing is installed unverified: a wheel needs the SHA-256 its author published
(``--sha256``), or comes in a driver bundle signed by an ops key this gateway trusts (the
same COSE_Sign1 envelope as a config push, kind ``driver``: ``sensegate driver bundle``
makes one). A source folder (a driver author on the bench) is built here and recorded as such.
A running daemon finds a new driver on its next reload (SIGHUP) or config push.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("/var/lib/sensegate/drivers")
PACKAGE_WHEELS = Path("/usr/share/sensegate/wheels")
BUNDLE_TARGET = "drivers"  # the `to` of a driver bundle: any gateway that trusts the signer
MAX_BUNDLE = 64 * 1024 * 1024


class DriverStoreError(Exception):
    """An install, removal or re-install cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Record:
    """One installed distribution: its wheel, how it was verified, the drivers it provides."""

    dist: str
    version: str
    wheel: str
    sha256: str
    verified: str
    drivers: list[str]
    installed: str
    extra_wheels: list[str]

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel_metadata(path: Path) -> tuple[str, str, list[str]]:
    """(distribution name, version, driver entry point names) read from a wheel's dist-info."""
    from gateway.entrypoints import parse
    from gateway.registry import GROUP

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            meta = next(n for n in names if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            msg = Parser().parsestr(z.read(meta).decode("utf-8", "replace"))
            ep_name = meta.rsplit("/", 1)[0] + "/entry_points.txt"
            eps = parse(z.read(ep_name).decode("utf-8", "replace")) if ep_name in names else []
    except (OSError, zipfile.BadZipFile, StopIteration, KeyError) as e:
        raise DriverStoreError(f"{path} is not a wheel (.whl) file: {e or 'no METADATA'}") from None
    return str(msg.get("Name", "")), str(msg.get("Version", "")), sorted(e.name for e in eps if e.group == GROUP)


class DriverStore:
    """The drivers directory: verified wheels and the record of what was installed from them."""

    def __init__(self, root: Path = DEFAULT_DIR, python: str = sys.executable) -> None:
        self.root = root
        self.wheels = root / "wheels"
        self.python = python

    # -- the record ------------------------------------------------------------------------

    def records(self) -> dict[str, Record]:
        f = self.root / "installed.json"
        try:
            raw = json.loads(f.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DriverStoreError(f"{f} is unreadable ({e}); move it away and install the drivers again") from None
        return {k: Record(**v) for k, v in raw.get("drivers", {}).items()}

    def _save(self, records: dict[str, Record]) -> None:
        from gateway.remote.store import write_atomic

        body = {"drivers": {k: r.as_json() for k, r in sorted(records.items())}}
        write_atomic(self.root / "installed.json", json.dumps(body, indent=1).encode(), 0o644)

    # -- pip, offline -------------------------------------------------------------------------

    def _pip(self) -> list[str]:
        if importlib.util.find_spec("pip") is not None:
            return [self.python, "-m", "pip"]
        found = sorted(PACKAGE_WHEELS.glob("pip-*.whl"))
        if not found:
            raise DriverStoreError(f"no pip here (neither in this Python nor {PACKAGE_WHEELS}/pip-*.whl)")
        return [self.python, str(found[-1] / "pip")]

    def _run_pip(self, *args: str) -> None:
        cmd = [*self._pip(), *args, "--isolated", "--disable-pip-version-check", "--no-cache-dir"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
            raise DriverStoreError(f"pip {args[0]} failed:\n{tail}")

    def _install_wheels(self, main: Path) -> None:
        links = ["--find-links", str(self.wheels)]
        if PACKAGE_WHEELS.is_dir():
            links += ["--find-links", str(PACKAGE_WHEELS)]
        self._run_pip("install", "--no-index", *links, "--force-reinstall", "--no-deps", str(main))
        self._run_pip("install", "--no-index", *links, str(main))  # its dependencies, from the same places

    # -- what the commands do -----------------------------------------------------------------

    def install_wheel(
        self, wheel: Path, sha256: str = "", verified: str = "", extra: list[Path] | None = None
    ) -> Record:
        """Check a wheel against its SHA-256 (or a signature checked by the caller), keep it, install it."""
        if not wheel.is_file():
            raise DriverStoreError(f"{wheel} does not exist")
        digest = sha256_file(wheel)
        if not verified:
            if not sha256:
                raise DriverStoreError(
                    f"give the wheel's SHA-256 as its author published it: --sha256 HEX (this file's is {digest}; "
                    "compare it with the author's before you use it), or install a signed driver bundle"
                )
            if sha256.lower().strip() != digest:
                raise DriverStoreError(f"{wheel.name}: SHA-256 is {digest}, not the {sha256} given: not installed")
            verified = "sha256 given at install"
        dist, version, drivers = wheel_metadata(wheel)
        if not drivers:
            raise DriverStoreError(f"{wheel.name} provides no sensegate driver (no sensegate.drivers entry point)")
        self.wheels.mkdir(parents=True, exist_ok=True, mode=0o755)
        kept = []
        for w in [wheel, *(extra or [])]:
            shutil.copyfile(w, self.wheels / (w.name + ".tmp"))
            os.replace(self.wheels / (w.name + ".tmp"), self.wheels / w.name)
            kept.append(w.name)
        records = self.records()
        old = records.get(dist)
        self._install_wheels(self.wheels / wheel.name)
        if old is not None and old.wheel != wheel.name:
            (self.wheels / old.wheel).unlink(missing_ok=True)
        rec = Record(dist, version, wheel.name, digest, verified, drivers, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     kept[1:])
        records[dist] = rec
        self._save(records)
        return rec

    def install_dir(self, folder: Path) -> Record:
        """Build a driver project folder into a wheel here (an author's bench) and install that."""
        if not (folder / "pyproject.toml").exists() and not (folder / "setup.cfg").exists():
            raise DriverStoreError(f"{folder} is not a driver project (no pyproject.toml or setup.cfg)")
        with tempfile.TemporaryDirectory() as tmp:
            links = ["--find-links", str(PACKAGE_WHEELS)] if PACKAGE_WHEELS.is_dir() else []
            offline = ["--no-index", *links] if links else []
            self._run_pip("wheel", "--no-deps", *offline, "-w", tmp, str(folder))
            (wheel,) = Path(tmp).glob("*.whl")
            return self.install_wheel(wheel, verified=f"built here from {folder.resolve()}")

    def install_bundle(self, bundle: Path, trusted: Mapping[bytes, Any]) -> Record:
        """A driver bundle signed by a trusted ops key: verify, then install the wheels it holds."""
        from gateway.remote.envelope import Rejected, open_signed

        data = bundle.read_bytes()
        try:
            signed = open_signed(data, trusted, "driver", {BUNDLE_TARGET}, MAX_BUNDLE)
        except Rejected as e:
            raise DriverStoreError(f"{bundle.name}: not installed: {e}") from None
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(io.BytesIO(signed.payload)) as z:
            names = [n for n in z.namelist() if n.endswith(".whl") and "/" not in n]
            paths = []
            for n in names:
                (Path(tmp) / n).write_bytes(z.read(n))
                paths.append(Path(tmp) / n)
            main = [p for p in paths if wheel_metadata(p)[2]]
            if len(main) != 1:
                raise DriverStoreError(f"{bundle.name}: a bundle holds one driver wheel (found {len(main)})")
            return self.install_wheel(main[0], verified=f"bundle signed by ops key {signed.signer}",
                                      extra=[p for p in paths if p is not main[0]])

    def remove(self, name: str) -> Record:
        """Uninstall a distribution (by its name or a driver it provides) and forget its wheels."""
        records = self.records()
        rec = records.get(name) or next((r for r in records.values() if name in r.drivers), None)
        if rec is None:
            known = ", ".join(sorted(records)) or "none"
            raise DriverStoreError(
                f"no driver {name!r} was installed with `sensegate driver install` (installed: {known})"
            )
        self._run_pip("uninstall", "-y", rec.dist)
        for w in [rec.wheel, *rec.extra_wheels]:
            (self.wheels / w).unlink(missing_ok=True)
        del records[rec.dist]
        self._save(records)
        return rec

    def reinstall(self) -> list[tuple[Record, str]]:
        """Put every recorded driver back into this venv (after an upgrade); (record, error) for failures."""
        failed = []
        for rec in self.records().values():
            try:
                path = self.wheels / rec.wheel
                if sha256_file(path) != rec.sha256:
                    raise DriverStoreError(f"{path} changed since it was verified (SHA-256 differs)")
                self._install_wheels(path)
            except (OSError, DriverStoreError) as e:
                failed.append((rec, str(e)))
        return failed


def make_bundle(wheels: list[Path], key: Any, out: Path) -> Path:
    """Sign a driver wheel (and its dependency wheels) into a bundle any trusting gateway installs."""
    from gateway.remote.envelope import sign

    drivers = [w for w in wheels if wheel_metadata(w)[2]]
    if len(drivers) != 1:
        raise DriverStoreError(f"a bundle holds exactly one driver wheel (given {len(drivers)})")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for w in wheels:
            z.write(w, w.name)
    out.write_bytes(sign(key, "driver", BUNDLE_TARGET, buf.getvalue()))
    return out
