"""`sensegate config use-local`: hand a gateway that runs a pushed config back to its local file.

A pushed config wins over the local file at every start and reload (the file stays the trust
anchor and the fallback), so a technician's local edit does nothing while one is current. This
makes the local file current again (no pushed revision is current or a fallback any more); a
newer push takes over as before, an older or the same revision is still refused. The running agent keeps
the pushed config in memory and would write it back, so it is stopped first and started after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from gateway.config import ConfigInvalid, load_config
from gateway.registry import Registry
from gateway.remote.store import ConfigStore


def _systemd_active() -> bool | None:
    """Whether sensegate.service is active (None where systemd does not run)."""
    from gateway.doctor_agent import systemd_unit

    unit = systemd_unit()
    return None if unit is None else unit.active in ("active", "activating", "reloading")


def _agent_answers(path: Path) -> bool:
    """A running agent outside systemd answers on its metrics endpoint."""
    from gateway.doctor_agent import fetch_status

    cfg = load_config(path, Registry.discover(), broken_ok=True)
    return cfg.config.metrics.enabled and isinstance(fetch_status(cfg.config.metrics.listen, 2.0), dict)


def use_local(args: argparse.Namespace) -> int:
    """Make the local config file current again; restart the service around the change."""
    path = Path(args.config)
    try:
        cfg = load_config(path, Registry.discover(), broken_ok=True)
    except ConfigInvalid as e:
        print(f"config use-local: the local file is invalid, so the gateway could not run it:\n{e}", file=sys.stderr)
        return 1
    root = Path(cfg.config.gateway.state_dir) / "remote"
    store = ConfigStore(root, cfg.config.remote.history)
    if not (root / "state.json").exists():
        print(f"the gateway already runs its local file {path} (no pushed config was ever applied)")
        return 0
    store.open()
    rev = store.state.current
    if rev is None:
        print(f"the gateway already runs its local file {path}")
        return 0
    if os.geteuid() != 0:
        print("config use-local: run it as root (sudo sensegate config use-local): it restarts the service",
              file=sys.stderr)
        return 1
    active = _systemd_active()
    if active is None and _agent_answers(path):
        print("config use-local: the agent is running outside systemd; stop it first (Ctrl-C or SIGTERM), run this "
              "again, then start it", file=sys.stderr)
        return 1
    if active:
        subprocess.run(["systemctl", "stop", "sensegate"], check=True, timeout=120)
    store.state.good = []  # no pushed revision is a fallback either: the agent boots the local file
    store.fall_back(None)
    owner = root.stat()
    os.chown(root / "state.json", owner.st_uid, owner.st_gid)  # the service user must read it
    if active:
        subprocess.run(["systemctl", "start", "sensegate"], check=True, timeout=120)
    print(f"pushed config revision {rev} is no longer current: the gateway runs its local file {path}"
          f"{' (restarted)' if active else ' from its next start'}; a newer push takes over again")
    return 0
