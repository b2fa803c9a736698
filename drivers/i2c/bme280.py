"""Bosch BME280 over I2C: register map, calibration and compensation; never imports `gateway`.

The maths follows the datasheet (BST-BME280-DS002, section 4.2.3 integer formulas and
section 8.1 floating-point formulas) and is pure: tests check it against published values.
``Bme280`` does the register I/O on any object with smbus2's ``read_byte_data``,
``write_byte_data`` and ``read_i2c_block_data`` methods; its calls block (run them off the loop).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

CHIP_ID = 0x60
BMP280_IDS = (0x56, 0x57, 0x58)  # BMP280 samples and mass production: no humidity sensor
REG_CALIB_A = 0x88  # 26 bytes: dig_T1..dig_P9, (0xA0 unused), dig_H1 at 0xA1
REG_ID = 0xD0
REG_RESET = 0xE0
REG_CALIB_B = 0xE1  # 7 bytes: dig_H2..dig_H6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # 8 bytes: press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb
RESET_WORD = 0xB6
MODE_SLEEP, MODE_FORCED = 0b00, 0b01
STATUS_MEASURING = 0x08
SKIPPED_20BIT = 0x80000  # what a disabled (oversampling 0) temperature/pressure channel reads
SKIPPED_16BIT = 0x8000
OVERSAMPLING = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # factor -> osrs register code


class SMBusLike(Protocol):
    """The part of smbus2.SMBus this module uses (a fake SMBus in tests implements the same)."""

    def read_byte_data(self, i2c_addr: int, register: int) -> int: ...
    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None: ...
    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...


class Bme280Error(ValueError):
    """The chip answered something unusable (wrong id, impossible calibration)."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """The factory trimming parameters stored in the chip's NVM."""

    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int
    H2: int
    H3: int
    H4: int
    H5: int
    H6: int


def parse_calibration(block_a: bytes, block_b: bytes) -> Calibration:
    """Calibration from the 26 bytes at 0x88 and the 7 bytes at 0xE1 (datasheet table 16)."""
    if len(block_a) != 26 or len(block_b) != 7:
        raise Bme280Error(f"calibration blocks must be 26 and 7 bytes, got {len(block_a)} and {len(block_b)}")
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack("<HhhHhhhhhhhh", block_a[:24])
    h1 = block_a[25]
    h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", block_b)
    h4 = (e4 << 4) | (e5 & 0x0F)  # 12-bit signed, MSB byte signed
    h5 = (e6 << 4) | (e5 >> 4)
    if t1 == 0 or p1 == 0:
        raise Bme280Error("calibration data is blank (dig_T1 or dig_P1 is 0): not a working BME280")
    return Calibration(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6)


@dataclass(frozen=True, slots=True)
class Raw:
    """Uncompensated ADC values of one measurement; None for a skipped channel."""

    temperature: int
    pressure: int | None
    humidity: int | None


def parse_data(block: bytes) -> Raw:
    """The 8 data registers from 0xF7 as ADC values."""
    if len(block) != 8:
        raise Bme280Error(f"data block must be 8 bytes, got {len(block)}")
    adc_p = (block[0] << 12) | (block[1] << 4) | (block[2] >> 4)
    adc_t = (block[3] << 12) | (block[4] << 4) | (block[5] >> 4)
    adc_h = (block[6] << 8) | block[7]
    if adc_t == SKIPPED_20BIT:
        raise Bme280Error("no temperature measurement (skipped or not yet taken)")
    return Raw(adc_t, None if adc_p == SKIPPED_20BIT else adc_p, None if adc_h == SKIPPED_16BIT else adc_h)


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as the datasheet's code does."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


# -- integer formulas (datasheet 4.2.3): exact, what the chip vendor's own API returns ---------


def t_fine_int(c: Calibration, adc_t: int) -> int:
    """The shared fine temperature of the integer formulas."""
    var1 = (((adc_t >> 3) - (c.T1 << 1)) * c.T2) >> 11
    var2 = (((((adc_t >> 4) - c.T1) * ((adc_t >> 4) - c.T1)) >> 12) * c.T3) >> 14
    return var1 + var2


def temperature_int(t_fine: int) -> int:
    """Temperature in 0.01 degC (5123 = 51.23 degC)."""
    return (t_fine * 5 + 128) >> 8


