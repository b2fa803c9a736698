"""The worked example in docs/wire-format.md verifies, decodes as described, and is what we emit."""

from __future__ import annotations

import re
from pathlib import Path

import cbor2

from gateway import cose, senml
from gateway.driver_api import Path as IPath
from gateway.driver_api import Reading
from gateway.keys import Ed25519PrivateKey, Ed25519PublicKey, key_id, public_key_from_pem
from gateway.receiver import KeyBindings, Receiver

DOC = (Path(__file__).parents[2] / "docs" / "wire-format.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```\n(.*?)```", DOC, re.S)


def test_worked_example_verifies_and_decodes() -> None:
    pem = next(b for b in _blocks() if "BEGIN PUBLIC KEY" in b)
    pub = public_key_from_pem(pem.encode())
    assert isinstance(pub, Ed25519PublicKey)
    message = bytes.fromhex("".join(_blocks()[-1].split()))
    rx = Receiver(KeyBindings({"gw-example": [pub]}))
    res = rx.feed(message)
    assert res.status == "ok", res.reason
    a, b = res.readings
    assert (a.seq, a.node, a.point, a.value, a.unit, a.ts_ns, a.path) == (
        101, "gw-example", "temperature", 21.5, "Cel", 1_795_000_000_250_000_000, 2)
    assert (b.seq, b.node, b.point, b.value, b.unit, b.ts_ns, b.path) == (
        102, "rtu-7", "energy", 1234, "kWh", 1_795_000_000_500_000_000, 3)
    s = rx.summary()
    assert (s.dropped, s.drop_reasons, s.gaps) == (11, {"buffer_full": 11}, 0)
    from tests.gateway import cosecheck

    assert cosecheck.verify([(message, pem.encode(), key_id(pub))]) == [cose.parse_sign1(message).payload]


def test_worked_example_is_what_the_encoder_produces() -> None:
    key = Ed25519PrivateKey(bytes(range(32)))
    body, n = senml.encode_records([
        Reading("gw-example", "temperature", 1_795_000_000_250_000_000, 21.5, "Cel"),
        Reading("rtu-7", "energy", 1_795_000_000_500_000_000, 1234, "kWh", path=IPath.IP3),
    ])
    payload = senml.array_header(n) + body
    header = {cose.CONTENT_TYPE: 112, "sg": 1, "gw": "gw-example", "st": 42, "bo": 3, "bs": 7, "pv": bytes(32),
              "sq": [101, 102], "dr": [[90, 100, "buffer_full"]]}
    prot = cose.protected_header(key, key_id(key.public_key()), header)
    msg = cose.encode_sign1(prot, payload, cose.sign(key, prot, payload))
    assert msg.hex() == "".join(_blocks()[-1].split())
    assert cbor2.loads(payload)[0][senml.BT] == 1_795_000_000
