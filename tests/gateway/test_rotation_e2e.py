"""Key rotation and revocation across running processes (issue 22): a gateway daemon rotates its
device key while `sensegate receive` verifies its stream over a real mosquitto (no gap, no chain
break; forged and replayed rotations refused; a receiver that missed the rotation learns it);
ops revoke a key and the running receiver refuses what it signs next; ops keys rotate and are
revoked on a running gateway; a token key rotates on the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cbor2
import yaml

from gateway import cose
from gateway.devicekey import KeyFiles, read_history
from gateway.keyevents import make_rotation
from gateway.keys import init_key, key_id, load_private_key, load_public_key, spki_der
from gateway.mqtt import MqttSession, MqttSettings
from gateway.testing.batches import Chain
from hil.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
SG = [sys.executable, "-m", "gateway"]


class Proc:
    """A `sensegate` child process whose stdout and stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args, self.env = args, env
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = asyncio.Event()
        self.proc: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Proc:
        self.proc = await asyncio.create_subprocess_exec(*SG, *self.args, cwd=ROOT, env=self.env,
                                                         stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [asyncio.create_task(self._read(self.proc.stdout, self.out)),
                         asyncio.create_task(self._read(self.proc.stderr, self.err))]
        return self

    async def _read(self, stream: asyncio.StreamReader, into: list[str]) -> None:
        async for line in stream:
            into.append(line.decode().rstrip("\n"))
            self.changed.set()

    async def until(self, cond: Callable[[], Any], within: float = 30.0) -> Any:
        """Wait until ``cond()`` is truthy (re-checked on every new line); return its value."""
        async with asyncio.timeout(within):
            while not (got := cond()):
                self.changed.clear()
                await self.changed.wait()
        return got

    async def stop(self, within: float = 30.0, signal_it: bool = True) -> int:
        """SIGTERM it (unless ``signal_it`` is false: wait for it to end by itself); its exit status."""
        assert self.proc is not None
        if signal_it and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), within)
        await asyncio.gather(*self._readers)
        return rc

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def readings(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out if line.startswith('{"seq"')]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.out[-1])
        return out

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in self.err if (m := re.search(pattern, line))), None)


async def publish(url: str, topic: str, payload: bytes, retain: bool = False) -> None:
    """What a rogue client on the broker can do: publish anything on any topic."""
    session = MqttSession(MqttSettings.from_url(url, client_id="rogue"))
    await session.connect()
    try:
        info = session.client.publish(topic, payload, qos=1, retain=retain)
        async with asyncio.timeout(10):
            while not info.is_published():  # noqa: ASYNC110 (paho completes it on the loop)
                await asyncio.sleep(0.02)
    finally:
        await session.close()


def gateway_config(tmp: Path, gw: str, url: str, **gateway: Any) -> Path:
    doc = {"gateway": {"id": gw, "state_dir": str(tmp / gw), **gateway},
           "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
           "drivers": [{"driver": "sim", "interval": "50ms", "jitter": 0,
                        "points": [{"name": "n", "pattern": "counter"}]}]}
    path = tmp / f"{gw}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def one_signer(old: Any, new: Any, signer: Any, gw: str, stream: int, bs: int) -> bytes:
    body = {"ev": "rotate", "role": "gateway", "gw": gw, "old": key_id(old.public_key()),
            "new": key_id(new.public_key()), "key": spki_der(new.public_key()), "st": stream, "bs": bs, "iat": 1}
    return cose.encode_sign(cbor2.dumps({"sgk": "key"}, canonical=True), cbor2.dumps(body, canonical=True), [signer])


@contextlib.asynccontextmanager
async def receiving(url: str, trust: Path, *extra: str) -> AsyncIterator[Proc]:
    async with Proc("receive", "--url", url, "--trust", str(trust), "--json", "--out", "-", "--timeout", "120",
                    *extra) as rx:
        await rx.until(lambda: any("trusting" in line for line in rx.err), 20)
        await asyncio.sleep(0.3)  # subscribed
        yield rx


