"""The thermal driver against a fake sysfs tree, in sensegate's real scheduler.

The fixtures (driver_harness, fake_clock) come from sensegate's pytest plugin, which pytest
loads by itself wherever sensegate is installed: this suite has no conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gateway.driver_api import Quality
from gateway.testing import FakeClock, assert_reading, wait_reading, wait_until
from hypothesis import given
from hypothesis import strategies as st

from sensegate_thermal import MANIFEST
from sensegate_thermal.sim_device import FakeThermal
from sensegate_thermal.zones import ProtocolError, parse_millidegrees, point_name

FAST = {"interval": 0.05, "timeout": 1.0, "jitter": 0}


@pytest.fixture
def sysfs() -> Iterator[FakeThermal]:
    tree = FakeThermal()
    yield tree
    tree.close()


async def test_reads_every_zone(driver_harness: Any, sysfs: FakeThermal) -> None:
    sysfs.add("cpu-thermal", 48.312)
    sysfs.add("PMIC Die", 39.0)
    async with driver_harness(MANIFEST, base_path=sysfs.path, **FAST) as h:
        await wait_reading(h.sink, "cpu_thermal", 48.312, "Cel", node="gw-test", quality=Quality.GOOD)
        await wait_reading(h.sink, "pmic_die", 39.0, "Cel")


async def test_selected_zone_only_and_hot_is_uncertain(driver_harness: Any, sysfs: FakeThermal) -> None:
    sysfs.add("cpu-thermal", 50.0)
    sysfs.add("gpu-thermal", 45.0)
    async with driver_harness(MANIFEST, base_path=sysfs.path, zones=["cpu-thermal"], critical=80, **FAST) as h:
        await wait_reading(h.sink, "cpu_thermal", 50.0)
        sysfs.set("cpu-thermal", 81.5)
        await wait_reading(h.sink, "cpu_thermal", 81.5, "Cel", quality=Quality.UNCERTAIN)
        assert h.sink.points("gpu_thermal") == []


async def test_unknown_zone_is_a_config_error(driver_harness: Any, sysfs: FakeThermal) -> None:
    sysfs.add("cpu-thermal", 50.0)
    async with driver_harness(MANIFEST, base_path=sysfs.path, zones=["nvme"], **FAST) as h:
        await wait_until(lambda: h.runner.stats.state == "failed")
        assert "no thermal zone of type nvme (this machine has: cpu-thermal)" in h.runner.stats.last_error


async def test_garbage_zone_skipped_then_all_gone_is_unavailable(driver_harness: Any, sysfs: FakeThermal) -> None:
    sysfs.add("cpu-thermal", 50.0)
    sysfs.add("gpu-thermal", 45.0)
    async with driver_harness(MANIFEST, base_path=sysfs.path, **FAST) as h:
        await wait_reading(h.sink, "gpu_thermal", 45.0)
        sysfs.corrupt("cpu-thermal")
        sysfs.set("gpu-thermal", 46.0)
        await wait_reading(h.sink, "gpu_thermal", 46.0)
        assert h.runner.stats.state == "running", "one bad zone does not fail the poll"
        sysfs.remove("gpu-thermal")
        await wait_until(lambda: h.runner.stats.state == "unavailable")
        assert "no thermal zone could be read" in h.runner.stats.last_error
        sysfs.set("cpu-thermal", 47.0)
        await wait_reading(h.sink, "cpu_thermal", 47.0)
        await wait_until(lambda: h.runner.stats.state == "running")


async def test_no_thermal_class_is_not_ready(driver_harness: Any, tmp_path: Any) -> None:
    async with driver_harness(MANIFEST, base_path=str(tmp_path / "missing"), **FAST) as h:
        await wait_until(lambda: h.runner.stats.restarts >= 1)
        assert "no thermal zones at" in h.runner.stats.last_error


async def test_one_reading_per_interval_on_fake_time(
    driver_harness: Any, fake_clock: FakeClock, sysfs: FakeThermal
) -> None:
    sysfs.add("cpu-thermal", 40.0)
    async with driver_harness(MANIFEST, base_path=sysfs.path, interval="60s", jitter=0, clock=fake_clock) as h:
        await fake_clock.until_sleeping()
        sysfs.set("cpu-thermal", 41.0)
        await fake_clock.advance(60)
        await fake_clock.until_sleeping()
        assert [r.value for r in h.sink.points("cpu_thermal")] == [40.0, 41.0]
        assert_reading(h.sink, "cpu_thermal", 41.0, "Cel")


@pytest.mark.parametrize(("raw", "value"), [(b"48312\n", 48.312), (b"-5000", -5.0), (b"0\n", 0.0)])
def test_parse_good(raw: bytes, value: float) -> None:
    assert parse_millidegrees(raw) == value


@pytest.mark.parametrize("raw", [b"", b"\n", b"48.3", b"abc", b"999999999", b"1" * 40, b"-300000"])
def test_parse_bad(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_millidegrees(raw)


@given(st.binary(max_size=64))
def test_parser_only_raises_protocol_error(raw: bytes) -> None:
    try:
        value = parse_millidegrees(raw)
    except ProtocolError:
        return
    assert -273.15 <= value <= 400


@pytest.mark.parametrize(("zone", "point"), [("cpu-thermal", "cpu_thermal"), ("PMIC Die", "pmic_die"), ("--", "zone")])
def test_point_names(zone: str, point: str) -> None:
    assert point_name(zone) == point
