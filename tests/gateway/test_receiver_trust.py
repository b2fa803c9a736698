"""A key speaks only for the gateway it is bound to (issue 16, defect 3): the receiver's trust is
gateway id -> keys, a batch signed with another gateway's key or published on another gateway's
topic is refused and counted as forged, library and `sensegate receive` alike."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from gateway.batcher import Batcher
from gateway.driver_api import Reading
from gateway.keys import init_key, key_id, load_private_key, load_public_key
from gateway.mqtt import MqttSession, MqttSettings
from gateway.receiver import KeyBindings, Receiver, TrustError, Untrusted
from gateway.store import Store
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import make_config

T0 = 1_795_000_000_000_000_000


async def _batches(state: Path, gateway: str, key_file: Path, n: int = 2) -> list[bytes]:
    """``n`` real batches of a gateway configured as ``gateway``, signed with ``key_file``."""
    cfg = make_config(state)
    c = cfg.config
    buf = Store(state / "buffer.db", gateway, c.buffer, c.batch)
    batcher = Batcher(load_private_key(key_file), gateway, c.batch)
    await buf.open()
    out = []
    try:
        for i in range(n):
            buf.put(Reading(gateway, "n", T0 + i, i))
            await buf.commit()
            b = await buf.make_batch(batcher)
            assert b is not None
            out.append(b.data)
    finally:
        await buf.close()
    return out


def _trust_dir(tmp: Path, **keys: Path) -> Path:
    """A directory of <gateway-id>.pub.pem files, as `sensegate provision` exports them."""
    d = tmp / "trusted"
    d.mkdir(exist_ok=True)
    for gw, pub in keys.items():
        shutil.copy(pub, d / f"{gw.replace('_', '-')}.pub.pem")
    return d


async def test_a_stolen_key_cannot_speak_for_another_gateway(tmp_path: Path) -> None:
    a, b = init_key(tmp_path / "ka"), init_key(tmp_path / "kb")
    trust = KeyBindings.from_specs([str(_trust_dir(tmp_path, gw_A=a.public_path, gw_B=b.public_path))])
    assert trust.gateways == {"gw-A": 1, "gw-B": 1}
    rx = Receiver(trust)
    genuine_a = await _batches(tmp_path / "a", "gw-A", a.private_path)
    genuine_b = await _batches(tmp_path / "b", "gw-B", b.private_path)
    forged = await _batches(tmp_path / "thief", "gw-B", a.private_path)  # A's key, configured as gw-B
    assert [rx.feed(x).status for x in genuine_a + genuine_b] == ["ok"] * 4
    res = rx.feed(forged[0])
    assert res.status == "forged" and "signed by the key of gateway 'gw-A'" in res.reason and res.readings == []
    # a genuine batch of gw-A published on gw-B's topic (MQTT): refused before anything else
    res = rx.feed(genuine_a[1], topic_gateway="gw-B")
    assert res.status == "forged" and "topic of gateway 'gw-B'" in res.reason
    assert rx.feed(genuine_a[1], topic_gateway="gw-A").status == "duplicate"
    s = rx.summary()
    assert (s.batches, s.readings, s.forged, s.bad_signatures) == (4, 4, 2, 0) and not s.ok
    unknown = init_key(tmp_path / "kc")
    stray = await _batches(tmp_path / "c", "gw-C", unknown.private_path)
    assert rx.feed(stray[0]).status == "untrusted" and rx.summary().bad_signatures == 1


def test_trust_specs_bind_by_file_name_or_explicitly(tmp_path: Path) -> None:
    a, b = init_key(tmp_path / "ka"), init_key(tmp_path / "kb")
    kid_a, kid_b = key_id(load_public_key(a.public_path)), key_id(load_public_key(b.public_path))
    named = tmp_path / "gw-A.pub.pem"
    shutil.copy(a.public_path, named)
    t = KeyBindings.from_specs([str(named), f"gw-B={b.public_path}"])
    assert t.gateways == {"gw-A": 1, "gw-B": 1}
    assert t.lookup("gw-A", kid_a) == load_public_key(a.public_path)
    wrong = t.lookup("gw-A", kid_b)
    assert isinstance(wrong, Untrusted) and wrong.forged
    unknown = t.lookup("gw-A", b"\x00" * 16)
    assert isinstance(unknown, Untrusted) and not unknown.forged
    # a rotation: one file, two keys, both speak for the gateway
    both = tmp_path / "gw-R.pub.pem"
    both.write_bytes(a.public_path.read_bytes() + b.public_path.read_bytes())
    assert KeyBindings.from_specs([str(both)]).gateways == {"gw-R": 2}
    with pytest.raises(TrustError, match=r"device.pub.pem does not name a gateway.*GATEWAY-ID="):
        KeyBindings.from_specs([str(a.public_path)])  # `keys init` names every key "device"
    with pytest.raises(TrustError, match=r"already bound to gateway 'gw-A'.*one gateway only"):
        KeyBindings.from_specs([str(named), f"gw-B={a.public_path}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrustError, match=r"holds no <gateway-id>\.pub\.pem files"):
        KeyBindings.from_specs([str(tmp_path / "empty")])
    with pytest.raises(TrustError, match="no such file"):
        KeyBindings.from_specs([str(tmp_path / "missing.pub.pem")])
    (tmp_path / "gw-J.pub.pem").write_text("junk")
    with pytest.raises(TrustError, match="not a PEM public key"):
        KeyBindings.from_specs([str(tmp_path / "gw-J.pub.pem")])
    with pytest.raises(TypeError, match="KeyBindings"):
        Receiver([load_public_key(a.public_path)])  # type: ignore[arg-type]


async def _copy_batches(url: str, src: str, dst: str, stop: asyncio.Event) -> int:
    """A rogue client on the broker: republish every batch of gateway ``src`` on ``dst``'s topic."""
    copied = 0
    session: MqttSession

    def on(msg: object) -> None:
        nonlocal copied
        session.client.publish(f"sensegate/{dst}/batch", msg.payload, qos=1)  # type: ignore[attr-defined]
        copied += 1

    session = MqttSession(MqttSettings.from_url(url, client_id="rogue"), on_message=on)
    await session.connect()
    session.client.subscribe(f"sensegate/{src}/batch", qos=1)
    try:
        await stop.wait()
    finally:
        await session.close()
    return copied


