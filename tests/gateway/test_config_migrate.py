"""Config format versions: older documents are migrated before validation (gateway/config/migrate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigInvalid


def test_modbus_device_becomes_port_in_config_version_2(tmp_path: Path) -> None:
    """One name for a serial device in every driver: modbus's old `device:` is migrated, whether the file
    says config_version 1 or nothing (a drop-in written before the rename must keep the gateway running)."""
    from gateway.config import load_config_bytes
    from gateway.config.validate import load_config
    from gateway.registry import Registry

    reg = Registry.discover()
    old = {"driver": "modbus", "name": "bus", "transport": "rtu", "device": "/dev/ttyUSB0",
           "nodes": [{"id": "m1", "slave": 1, "points": [{"name": "v", "address": 0}]}]}
    for head in ("config_version: 1\n", ""):
        doc = head + yaml.safe_dump({"gateway": {"id": "gw-m"}, "drivers": [old]})
        cfg = load_config_bytes(doc.encode(), reg, "old.yaml")
        (inst,) = cfg.instances
        assert inst.config.port == "/dev/ttyUSB0" and cfg.config.config_version == 2
    tcp = {**old, "transport": "tcp", "host": "10.0.0.5", "port": 1502}
    (inst,) = load_config_bytes(yaml.safe_dump({"gateway": {"id": "gw-m"}, "drivers": [tcp]}).encode(), reg).instances
    assert inst.config.port == 1502, "a tcp section's unused device: goes, its TCP port stays"
    # the current format as it is, also unversioned; the old name in a version 2 file is refused by name
    new = {k: v for k, v in old.items() if k != "device"} | {"port": "/dev/ttyUSB0"}
    (inst,) = load_config_bytes(yaml.safe_dump({"gateway": {"id": "gw-m"}, "drivers": [new]}).encode(), reg).instances
    assert inst.config.port == "/dev/ttyUSB0"
    v2 = "config_version: 2\n" + yaml.safe_dump({"gateway": {"id": "gw-m"}, "drivers": [old]})
    with pytest.raises(ConfigInvalid) as e:
        load_config_bytes(v2.encode(), reg, "new.yaml")
    assert "unknown key 'device'" in str(e.value)
    # a drop-in of the old format over a current file
    path = tmp_path / "sensegate.yaml"
    path.write_text("config_version: 2\ngateway: {id: gw-m}\n")
    (tmp_path / "sensegate.yaml.d").mkdir()
    (tmp_path / "sensegate.yaml.d" / "50-local.yaml").write_text(yaml.safe_dump({"drivers": [old]}))
    (inst,) = load_config(path, reg).instances
    assert inst.config.port == "/dev/ttyUSB0"
    bad = {**new, "port": 502}
    with pytest.raises(ConfigInvalid) as e:
        load_config_bytes(yaml.safe_dump({"gateway": {"id": "gw-m"}, "drivers": [bad]}).encode(), reg, "x.yaml")
    assert "transport rtu needs port: the serial device" in str(e.value)