async def test_a_running_gateway_rotates_its_key_while_a_receiver_verifies(tmp_path: Path, broker: Mosquitto) -> None:
    gw = "gw-rot"
    state = tmp_path / gw
    original = init_key(state / "keys")
    other = init_key(tmp_path / "other")  # another gateway's key
    ops = init_key(tmp_path / "ops", name="ops")
    thief = tmp_path / "thief.key"  # the SD card was copied before the rotation
    shutil.copy2(original.private_path, thief)
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copy(original.public_path, trust / f"{gw}.pub.pem")
    shutil.copy(other.public_path, trust / "gw-other.pub.pem")
    cfg = gateway_config(tmp_path, gw, broker.url)
    ops_trust = ("--ops-trust", str(ops.public_path))
    async with receiving(broker.url, trust, *ops_trust) as rx, Proc("run", "-c", str(cfg)) as d:
        await rx.until(lambda: len(rx.readings()) >= 20)
        async with Proc("keys", "rotate", "-c", str(cfg)) as cli:
            assert await cli.stop(signal_it=False) == 0, cli.err
        assert "fingerprint:" in "\n".join(cli.out)
        learned = await rx.until(lambda: rx.find(rf"key event: gateway '{gw}' key ([0-9a-f]+) rotated to ([0-9a-f]+) "
                                                 r"from batch (\d+) of stream (\d+)"))
        old_kid, new_kid, switch, stream = learned[1], learned[2], int(learned[3]), int(learned[4])
        assert old_kid == key_id(load_public_key(trust / f"{gw}.pub.pem")).hex()
        assert key_id(load_public_key(original.public_path)).hex() == new_kid  # device.pub.pem was replaced
        assert not original.private_path.with_name("device.next.key").exists()
        await rx.until(lambda: max(r["bseq"] for r in rx.readings()) >= switch + 5)

        # forgeries and a replay, on the keys topic a rogue client can publish on
        stolen, evil = load_private_key(thief), __import__("gateway.keys", fromlist=["generate"]).generate("ed25519")
        topic = f"sensegate/{gw}/keys"
        await publish(broker.url, topic, one_signer(stolen, evil, stolen, gw, stream, switch + 50))
        await publish(broker.url, topic, make_rotation(load_private_key(other.private_path), evil, gw, stream, 1))
        (genuine,) = read_history(KeyFiles.of("", original.private_path))
        await publish(broker.url, topic, genuine)  # replayed: no news, changes nothing
        await publish(broker.url, topic, make_rotation(stolen, evil, gw, stream, switch + 50))
        # the thief signs a batch with the retired key, numbered after the switch
        chain = Chain(stolen, gw, stream=stream)
        chain.bs = switch + 200
        await publish(broker.url, f"sensegate/{gw}/batch", chain.next())
        await rx.until(lambda: sum("key event refused" in line for line in rx.err) >= 3 and rx.find("retired from"))
        await asyncio.sleep(0.5)  # the replay, if it were taken, would show by now

        # a receiver started now, trusting the old key only, learns the rotation (retained) and verifies
        async with Proc("receive", "--url", broker.url, "--trust", str(trust), "--json", "--out", "",
                        "--batches", "3", "--timeout", "40") as late:
            assert await late.stop(60, signal_it=False) == 0, late.err
        s2 = late.summary()
        assert s2["ok"] and s2["key_events"] == 1 and s2["batches"] >= 3, (s2, late.err)

        await rx.until(lambda: max(r["bseq"] for r in rx.readings()) >= switch + 15)
        assert await d.stop() == 0, d.err[-20:]
        await asyncio.sleep(1.0)  # the last batches the daemon sent on its way out
        assert await rx.stop() == 1  # forgeries were seen: PROBLEMS FOUND
    s = rx.summary()
    bseqs = sorted({r["bseq"] for r in rx.readings()})
    assert bseqs[0] == 1 and bseqs[-1] > switch + 10 and switch - 1 in bseqs and switch in bseqs
    assert (s["gaps"], s["chain_breaks"], s["bad_signatures"], s["malformed"], s["duplicates"]) == (0, 0, 0, 0, 0), s
    assert s["key_events"] == 1 and s["key_events_refused"] == 3 and s["forged"] == 1, (s, rx.err)
    seqs = [r["seq"] for r in rx.readings()]
    assert seqs == list(range(1, len(seqs) + 1))  # every reading once, in order, across the switch
    reasons = "\n".join(rx.err)
    assert "signed by the old and the new key, not 1" in reasons
    assert "bound to gateway 'gw-other'" in reasons and "already rotated" in reasons


