"""Keys: our Ed25519 (PyNaCl) keys and files are interchangeable with cryptography's, hostile key
files get a KeyFileError, and the running daemon never maps cryptography's OpenSSL (nor PKCS#11)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cose
from gateway.keys import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    InvalidSignature,
    KeyFileError,
    alg_of,
    init_key,
    key_id,
    load_private_key,
    load_public_key,
    private_key_from_pem,
    private_pem,
    public_key_from_pem,
    public_pem,
)
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver

ROOT = Path(__file__).resolve().parents[2]


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=2048))
def test_ed25519_signatures_and_files_match_cryptography(seed: bytes, msg: bytes) -> None:
    ours = Ed25519PrivateKey(seed)
    theirs = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    assert ours.sign(msg) == theirs.sign(msg), "Ed25519 is deterministic: same seed, same signature"
    # our PEM files are what cryptography writes, and read back the same key
    assert private_pem(ours) == theirs.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert public_pem(ours.public_key()) == theirs.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    again = private_key_from_pem(private_pem(ours))
    assert isinstance(again, Ed25519PrivateKey) and again.seed() == seed
    pub = public_key_from_pem(public_pem(ours.public_key()))
    assert pub == ours.public_key()
    pub.verify(theirs.sign(msg), msg)
    theirs.public_key().verify(ours.sign(msg), msg)


def test_a_tampered_message_or_signature_does_not_verify() -> None:
    key = Ed25519PrivateKey(bytes(range(32)))
    sig = key.sign(b"reading")
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig, b"readinG")
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig[:-1] + bytes([sig[-1] ^ 1]), b"reading")
    with pytest.raises(InvalidSignature):
        key.public_key().verify(sig[:63], b"reading")


def test_other_pem_forms_go_through_cryptography(tmp_path: Path) -> None:
    """CRLF line ends, P-256, and refusals of other kinds of key."""
    seed = bytes(range(1, 33))
    crlf = private_pem(Ed25519PrivateKey(seed)).replace(b"\n", b"\r\n")  # written on Windows
    key = private_key_from_pem(crlf)
    assert isinstance(key, Ed25519PrivateKey) and key.seed() == seed

    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    key256 = private_key_from_pem(pem)
    assert alg_of(key256) == "es256" and private_pem(key256) == pem
    assert public_key_from_pem(public_pem(key256.public_key())) == key256.public_key()

    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyFileError, match="secp384r1"):
        private_key_from_pem(p384.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(KeyFileError, match="unsupported key type"):
        public_key_from_pem(rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    # a file with the private key where the public one belongs, and the other way round
    info = init_key(tmp_path / "k")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(info.private_path)
    os.chmod(info.public_path, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(info.public_path)


_PEMISH = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda label, body: f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode(),
              st.sampled_from(["PRIVATE KEY", "PUBLIC KEY", "EC PRIVATE KEY"]),
              st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n -", max_size=200)),
    st.builds(lambda prefix, tail: b"-----BEGIN PRIVATE KEY-----\n"
              + base64.b64encode(prefix + tail) + b"\n-----END PRIVATE KEY-----\n",
              st.sampled_from([bytes.fromhex("302e020100300506032b657004220420"),
                               bytes.fromhex("302a300506032b6570032100"), b""]),
              st.binary(max_size=64)),
)


@settings(max_examples=300, deadline=None)
@given(raw=_PEMISH)
def test_hostile_key_files_get_a_key_error(raw: bytes) -> None:
    for parse in (private_key_from_pem, public_key_from_pem):
        try:
            key = parse(raw)
        except KeyFileError:
            continue
        # the odd well-formed one (a 32-byte tail after the exact Ed25519 prefix) is a real key
        assert isinstance(key, Ed25519PrivateKey | Ed25519PublicKey)


def test_cose_round_trip_with_both_algorithms() -> None:
    for key in (Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())):
        prot = cose.protected_header(key, key_id(key.public_key()), {"x": 1})  # type: ignore[arg-type]
        msg = cose.parse_sign1(cose.encode_sign1(prot, b"payload", cose.sign(key, prot, b"payload")))  # type: ignore[arg-type]
        cose.verify(msg, key.public_key())  # type: ignore[arg-type]
        bad = cose.parse_sign1(cose.encode_sign1(prot, b"payloaD", msg.signature))
        with pytest.raises(cose.CoseError, match="does not verify"):
            cose.verify(bad, key.public_key())  # type: ignore[arg-type]


async def test_the_running_daemon_does_not_load_cryptography(tmp_path: Path, broker: Mosquitto) -> None:
    """With an Ed25519 key the daemon signs through libsodium: cryptography's OpenSSL (about 7 MB
    resident) never appears in the process's memory maps, while verified batches arrive."""
    state = tmp_path / "state"
    info = init_key(state / "keys")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-maps", "state_dir": str(state)},
        "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
        "drivers": [{"driver": "sim", "name": "s", "interval": "50ms",
                     "points": [{"name": "n", "pattern": "counter"}]}],
    }))
    rx = MqttReceiver(broker.url, info.public_path, client_id="maps-receiver", gateway="gw-maps")
    async with rx.running():
        await asyncio.sleep(0.3)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(cfg), cwd=ROOT,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            await rx.wait_readings(5, within=20)
            maps = await asyncio.to_thread(Path(f"/proc/{proc.pid}/maps").read_text)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "_sodium" in maps, "signing goes through libsodium"
    assert "cryptography" not in maps, [line for line in maps.splitlines() if "cryptography" in line][:3]
    assert "pkcs11" not in maps, "a PEM gateway never loads python-pkcs11 or a token library"
    assert rx.rx.summary().bad_signatures == 0
