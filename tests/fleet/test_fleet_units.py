"""The fleet pieces that read outside input or decide on their own, tested directly: retained
health messages of any shape (the fleet view never crashes on what any client may publish),
update manifests and .deb bundles (malformed and hostile), version order and floors, expiring
documents, the rollout plan, its state file, and how answers are told apart."""

from __future__ import annotations

import io
import json
import math
import tarfile
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.fleet.agentkind import BundleError, make_bundle, manifest
from gateway.fleet.kinds import ConfigKind
from gateway.fleet.rollout import Entry, Rollout, RolloutError, plan
from gateway.fleet.table import cells, format_table
from gateway.fleet.view import row_from
from gateway.keys import generate, key_id
from gateway.remote.cli import outcome_summary
from gateway.remote.envelope import Rejected, open_signed, sign
from gateway.remote.releases import ReleaseError, _deb_wheels, version_key
from gateway.remote.update import Manifest

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=5),
                    max_leaves=30)
HEALTH_KEYS = ["drivers", "config", "buffer", "batches", "clock", "disk", "groups", "absent", "agent", "version",
               "status_interval"]


@settings(max_examples=300, deadline=None)
@given(status=JSON, health=st.dictionaries(st.sampled_from(HEALTH_KEYS), JSON, max_size=8), ts=JSON, config=JSON)
def test_any_retained_message_makes_a_row_never_a_crash(status: Any, health: dict[str, Any], ts: Any,
                                                        config: Any) -> None:
    seen = {"status": status, "health": {"state": "online", "ts": ts, "health": health}, "config": config}
    r = row_from("gw-x", seen, time.time())
    c = cells(r)
    assert c["gateway"] == "gw-x" and all(isinstance(v, str) for v in c.values())
    json.dumps(r.as_json(), allow_nan=True)
    format_table([r], signed=False)


def test_a_row_reads_a_real_summary_and_flags_what_is_wrong() -> None:
    now = time.time()
    health = {"version": "0.2.0", "groups": ["d7"], "status_interval": 60,
              "config": {"revision": 17, "source": "pushed", "last_push": {"state": "rolled_back", "revision": 18}},
              "drivers": {"a": {"state": "running"}, "b": {"state": "unavailable", "last_error": "timeout"},
                          "c": {"state": "starting"}},
              "absent": ["c"], "buffer": {"readings": 12, "oldest_age_s": 400.0},
              "batches": {"last_acked": 99, "last_acked_at": now - 5},
              "clock": {"synchronised": False, "offset_s": 0.5},
              "disk": {"free_bytes": 5 * 1024**3}}
    r = row_from("gw-1", {"status": {"state": "online", "ts": now, "health": health}}, now)
    assert (r.state, r.revision, r.drivers_up, r.drivers_total, r.down) == ("online", 17, 1, 2,
                                                                              {"b": "unavailable: timeout"})
    c = cells(r, now)
    assert c["config"] == "r17 pushed (rolled_back r18)" and c["drivers"] == "1/2 up, 1 absent"
    assert c["buffer"] == "12 (7m)" and c["last_ack"] == "#99 5s ago" and c["clock"] == "UNSYNCED +500.0ms"
    assert c["disk"] == "5.0G" and not r.healthy
    stale = row_from("gw-1", {"status": {"state": "online", "ts": now - 400, "health": health}}, now)
    assert stale.state == "stale"
    gone = row_from("gw-1", {"status": {"state": "offline"}, "health": {"ts": now - 7200, "health": health}}, now)
    assert gone.state == "offline" and cells(gone, now)["state"] == "offline, seen 2h ago"


def _cbor_values() -> st.SearchStrategy[Any]:
    return st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70)
                        | st.binary(max_size=20), lambda c: st.lists(c, max_size=4), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "format", "size", "sha256", "chunk", "chunks", "floor", "name",
                                        "x"]), _cbor_values(), max_size=9) | st.binary(max_size=60))
def test_a_hostile_manifest_is_refused_with_a_reason(doc: Any) -> None:
    raw = doc if isinstance(doc, bytes) else cbor2.dumps(doc)
    try:
        m = Manifest.parse(raw)
    except Rejected as e:
        assert str(e)
    else:
        assert m.fmt in ("wheels", "deb") and len(m.chunks) == math.ceil(m.size / m.chunk)