async def test_a_revocation_reaches_a_running_receiver(tmp_path: Path, broker: Mosquitto) -> None:
    gw = "gw-rev"
    key = init_key(tmp_path / gw / "keys")
    ops = init_key(tmp_path / "ops", name="ops")
    stranger = init_key(tmp_path / "stranger", name="ops")
    cfg = gateway_config(tmp_path, gw, broker.url)
    trust = tmp_path / f"{gw}.pub.pem"
    shutil.copy(key.public_path, trust)
    ops_trust = ("--ops-trust", str(ops.public_path))
    async with receiving(broker.url, trust, *ops_trust) as rx, Proc("run", "-c", str(cfg)) as d:
        await rx.until(lambda: len(rx.readings()) >= 10)

        async def revoke(sign_key: Path) -> None:
            async with Proc("keys", "revoke", str(key.public_path), "--gateway", gw, "--reason", "card stolen",
                            "--sign-key", str(sign_key), "--url", broker.url) as cli:
                assert await cli.stop(signal_it=False) == 0, cli.err

        await revoke(stranger.private_path)  # not an ops key this receiver trusts: refused
        await rx.until(lambda: rx.find("key event refused: revocation signed by key"))
        n = len(rx.readings())
        await rx.until(lambda: len(rx.readings()) >= n + 5)  # still accepted
        await revoke(ops.private_path)
        await rx.until(lambda: rx.find(rf"key event: gateway '{gw}' key [0-9a-f]+ revoked \(card stolen\)"))
        await rx.until(lambda: rx.find("batch rejected \\(revoked\\)"))
        n = len(rx.readings())
        await rx.until(lambda: sum("(revoked)" in line for line in rx.err) >= 5)
        assert len(rx.readings()) == n  # nothing signed with the revoked key is delivered any more
        assert await d.stop() == 0
        assert await rx.stop() == 1
    s = rx.summary()
    assert s["revoked"] >= 5 and s["key_events"] == 1 and s["key_events_refused"] == 1 and not s["ok"]
    assert s["gaps"] == 0 and s["bad_signatures"] == 0
    # the revocation is retained: a receiver started later refuses the key from its first batch
    async with Proc("run", "-c", str(cfg)) as d2, Proc(
            "receive", "--url", broker.url, "--trust", str(trust), "--ops-trust", str(ops.public_path), "--json",
            "--out", "", "--timeout", "8") as late:
        assert await late.stop(30, signal_it=False) == 1
        assert await d2.stop() == 0
    s2 = late.summary()
    assert s2["batches"] == 0 and s2["revoked"] >= 1 and s2["key_events"] == 1, s2


async def test_ops_keys_rotate_and_are_revoked_on_a_running_gateway(tmp_path: Path, broker: Mosquitto) -> None:
    """The gateway trusts ops keys A and B. A is rotated to A2 (signed by both, published
    retained): A's pushes are refused, A2's applied. A2 revokes B: B's pushes are refused, also
    after a restart. The ``rotate_key`` command rotates the device key; a receiver sees no gap."""
    from gateway.remote.ops import Broker, push_config, send_command
    from tests.gateway.helpers import MqttReceiver, running_daemon
    from tests.gateway.test_remote_mqtt import bootstrap, connected, gateway_doc

    ops_a = tmp_path / "ops-a"
    a = init_key(ops_a, name="ops")
    b = init_key(tmp_path / "ops-b", name="ops")
    trusted = tmp_path / "ops-keys"
    trusted.mkdir()
    shutil.copy(a.public_path, trusted / "a.pem")
    shutil.copy(b.public_path, trusted / "b.pem")
    gw = "gw-ops"
    path = bootstrap(tmp_path, gw, broker.url, trusted)
    device_pub = tmp_path / gw / "keys" / "device.pub.pem"
    first_device = tmp_path / "first-device.pub.pem"
    shutil.copy(device_pub, first_device)
    brk = Broker.from_url(broker.url)
    rev = iter(range(100, 200))

    async def push(key_file: Path) -> dict[str, Any]:
        doc = gateway_doc(tmp_path, gw, broker.url)
        _, answers = await push_config(brk, load_private_key(key_file), yaml.safe_dump(doc).encode(), to=gw,
                                       revision=next(rev), within=30)
        assert not answers.timed_out, "no final status"
        return answers.by_gateway[gw]

    async def cli(*args: str) -> None:
        async with Proc("keys", *args, "--url", broker.url) as p:
            assert await p.stop(60, signal_it=False) == 0, p.err

    rx = MqttReceiver(broker.url, first_device, gateway=gw)
    async with rx.running():
        async with running_daemon(path) as d:
            await connected(d)
            assert (await push(a.private_path))["state"] == "applied"
            old_a = tmp_path / "old-a.key"
            shutil.copy2(a.private_path, old_a)
            await cli("rotate", "--ops", "--dir", str(ops_a))
            assert load_public_key(a.public_path) != load_public_key(trusted / "a.pem")  # ops.key replaced
            await asyncio.sleep(0.5)  # the gateway takes the retained rotation
            st = await push(old_a)
            assert st["state"] == "rejected" and "which was rotated to" in st["reason"], st
            assert (await push(a.private_path))["state"] == "applied"  # A2
            await cli("revoke", str(b.public_path), "--ops", "--reason", "laptop lost", "--sign-key",
                      str(a.private_path))
            await asyncio.sleep(0.5)
            st = await push(b.private_path)
            assert st["state"] == "rejected" and "revoked (laptop lost)" in st["reason"], st

            # the device key, rotated by a command
            await rx.wait_readings(10)
            _, _, answers = await send_command(brk, load_private_key(a.private_path), "rotate_key", {}, to=gw,
                                               within=60)
            res = answers.by_gateway[gw]
            assert res["status"] == "done", res
            switch = res["result"]["from_batch"]
            assert res["result"]["kid"] == key_id(load_public_key(device_pub)).hex() != key_id(
                load_public_key(first_device)).hex()
            await rx.wait_readings(len(rx.readings) + 10)
        # a restart: the key events were kept (the anchor files still list A and B)
        async with running_daemon(path) as d:
            await connected(d)
            st = await push(b.private_path)
            assert st["state"] == "rejected" and "revoked" in st["reason"], st
            st = await push(old_a)
            assert st["state"] == "rejected" and "rotated" in st["reason"], st
            assert (await push(a.private_path))["state"] == "applied"
            await rx.wait_readings(len(rx.readings) + 10)
    s = rx.rx.summary()
    assert (s.gaps, s.chain_breaks, s.bad_signatures, s.forged, s.key_events) == (0, 0, 0, 0, 1), s
    assert {r.seq for r in rx.readings} == set(range(1, len(rx.readings) + 1))
    assert max(st.max_bseq for st in rx.rx.streams.values()) > switch + 5


