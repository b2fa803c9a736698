"""Devices not wired yet (``health.expect_absent``), pushed to a real daemon through a real mosquitto:
a Modbus meter that does not answer rolls a push back, unless it is marked expected-absent; once
the meter is wired and has run, it counts like any other instance; and the marking is pushed on its
own without restarting anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gateway.remote.ops import Broker, push_config
from gateway.testing import free_port
from hil.devices.modbus_slave import ModbusSim, Slave
from hil.mosquitto import Mosquitto
from tests.gateway.test_remote_mqtt import SIM, bootstrap, connected, daemon, ops_key, until


def meter(port: int, interval: str = "200ms") -> dict[str, Any]:
    return {"driver": "modbus", "name": "meter", "transport": "tcp", "host": "127.0.0.1", "port": port,
            "interval": interval, "timeout": "1s", "request_timeout": "300ms",
            "nodes": [{"id": "m", "slave": 1, "points": [{"name": "kwh", "function": "holding", "address": 0}]}]}


async def test_a_meter_not_wired_yet_does_not_roll_the_push_back_until_it_first_runs(
        tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-w", broker.url, pub, driver_timeout="3s")
    local = yaml.safe_load(path.read_text())
    port = free_port()  # nothing listens here yet: the meter is not wired
    b = Broker.from_url(broker.url)

    async def push(doc: dict[str, Any]) -> dict[str, Any]:
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-w", within=30)
        assert not answers.timed_out
        return answers.by_gateway["gw-w"]

    base = {"uplinks": local["uplinks"]}
    async with daemon(path) as d:
        await connected(d)
        st = await push({**base, "drivers": [SIM, meter(port)]})
        assert st["state"] == "rolled_back" and "meter" in st["reason"], st
        assert "cannot open Modbus bus" in st["reason"], "what the driver reported is in the reason"

        st = await push({**base, "drivers": [SIM, meter(port)], "health": {"expect_absent": ["nope"]}})
        assert st["state"] == "rejected" and "no driver instance named 'nope'" in st["reason"], st

        st = await push({**base, "drivers": [SIM, meter(port)], "health": {"expect_absent": ["meter"]}})
        assert st["state"] == "applied" and "drivers meter" in st["reason"], st
        assert d.supervisor.runners["meter"].stats.state != "running"  # type: ignore[union-attr]
        wired = tmp_path / "gw-w" / "remote" / "wired.json"
        assert not wired.exists()

        sim = ModbusSim([Slave(1)], transport="tcp")
        await sim.start(port)  # the technician wires the meter
        try:
            await until(lambda: wired.exists(), within=30)
            assert json.loads(wired.read_text()) == {"up": ["meter"]}
        finally:
            await sim.stop()
        await until(lambda: d.supervisor.runners["meter"].stats.state != "running")  # type: ignore[union-attr]

        # it ran once: from now on it counts, even though it is still listed
        st = await push({**base, "drivers": [SIM, meter(port, "300ms")], "health": {"expect_absent": ["meter"]}})
        assert st["state"] == "rolled_back" and "meter" in st["reason"], st

        runner = d.supervisor.runners["counter"]  # type: ignore[union-attr]
        st = await push({**base, "drivers": [SIM, meter(port)], "health": {"expect_absent": []}})
        assert st["state"] == "applied" and st["reason"] == "restarted: health (expected-absent instances)", st
        assert d.supervisor.runners["counter"] is runner, "a change of health alone restarts nothing"  # type: ignore[union-attr]
        assert d.cfg is not None and d.cfg.config.health.expect_absent == []


async def test_an_uplink_rollback_names_the_cause_the_gateway_logged(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-u", broker.url, pub)
    dead = free_port()
    async with daemon(path) as d:
        await connected(d)
        doc = {"uplinks": [{"type": "mqtt", "url": f"mqtt://127.0.0.1:{dead}", "reconnect_max": 1}], "drivers": [SIM]}
        _, answers = await push_config(Broker.from_url(broker.url), key, yaml.safe_dump(doc).encode(), to="gw-u",
                                       within=30)
        st = answers.by_gateway["gw-u"]
        assert st["state"] == "rolled_back", st
        assert f"mqtt: connection refused by 127.0.0.1:{dead}" in st["reason"], st
