"""Key events (issue 22): a rotation signed by the old and the new key, a revocation signed by
ops; what the receiver's trust and the gateways' ops keys make of genuine, forged, replayed and
hostile ones (gateway/keyevents.py, gateway/receiver/trust.py, gateway/devicekey.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import cose
from gateway.batcher import Batcher
from gateway.devicekey import DeviceKey, KeyFiles, open_current, prepare_next, read_history
from gateway.driver_api import Reading
from gateway.keyevents import (
    EventRefused,
    OpsKeyring,
    documents_in,
    history_message,
    make_revocation,
    make_rotation,
    verify_event,
)
from gateway.keys import Ed25519PrivateKey, Signer, as_signer, generate, load_public_key
from gateway.receiver import KeyBindings, Receiver
from gateway.store import Store
from gateway.testing.batches import Chain
from tests.gateway.helpers import make_config

T0 = 1_795_000_000_000_000_000


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey(bytes([seed]) * 32)


def _trust(**keys: Signer) -> KeyBindings:
    return KeyBindings({gw.replace("_", "-"): [k.public_key()] for gw, k in keys.items()})


def _one_signer_rotation(old: Signer, new: Signer, signer: Signer, gw: str, bs: int) -> bytes:
    """A rotation document like the real one, but with a single signature."""
    body = {"ev": "rotate", "role": "gateway", "gw": gw, "old": old.kid, "new": new.kid,
            "key": __import__("gateway.keys", fromlist=["spki_der"]).spki_der(new.public_key()), "st": 7, "bs": bs,
            "iat": 1}
    return cose.encode_sign(cbor2.dumps({"sgk": "key"}, canonical=True), cbor2.dumps(body, canonical=True), [signer])


def test_a_rotation_hands_the_chain_from_the_old_key_to_the_new_one() -> None:
    k1, k2 = _key(1), _key(2)
    trust = _trust(gw_a=k1)
    rx = Receiver(trust)
    old, new = Chain(k1, "gw-a"), Chain(k2, "gw-a")
    before = [old.next() for _ in range(3)]  # batches 1..3 under the old key
    doc = make_rotation(k1, k2, "gw-a", stream=7, from_batch=4)
    new.bs, new.prev, new.next_seq = old.bs, old.prev, old.next_seq  # the new key continues the chain
    after = [new.next() for _ in range(3)]  # batches 4..6 under the new key
    assert [rx.feed(b).status for b in before] == ["ok"] * 3
    assert rx.feed(after[0]).status == "untrusted"  # not learned yet: refused, counted
    kf = rx.feed_keys(doc, "gw-a")
    assert [k.status for k in kf] == ["learned"] and "rotated to" in kf[0].reason
    assert [rx.feed(b).status for b in after] == ["ok"] * 3
    s = rx.summary()
    assert (s.batches, s.gaps, s.chain_breaks, s.key_events, s.key_events_refused) == (6, 0, 0, 1, 0)
    # the old key is retired for batches from 4 on (a thief who copied it signs nothing new) ...
    stolen = Chain(k1, "gw-a")
    stolen.bs = 6
    res = rx.feed(stolen.next())
    assert res.status == "forged" and "retired from batch 4" in res.reason
    # ... but its own batches from before the switch, arriving late, still verify
    assert trust.lookup("gw-a", k1.kid, (7, 3)) == k1.public_key()
    assert trust.lookup("gw-a", k1.kid, (8, 1)).forged  # type: ignore[union-attr]  # another stream: after it
    assert trust.lookup("gw-a", k2.kid, (7, 3)).forged  # type: ignore[union-attr]  # new key before its switch
    assert trust.lookup("gw-a", k2.kid, (8, 1)) == k2.public_key()  # a new stream (buffer reset) later


def test_a_batch_carries_the_rotation_so_a_receiver_that_missed_it_learns_it() -> None:
    k1, k2 = _key(1), _key(2)
    rx = Receiver(_trust(gw_a=k1))
    doc = make_rotation(k1, k2, "gw-a", stream=7, from_batch=1)
    res = rx.feed(Chain(k2, "gw-a").next(labels={"kr": doc}))
    assert res.status == "ok", res.reason
    assert rx.summary().key_events == 1 and list(rx.key_log) == [
        f"key event: gateway 'gw-a' key {k1.kid.hex()} rotated to {k2.kid.hex()} from batch 1 of stream 7"]
    # a batch can carry only a rotation of its own gateway
    k3 = _key(3)
    rx2 = Receiver(_trust(gw_a=k1, gw_b=k3))
    res = rx2.feed(Chain(k2, "gw-b").next(labels={"kr": doc}))
    assert res.status == "untrusted" and rx2.summary().key_events_refused == 1


def test_forged_rotations_are_refused() -> None:
    k1, k2, k_other, k_evil = _key(1), _key(2), _key(3), _key(4)
    trust = _trust(gw_a=k1, gw_b=k_other)
    rx = Receiver(trust)

    def refused(doc: bytes, gw: str = "gw-a") -> str:
        (out,) = rx.feed_keys(doc, gw)
        assert out.status == "refused", out
        return out.reason

    # signed by only one key: the old one (a thief who wants its own key in) or the new one
    assert "signed by the old and the new key, not 1" in refused(_one_signer_rotation(k1, k_evil, k1, "gw-a", 2))
    assert "signed by the old and the new key" in refused(_one_signer_rotation(k1, k_evil, k_evil, "gw-a", 2))
    # another gateway's key rotating gw-a, or gw-b's rotation published as gw-a's
    assert "bound to gateway 'gw-b'" in refused(make_rotation(k_other, k_evil, "gw-a", 7, 2))
    assert "of gateway 'gw-b' published for gateway 'gw-a'" in refused(make_rotation(k_other, k_evil, "gw-b", 7, 2))
    # a rotation to another gateway's key (a key speaks for one gateway only)
    assert "to the key of gateway 'gw-b'" in refused(make_rotation(k1, k_other, "gw-a", 7, 2))
    # altered after signing: the new key swapped
    doc = bytearray(make_rotation(k1, k2, "gw-a", 7, 2))
    i = doc.find(k2.public_key().raw)
    doc[i] ^= 1
    assert "kid it names" in refused(bytes(doc))
    # a config or command document is not a key event
    from gateway.remote.envelope import sign

    assert "not a key event" in refused(sign(k1, "config", "gw-a", b"x: 1", revision=1))
    assert trust.current("gw-a", k1.kid) == k1.public_key()  # nothing above changed anything
    assert rx.summary().key_events == 0 and rx.summary().key_events_refused == 7


def test_a_replayed_or_second_rotation_of_a_retired_key_changes_nothing() -> None:
    k1, k2, k3, k_evil = _key(1), _key(2), _key(3), _key(4)
    trust = _trust(gw_a=k1)
    rx = Receiver(trust)
    r12, r23 = make_rotation(k1, k2, "gw-a", 7, 10), make_rotation(k2, k3, "gw-a", 7, 20)
    assert [f.status for f in rx.feed_keys(history_message([r12, r23]), "gw-a")] == ["learned", "learned"]
    # the same history again (retained, re-published on every connect): no news
    assert [f.status for f in rx.feed_keys(history_message([r12, r23]), "gw-a")] == ["known", "known"]
    # an old rotation replayed changes nothing: k2 stays retired from batch 20
    assert rx.feed_keys(r12, "gw-a")[0].status == "known"
    assert trust.lookup("gw-a", k2.kid, (7, 25)).forged  # type: ignore[union-attr]
    # the old key, stolen, rotates "again" to the thief's key: refused, the thief's key never trusted
    (out,) = rx.feed_keys(make_rotation(k1, k_evil, "gw-a", 7, 30), "gw-a")
    assert out.status == "refused" and "already rotated" in out.reason
    assert not isinstance(trust.lookup("gw-a", k_evil.kid), type(k1.public_key()))
    # a receiver trusting only k3 (its files updated by ops) takes the history as no news
    fresh = Receiver(_trust(gw_a=k3))
    assert [f.status for f in fresh.feed_keys(history_message([r12, r23]), "gw-a")] == ["known", "known"]
    assert fresh.summary().ok


def test_a_revocation_signed_by_ops_ends_a_key() -> None:
    k1, ops, stranger = _key(1), _key(8), _key(9)
    trust = _trust(gw_a=k1)
    rx = Receiver(trust, ops_keys=OpsKeyring({ops.kid: ops.public_key()}))
    chain = Chain(k1, "gw-a")
    assert rx.feed(chain.next()).status == "ok"
    (out,) = rx.feed_keys(make_revocation(stranger, k1.kid, "gw-a", "card stolen"), "gw-a")
    assert out.status == "refused" and "not a trusted ops key" in out.reason
    assert rx.feed(chain.next()).status == "ok"
    (out,) = rx.feed_keys(make_revocation(ops, k1.kid, "gw-a", "card stolen"), "gw-a")
    assert out.status == "learned" and "revoked (card stolen)" in out.reason
    res = rx.feed(chain.next())
    assert res.status == "revoked" and "card stolen" in res.reason and res.readings == []
    s = rx.summary()
    assert (s.batches, s.revoked, s.key_events, s.key_events_refused, s.ok) == (2, 1, 1, 1, False)
    # a revoked key cannot be brought back by a rotation to it, nor rotate away
    k2 = _key(2)
    assert rx.feed_keys(make_rotation(k1, k2, "gw-a", 7, 9), "gw-a")[0].status == "refused"
    # revoked before this receiver ever heard of it: refused once it turns up
    t2 = KeyBindings()
    t2.take(make_revocation(ops, k2.kid, "gw-z", "lost"), {ops.kid: ops.public_key()})
    t2.bind("gw-z", k2.public_key())
    assert t2.lookup("gw-z", k2.kid).revoked  # type: ignore[union-attr]


def test_ops_keys_rotate_and_revoke_and_remember_it(tmp_path: Path) -> None:
    a, a2, b, c = _key(10), _key(11), _key(12), _key(13)
    store = tmp_path / "opskeys.cbor"
    ring = OpsKeyring({a.kid: a.public_key(), b.kid: b.public_key()}, store)
    ev = ring.take(make_rotation(a, a2))
    assert ev is not None and ev.kind == "rotate" and set(ring) == {a2.kid, b.kid}
    assert ring.why(a.kid).startswith("rotated to")
    with pytest.raises(EventRefused, match="cannot revoke itself"):
        ring.take(make_revocation(b, b.kid, reason="self"))
    with pytest.raises(EventRefused, match="not trusted here"):
        ring.take(make_rotation(c, _key(14)))  # an unknown key cannot rotate in
    with pytest.raises(EventRefused, match="not a trusted ops key"):
        ring.take(make_revocation(a, b.kid))  # the retired key signs nothing any more
    assert ring.take(make_revocation(a2, b.kid, reason="laptop lost")) is not None
    assert set(ring) == {a2.kid} and ring.why(b.kid) == "revoked (laptop lost)"
    # the next start: the same anchor files, the events kept beside them
    again = OpsKeyring({a.kid: a.public_key(), b.kid: b.public_key()}, store)
    assert set(again) == {a2.kid} and again.why(b.kid) == "revoked (laptop lost)"
    again.reanchor({a.kid: a.public_key(), b.kid: b.public_key(), c.kid: c.public_key()})  # SIGHUP, a new file
    assert set(again) == {a2.kid, c.kid}
    store.write_bytes(b"\xff junk")
    assert set(OpsKeyring({a.kid: a.public_key()}, store)) == {a.kid}  # unreadable: the anchor alone


def test_the_envelope_says_why_an_ops_key_is_refused(tmp_path: Path) -> None:
    from gateway.remote.envelope import Rejected, open_signed, sign

    a, a2 = _key(10), _key(11)
    ring = OpsKeyring({a.kid: a.public_key()})
    ring.take(make_rotation(a, a2))
    doc = sign(a, "config", "gw-a", b"x: 1", revision=5)
    with pytest.raises(Rejected, match=r"signed by ops key [0-9a-f]{32}, which was rotated to"):
        open_signed(doc, ring, "config", {"gw-a"}, 10_000)
    assert open_signed(sign(a2, "config", "gw-a", b"x: 1", revision=6), ring, "config", {"gw-a"}, 10_000).revision == 6


@pytest.mark.parametrize("alg", ["ed25519", "es256"])
async def test_the_gateway_switches_keys_between_two_batches(tmp_path: Path, alg: str) -> None:
    """Buffer + DeviceKey as the pipeline drives them: the rotation document names the batch
    from which the new key signs; the old key file is gone; a stop after the decision but
    before the key files moved is finished at the next start."""
    cfg = make_config(tmp_path, batch={"alg": alg})
    c = cfg.config
    files = KeyFiles.of("", tmp_path / "keys" / "device.key")
    first_pub = files.public.read_bytes()
    buf = Store(tmp_path / "buffer.db", c.gateway.id, c.buffer, c.batch)
    await buf.open()
    dk = DeviceKey(files, open_current(files), c.gateway.id)
    rx = Receiver(KeyBindings.files(c.gateway.id, files.public))
    old_kid = dk.signer.kid
    batcher = Batcher(dk.signer, c.gateway.id, c.batch)

    async def batch(i: int) -> bytes:
        buf.put(Reading(c.gateway.id, "n", T0 + i, i))
        await buf.commit()
        carry = dk.carry(buf.stream, buf.next_bseq)
        batcher.use(dk.signer, carry["kr"] if carry else None)
        made = await buf.make_batch(batcher)
        assert made is not None
        return made.data

    try:
        out = [await batch(i) for i in range(3)]
        made = prepare_next(files, alg)
        assert made.new and files.next_private.stat().st_mode & 0o777 == 0o600
        assert not prepare_next(files, alg).new  # one next key at a time
        doc = await dk.switch(buf.stream, buf.next_bseq)
        assert dk.signer.kid == made.kid != old_kid and not files.next_public.exists()
        assert load_public_key(files.public) == dk.signer.public_key() and files.public.read_bytes() != first_pub
        assert read_history(files) == [doc] and dk.announcement() == history_message([doc])
        ev = verify_event(doc, {}, lambda gw, kid: load_public_key_from(first_pub) if kid == old_kid else "unknown")
        assert (ev.stream, ev.from_batch, ev.new_kid) == (buf.stream, 4, made.kid)
        out += [await batch(i) for i in range(3, 6)]
        assert dk.carry(buf.stream, 4 + 1023) is not None and dk.carry(buf.stream, 4 + 1024) is None
    finally:
        await buf.close()
        dk.close()
    assert [rx.feed(b).status for b in out] == ["ok"] * 6  # the new key's first batch carried the rotation
    s = rx.summary()
    assert (s.gaps, s.chain_breaks, s.key_events) == (0, 0, 1)
    # a stop between the decision (the document written) and the key files' move
    made = prepare_next(files, alg)
    nxt = load_public_key(files.next_public)
    hist = read_history(files)
    old = open_current(files)
    new = __import__("gateway.keys", fromlist=["load_signing_key"]).load_signing_key(files.next_spec())
    hist.append(make_rotation(old, new, c.gateway.id, buf.stream, 50))
    files.history.write_bytes(cbor2.dumps(hist))
    resumed = open_current(files)  # what the next start does
    assert resumed.public_key() == nxt and not files.next_private.exists() and not files.next_public.exists()
    # a next key made but not decided on waits: the next start keeps the current key
    prepare_next(files, alg)
    assert open_current(files).kid == resumed.kid and files.next_public.exists()


def load_public_key_from(pem: bytes) -> Any:
    from gateway.keys import public_key_from_pem

    return public_key_from_pem(pem)


@given(st.binary(max_size=600))
def test_hostile_key_messages_are_refused_never_raise(data: bytes) -> None:
    rx = Receiver(_trust(gw_a=_key(1)), ops_keys=OpsKeyring({_key(8).kid: _key(8).public_key()}))
    for ops in (False, True):
        for out in rx.feed_keys(data, "gw-a", ops=ops):
            assert out.status == "refused"


@given(st.data())
def test_mutated_rotations_are_refused_or_harmless(data: st.DataObject) -> None:
    """Any change to a genuine rotation's bytes: refused, or (where CBOR re-encodes the same
    content) the same rotation; never a different key trusted."""
    k1, k2 = _key(1), _key(2)
    doc = bytearray(make_rotation(k1, k2, "gw-a", 7, 4))
    i = data.draw(st.integers(0, len(doc) - 1))
    doc[i] = data.draw(st.integers(0, 255).filter(lambda b: b != doc[i]))
    trust = _trust(gw_a=k1)
    try:
        ev = trust.take(bytes(doc), {})
    except EventRefused:
        assert trust.current("gw-a", k1.kid) == k1.public_key()
        return
    assert ev is not None and ev.new_kid == k2.kid and ev.kid == k1.kid


def test_documents_in_a_key_message() -> None:
    k1, k2 = _key(1), _key(2)
    r = make_rotation(k1, k2, "gw-a", 7, 4)
    assert documents_in(r) == [r] and documents_in(history_message([r, r])) == [r, r]
    with pytest.raises(EventRefused, match="at most 8"):
        documents_in(cbor2.dumps([r] * 9))
    with pytest.raises(EventRefused, match="not CBOR"):
        documents_in(b"\x82\x01")


def test_an_independent_cose_library_verifies_key_events() -> None:
    """python-cwt (tests/gateway/cosecheck.py) checks each signature of a rotation (the old and
    the new key, EdDSA and ES256) and a revocation, and refuses an altered one."""
    from gateway.keys import public_pem
    from tests.gateway import cosecheck

    old, new, ops = _key(1), as_signer(generate("es256")), _key(8)
    rotation = make_rotation(old, new, "gw-a", 7, 4)
    revocation = make_revocation(ops, old.kid, "gw-a", "lost")
    altered = bytearray(rotation)
    altered[rotation.find(b"gw-a")] ^= 0x20  # "Gw-a"
    got = cosecheck.verify([(rotation, public_pem(old.public_key()), old.kid),
                            (rotation, public_pem(new.public_key()), new.kid),
                            (revocation, public_pem(ops.public_key()), ops.kid),
                            (bytes(altered), public_pem(old.public_key()), old.kid)])
    body = cbor2.loads(got[0])  # type: ignore[arg-type]
    assert got[0] == got[1] and body["gw"] == "gw-a" and body["new"] == new.kid and body["bs"] == 4
    assert cbor2.loads(got[2])["kid"] == old.kid  # type: ignore[arg-type]
    assert isinstance(got[3], str) and "verify" in got[3].lower(), got[3]
