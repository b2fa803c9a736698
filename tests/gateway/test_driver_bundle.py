"""Driver bundles and the gateway's ops keys as they stand now: a bundle signed by an ops key the
gateway took a revocation for, or by a key it never trusted, is refused before anything is
installed; doctor counts the ops keys after the key events, naming the revoked one."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from gateway.config import load_config
from gateway.doctor import check_ops_keys
from gateway.driverstore import make_bundle
from gateway.keyevents import make_revocation
from gateway.keys import init_key, key_id, load_private_key, load_public_key
from gateway.registry import Registry
from gateway.remote.envelope import gateway_ops_keys


def _driver_wheel(tmp: Path) -> Path:
    """A wheel that declares one sensegate driver (what `driver bundle` looks for). It has no WHEEL
    file, so pip refuses it: should a refusal below ever let a bundle through, the test fails at
    pip instead of installing into the test environment."""
    wheel = tmp / "sgthermo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("sgthermo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: sgthermo\nVersion: 1.0\n")
        z.writestr("sgthermo-1.0.dist-info/entry_points.txt", "[sensegate.drivers]\nthermo = sgthermo:MANIFEST\n")
        z.writestr("sgthermo/__init__.py", "")
    return wheel


def _install(bundle: Path, config: Path, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "driver", "install", str(bundle), "-c", str(config),
                           "--dir", str(store)], capture_output=True, text=True, timeout=120)


def test_a_bundle_signed_by_a_revoked_or_unknown_ops_key_is_refused(tmp_path: Path) -> None:
    ops_dir = tmp_path / "etc" / "ops-keys"
    a = init_key(ops_dir, name="ops-a")
    b = init_key(ops_dir, name="ops-b")
    stranger = init_key(tmp_path / "elsewhere", name="ops")
    for info in (a, b, stranger):  # the private halves never sit beside a gateway's trusted keys
        info.private_path.rename(tmp_path / info.private_path.name)
    config = tmp_path / "etc" / "sensegate.yaml"
    state = tmp_path / "state"
    config.write_text(yaml.safe_dump({"gateway": {"id": "gw-bundle", "state_dir": str(state)},
                                      "remote": {"ops_keys": ["ops-keys"]},
                                      "uplinks": [{"type": "mqtt", "url": "mqtt://127.0.0.1:1"}]}))
    wheel = _driver_wheel(tmp_path)
    signed_a = make_bundle([wheel], load_private_key(tmp_path / "ops-a.key"), tmp_path / "a.sgdrv")
    signed_x = make_bundle([wheel], load_private_key(tmp_path / "ops.key"), tmp_path / "x.sgdrv")
    store = tmp_path / "drivers"

    res = _install(signed_x, config, store)
    assert res.returncode == 1 and "signed by an unknown key" in res.stderr, res.stderr

    # ops revoke key A (signed by key B); the gateway's agent took it, as it keeps it across restarts
    kid_a = key_id(load_public_key(a.public_path))
    ring = gateway_ops_keys(["ops-keys"], config.parent, str(state))
    assert ring.take(make_revocation(load_private_key(tmp_path / "ops-b.key"), kid_a, reason="laptop stolen"))
    res = _install(signed_a, config, store)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"signed by ops key {kid_a.hex()}, which was revoked (laptop stolen)" in res.stderr
    assert not store.exists() or not list(store.rglob("*.whl")), "nothing is kept from a refused bundle"

    found = check_ops_keys(load_config(config, Registry.discover()), config)
    assert found.status == "ok", found
    assert found.message == f"on: 1 ops key(s) trusted (ops key {kid_a.hex()} was revoked (laptop stolen))"
