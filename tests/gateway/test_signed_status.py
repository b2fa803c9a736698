"""Config statuses signed by the device key (issue 22): the JSON stays readable as before, and
`sensegate status --trust` says which statuses the gateways' bound keys vouch for; forged,
altered, unsigned and misattributed ones are marked unverified (gateway/signedjson.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import cose
from gateway.keys import Ed25519PrivateKey, as_signer, generate
from gateway.receiver import KeyBindings
from gateway.signedjson import check, seal
from hil.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
BODY = {"gateway": "gw-a", "state": "applied", "revision": 7, "reason": "restarted: drivers x",
        "running_revision": 7, "config_sha256": "ab" * 32, "config_version": 1, "ts": 1795000000.125}


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
def test_a_signed_status_verifies_and_old_readers_read_it_as_before(alg: str) -> None:
    key = as_signer(generate(alg))  # type: ignore[arg-type]
    msg = seal(BODY, key, "gw-a", "config-status")
    plain = json.loads(msg)
    assert {k: v for k, v in plain.items() if k != "cose"} == BODY  # what a reader that ignores "cose" sees
    got = check(plain, KeyBindings({"gw-a": [key.public_key()]}), "gw-a", "config-status")
    assert got.verified and got.body == BODY and key.kid.hex() in got.reason
    # the signature is an ordinary COSE_Sign1 over the JSON
    raw = plain["cose"]
    sign1 = cose.parse_sign1(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    assert json.loads(sign1.payload) == BODY and sign1.protected["gw"] == "gw-a"
    assert sign1.protected["sgk"] == "config-status" and sign1.protected[cose.CONTENT_TYPE] == "application/json"


def test_what_does_not_verify_says_why() -> None:
    a, b = Ed25519PrivateKey(bytes([1]) * 32), Ed25519PrivateKey(bytes([2]) * 32)
    trust = KeyBindings({"gw-a": [a.public_key()], "gw-b": [b.public_key()]})
    good = json.loads(seal(BODY, a, "gw-a", "config-status"))

    def why(body: dict[str, Any], gw: str = "gw-a", kind: str = "config-status") -> str:
        got = check(body, trust, gw, kind)
        assert not got.verified
        return got.reason

    assert why(BODY) == "unsigned"
    assert why({**good, "state": "rolled_back"}).startswith("altered")
    assert why({**good, "revision": 8}).startswith("altered")
    assert "signed by the key of gateway 'gw-b'" in why(json.loads(seal({**BODY}, b, "gw-a", "config-status")))
    assert "signed for gateway 'gw-a', shown as 'gw-b'" in why(good, "gw-b")  # gw-a's status copied to gw-b's topic
    assert "signed as a 'config-status', not a heartbeat" in why(good, kind="heartbeat")
    assert "malformed" in why({**good, "cose": "!!!"})
    assert "malformed" in why({**good, "cose": 42})
    stranger = Ed25519PrivateKey(bytes([3]) * 32)
    assert "not trusted here" in why(json.loads(seal(BODY, stranger, "gw-a", "config-status")))
    flipped = bytearray(base64.urlsafe_b64decode(good["cose"] + "=" * (-len(good["cose"]) % 4)))
    flipped[-1] ^= 1
    assert "bad signature" in why({**good, "cose": base64.urlsafe_b64encode(bytes(flipped)).decode()})


async def _status_cli(url: str, *args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "status", "--url", url, *args,
                                             cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                             stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_sensegate_status_verifies_the_retained_statuses(tmp_path: Path, broker: Mosquitto) -> None:
    """A real daemon's retained config status verifies; one a rogue client overwrites with a
    forged or altered status is marked unverified (exit 1); readers without --trust see the
    status as before."""
    from gateway.remote.ops import Broker, push_config
    from tests.gateway.helpers import running_daemon
    from tests.gateway.test_remote_mqtt import bootstrap, connected, gateway_doc, ops_key
    from tests.gateway.test_rotation_e2e import publish

    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-s1", broker.url, pub)
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copy(tmp_path / "gw-s1/keys/device.pub.pem", trust / "gw-s1.pub.pem")
    async with running_daemon(path) as d:
        await connected(d)
        doc = gateway_doc(tmp_path, "gw-s1", broker.url)
        import yaml

        _, answers = await push_config(Broker.from_url(broker.url), key, yaml.safe_dump(doc).encode(), to="gw-s1",
                                       revision=5, within=30)
        assert answers.by_gateway["gw-s1"]["state"] == "applied"  # `config push` reads the signed status as before
        assert "cose" in answers.by_gateway["gw-s1"]
    rc, out, err = await _status_cli(broker.url, "--trust", str(trust), "gw-s1")
    assert rc == 0, (out, err)
    assert "SIGNED" in out and "gw-s1" in out and " yes " in out
    rc, out, _ = await _status_cli(broker.url, "--trust", str(trust), "--json", "gw-s1")
    seen = json.loads(out)
    assert rc == 0 and seen["gw-s1"]["verified"] is True and seen["gw-s1"]["config"]["state"] == "applied"
    rc, out, _ = await _status_cli(broker.url, "--json", "gw-s1")  # without --trust: as before, not checked
    raw = json.loads(out)["gw-s1"]["config"]
    assert rc == 0 and "verified" not in json.loads(out)["gw-s1"] and "cose" in raw

    # a client allowed on the broker (no ACL here) overwrites it: altered, then unsigned
    topic = "sensegate/gw-s1/config/status"
    await publish(broker.url, topic, json.dumps({**raw, "revision": 99}).encode(), retain=True)
    rc, out, err = await _status_cli(broker.url, "--trust", str(trust), "gw-s1")
    assert rc == 1 and " NO " in out and "the config status of gw-s1 is not verified: altered" in err, (out, err)
    unsigned = {k: v for k, v in raw.items() if k != "cose"}
    await publish(broker.url, topic, json.dumps(unsigned).encode(), retain=True)
    rc, out, err = await _status_cli(broker.url, "--trust", str(trust), "gw-s1")
    assert rc == 1 and "the config status of gw-s1 is not verified: unsigned" in err, (out, err)


def test_an_independent_cose_library_verifies_a_signed_status() -> None:
    from gateway.keys import public_pem
    from tests.gateway import cosecheck

    key = as_signer(generate("es256"))
    raw = json.loads(seal(BODY, key, "gw-a", "config-status"))["cose"]
    (payload,) = cosecheck.verify([(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)),
                                    public_pem(key.public_key()), key.kid)])
    assert isinstance(payload, bytes) and json.loads(payload) == BODY