async def test_a_token_key_rotates_on_the_token(tmp_path: Path, broker: Mosquitto, softhsm: Any) -> None:
    """A SoftHSM2 key rotated by the ``rotate_key`` command: the new pair is made on the token,
    the old pair destroyed, the new one takes the label the config names; the stream verifies
    across the switch, and after a restart the daemon signs with the new token key."""
    from pkcs11 import Attribute, ObjectClass

    from gateway.hsm import _open, create_key
    from gateway.keys import public_pem
    from gateway.pkcs11uri import parse
    from gateway.remote.ops import Broker, send_command
    from tests.gateway.helpers import MqttReceiver, running_daemon

    gw, label = "gw-tok", "rot-device"
    uri = softhsm.uri(label)
    made = await asyncio.to_thread(create_key, uri, "es256")
    pub = tmp_path / "first.pub.pem"
    pub.write_bytes(public_pem(made.public))
    ops = init_key(tmp_path / "ops", name="ops")
    doc = {"gateway": {"id": gw, "state_dir": str(tmp_path / gw), "key_file": uri}, "batch": {"alg": "es256"},
           "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
           "remote": {"ops_keys": [str(ops.public_path)]},
           "drivers": [{"driver": "sim", "interval": "50ms", "points": [{"name": "n", "pattern": "counter"}]}]}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))

    def labels() -> list[tuple[str, str]]:
        s = _open(parse(uri, resolve_module=True))
        try:
            return sorted((str(o[Attribute.LABEL]), "private" if o[Attribute.CLASS] == ObjectClass.PRIVATE_KEY
                           else "public") for o in s.get_objects({}) if str(o[Attribute.LABEL]).startswith(label))
        finally:
            s.close()

    rx = MqttReceiver(broker.url, pub, gateway=gw)
    async with rx.running():
        async with running_daemon(path):
            await rx.wait_readings(10)
            _, _, answers = await send_command(Broker.from_url(broker.url), load_private_key(ops.private_path),
                                               "rotate_key", {}, to=gw, within=60)
            res = answers.by_gateway[gw]
            assert res["status"] == "done", res
            await rx.wait_readings(len(rx.readings) + 10)
        assert await asyncio.to_thread(labels) == [(label, "private"), (label, "public")]  # one pair, relabelled
        files = KeyFiles.of(uri, tmp_path / gw / "keys" / "device.key")
        assert key_id(load_public_key(files.public)).hex() == res["result"]["kid"] != key_id(made.public).hex()
        assert len(read_history(files)) == 1 and not files.next_public.exists()
        async with running_daemon(path):  # the restarted daemon opens the new key by the same URI
            await rx.wait_readings(len(rx.readings) + 10)
    s = rx.rx.summary()
    assert (s.gaps, s.chain_breaks, s.bad_signatures, s.forged, s.key_events) == (0, 0, 0, 0, 1), s
