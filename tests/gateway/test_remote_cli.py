"""The ops command line against a real daemon and mosquitto: keys init --ops, config push, command, status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from gateway.keys import init_key
from hil.mosquitto import Mosquitto

SG = [sys.executable, "-m", "gateway"]


def sg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SG, *args], capture_output=True, text=True, timeout=90)


def test_ops_cli_push_command_status(tmp_path: Path, broker: Mosquitto) -> None:
    made = sg("keys", "init", "--ops", "--dir", str(tmp_path / "ops"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "ops/ops.key").exists() and "provision --ops-key" in made.stdout
    init_key(tmp_path / "state" / "keys")
    doc = {"gateway": {"id": "gw-cli", "state_dir": str(tmp_path / "state")},
           "uplinks": [{"type": "mqtt", "url": broker.url, "reconnect_max": 1}],
           "remote": {"ops_keys": [str(tmp_path / "ops")], "uplink_timeout": "5s", "driver_timeout": "5s"},
           "drivers": [{"driver": "sim", "name": "a", "interval": "50ms", "points": [{"name": "x"}]}]}
    config = tmp_path / "gw.yaml"
    config.write_text(yaml.safe_dump(doc))
    gw = subprocess.Popen([*SG, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    common = ["--url", broker.url, "--sign-key", str(tmp_path / "ops/ops.key")]
    try:
        up = sg("status", "gw-cli", "--url", broker.url, "--wait", "30")
        assert up.returncode == 0 and "gw-cli" in up.stdout, up.stderr
        for _ in range(5):  # online is published just before the subscriptions are made
            ping = sg("command", "ping", "--to", "gw-cli", *common, "--wait", "3", "--json")
            if ping.returncode == 0:
                break
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert json.loads(ping.stdout)["answers"]["gw-cli"]["result"]["running_revision"] is None

        push = tmp_path / "push.yaml"  # no identity: the gateway keeps its own
        push.write_text(yaml.safe_dump({"uplinks": doc["uplinks"], "drivers": [{**doc["drivers"][0], "name": "b"}]}))
        r = sg("config", "push", str(push), "--to", "gw-cli", *common, "--revision", "5", "--wait", "30")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "pushed revision 5" in r.stdout and "gw-cli: state=applied" in r.stdout

        bad = tmp_path / "bad.yaml"
        bad.write_text("drivers:\n  - driver: sim\n    intervall: 1s\n")
        r = sg("config", "push", str(bad), "--to", "gw-cli", *common, "--wait", "30")
        assert r.returncode == 1 and "not pushed" in r.stderr and "intervall" in r.stderr
        r = sg("config", "push", str(bad), "--to", "gw-cli", *common, "--wait", "30", "--no-check")
        assert r.returncode == 1 and "state=rejected" in r.stdout and "intervall" in r.stdout

        r = sg("command", "poll", "instance=b", "--to", "gw-cli", *common, "--wait", "30")
        assert r.returncode == 0 and "status=done" in r.stdout, r.stdout + r.stderr
        r = sg("command", "write", "instance=b", "point=x", "value=1", "--to", "gw-cli", *common, "--wait", "30")
        assert r.returncode == 1 and "status=refused" in r.stdout and "no writable points" in r.stdout

        st = sg("status", "gw-cli", "--url", broker.url, "--wait", "10")
        assert st.returncode == 0, st.stderr
        row = st.stdout.splitlines()[1].split()
        assert row[:4] == ["gw-cli", "online", "rejected", "5"], st.stdout
    finally:
        gw.send_signal(signal.SIGTERM)
        _, err = gw.communicate(timeout=30)
    assert gw.returncode == 0, err


def test_check_fleet_and_config_push_judge_a_document_alike(tmp_path: Path) -> None:
    """One validator: what `sensegate check --fleet` accepts, `config push` signs and sends; what it refuses,
    push refuses before signing, with the same words."""
    sg("keys", "init", "--ops", "--dir", str(tmp_path / "ops"))
    uplink = {"type": "mqtt", "url": "mqtts://broker.example.net:8883"}
    sim = {"driver": "sim", "name": "a", "interval": "1s", "points": [{"name": "x"}]}
    docs = {
        "good": {"uplinks": [uplink], "drivers": [sim]},  # no identity: each gateway keeps its own
        "typo": {"uplinks": [uplink], "drivers": [{**sim, "intervall": "1s"}]},
        "remote": {"uplinks": [uplink], "drivers": [sim], "remote": {"groups": ["north"]}},
        "no-mqtt": {"uplinks": [{"type": "jsonl"}], "drivers": [sim]},
    }
    dead = "mqtt://127.0.0.1:9"
    for name, doc in docs.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        checked = sg("check", "--fleet", str(path))
        push = sg("config", "push", str(path), "--to", "gw-1", "--url", dead, "--sign-key",
                  str(tmp_path / "ops/ops.key"), "--wait", "1")
        if name == "good":
            assert checked.returncode == 0 and "ok as a fleet document" in checked.stdout, checked.stdout
            assert "not pushed" not in push.stderr, push.stderr  # signed; then the broker is unreachable
            plain = sg("check", str(path))
            assert plain.returncode == 1 and f"sensegate check --fleet {path}" in plain.stdout
        else:
            assert checked.returncode == 1, (name, checked.stdout)
            assert "not pushed" in push.stderr, (name, push.stderr)
            said = checked.stdout.strip().splitlines()[0].split(": ", 1)[1]
            assert said in push.stderr, (name, said, push.stderr)
