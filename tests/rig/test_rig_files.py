"""The rig files themselves (no rig needed): they load, and every device's options validate
against its driver's schema, so a bench finds a typo before the wiring is blamed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import load_config_bytes
from gateway.registry import Registry
from hil.rig import RIGS, RigError, fill, load_rig

# what simulated devices hand out, for validating sim.yaml's placeholders
DUMMY = {"port": 5020, "path": "/dev/ttyACM0", "device": "/dev/ttyUSB0",
         "url": "http://127.0.0.1:8080/snapshot.jpg", "base_path": "/tmp/w1", "broker_url": "mqtt://127.0.0.1:1884",
         "endpoint": "opc.tcp://127.0.0.1:4840/sensegate/", "host": "127.0.0.1",
         "broadcast": "127.255.255.255:47808", "trap_port": 16200}


@pytest.mark.parametrize("rig_file", sorted(p.name for p in RIGS.glob("*.yaml")))
def test_rig_file_loads_and_every_device_validates(rig_file: str) -> None:
    spec = load_rig(rig_file)
    registry = Registry.discover()
    drivers = [{"driver": d.driver, "name": d.name, **fill(d.config, DUMMY)} for d in spec.devices
               if d.driver in registry.manifests]
    doc = {"gateway": {"id": spec.gateway_id, "state_dir": "/tmp/rig-check"},
           "uplinks": [{"type": "mqtt", "url": "mqtt://127.0.0.1:1883"}], "drivers": drivers}
    cfg = load_config_bytes(yaml.safe_dump(doc).encode(), registry, rig_file)
    assert len(cfg.instances) == len(drivers)
    assert spec.devices[0].driver == "sim" and spec.devices[0].name == "counter", "the reference counter comes first"


def test_sim_rig_is_fully_simulated() -> None:
    spec = load_rig("sim")
    assert spec.simulated and spec.broker == "local"
    assert {d.sim for d in spec.devices} >= {"modbus-rtu", "camera-http", "onewire", "nmea-gps", "ble",
                                             "opcua", "bacnet", "snmp"}


@pytest.mark.parametrize(("text", "message"), [
    ("devices: 3\n", "a 'devices' list"),
    ("devices: []\nbrokr: local\n", "unknown keys ['brokr']"),
    ("devices: [{name: a}]\n", "needs 'name' and 'driver'"),
    ("devices: [{name: a, driver: sim, sim: toaster}]\n", "unknown sim 'toaster'"),
    ("devices: [{name: a, driver: sim, colour: red}]\n", "unknown keys ['colour']"),
    ("devices: [{name: a, driver: sim}, {name: a, driver: sim}]\n", "must be unique"),
])
def test_bad_rig_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rig.yaml"
    path.write_text(text)
    with pytest.raises(RigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_rig(str(path))


def test_placeholders() -> None:
    assert fill({"port": "{port}", "url": "http://h:{port}/x", "n": [1, "{port}"]}, {"port": 7}) == {
        "port": 7, "url": "http://h:7/x", "n": [1, 7]}
    with pytest.raises(RigError, match="no value"):
        fill("{nope}", {"port": 7})
    with pytest.raises(RigError, match="no rig file"):
        load_rig("no-such-rig")
