"""The i2c (BME280) driver in the real scheduler against the simulated chip, and the datasheet maths."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.i2c import MANIFEST, bme280
from gateway.testing import run_driver
from hil.devices.i2c_bme280 import CALIBRATION, SIM_MANIFEST, FakeSMBus, SimBme280

FAST = {"interval": 0.05, "timeout": 1, "jitter": 0}
CAL = bme280.Calibration(**CALIBRATION)
# Published by pimoroni/bme280-python's tests for CAL (they keep t_fine's fraction, see below).
PIMORONI_T, PIMORONI_P_HPA, PIMORONI_H = 24.7894877676, 1006.61517564, 68.66996648709039
# The BMP280 datasheet's worked example (section 3.12; same T/P maths as the BME280).
BMP280_CAL = bme280.Calibration(27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000,
                                0, 0, 0, 0, 0, 0)  # fmt: skip


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition (no timed assertions): fail only after a generous overall timeout."""
    async with asyncio.timeout(within):
        while True:
            if cond():
                return
            await asyncio.sleep(0.02)


def expected(method: str, adc_t: int = 529191, adc_p: int = 326816, adc_h: int = 30281) -> bme280.Measurement:
    return bme280.compensate(CAL, bme280.Raw(adc_t, adc_p, adc_h), method)


# -- the maths against published values ----------------------------------------------------------


def test_float_formulas_match_pimoroni_published_values() -> None:
    t, _ = bme280.temperature_float(CAL, 529191)
    assert round(t, 10) == PIMORONI_T
    # pimoroni feeds pressure/humidity the unrounded fine temperature; with that, exact agreement
    var = (529191 / 16384 - CAL.T1 / 1024) * CAL.T2 + (529191 / 131072 - CAL.T1 / 8192) ** 2 * CAL.T3
    assert round(bme280.pressure_float(CAL, var, 326816) / 100, 8) == PIMORONI_P_HPA
    assert bme280.humidity_float(CAL, var, 30281) == PIMORONI_H
    # the datasheet truncates t_fine to an integer: a ~0.006 Pa / 2e-6 %RH difference, no more
    m = expected("float")
    assert m.temperature == t
    assert m.pressure is not None and abs(m.pressure - PIMORONI_P_HPA * 100) < 0.01
    assert m.humidity is not None and abs(m.humidity - PIMORONI_H) < 1e-5


def test_integer_formulas_match_the_datasheet_example() -> None:
    tf = bme280.t_fine_int(BMP280_CAL, 519888)
    assert (tf, bme280.temperature_int(tf)) == (128422, 2508)  # 25.08 C
    # the datasheet's table prints 25767236 (from a spreadsheet); its own 64-bit code gives 25767233,
    # as other independent implementations also note: 100653.25 Pa
    assert bme280.pressure_int64(BMP280_CAL, tf, 415148) == 25767233
    t, tf_float = bme280.temperature_float(BMP280_CAL, 519888)
    assert (round(t, 2), tf_float) == (25.08, 128422)
    assert round(bme280.pressure_float(BMP280_CAL, tf_float, 415148), 2) == 100653.26


def test_integer_and_float_agree_within_resolution() -> None:
    i, f = expected("integer"), expected("float")
    assert (i.temperature, i.pressure, i.humidity) == (24.79, 100661.14453125, 68.669921875)
    assert abs(i.temperature - f.temperature) <= 0.01
    assert i.pressure is not None and f.pressure is not None and abs(i.pressure - f.pressure) < 1
    assert i.humidity is not None and f.humidity is not None and abs(i.humidity - f.humidity) < 0.001


def test_calibration_registers_round_trip() -> None:
    chip = SimBme280()
    got = bme280.parse_calibration(bytes(chip.regs[0x88:0xA2]), bytes(chip.regs[0xE1:0xE8]))
    assert got == CAL
    neg = dict(CALIBRATION, H4=-300, H5=-7, H6=-5, H2=-2)
    chip = SimBme280(calibration=neg)
    got = bme280.parse_calibration(bytes(chip.regs[0x88:0xA2]), bytes(chip.regs[0xE1:0xE8]))
    assert (got.H2, got.H4, got.H5, got.H6) == (-2, -300, -7, -5)


@given(st.binary(min_size=26, max_size=26), st.binary(min_size=7, max_size=7), st.binary(min_size=8, max_size=8))
def test_any_register_content_gives_numbers_or_bme280_error(a: bytes, b: bytes, data: bytes) -> None:
    try:
        cal = bme280.parse_calibration(a, b)
        raw = bme280.parse_data(data)
    except bme280.Bme280Error:
        return
    for method in ("float", "integer"):
        m = bme280.compensate(cal, raw, method)  # the formulas guard their own divisions
        assert m.humidity is None or 0 <= m.humidity <= 100


