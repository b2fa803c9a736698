"""`sensegate provision`: identity written into its own drop-in (the package's file untouched),
keys made once and kept, CSR, broker CA and ops keys installed, bad input refused with nothing
written and a plain message, then doctor's verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_config
from gateway.keys import init_key, key_id, load_private_key
from gateway.provision import DEFAULT_CONFIG, PROVISION_DROPIN, Plan, ProvisionError, provision
from gateway.receiver import KeyBindings, Untrusted
from gateway.registry import Registry

REG = Registry.discover()


def plan(tmp: Path, **kw: object) -> Plan:
    kw.setdefault("state_dir", str(tmp / "state"))
    kw.setdefault("service_user", "nobody")
    return Plan(config=tmp / "etc" / "sensegate.yaml", **kw)  # type: ignore[arg-type]


def dropin(tmp: Path) -> Path:
    return tmp / "etc" / "sensegate.yaml.d" / PROVISION_DROPIN


def test_fresh_gateway(tmp_path: Path) -> None:
    result, cfg = provision(plan(tmp_path, gateway_id="gw-0042", site="Main St. cabinet 17"), REG)
    assert (tmp_path / "etc" / "sensegate.yaml").read_text() == DEFAULT_CONFIG  # the package's file, untouched
    data = yaml.safe_load(dropin(tmp_path).read_text())
    assert data["gateway"] == {"id": "gw-0042", "site": "Main St. cabinet 17", "state_dir": str(tmp_path / "state")}
    assert "run it again to change these values" in dropin(tmp_path).read_text()
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
    result, cfg = provision(plan(tmp_path, broker="mqtts://broker.example.net:8883"), REG)
    assert (tmp_path / "state" / "keys" / "device.key").read_bytes() == key
    assert any("kept the existing device key" in d for d in result.done)
    data = yaml.safe_load(dropin(tmp_path).read_text())
    assert data["gateway"]["id"] == "gw-1"
    # the uplinks list comes from the default, with only the broker changed
    assert data["uplinks"] == [
        {"type": "mqtt", "url": "mqtts://broker.example.net:8883", "tls": {"ca_file": "/etc/sensegate/broker-ca.pem"}}
    ]
    assert cfg.config.gateway.id == "gw-1" and cfg.config.uplinks[0].url == "mqtts://broker.example.net:8883"
    assert [d for d in result.done if "10-provision.yaml" in d] == [
        f"{dropin(tmp_path)}: broker = mqtts://broker.example.net:8883"
    ]


def test_refuses_what_would_not_validate_and_writes_nothing(tmp_path: Path) -> None:
    provision(plan(tmp_path, gateway_id="gw-1"), REG)
    before = dropin(tmp_path).read_bytes()
    with pytest.raises(ProvisionError, match="would not be valid") as e:
        provision(plan(tmp_path, gateway_id="no spaces allowed"), REG)
    assert "gateway.id: must be 1-128 letters, digits" in str(e.value)  # words, not a regular expression
    for bad in ("http://not-mqtt", "broker.example.net", "mqtts://", "mqtts://host:99999", "mqtt://h:1883/x"):
        with pytest.raises(ProvisionError) as e:
            provision(plan(tmp_path, broker=bad), REG)
        assert str(e.value).startswith(f"--broker {bad!r} is not a broker URL: give mqtts://HOST:PORT"), e.value
        assert "^" not in str(e.value)
    assert dropin(tmp_path).read_bytes() == before
    with pytest.raises(ProvisionError, match="give the gateway id with --id"):
        provision(Plan(config=tmp_path / "other.yaml"), REG)


def test_a_later_drop_in_that_overrides_provisioning_is_named(tmp_path: Path) -> None:
    provision(plan(tmp_path, gateway_id="gw-1"), REG)
    (dropin(tmp_path).parent / "50-local.yaml").write_text("gateway:\n  id: gw-local\n")
    with pytest.raises(ProvisionError, match=r"a later file overrides it \(50-local.yaml\)"):
        provision(plan(tmp_path, gateway_id="gw-2"), REG)


def test_no_mqtt_uplink_to_point_at_a_broker(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "sensegate.yaml"
    path.parent.mkdir()
    path.write_text(f"gateway:\n  id: gw-2\n  state_dir: {tmp_path}/state\nuplinks: [{{type: jsonl}}]\n")
    with pytest.raises(ProvisionError, match="no MQTT uplink to point at the broker"):
        provision(plan(tmp_path, broker="mqtt://b:1883"), REG)


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
    assert "agent:" not in res.stdout  # provisioning comes before the agent runs: the files only
    assert load_config(cfg, REG).config.gateway.id == "gw-cli"
    res = subprocess.run([*base, "--id", "bad id"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "sensegate provision: the config would not be valid" in res.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user (CI runs as root)")
def test_cli_without_root_says_to_use_sudo(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sensegate.yaml").write_text(DEFAULT_CONFIG)
    tmp_path.chmod(0o755)
    res = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m", "gateway",
         "provision", "-c", str(etc / "sensegate.yaml"), "--id", "gw-x", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Errno" not in res.stderr
    assert "so it must run as root: sudo sensegate provision -c" in res.stderr, res.stderr
