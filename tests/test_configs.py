"""Every example config in configs/ is valid, exactly as shipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0, capsys.readouterr().out


def test_street_cabinet_has_the_devices_the_issue_names() -> None:
    import yaml

    doc = yaml.safe_load((Path(__file__).parents[1] / "configs" / "street-cabinet.yaml").read_text())
    assert {d["driver"] for d in doc["drivers"]} >= {"modbus", "gps", "rfid"}