def test_a_real_manifest_parses_and_a_lying_one_does_not() -> None:
    m = manifest(b"x" * 300_000, "wheels", "0.3.0", "b.tar", floor="0.2.1")
    got = Manifest.parse(cbor2.dumps(m))
    assert (got.version, got.size, len(got.chunks), got.floor) == ("0.3.0", 300_000, 2, "0.2.1")
    for bad, words in (({"chunks": m["chunks"][:1]}, "chunking"), ({"format": "rpm"}, "format"),
                       ({"version": "latest"}, "not a release version"), ({"sha256": "ab"}, "SHA-256"),
                       ({"chunk": 2 * 1024 * 1024}, "chunking")):
        with pytest.raises(Rejected, match=words):
            Manifest.parse(cbor2.dumps({**m, **bad}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_a_hostile_deb_is_refused(tail: bytes) -> None:
    for data in (tail, b"!<arch>\n" + tail):
        try:
            _deb_wheels(data)
        except ReleaseError:
            pass


def test_the_wheels_come_out_of_a_deb(tmp_path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        for name, body in (("./usr/share/sensegate/wheels/sensegate-0.3.0-py3-none-any.whl", b"wheel"),
                           ("./usr/bin/other", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))

    def member(name: str, body: bytes) -> bytes:
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        return head + body + (b"\n" if len(body) % 2 else b"")

    deb = b"!<arch>\n" + member("debian-binary", b"2.0\n") + member("data.tar.xz", data.getvalue())
    assert _deb_wheels(deb) == [("sensegate-0.3.0-py3-none-any.whl", b"wheel")]
    (tmp_path / "s.deb").write_bytes(deb)
    assert make_bundle([tmp_path / "s.deb"])[1:3] == ("deb", "0.3.0")
    with pytest.raises(BundleError, match="not wheels"):
        make_bundle([tmp_path])
    for v in ("0.3.0", "0.3.1"):
        (tmp_path / f"sensegate-{v}-py3-none-any.whl").write_bytes(b"w")
    with pytest.raises(BundleError, match="exactly one sensegate wheel"):
        make_bundle([tmp_path])


def test_versions_order_as_pep_440_and_refuse_the_rest() -> None:
    order = ["0.1.0.dev1", "0.1.0a1", "0.1.0rc2", "0.1", "0.1.0.post1", "0.1.1", "0.10.0", "1.0"]
    assert sorted(order, key=version_key) == order
    assert version_key("1.0") == version_key("1.0.0")
    for bad in ("", "v1.0", "1.0-beta", "1..0", "latest", "1.0.0.0.0"):
        with pytest.raises(ValueError):
            version_key(bad)


def test_an_expired_document_is_refused() -> None:
    key = generate("ed25519")
    trusted = {key_id(key.public_key()): key.public_key()}
    fresh = sign(key, "config", "gw-1", b"gateway: {}", revision=5, expires=int(time.time()) + 60)
    assert open_signed(fresh, trusted, "config", {"gw-1"}, 10_000).expires > time.time()
    old = sign(key, "config", "gw-1", b"gateway: {}", revision=5, expires=int(time.time()) - 30)
    with pytest.raises(Rejected, match="expired"):
        open_signed(old, trusted, "config", {"gw-1"}, 10_000)
    update = sign(key, "agent", "gw-1", b"\xa0")
    with pytest.raises(Rejected, match="'agent' document was sent where a 'config'"):
        open_signed(update, trusted, "config", {"gw-1"}, 10_000)


def test_the_plan_puts_online_canaries_first_then_waves() -> None:
    members = [f"gw-{i}" for i in range(7)]
    assert plan(members, {"gw-2", "gw-3", "gw-6"}, 2, 3) == [["gw-2", "gw-3"], ["gw-0", "gw-1", "gw-4"],
                                                              ["gw-5", "gw-6"]]
    assert plan(members, set(), 1, 10) == [members], "no gateway online: no canary"
    assert plan(members, set(), 1, 4, ["gw-5"]) == [["gw-5"], ["gw-0", "gw-1", "gw-2", "gw-3"], ["gw-4", "gw-6"]]


def test_the_state_file_round_trips_and_a_damaged_one_says_so(tmp_path: Path) -> None:
    ro = Rollout("config-x", {"name": "config"}, "d7", "mqtt://h:1", [["a"], ["b"]], True, 0, 60.0, 0,
                 {"a": Entry(0, "ok"), "b": Entry(1, previous_revision=4)}, path=str(tmp_path / "config-x.json"))
    ro.save()
    back = Rollout.load(tmp_path, "config-x")
    assert back.gateways["b"].previous_revision == 4 and back.named("ok") == ["a"] and back.waves == ro.waves
    (tmp_path / "bad.json").write_text('{"id": 3}')
    with pytest.raises(RolloutError, match="not a rollout state file"):
        Rollout.load(tmp_path, "bad")
    with pytest.raises(RolloutError, match=r"no rollout 'nope'.*config-x"):
        Rollout.load(tmp_path, "nope")


def test_config_answers_are_told_apart() -> None:
    k = ConfigKind(b"", 50)
    assert k.answer("sg", "sg/gw-1/config/status", {"gateway": "gw-1", "state": "applied", "revision": 50},
                    None).outcome == "ok"  # type: ignore[union-attr]
    assert k.answer("sg", "sg/gw-1/config/status", {"gateway": "gw-1", "state": "received", "revision": 50},
                    None) is None
    assert k.answer("sg", "sg/gw-1/config/status", {"gateway": "gw-1", "state": "applied", "revision": 49},
                    None) is None
    old = {"gateway": "gw-1", "state": "rejected", "revision": None, "ts": 100.0}
    assert k.answer("sg", "t", old, 1000.0) is None, "an earlier refusal is no answer to this push"
    assert k.answer("sg", "t", {**old, "ts": 1001.0, "republished": 1}, 1000.0) is None
    assert k.answer("sg", "t", {**old, "ts": 1001.0}, 1000.0).outcome == "failed"  # type: ignore[union-attr]


def test_a_push_summary_names_who_rolled_back_and_who_did_not_answer() -> None:
    answers = {"gw-1": {"state": "applied"}, "gw-2": {"state": "rolled_back", "reason": "mqtt: connection refused"}}
    lines, code = outcome_summary(answers, ["gw-1", "gw-2", "gw-3"])
    assert code == 2 and "ROLLED BACK: gw-2: mqtt: connection refused" in lines
    assert lines[-1] == "2 of 3 answered: 1 applied, 1 rolled back (gw-2); no answer from gw-3"
    lines, code = outcome_summary({"gw-1": {"state": "applied"}}, [], expect=3)
    assert code == 2 and "2 more (not named" in lines[-1]
    assert outcome_summary({"gw-1": {"status": "done"}}, ["gw-1"])[1] == 0


def test_the_launcher_runs_the_release_then_goes_back_from_a_trial_that_never_became_healthy(tmp_path: Path) -> None:
    from gateway import __version__
    from gateway.remote.releases import AgentState, Trial, _decide, release_python

    py = release_python(tmp_path, "9.0.0")
    py.parent.mkdir(parents=True)
    py.write_text("")
    now = time.time()
    st = AgentState(current="9.0.0", factory=__version__, trial=Trial("9.0.0", None, now, now + 120))
    assert _decide(tmp_path, st) == "9.0.0" and st.trial is not None and st.trial.starts == 1
    again = AgentState.load(tmp_path)  # started a second time, never healthy: back to the installed agent
    assert _decide(tmp_path, again) is None
    back = AgentState.load(tmp_path)
    assert back.current is None and back.trial is None and back.outcome is not None
    assert back.outcome["state"] == "rolled_back" and "started 1 time(s)" in back.outcome["reason"]

    kept = AgentState(current="9.0.0", factory=__version__)
    assert _decide(tmp_path, kept) == "9.0.0", "a healthy release keeps running at every start"
    replaced = AgentState(current="9.0.0", factory="0.0.1")  # dpkg installed another agent since
    assert _decide(tmp_path, replaced) is None
    assert AgentState.load(tmp_path).outcome["state"] == "replaced"  # type: ignore[index]


def test_a_driver_that_does_not_go_into_the_release_fails_the_update_by_name(tmp_path: Path) -> None:
    from gateway.remote.releases import _carry_drivers

    store = tmp_path / "drivers"
    (store / "wheels").mkdir(parents=True)
    (store / "wheels" / "sgthermo-1.0-py3-none-any.whl").write_bytes(b"changed on the card since it was verified")
    record = {"dist": "sgthermo", "version": "1.0", "wheel": "sgthermo-1.0-py3-none-any.whl", "sha256": "0" * 64,
              "verified": "sha256 given at install", "drivers": ["thermo"], "installed": "", "extra_wheels": []}
    (store / "installed.json").write_text(json.dumps({"drivers": {"sgthermo": record}}))
    with pytest.raises(ReleaseError, match=r"sgthermo \(thermo\): .*changed since it was verified"):
        _carry_drivers(tmp_path, "/nonexistent/python")