async def test_receive_command_counts_forged_batches_over_a_real_broker(tmp_path: Path, broker: Mosquitto) -> None:
    """`sensegate receive --trust DIR`: gw-A's daemon is accepted; a daemon holding gw-A's key but
    configured as gw-B, and gw-A's batches copied onto gw-B's topic, are refused as forged."""
    a, b = init_key(tmp_path / "a" / "keys"), init_key(tmp_path / "kb")
    thief = tmp_path / "thief" / "keys"
    thief.mkdir(parents=True)
    for f in ("device.key", "device.pub.pem"):
        shutil.copy2(a.private_path.parent / f, thief / f)
    trusted = _trust_dir(tmp_path, gw_A=a.public_path, gw_B=b.public_path)
    configs = []
    for gw, state in (("gw-A", tmp_path / "a"), ("gw-B", tmp_path / "thief")):
        doc = {"gateway": {"id": gw, "state_dir": str(state)}, "uplinks": [{"type": "mqtt", "url": broker.url}],
               "drivers": [{"driver": "sim", "interval": "100ms", "points": [{"name": "n", "pattern": "counter"}]}]}
        configs.append(tmp_path / f"{gw}.yaml")
        configs[-1].write_text(yaml.safe_dump(doc))
    rx = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "receive", "--url", broker.url, "--trust", str(trusted), "--timeout", "6",
        "--json", "--out", "", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stop = asyncio.Event()
    daemons = []
    try:
        assert rx.stderr is not None
        assert await asyncio.wait_for(rx.stderr.readline(), 20) == b"receive: trusting 2 gateway(s): gw-A, gw-B\n"
        copier = asyncio.create_task(_copy_batches(broker.url, "gw-A", "gw-B", stop))
        await asyncio.sleep(0.3)
        for c in configs:
            daemons.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "-c", str(c), stderr=asyncio.subprocess.DEVNULL))
        out, err = await asyncio.wait_for(rx.communicate(), 40)
    finally:
        stop.set()
        for d in daemons:
            d.terminate()
            await d.wait()
        if rx.returncode is None:
            rx.kill()
            await rx.wait()
    copied = await copier
    s = json.loads(out.decode().strip().splitlines()[-1])
    assert rx.returncode == 1 and not s["ok"] and s["verdict"] == "PROBLEMS FOUND", (s, err)
    assert s["batches"] >= 1 and s["gaps"] == 0 and s["bad_signatures"] == 0  # gw-A's own: accepted
    assert copied >= 1 and s["forged"] > copied, (s, copied)  # every copy, and the thief's batches
    assert b"signed by the key of gateway 'gw-A'" in err and b"topic of gateway 'gw-B'" in err
