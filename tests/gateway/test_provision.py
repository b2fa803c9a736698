"""`sensegate provision`: identity written in place, keys made once and kept, CSR, broker CA and
ops keys installed, bad input refused with nothing written, then doctor's verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_config
from gateway.keys import init_key, key_id, load_private_key
from gateway.provision import DEFAULT_CONFIG, Plan, ProvisionError, provision, set_values
from gateway.receiver import KeyBindings, Untrusted
from gateway.registry import Registry

REG = Registry.discover()


def plan(tmp: Path, **kw: object) -> Plan:
    kw.setdefault("state_dir", str(tmp / "state"))
    kw.setdefault("service_user", "nobody")
    return Plan(config=tmp / "etc" / "sensegate.yaml", **kw)  # type: ignore[arg-type]


def test_fresh_gateway(tmp_path: Path) -> None:
    result, cfg = provision(plan(tmp_path, gateway_id="gw-0042", site="Main St. cabinet 17"), REG)
    text = (tmp_path / "etc" / "sensegate.yaml").read_text()
    assert "  id: gw-0042            # set by: sudo sensegate provision --id <GATEWAY-ID>" in text
    assert '  site: "Main St. cabinet 17"' in text
    assert text.count("\n") == DEFAULT_CONFIG.count("\n")  # comments and layout kept
    assert cfg.config.gateway.id == "gw-0042"
    key = tmp_path / "state" / "keys" / "device.key"
    assert key.stat().st_mode & 0o777 == 0o600
    load_private_key(key)
    if os.geteuid() == 0:
        assert key.stat().st_uid == __import__("pwd").getpwnam("nobody").pw_uid
    assert any("made the device key" in d for d in result.done)
    exported = tmp_path / "state" / "keys" / "gw-0042.pub.pem"  # what the receiver trusts, by its name
    assert any(str(exported) in n and "binds the key to gateway 'gw-0042'" in n for n in result.next_steps)
    kid = key_id(load_private_key(key).public_key())
    trust = KeyBindings.from_specs([str(exported)])  # bound to the gateway its name says
    assert trust.gateways == {"gw-0042": 1} and not isinstance(trust.lookup("gw-0042", kid), Untrusted)
    assert isinstance(trust.lookup("gw-other", kid), Untrusted)
    provision(plan(tmp_path, gateway_id="gw-0043"), REG)  # renamed: the old export must not bind it any more
    assert not exported.exists() and (exported.parent / "gw-0043.pub.pem").exists()


def test_second_run_keeps_the_key_and_changes_only_what_is_asked(tmp_path: Path) -> None:
    provision(plan(tmp_path, gateway_id="gw-1"), REG)
    key = (tmp_path / "state" / "keys" / "device.key").read_bytes()
    before = (tmp_path / "etc" / "sensegate.yaml").read_text()
    result, cfg = provision(plan(tmp_path, broker="mqtts://broker.example.net:8883"), REG)
    after = (tmp_path / "etc" / "sensegate.yaml").read_text()
    assert (tmp_path / "state" / "keys" / "device.key").read_bytes() == key
    assert any("kept the existing device key" in d for d in result.done)
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [
        (
            "    url: mqtts://broker.invalid:8883   # set by: sudo sensegate provision --broker mqtts://HOST:8883",
            "    url: mqtts://broker.example.net:8883   # set by: sudo sensegate provision --broker mqtts://HOST:8883",
        )
    ]
    assert cfg.config.gateway.id == "gw-1"


def test_refuses_what_would_not_validate_and_writes_nothing(tmp_path: Path) -> None:
    provision(plan(tmp_path, gateway_id="gw-1"), REG)
    path = tmp_path / "etc" / "sensegate.yaml"
    before = path.read_bytes()
    with pytest.raises(ProvisionError, match="would not be valid"):
        provision(plan(tmp_path, gateway_id="no spaces allowed"), REG)
    with pytest.raises(ProvisionError, match="would not be valid"):
        provision(plan(tmp_path, broker="http://not-mqtt"), REG)
    assert path.read_bytes() == before
    with pytest.raises(ProvisionError, match="give the gateway id with --id"):
        provision(Plan(config=tmp_path / "other.yaml"), REG)


def test_no_mqtt_uplink_to_point_at_a_broker(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "sensegate.yaml"
    path.parent.mkdir()
    path.write_text(f"gateway:\n  id: gw-2\n  state_dir: {tmp_path}/state\nuplinks: [{{type: jsonl}}]\n")
    with pytest.raises(ProvisionError, match="no 'url:' value under an mqtt uplink"):
        provision(plan(tmp_path, broker="mqtt://b:1883"), REG)


def test_set_values_quotes_only_when_needed() -> None:
    text = "gateway:\n  id: a   # keep me\n  site: ''\n"
    out = set_values(text, {"gateway.id": "gw-9", "gateway.site": "yes"})
    assert out == 'gateway:\n  id: gw-9   # keep me\n  site: "yes"\n'  # plain 'yes' would read back as true
    assert set_values(text, {"gateway.site": 'a "quoted" #site'}).endswith('site: "a \\"quoted\\" #site"\n')


def test_csr_ca_and_ops_keys(tmp_path: Path) -> None:
    from tests.gateway.tlsutil import make_pki

    pki = make_pki(tmp_path / "pki")
    ops = init_key(tmp_path / "ops", name="ops-alice")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sensegate.yaml").write_text(
        DEFAULT_CONFIG.replace("/etc/sensegate/broker-ca.pem", str(etc / "broker-ca.pem"))
    )
    p = plan(tmp_path, gateway_id="gw-tls", csr=True, ca=Path(pki["ca"]), ops_keys=[ops.public_path])
    result, _ = provision(p, REG)
    keys = tmp_path / "state" / "keys"
    csr = x509.load_pem_x509_csr((keys / "tls.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == "gw-tls"
    tls_key = load_private_key(keys / "tls.key")  # refuses anything but 0600
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    assert csr.public_key() == tls_key.public_key()
    assert (etc / "broker-ca.pem").read_bytes().strip() == Path(pki["ca"]).read_bytes().strip()
    assert (etc / "ops-keys" / "ops-alice.pub.pem").exists()
    assert any("trusted ops key" in d and ops.fingerprint in d for d in result.done)
    assert any("tls.crt" in n for n in result.next_steps)
    # again: the TLS key is kept (a renewal CSR for the same key), the CSR rewritten
    first = (keys / "tls.key").read_bytes()
    provision(p, REG)
    assert (keys / "tls.key").read_bytes() == first

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ProvisionError, match="not a PEM certificate"):
        provision(plan(tmp_path, ca=junk), REG)
    with pytest.raises(ProvisionError, match="not a PEM public key"):
        provision(plan(tmp_path, ops_keys=[junk]), REG)


def test_cli_provisions_then_reports_doctor(tmp_path: Path) -> None:
    cfg = tmp_path / "etc" / "sensegate.yaml"
    base = [sys.executable, "-m", "gateway", "provision", "-c", str(cfg), "--user", "nobody"]
    res = subprocess.run(
        [*base, "--id", "gw-cli", "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60
    )
    # the packaged broker.invalid cannot resolve: doctor fails, provisioning itself worked
    assert res.returncode == 2, res.stdout + res.stderr
    assert "done: made the device key" in res.stdout
    assert "[FAIL] broker mqtt: cannot resolve broker.invalid" in res.stdout
    assert load_config(cfg, REG).config.gateway.id == "gw-cli"
    res = subprocess.run([*base, "--id", "bad id"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "sensegate provision: the config would not be valid" in res.stderr
