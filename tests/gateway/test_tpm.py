"""The device key in a TPM 2.0 through tpm2-pkcs11, against a simulated TPM (swtpm, with tpm2-abrmd
as the resource manager a Pi gets from /dev/tpmrm0): `keys init --pkcs11` makes an ES256 key in
the TPM, an Ed25519 request is refused in plain words (TPM 2.0 has no Ed25519), and the daemon
signs through the TPM end to end to a real broker and the verifying receiver."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.keys import fingerprint, load_public_key
from hil.mosquitto import Mosquitto
from hil.swtpm import SimulatedTpm
from tests.gateway.test_pkcs11 import daemon_delivers

SG = [sys.executable, "-m", "gateway"]


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedTpm]:
    t = SimulatedTpm(tmp_path_factory.mktemp("tpm")).start()
    yield t
    t.stop()


def test_keys_init_makes_an_es256_key_in_the_tpm_and_refuses_ed25519(tpm: SimulatedTpm, tmp_path: Path) -> None:
    r = subprocess.run([*SG, "keys", "init", "--pkcs11", tpm.uri("made"), "--alg", "es256", "--dir", str(tmp_path)],
                       capture_output=True, text=True, env=tpm.env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"fingerprint: {fingerprint(load_public_key(tmp_path / 'device.pub.pem'))}" in r.stdout
    ed = subprocess.run([*SG, "keys", "init", "--pkcs11", tpm.uri("ed"), "--alg", "ed25519", "--dir", str(tmp_path)],
                        capture_output=True, text=True, env=tpm.env(), timeout=120)
    assert ed.returncode == 1 and "the token cannot make ed25519 keys; use --alg es256" in ed.stderr


async def test_the_daemon_signs_through_the_tpm(tpm: SimulatedTpm, tmp_path: Path, broker: Mosquitto) -> None:
    keys = await asyncio.create_subprocess_exec(
        *SG, "keys", "init", "--pkcs11", tpm.uri("daemon"), "--alg", "es256", "--dir", str(tmp_path), env=tpm.env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(keys.communicate(), 120)
    assert keys.returncode == 0, err.decode()
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-tpm", "state_dir": str(tmp_path / "state"), "key_file": tpm.uri("daemon")},
        "batch": {"alg": "es256"},
        "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
        "drivers": [{"driver": "sim", "name": "s", "interval": "20ms",
                     "points": [{"name": "n", "pattern": "counter"}]}],
    }))
    maps = await daemon_delivers(cfg, tpm.env(), tmp_path / "device.pub.pem", broker.url, 50, gateway="gw-tpm")
    assert "libtpm2_pkcs11" in maps, "the daemon signs through tpm2-pkcs11"
