"""Remote config pieces on their own: signed envelopes under hostile input, the config store's
crash states, and the command log's replay and expiry rules."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.daemon import DirectPipeline, Pipeline
from gateway.keys import init_key, key_id, load_private_key
from gateway.remote.commands import Command, CommandLog, Refused, execute, parse_command
from gateway.remote.envelope import Rejected, encode_command, group_target, load_trusted, open_signed, sign
from gateway.remote.store import ConfigStore
from tests.gateway.helpers import make_config


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[bytes, object]]:
    d = tmp_path_factory.mktemp("ops")
    info = init_key(d, name="ops", alg="es256")
    return load_private_key(info.private_path), load_trusted([str(d)], Path("/"))


def test_a_signed_config_opens_and_says_what_it_is(ops: tuple[object, dict[bytes, object]]) -> None:
    key, trusted = ops
    doc = sign(key, "config", group_target("fleet"), b"drivers: []\n", revision=42)  # type: ignore[arg-type]
    s = open_signed(doc, trusted, "config", {"gw-1", "group/fleet"}, 10_000)  # type: ignore[arg-type]
    assert (s.kind, s.target, s.revision, s.payload) == ("config", "group/fleet", 42, b"drivers: []\n")
    assert len(s.signer.split(":")) == 16


@pytest.mark.parametrize(("mutate", "why"), [
    (lambda d: d[: len(d) - 10], "truncated"),
    (lambda d: d + b"x" * 20_000, "over the limit"),
    (lambda d: b"gateway: {id: x}\n", "not a signed document"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad signature"),
])
def test_tampered_documents_are_refused_with_a_reason(ops: tuple[object, dict[bytes, object]], mutate: object,
                                                       why: str) -> None:
    key, trusted = ops
    doc = sign(key, "config", "gw-1", b"drivers: []\n", revision=1)  # type: ignore[arg-type]
    with pytest.raises(Rejected, match=why):
        open_signed(mutate(doc), trusted, "config", {"gw-1"}, 10_000)  # type: ignore[operator,arg-type]


def test_kind_target_and_signer_are_checked(ops: tuple[object, dict[bytes, object]], tmp_path: Path) -> None:
    key, trusted = ops
    cmd = sign(key, "command", "gw-1", encode_command("a", "ping", {}, time.time() + 9))  # type: ignore[arg-type]
    with pytest.raises(Rejected, match="'command' document was sent where a 'config'"):
        open_signed(cmd, trusted, "config", {"gw-1"}, 10_000)  # type: ignore[arg-type]
    with pytest.raises(Rejected, match="addressed to 'gw-1'"):
        open_signed(cmd, trusted, "command", {"gw-2"}, 10_000)  # type: ignore[arg-type]
    other = load_private_key(init_key(tmp_path, name="other").private_path)
    doc = sign(other, "config", "gw-1", b"{}", revision=3)
    with pytest.raises(Rejected, match=f"unknown key \\(kid {key_id(other.public_key()).hex()}"):
        open_signed(doc, trusted, "config", {"gw-1"}, 10_000)  # type: ignore[arg-type]
    with pytest.raises(Rejected, match="revision >= 1"):
        open_signed(sign(key, "config", "gw-1", b"{}", revision=0), trusted, "config", {"gw-1"},  # type: ignore[arg-type]
                    10_000)


@given(st.binary(max_size=600))
def test_hostile_bytes_only_ever_raise_rejected(data: bytes) -> None:
    with pytest.raises(Rejected):
        open_signed(data, {}, "config", {"gw"}, 500)


@given(st.binary(max_size=300) | st.builds(cbor2.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)))
def test_command_parser_refuses_garbage_with_rejected(data: bytes) -> None:
    try:
        cmd = parse_command(data)
    except Rejected:
        return
    assert isinstance(cmd, Command)


def test_store_crash_states_boot_old_or_new(tmp_path: Path) -> None:
    s = ConfigStore(tmp_path, history=2)
    s.open()
    assert s.boot().revision is None  # nothing pushed: the local file
    for rev in (1, 2, 3, 4):
        s.stage(rev, f"r{rev}".encode(), f"h{rev}")
        s.commit(rev)
    assert s.state.good == [4, 3, 2] and sorted(p.name for p in s.dir.iterdir()) == ["r2.yaml", "r3.yaml", "r4.yaml"]

    s.stage(5, b"r5", "h5")  # power cut here: pending on disk
    again = ConfigStore(tmp_path, history=2)
    again.open()
    choice = again.boot()
    assert (choice.revision, choice.data) == (4, b"r4") and "restarted during the apply of revision 5" in choice.note
    assert json.loads((tmp_path / "state.json").read_text())["pending"] is None
    assert not again.path(5).exists() and again.state.highest == 5

    again.stage(6, b"r6", "h6")
    again.rollback(6)
    assert again.boot().revision == 4 and not again.path(6).exists()

    (tmp_path / "state.json").write_text("{not json")
    broken = ConfigStore(tmp_path)
    broken.open()
    assert broken.boot().revision is None, "a damaged state file means the local file"


def test_store_never_leaves_a_temporary_behind(tmp_path: Path) -> None:
    s = ConfigStore(tmp_path)
    s.open()
    (s.dir / "r9.yaml.tmp").write_bytes(b"half")  # a cut during write_atomic
    s.boot()
    assert list(s.dir.iterdir()) == []


def test_command_log_refuses_replays_expired_and_far_future(tmp_path: Path) -> None:
    log = CommandLog(tmp_path / "c.json")
    log.open()
    now = 1_000_000.0
    log.take(Command("a", "ping", {}, now + 30), now, 60)
    with pytest.raises(Rejected, match="replayed"):
        log.take(Command("a", "ping", {}, now + 30), now + 1, 60)
    with pytest.raises(Rejected, match="expired"):
        log.take(Command("b", "ping", {}, now - 1), now, 60)
    with pytest.raises(Rejected, match="max_command_ttl"):
        log.take(Command("c", "ping", {}, now + 600), now, 60)
    reopened = CommandLog(tmp_path / "c.json")
    reopened.open()
    with pytest.raises(Rejected, match="replayed"):
        reopened.take(Command("a", "ping", {}, now + 30), now + 2, 60)
    reopened.take(Command("d", "ping", {}, now + 100), now + 40, 120)  # "a" expired and was forgotten
    assert set(reopened.ids) == {"d"}


NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
HUGE = st.integers(min_value=2**64, max_value=2**300) | st.integers(max_value=-(2**64))


def _command(exp: object, args: object = None) -> bytes:
    return cbor2.dumps({"id": "c-1", "op": "write", "args": args or {"instance": "x", "point": "p", "value": 1},
                        "exp": exp})


@given(NON_FINITE | HUGE | st.floats(min_value=2.0**63) | st.floats(max_value=-1e-9))
def test_a_command_expiry_must_be_a_finite_time(exp: float) -> None:
    """exp = NaN compared false with every bound: it skipped the expiry and TTL checks, and the
    command log forgot it at once, so the same signed bytes ran again."""
    with pytest.raises(Rejected, match=r"expiry \(exp\) must be a finite time"):
        parse_command(_command(exp))


@given(NON_FINITE | HUGE, st.sampled_from(["value", "nested"]))
def test_command_arguments_must_be_finite_64_bit_numbers(bad: object, where: str) -> None:
    args = {"instance": "x", "point": "p", "value": bad} if where == "value" else {"deep": [{"v": [1, bad]}]}
    with pytest.raises(Rejected, match=r"finite number|beyond 64 bits"):
        parse_command(_command(time.time() + 30, args))


def test_a_nan_expiry_cannot_be_replayed(tmp_path: Path) -> None:
    log = CommandLog(tmp_path / "c.json")
    log.open()
    for _ in range(2):  # both takes ran before: NaN passed expiry and TTL, and was pruned at once
        with pytest.raises(Rejected, match="not a finite time"):
            log.take(Command("n", "ping", {}, float("nan")), 1_000_000.0, 60)
    assert log.ids == {}


@given(st.sampled_from(["rv", "iat"]), NON_FINITE | HUGE | st.floats(allow_nan=False) | st.booleans()
       | st.integers(min_value=2**63, max_value=2**300) | st.integers(max_value=-1) | st.text(max_size=3))
def test_envelope_numbers_are_whole_and_in_range(ops: tuple[object, dict[bytes, object]], label: str,
                                                 value: object) -> None:
    from gateway import cose

    key, trusted = ops
    extra = {cose.CONTENT_TYPE: "application/yaml", "sgk": "config", "to": "gw-1", "iat": 1, "rv": 7, label: value}
    protected = cose.protected_header(key, key_id(key.public_key()), extra)  # type: ignore[attr-defined,arg-type]
    doc = cose.encode_sign1(protected, b"{}", cose.sign(key, protected, b"{}"))  # type: ignore[arg-type]
    with pytest.raises(Rejected, match=r"must be a whole number 0\.\.2\^63-1"):
        open_signed(doc, trusted, "config", {"gw-1"}, 10_000)  # type: ignore[arg-type]


async def test_rotate_key_is_refused_where_nothing_is_signed(tmp_path: Path) -> None:
    """A JSON-lines gateway has no device key: the command is refused with why, not attempted."""
    cfg = make_config(tmp_path, uplinks=[{"type": "jsonl", "path": str(tmp_path / "out.jsonl")}])

    @dataclass
    class Host:
        cfg: object
        pipeline: Pipeline | None
        supervisor: None = None
        apply_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    for pipeline in (DirectPipeline(cfg), None):
        cmd = Command("c1", "rotate_key", {}, time.time() + 60)
        with pytest.raises(Refused, match="there is no device key to rotate"):
            await execute(cmd, Host(cfg, pipeline), {})  # type: ignore[arg-type]