# -- the driver through the real scheduler ---------------------------------------------------------


async def test_reads_compensated_values_in_forced_mode() -> None:
    chip = SimBme280(busy_reads=2)
    bus = FakeSMBus({0x77: chip})
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=bus, address=0x77, **FAST) as h:
        await h.sink.wait_for(2, point="humidity")
        want = expected("float")
        by_point = {r.point: (r.value, r.unit) for r in h.sink.readings[:3]}
        assert by_point == {
            "temperature": (want.temperature, "Cel"),
            "pressure": (want.pressure, "Pa"),
            "humidity": (want.humidity, "%RH"),
        }
        assert chip.measurements >= 2  # one forced measurement per poll
        assert chip.regs[0xF4] & 0b11 == 0  # and back to sleep in between

        chip.adc_t = 519888  # the room warms up: only a new forced measurement shows it
        n = len(h.sink.points("temperature"))
        await h.sink.wait_for(n + 2, point="temperature")
        await until(lambda: h.sink.points("temperature")[-1].value == expected("float", adc_t=519888).temperature)
    assert bus.closed == 1


async def test_integer_compensation_and_skipped_channels() -> None:
    chip = SimBme280()
    bus = FakeSMBus({0x76: chip})
    opts = {"compensation": "integer", "oversampling_pressure": 0, "oversampling_humidity": 16}
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=bus, **opts, **FAST) as h:
        await h.sink.wait_for(1, point="humidity")
        assert [(r.point, r.value) for r in h.sink.readings[:2]] == [("temperature", 24.79), ("humidity", 68.669921875)]
        assert h.sink.points("pressure") == []
        assert chip.regs[0xF2] == 5 and chip.regs[0xF4] >> 2 & 0x07 == 0  # osrs_h x16, pressure skipped


async def test_wrong_chip_id_is_a_config_error() -> None:
    bus = FakeSMBus({0x76: SimBme280(chip_id=0x58)})
    async with run_driver(SIM_MANIFEST, name="bmp", simulated_bus=bus, **FAST) as h:
        await until(lambda: h.runner.stats.state == "failed")
        assert "0x58" in h.runner.stats.last_error and "BMP280" in h.runner.stats.last_error
    bus = FakeSMBus({0x76: SimBme280(chip_id=0x61)})
    async with run_driver(SIM_MANIFEST, name="other", simulated_bus=bus, **FAST) as h:
        await until(lambda: h.runner.stats.state == "failed")
        assert "not a BME280" in h.runner.stats.last_error


async def test_nothing_at_the_address_is_not_ready_then_recovers() -> None:
    bus = FakeSMBus({})
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=bus, **FAST) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert h.runner.stats.state == "unavailable"
        assert "no device answers at 0x76 on I2C bus 1" in h.runner.stats.last_error
        bus.devices[0x76] = SimBme280()  # wired up
        await h.sink.wait_for(1, point="temperature")


async def test_bus_not_enabled_is_not_ready() -> None:
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=None, bus=3, **FAST) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "no /dev/i2c-3: enable I2C" in h.runner.stats.last_error


async def test_glitches_fail_one_poll_then_it_goes_on() -> None:
    chip = SimBme280()
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=FakeSMBus({0x76: chip}), **FAST) as h:
        await h.sink.wait_for(1, point="temperature")
        chip.fail_next = 1
        await until(lambda: h.runner.stats.errors >= 1)
        assert "I2C transfer failed: Input/output error" in h.runner.stats.last_error
        n = len(h.sink.points("temperature"))
        await h.sink.wait_for(n + 1, point="temperature")
        await until(lambda: h.runner.stats.state == "running")


async def test_stuck_measuring_bit_is_a_poll_error() -> None:
    chip = SimBme280(busy_reads=10_000)
    async with run_driver(SIM_MANIFEST, name="bme", simulated_bus=FakeSMBus({0x76: chip}), **FAST) as h:
        await until(lambda: h.runner.stats.errors >= 1)
        assert "did not finish its measurement" in h.runner.stats.last_error


async def test_real_driver_opens_dev_i2c_through_smbus2() -> None:
    # the production class with the real smbus2: no /dev/i2c-250 here, so NotReady naming the fix
    pytest.importorskip("smbus2", reason="the i2c extra (smbus2) is not installed")
    async with run_driver(MANIFEST, name="real", bus=250, **FAST) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "no /dev/i2c-250: enable I2C" in h.runner.stats.last_error


def test_production_schema_has_no_bus_injection() -> None:
    assert "simulated_bus" not in MANIFEST.config.model_fields
    with pytest.raises(ValueError, match="simulated_bus"):
        MANIFEST.config.model_validate({"driver": "i2c", "simulated_bus": 1})
