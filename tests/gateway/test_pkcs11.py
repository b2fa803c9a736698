"""Device keys on a PKCS#11 token, against a real SoftHSM2 token: RFC 7512 URIs (with hostile
ones), keys made on the token and never extractable, signatures any COSE verifier accepts, the
same kid and fingerprint scheme as PEM keys, a lost session recovered, `keys init --pkcs11`,
doctor and provision, and the daemon signing through the token end to end to a real broker
and the verifying receiver (with the token library in its memory maps, as it must be there and
only there)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import cbor2
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gateway import cose
from gateway.config import ConfigInvalid, load_config_bytes
from gateway.doctor import Environment, check_token_key
from gateway.doctor_agent import check_delivery, fetch_status, look
from gateway.hsm import NoTokenKey, TokenError, TokenKey, create_key, open_token_key
from gateway.keys import fingerprint, key_id, load_public_key, load_signing_key, spki_der
from gateway.pkcs11uri import PIN_ENV, UriError, build, parse
from gateway.registry import Registry
from gateway.testing import free_port
from hil.mosquitto import Mosquitto
from hil.softhsm import MODULE, SoftHsm
from tests.gateway.helpers import MqttReceiver

ROOT = Path(__file__).resolve().parents[2]
SG = [sys.executable, "-m", "gateway"]
REG = Registry.discover()

# -- URIs -------------------------------------------------------------------------------------------


def test_rfc7512_uris_parse() -> None:
    u = parse("pkcs11:token=Sense%20Gate;object=device;id=%01%ff;type=private"
              "?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sensegate/token.pin")
    assert (u.token, u.object, u.id, u.module) == ("Sense Gate", "device", b"\x01\xff", MODULE)
    assert u.pin_file() == Path("/etc/sensegate/token.pin")
    # the RFC's bare-path pin-source and file:// forms; the environment by default
    assert parse("pkcs11:object=k?module-path=/m.so&pin-source=/run/pin").pin_source == "file:/run/pin"
    assert parse("pkcs11:object=k?module-path=/m.so&pin-source=file:///run/pin").pin_source == "file:/run/pin"
    assert parse("pkcs11:object=k?module-path=/m.so").pin_source == f"env:{PIN_ENV}"
    assert parse("pkcs11:slot-id=3;id=%02?module-path=/m.so&pin-source=env:TOKEN_PIN").slot_id == 3
    assert parse(build(MODULE, "a;b=c", "dev ice", "file:/p")).token == "a;b=c"


@pytest.mark.parametrize(("uri", "says"), [
    ("pkcs11:object=k?module-path=/m.so&pin-value=1234", "pin-value puts the PIN in the config"),
    ("pkcs11:object=k?module-path=lib.so", "absolute path"),
    ("pkcs11:object=k", "name the PKCS#11 library"),
    ("pkcs11:token=t?module-path=/m.so", "name the key"),
    ("pkcs11:object=k;type=public?module-path=/m.so", "type must be private"),
    ("pkcs11:object=k;object=j?module-path=/m.so", "given twice"),
    ("pkcs11:objekt=k?module-path=/m.so", "unknown path attribute 'objekt'"),
    ("pkcs11:object?module-path=/m.so", "has no value"),
    ("pkcs11:object=k k?module-path=/m.so", "whitespace"),
    ("pkcs11:object=%ff?module-path=/m.so", "not UTF-8"),
    ("pkcs11:object=k\"?module-path=/m.so", "percent-encoding"),
    ("pkcs11:object=k?module-path=/m.so&pin-source=http://x/pin", "pin-source is file:"),
    ("pkcs11:object=k;slot-id=-1?module-path=/m.so", "slot-id is a decimal"),
    ("pkcs11:id=?module-path=/m.so", "id is empty"),
    ("pkcs11:object=k?module-name=../evil", "bare name"),
])
def test_bad_uris_say_what_is_wrong(uri: str, says: str) -> None:
    with pytest.raises(UriError, match=says.replace("(", r"\(")):
        parse(uri, resolve_module=True)


@given(st.text(max_size=200))
def test_any_text_after_the_scheme_parses_or_gets_a_uri_error(tail: str) -> None:
    try:
        parse("pkcs11:" + tail)
    except UriError:
        pass


def test_the_config_check_names_a_bad_key_uri() -> None:
    doc = (b"gateway:\n  id: gw-1\n  key_file: 'pkcs11:object=k?module-path=/m.so&pin-value=1'\n"
           b"uplinks: [{type: jsonl}]\n")
    with pytest.raises(ConfigInvalid) as e:
        load_config_bytes(doc, REG, "gw.yaml")
    assert "gw.yaml:3:3: gateway.key_file: pin-value puts the PIN in the config" in str(e.value)
    good = doc.replace(b"&pin-value=1", b"&pin-source=file:/etc/sensegate/token.pin")
    assert load_config_bytes(good, REG, "gw.yaml").config.gateway.key_file.startswith("pkcs11:")


# -- the token ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["es256", "ed25519"])
def test_a_token_key_signs_cose_any_verifier_accepts(softhsm: SoftHsm, alg: str) -> None:
    made = create_key(softhsm.uri(f"sign-{alg}"), alg)  # type: ignore[arg-type]
    key = load_signing_key(softhsm.uri(f"sign-{alg}"))
    try:
        assert isinstance(key, TokenKey) and key.alg == alg
        # kid and fingerprint: the PEM scheme, SHA-256 of the SubjectPublicKeyInfo
        assert key.kid == hashlib.sha256(spki_der(made.public)).digest()[:16] == key_id(made.public)
        assert fingerprint(key.public_key()) == made.fingerprint
        protected = cose.protected_header(key, key.kid, {cose.CONTENT_TYPE: 112})
        payload = cbor2.dumps([{"n": "t", "v": 21.5}])
        msg = cose.encode_sign1(protected, payload, cose.sign(key, protected, payload))
        cose.verify(cose.parse_sign1(msg), made.public)
        # an independent COSE implementation agrees
        from gateway.keys import public_pem
        from tests.gateway import cosecheck

        assert cosecheck.verify([(msg, public_pem(made.public), key.kid)]) == [payload]
        tampered = msg[:-70] + bytes([msg[-70] ^ 1]) + msg[-69:]
        with pytest.raises(cose.CoseError):
            cose.verify(cose.parse_sign1(tampered), made.public)
    finally:
        key.close()


def test_the_private_key_cannot_be_read_off_the_token(softhsm: SoftHsm) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    create_key(softhsm.uri("secret"), "es256")
    tok = pkcs11.lib(MODULE).get_token(token_label=softhsm.label)
    with tok.open(user_pin=softhsm.pin) as s:
        priv = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="secret")
        assert priv[Attribute.SENSITIVE] is True and priv[Attribute.EXTRACTABLE] is False
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            priv[Attribute.VALUE]


def test_keys_are_kept_unless_forced(softhsm: SoftHsm) -> None:
    first = create_key(softhsm.uri("kept"), "es256")
    with pytest.raises(TokenError, match=f"already exists \\(fingerprint {first.fingerprint}\\).*--force"):
        create_key(softhsm.uri("kept"), "es256")
    second = create_key(softhsm.uri("kept"), "ed25519", force=True)
    assert second.replaced and second.fingerprint != first.fingerprint
    key = open_token_key(softhsm.uri("kept"))
    assert key.alg == "ed25519" and fingerprint(key.public_key()) == second.fingerprint
    key.close()


def test_what_is_wrong_with_a_token_key_is_said(softhsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(NoTokenKey, match=r"no key 'absent' on token.*keys init --pkcs11"):
        open_token_key(softhsm.uri("absent"))
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("0000\n")
    with pytest.raises(TokenError, match="refused the PIN"):
        open_token_key(build(MODULE, softhsm.label, "absent", f"file:{wrong}"))
    with pytest.raises(TokenError, match=r"no token matching .*tokens present: 'sensegate'"):
        open_token_key(build(MODULE, "elsewhere", "device", f"file:{softhsm.pin_file}"))
    with pytest.raises(TokenError, match="cannot read the token PIN"):
        open_token_key(build(MODULE, softhsm.label, "device", f"file:{tmp_path / 'none'}"))
    with pytest.raises(TokenError, match=r"no PKCS#11 module at /nowhere/lib\.so"):
        open_token_key(build("/nowhere/lib.so", softhsm.label, "device", f"file:{softhsm.pin_file}"))
    env_uri = build(MODULE, softhsm.label, "absent")
    os.environ.pop(PIN_ENV, None)
    with pytest.raises(TokenError, match=f"environment variable {PIN_ENV} is not set"):
        open_token_key(env_uri)


def test_a_lost_session_is_opened_again(softhsm: SoftHsm) -> None:
    create_key(softhsm.uri("relogin"), "es256")
    key = open_token_key(softhsm.uri("relogin"))
    try:
        key._session.close()  # what a replugged token or a restarted token daemon does to us
        data = b"after the session was lost"
        cose.verify_signature(key.public_key(), key.sign(data), data)
        assert key.reopened == 1
    finally:
        key.close()


async def test_batches_are_signed_off_the_event_loop(softhsm: SoftHsm, tmp_path: Path) -> None:
    """The token blocks while it signs: the buffer signs on its database thread, never on the loop."""
    from gateway.batcher import Batcher
    from gateway.config.schema import BatchSection, BufferSection
    from gateway.driver_api import Reading
    from gateway.store import Store

    create_key(softhsm.uri("threads"), "es256")
    threads: list[int] = []

    class Recording(TokenKey):
        def sign(self, data: bytes) -> bytes:
            threads.append(threading.get_ident())
            return super().sign(data)

    key = Recording(parse(softhsm.uri("threads"), resolve_module=True)).open()
    buf = Store(tmp_path / "b.db", "gw-t", BufferSection(), BatchSection(alg="es256"))
    await buf.open()
    try:
        buf.put(Reading("gw-t", "p", 1_700_000_000_000_000_000, 1.0))
        batch = await buf.make_batch(Batcher(key, "gw-t", BatchSection(alg="es256")))
    finally:
        await buf.close()
        key.close()
    assert batch is not None and threads and threading.get_ident() not in threads
    cose.verify(cose.parse_sign1(batch.data), key.public_key())


# -- command line, doctor, provision ---------------------------------------------------------------


def test_keys_init_pkcs11_makes_the_key_on_the_token(softhsm: SoftHsm, tmp_path: Path) -> None:
    uri = softhsm.uri("cli")
    r = subprocess.run([*SG, "keys", "init", "--pkcs11", uri, "--alg", "es256", "--dir", str(tmp_path)],
                       capture_output=True, text=True, env=softhsm.env(), timeout=60)
    assert r.returncode == 0, r.stderr
    pub = load_public_key(tmp_path / "device.pub.pem")
    assert f"fingerprint: {fingerprint(pub)}" in r.stdout and "not extractable" in r.stdout
    assert not (tmp_path / "device.key").exists(), "nothing private is written"
    again = subprocess.run([*SG, "keys", "init", "--pkcs11", uri, "--dir", str(tmp_path)],
                           capture_output=True, text=True, env=softhsm.env(), timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr


def _token_config(tmp: Path, uri: str, alg: str, url: str = "mqtt://127.0.0.1:1") -> Path:
    cfg = {"gateway": {"id": "gw-hsm", "state_dir": str(tmp / "state"), "key_file": uri},
           "batch": {"alg": alg},
           "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
           "drivers": [{"driver": "sim", "name": "s", "interval": "20ms",
                        "points": [{"name": "n", "pattern": "counter"}]}]}
    path = tmp / "gw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_doctor_checks_the_token_pin_and_key(softhsm: SoftHsm, tmp_path: Path) -> None:
    env = Environment(service_user=__import__("pwd").getpwuid(os.geteuid()).pw_name)
    path = _token_config(tmp_path, softhsm.uri("doc"), "es256")
    cfg = load_config_bytes(path.read_bytes(), REG, str(path))
    found = {f.check: f for f in check_token_key(cfg, env)}
    assert found["signing key"].status == "fail" and "no key 'doc'" in found["signing key"].message
    made = create_key(softhsm.uri("doc"), "es256")
    found = {f.check: f for f in check_token_key(cfg, env)}
    assert found["token PIN"].status == "ok" and found["signing key"].status == "ok"
    assert made.fingerprint in found["signing key"].message
    softhsm.pin_file.chmod(0o644)
    try:
        pin = {f.check: f for f in check_token_key(cfg, env)}["token PIN"]
    finally:
        softhsm.pin_file.chmod(0o600)
    assert pin.status == "fail" and "readable by others" in pin.message and "chmod 600" in pin.fix
    other = load_config_bytes(path.read_bytes().replace(b"alg: es256", b"alg: ed25519"), REG, str(path))
    mismatch = {f.check: f for f in check_token_key(other, env)}["signing key"]
    assert mismatch.status == "fail" and "batch.alg is ed25519" in mismatch.message


def test_provision_makes_the_token_key_once_and_writes_its_public_key(softhsm: SoftHsm, tmp_path: Path) -> None:
    from gateway.provision import Plan, provision

    path = _token_config(tmp_path, softhsm.uri("prov"), "ed25519")
    plan = Plan(config=path, service_user="nobody")
    result, _ = provision(plan, REG)
    pub = load_public_key(tmp_path / "state" / "keys" / "gw-hsm.pub.pem")
    assert any("made the device key on the token (ed25519" in line and fingerprint(pub) in line
               for line in result.done), result.done
    again, _ = provision(plan, REG)
    assert any("kept the existing device key on the token" in line and fingerprint(pub) in line
               for line in again.done), again.done


# -- the daemon, end to end -------------------------------------------------------------------------


async def daemon_delivers(cfg: Path, env: dict[str, str], pub: Path, url: str, n: int, gateway: str = "gw-hsm") -> str:
    """Run the daemon on ``cfg`` until a verifying receiver has its first ``n`` readings, complete and
    in order; stop it (it must exit 0) and return its memory maps, read while it signed."""
    rx = MqttReceiver(url, pub, client_id=f"token-receiver-{os.getpid()}-{cfg.parent.name}", gateway=gateway)
    async with rx.running():
        await asyncio.sleep(0.3)
        proc = await asyncio.create_subprocess_exec(*SG, "run", "-c", str(cfg), cwd=ROOT, env=env,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await rx.wait_readings(n, within=40)
            maps = await asyncio.to_thread(Path(f"/proc/{proc.pid}/maps").read_text)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    s = rx.rx.summary()
    assert s.bad_signatures == 0 and s.gaps == 0 and s.batches >= 2 and set(rx.statuses) == {"ok"}
    assert [r.value for r in rx.readings[:n]] == list(range(n))
    return maps


@pytest.mark.parametrize("alg", ["es256", "ed25519"])
async def test_the_daemon_signs_on_the_token_end_to_end(softhsm: SoftHsm, tmp_path: Path, broker: Mosquitto,
                                                        alg: str) -> None:
    uri = softhsm.uri(f"daemon-{alg}")
    made = await asyncio.to_thread(create_key, uri, alg)  # type: ignore[arg-type]
    (tmp_path / "device.pub.pem").write_bytes(__import__("gateway.keys", fromlist=["x"]).public_pem(made.public))
    cfg = _token_config(tmp_path, uri, alg, broker.url)
    maps = await daemon_delivers(cfg, softhsm.env(), tmp_path / "device.pub.pem", broker.url, 60)
    assert "libsofthsm2" in maps and "_pkcs11" in maps, "the token library signs in the daemon"


def test_the_daemon_refuses_a_token_it_cannot_use(softhsm: SoftHsm, tmp_path: Path) -> None:
    cfg = _token_config(tmp_path, softhsm.uri("never-made"), "es256")
    r = subprocess.run([*SG, "run", "-c", str(cfg)], capture_output=True, text=True, env=softhsm.env(), timeout=60)
    assert r.returncode == 1
    assert "cannot start: no key 'never-made'" in r.stderr and "keys init --pkcs11" in r.stderr


def test_the_receiver_cli_verifies_a_token_signed_stream(softhsm: SoftHsm, tmp_path: Path, broker: Mosquitto) -> None:
    """As ops run it: `sensegate receive --trust` with the public key `keys init --pkcs11` wrote."""
    uri = softhsm.uri("cli-e2e")
    subprocess.run([*SG, "keys", "init", "--pkcs11", uri, "--alg", "es256", "--dir", str(tmp_path / "pub")],
                   check=True, capture_output=True, env=softhsm.env(), timeout=60)
    cfg = _token_config(tmp_path, uri, "es256", broker.url)
    trust = "gw-hsm=" + str(tmp_path / "pub" / "device.pub.pem")
    rx = subprocess.Popen([*SG, "receive", "--url", broker.url, "--trust", trust,
                           "--count", "40", "--timeout", "40", "--json", "--out", ""],
                          stdout=subprocess.PIPE, text=True)
    gw = subprocess.Popen([*SG, "run", "-c", str(cfg)], stderr=subprocess.PIPE, text=True, env=softhsm.env())
    try:
        out, _ = rx.communicate(timeout=60)
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
    assert gw.returncode == 0, err
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert rx.returncode == 0 and summary["ok"] and summary["readings"] >= 40
    assert summary["bad_signatures"] == 0 and summary["gaps"] == 0


def test_the_demo_signs_on_a_softhsm_token(tmp_path: Path) -> None:
    r = subprocess.run([*SG, "demo", "--pkcs11", "--seconds", "3", "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "device key made on a SoftHSM2 token" in r.stdout
    assert "signature verified" in r.stdout and "OK: complete and verified" in r.stdout
    assert "pkcs11:" in (tmp_path / "sensegate.yaml").read_text()
    assert not list((tmp_path / "state").glob("keys/*.key")), "no private key file anywhere"


async def test_a_token_that_cannot_sign_is_said_once_counted_and_recovers(softhsm: SoftHsm, tmp_path: Path,
                                                                           broker: Mosquitto,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The token's session is lost and logging in again fails (its PIN file was changed): one
    error line, no traceback, the failed attempts counted in the metrics; the PIN put back, the
    key signs again (said once) and nothing was lost."""
    from gateway.metrics import render, summary
    from tests.gateway.helpers import running_daemon

    pin = tmp_path / "token.pin"
    pin.write_text(softhsm.pin + "\n")
    pin.chmod(0o600)
    uri = build(MODULE, softhsm.label, "flaky", f"file:{pin}")
    made = await asyncio.to_thread(create_key, uri, "es256")
    pub = tmp_path / "flaky.pub.pem"
    pub.write_bytes(__import__("gateway.keys", fromlist=["x"]).public_pem(made.public))
    cfg = _token_config(tmp_path, uri, "es256", broker.url)
    listen = f"127.0.0.1:{free_port()}"
    cfg.write_text(cfg.read_text() + f"metrics: {{enabled: true, listen: '{listen}'}}\n")
    rx = MqttReceiver(broker.url, pub, gateway="gw-hsm")
    caplog.set_level("INFO", "sensegate")
    async with rx.running(), running_daemon(cfg) as d:
        await rx.wait_readings(20)
        pin.write_text("0000-0000\n")
        await asyncio.to_thread(d.pipeline.key.close)  # the token's session is gone (token reset, replugged)
        await asyncio.sleep(3.5)
        stats = d.pipeline.stats()["batches"]
        assert stats["sign_errors"] >= 2, stats
        text = render(summary(d))
        assert re.search(r"^sensegate_batch_sign_errors_total \d+$", text, re.M), text
        # doctor asks the running agent (GET /status): readings wait because the key does not sign
        view = await asyncio.to_thread(look, load_config_bytes(cfg.read_bytes(), REG, str(cfg)), lambda: None,
                                       fetch_status, 3.0)
        found = check_delivery(view, 1.0)
        assert found is not None and found.status == "warn", found
        assert "the device key failed to sign" in found.message and "signing key and token checks" in found.fix
        during = len(rx.readings)
        pin.write_text(softhsm.pin + "\n")
        await rx.wait_readings(during + 20, within=30)
    failing = [r for r in caplog.records if "cannot sign batches" in r.getMessage()]
    assert len(failing) == 1 and "refused the PIN" in failing[0].getMessage(), [r.getMessage() for r in failing]
    assert not [r for r in caplog.records if r.name == "sensegate.pipeline" and r.exc_info], "a traceback was logged"
    again = [r for r in caplog.records if "signs again" in r.getMessage()]
    assert len(again) == 1 and "failed attempt" in again[0].getMessage()
    s = rx.rx.summary()
    assert s.gaps == 0 and s.bad_signatures == 0 and {r.seq for r in rx.readings} == set(
        range(1, len(rx.readings) + 1))