def pressure_int64(c: Calibration, t_fine: int, adc_p: int) -> int:
    """Pressure in Pa as unsigned Q24.8 (24674867 = 96386.2 Pa); 0 if the calibration divides by 0."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * c.P6
    var2 = var2 + ((var1 * c.P5) << 17)
    var2 = var2 + (c.P4 << 35)
    var1 = ((var1 * var1 * c.P3) >> 8) + ((var1 * c.P2) << 12)
    var1 = (((1 << 47) + var1) * c.P1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (c.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (c.P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (c.P7 << 4)


def humidity_int(c: Calibration, t_fine: int, adc_h: int) -> int:
    """Relative humidity in %RH as unsigned Q22.10 (47445 = 46.333 %RH)."""
    v = t_fine - 76800
    v = (((adc_h << 14) - (c.H4 << 20) - (c.H5 * v)) + 16384) >> 15
    v = (
        v
        * (
            ((((((t_fine - 76800) * c.H6) >> 10) * ((((t_fine - 76800) * c.H3) >> 11) + 32768)) >> 10) + 2097152) * c.H2
            + 8192
        )
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * c.H1) >> 4)
    v = min(max(v, 0), 419430400)
    return v >> 12


# -- floating-point formulas (datasheet 8.1) -----------------------------------------------------


def temperature_float(c: Calibration, adc_t: int) -> tuple[float, int]:
    """(temperature in degC, t_fine) by the double-precision formula.

    The datasheet truncates t_fine to an integer before pressure and humidity use it; some
    libraries keep the fraction, which moves pressure by ~0.01 Pa and humidity by ~1e-5 %RH.
    """
    var1 = (adc_t / 16384.0 - c.T1 / 1024.0) * c.T2
    var2 = (adc_t / 131072.0 - c.T1 / 8192.0) * (adc_t / 131072.0 - c.T1 / 8192.0) * c.T3
    return (var1 + var2) / 5120.0, int(var1 + var2)


def pressure_float(c: Calibration, t_fine: float, adc_p: int) -> float:
    """Pressure in Pa by the double-precision formula; 0.0 if the calibration divides by 0."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.P6 / 32768.0
    var2 = var2 + var1 * c.P5 * 2.0
    var2 = var2 / 4.0 + c.P4 * 65536.0
    var1 = (c.P3 * var1 * var1 / 524288.0 + c.P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.P1
    if var1 == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.P9 * p * p / 2147483648.0
    var2 = p * c.P8 / 32768.0
    return p + (var1 + var2 + c.P7) / 16.0


def humidity_float(c: Calibration, t_fine: float, adc_h: int) -> float:
    """Relative humidity in %RH by the double-precision formula, clamped to 0..100."""
    h = t_fine - 76800.0
    h = (adc_h - (c.H4 * 64.0 + c.H5 / 16384.0 * h)) * (
        c.H2 / 65536.0 * (1.0 + c.H6 / 67108864.0 * h * (1.0 + c.H3 / 67108864.0 * h))
    )
    h = h * (1.0 - c.H1 * h / 524288.0)
    return min(max(h, 0.0), 100.0)


@dataclass(frozen=True, slots=True)
class Measurement:
    """Compensated values: degC, Pa, %RH (None for a skipped channel)."""

    temperature: float
    pressure: float | None
    humidity: float | None


def compensate(c: Calibration, raw: Raw, method: str = "float") -> Measurement:
    """Raw ADC values to physical units, with the datasheet's float or integer formulas."""
    if method == "integer":
        tf = t_fine_int(c, raw.temperature)
        return Measurement(
            temperature_int(tf) / 100,
            None if raw.pressure is None else pressure_int64(c, tf, raw.pressure) / 256,
            None if raw.humidity is None else humidity_int(c, tf, raw.humidity) / 1024,
        )
    t, tf = temperature_float(c, raw.temperature)
    return Measurement(
        t,
        None if raw.pressure is None else pressure_float(c, tf, raw.pressure),
        None if raw.humidity is None else humidity_float(c, tf, raw.humidity),
    )


def measure_time(osrs_t: int, osrs_p: int, osrs_h: int) -> float:
    """Longest a forced measurement takes, in seconds (datasheet 9.1, maximum column)."""
    ms = 1.25 + 2.3 * osrs_t
    if osrs_p:
        ms += 2.3 * osrs_p + 0.575
    if osrs_h:
        ms += 2.3 * osrs_h + 0.575
    return ms / 1000


class Bme280:
    """Register-level access to one BME280; every method blocks on the bus."""

    def __init__(self, bus: SMBusLike, address: int, osrs_t: int = 1, osrs_p: int = 1, osrs_h: int = 1) -> None:
        for name, f in (("temperature", osrs_t), ("pressure", osrs_p), ("humidity", osrs_h)):
            if f not in OVERSAMPLING:
                raise Bme280Error(f"{name} oversampling must be one of {sorted(OVERSAMPLING)}, not {f}")
        if osrs_t == 0:
            raise Bme280Error("temperature cannot be skipped: pressure and humidity need it")
        self.bus = bus
        self.address = address
        self.osrs = (osrs_t, osrs_p, osrs_h)
        self.calibration: Calibration | None = None

    def chip_id(self) -> int:
        return self.bus.read_byte_data(self.address, REG_ID)

    def init(self) -> Calibration:
        """Check the chip id, read the calibration and put the chip to sleep (forced mode per poll)."""
        cid = self.chip_id()
        if cid in BMP280_IDS:
            raise Bme280Error(f"chip id 0x{cid:02x} at 0x{self.address:02x} is a BMP280 (no humidity), not a BME280")
        if cid != CHIP_ID:
            raise Bme280Error(f"chip id 0x{cid:02x} at 0x{self.address:02x} is not a BME280 (expected 0x60)")
        a = bytes(self.bus.read_i2c_block_data(self.address, REG_CALIB_A, 26))
        b = bytes(self.bus.read_i2c_block_data(self.address, REG_CALIB_B, 7))
        self.calibration = parse_calibration(a, b)
        self.bus.write_byte_data(self.address, REG_CTRL_MEAS, MODE_SLEEP)  # config is written in sleep mode
        self.bus.write_byte_data(self.address, REG_CONFIG, 0x00)  # filter off, no SPI 3-wire
        return self.calibration

    def start_forced(self) -> float:
        """Start one measurement; return how long to wait before reading it."""
        t, p, h = self.osrs
        self.bus.write_byte_data(self.address, REG_CTRL_HUM, OVERSAMPLING[h])  # only applies after ctrl_meas
        self.bus.write_byte_data(self.address, REG_CTRL_MEAS, OVERSAMPLING[t] << 5 | OVERSAMPLING[p] << 2 | MODE_FORCED)
        return measure_time(t, p, h)

    def read_if_ready(self) -> Raw | None:
        """The measurement's ADC values, or None while the chip is still measuring."""
        if self.bus.read_byte_data(self.address, REG_STATUS) & STATUS_MEASURING:
            return None
        return parse_data(bytes(self.bus.read_i2c_block_data(self.address, REG_DATA, 8)))
