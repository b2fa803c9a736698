"""Operator profiles (gateway/remote/profile.py): which profile is chosen, what it fills in, that
flags win, that a damaged file says what is wrong; and `sensegate ops init/show` plus a config
push and a status with nothing on the command line but the profile, against a real daemon and
mosquitto."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import build_parser
from gateway.keys import init_key
from gateway.remote import profile
from gateway.remote.cli import prepare
from hil.mosquitto import Mosquitto

SG = [sys.executable, "-m", "gateway"]


def _write(path: Path, doc: object) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def ops_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "ops.yaml"
    path.parent.mkdir()
    monkeypatch.setenv(profile.ENV_FILE, str(path))
    monkeypatch.delenv(profile.ENV_PROFILE, raising=False)
    return path


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_chosen_profile_fills_what_the_flags_leave_out(ops_yaml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(ops_yaml, {"default": "city", "profiles": {
        "city": {"url": "mqtts://broker.city:8883/sg", "ca": "ca.pem", "sign_key": "~/k/ops.key",
                 "group": "district-7", "trust": ["gateways", "gw-1=/abs/gw-1.pem"]},
        "lab": {"url": "mqtt://127.0.0.1:1883", "group": "bench"}}})
    a = _args("config", "push", "x.yaml")
    assert prepare(a, "config push") == ""
    assert a.url == "mqtts://broker.city:8883/sg" and a.group == "district-7" and a.to is None
    assert a.ca == str(ops_yaml.parent / "ca.pem"), "relative paths are from the file's directory"
    assert a.sign_key == str(Path("~/k/ops.key").expanduser())

    a = _args("config", "push", "x.yaml", "--url", "mqtt://other:1", "--to", "gw-9", "--ca", "mine.pem")
    assert prepare(a, "config push") == ""
    assert (a.url, a.to, a.group, a.ca) == ("mqtt://other:1", "gw-9", None, "mine.pem"), "flags win"

    a = _args("command", "ping", "--profile", "lab")
    assert prepare(a, "command") == "" and a.group == "bench" and a.url == "mqtt://127.0.0.1:1883"

    monkeypatch.setenv(profile.ENV_PROFILE, "lab")
    a = _args("status")
    assert prepare(a, "status", target=False) == "" and a.url == "mqtt://127.0.0.1:1883"
    a = _args("status", "--trust", "x.pem", "--profile", "city")
    prepare(a, "status", target=False)
    assert a.trust == ["x.pem"], "a --trust flag replaces the profile's"
    a = _args("status", "--profile", "city")
    prepare(a, "status", target=False)
    assert a.trust == [str(ops_yaml.parent / "gateways"), "gw-1=/abs/gw-1.pem"]

    a = _args("status", "--profile", "nope")
    err = prepare(a, "status", target=False)
    assert "no profile 'nope'" in err and "city, lab" in err


def test_no_profile_no_url_says_what_to_do(ops_yaml: Path) -> None:
    a = _args("config", "push", "x.yaml", "--to", "gw-1")
    assert "no broker" in prepare(a, "config push") and "sensegate ops init" in prepare(a, "config push")
    a = _args("command", "ping", "--url", "mqtt://h:1")
    assert "give --to GATEWAY or --group GROUP" in prepare(a, "command")
    _write(ops_yaml, {"profiles": {"only": {"url": "mqtt://h:1"}}})
    a = _args("command", "ping", "--to", "gw-1")
    assert prepare(a, "command") == "" and a.url == "mqtt://h:1", "a single profile needs no default"


@pytest.mark.parametrize("text, words", [
    ("profiles: [1, 2]", "profiles"),
    ("profiles:\n  a: {url: ftp://x}", "url"),
    ("profiles:\n  a: {colour: red}", "colour"),
    ("profiles:\n  a: {group: 'a/b'}", "group"),
    ("[unclosed", "cannot read"),
    ("\xff\xfe", "cannot read"),
])
def test_a_damaged_profile_file_is_named_with_the_problem(ops_yaml: Path, text: str, words: str) -> None:
    ops_yaml.write_bytes(text.encode("latin-1"))
    with pytest.raises(profile.ProfileError, match=words):
        profile.choose()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=12))
def test_any_yaml_in_the_profile_file_loads_or_says_why(ops_yaml: Path, doc: object) -> None:
    _write(ops_yaml, doc)
    try:
        f = profile.load()
    except profile.ProfileError as e:
        assert str(ops_yaml) in str(e)
    else:
        assert isinstance(f, profile.OpsFile)


def sg(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SG, *args], capture_output=True, text=True, timeout=90, env=env)


def test_ops_init_show_and_a_push_with_only_the_profile(tmp_path: Path, broker: Mosquitto) -> None:
    env = {**os.environ, profile.ENV_FILE: str(tmp_path / "home/ops.yaml")}
    env.pop(profile.ENV_PROFILE, None)
    assert sg("keys", "init", "--ops", "--dir", str(tmp_path / "ops"), env=env).returncode == 0
    r = sg("ops", "init", "lab", "--url", broker.url, "--sign-key", str(tmp_path / "ops/ops.key"),
           "--group", "street-9", "--trust", str(tmp_path / "trust"), env=env)
    assert r.returncode == 0 and "(default)" in r.stdout, r.stderr
    r = sg("ops", "init", "lab", "--url", broker.url, env=env)
    assert r.returncode == 2 and "--force" in r.stderr, "an existing profile is not overwritten silently"
    assert (tmp_path / "home/ops.yaml").stat().st_mode & 0o777 == 0o600
    r = sg("ops", "show", "--json", env=env)
    shown = json.loads(r.stdout)
    assert shown["default"] == "lab" and shown["profiles"]["lab"]["group"] == "street-9"
    assert r.returncode == 1 and "lab.trust" in r.stderr and "does not exist" in r.stderr, r.stderr
    (tmp_path / "trust").mkdir()
    r = sg("ops", "show", env=env)
    assert r.returncode == 0 and "lab:  (default)" in r.stdout and f"url: {broker.url}" in r.stdout, r.stderr

    init_key(tmp_path / "state" / "keys")
    (tmp_path / "trust/gw-prof.pub.pem").write_bytes((tmp_path / "state/keys/device.pub.pem").read_bytes())
    doc = {"gateway": {"id": "gw-prof", "state_dir": str(tmp_path / "state")},
           "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
           "remote": {"ops_keys": [str(tmp_path / "ops")], "groups": ["street-9"], "uplink_timeout": "5s",
                      "driver_timeout": "5s"},
           "drivers": [{"driver": "sim", "name": "a", "interval": "50ms", "points": [{"name": "x"}]}]}
    config = _write(tmp_path / "gw.yaml", doc)
    gw = subprocess.Popen([*SG, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        up = sg("status", "gw-prof", "--wait", "30", env=env)
        assert up.returncode == 0 and "gw-prof" in up.stdout, up.stderr
        push = _write(tmp_path / "push.yaml", {"uplinks": doc["uplinks"], "drivers": [{**doc["drivers"][0],
                                                                                     "name": "b"}]})
        for _ in range(5):  # online is published just before the subscriptions are made
            r = sg("config", "push", str(push), "--wait", "5", env=env)
            if r.returncode == 0:
                break
        assert r.returncode == 0, r.stdout + r.stderr
        assert "to group street-9: 1 gateway(s)" in r.stdout and "DONE: 1 ok, 0 failed" in r.stdout  # a rollout
        st = sg("status", "gw-prof", "--wait", "10", env=env)  # --trust from the profile
        assert st.returncode == 0 and st.stdout.splitlines()[1].split()[:4] == ["gw-prof", "online", "applied",
                                                                              "yes"], st.stdout + st.stderr
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
    assert gw.returncode == 0, err
