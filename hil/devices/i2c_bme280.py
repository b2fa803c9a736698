"""Simulated BME280 for drivers/i2c: a register model behind a fake SMBus.

``SimBme280`` holds the chip's 256 registers with real calibration values (a published set,
see CALIBRATION) and reacts to register writes as the chip does: a write of forced mode to
ctrl_meas (0xF4) raises the status "measuring" bit, then latches the raw ADC values you set into
the data registers (0xF7..0xFE) and returns to sleep; 0xB6 to 0xE0 resets it.

``FakeSMBus`` stands in for ``smbus2.SMBus``: the same ``read_byte_data``,
``write_byte_data``, ``read_i2c_block_data`` and ``close`` methods, routing by I2C address to the
simulated chips on it, and raising ``OSError(ENXIO)`` like the kernel for an address nobody
answers. How it reaches the real driver code without patching: ``SIM_MANIFEST`` is the i2c
driver's manifest with ``SimulatedBusDriver`` as factory, a subclass whose only change is
``open_bus()`` returning the fake bus passed as ``simulated_bus=`` (an option of this test-only
schema; the production schema has no such option, so no YAML can select it)::

    bus = FakeSMBus({0x76: SimBme280()})
    async with run_driver(SIM_MANIFEST, simulated_bus=bus, address=0x76) as h: ...
"""

from __future__ import annotations

import dataclasses
import errno
import struct
from typing import Any

from drivers.i2c import MANIFEST
from drivers.i2c.config import I2cConfig
from drivers.i2c.driver import I2cDriver
from gateway.schema import Field

# The calibration set of pimoroni/bme280-python's test suite (a widely used driver), whose
# published results for adc_T=529191, adc_P=326816, adc_H=30281 the tests check against.
CALIBRATION = {
    "T1": 28009, "T2": 25654, "T3": 50,
    "P1": 39145, "P2": -10750, "P3": 3024, "P4": 5667, "P5": -120, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
    "H1": 75, "H2": 376, "H3": 0, "H4": 286, "H5": 50, "H6": 30,
}  # fmt: skip
RAW = {"adc_t": 529191, "adc_p": 326816, "adc_h": 30281}


class SimBme280:
    """The register model of one BME280."""

    def __init__(self, chip_id: int = 0x60, calibration: dict[str, int] | None = None, busy_reads: int = 1) -> None:
        self.regs = bytearray(256)
        self.chip_id = chip_id
        self.busy_reads = busy_reads  # status reads that still say "measuring" after a trigger
        self.adc_t, self.adc_p, self.adc_h = RAW["adc_t"], RAW["adc_p"], RAW["adc_h"]
        self.measurements = 0
        self.fail_next = 0  # the next N transfers fail with EIO (a glitch on the wires)
        self._busy = 0
        self._pending: tuple[int, int, int] | None = None  # (osrs_h, osrs_t, osrs_p) of a started measurement
        self._load_calibration(calibration or CALIBRATION)
        self._reset()

    def _load_calibration(self, c: dict[str, int]) -> None:
        self.regs[0x88:0xA0] = struct.pack(
            "<HhhHhhhhhhhh", c["T1"], c["T2"], c["T3"], *(c[f"P{i}"] for i in range(1, 10))
        )
        self.regs[0xA1] = c["H1"]
        h4, h5 = c["H4"] & 0xFFF, c["H5"] & 0xFFF
        self.regs[0xE1:0xE8] = struct.pack("<hB", c["H2"], c["H3"]) + bytes(
            [h4 >> 4, (h4 & 0x0F) | (h5 & 0x0F) << 4, h5 >> 4, c["H6"] & 0xFF]
        )

    def _reset(self) -> None:
        self.regs[0xD0] = self.chip_id
        self.regs[0xF2:0xF6] = bytes(4)
        self.regs[0xF7:0xFF] = bytes([0x80, 0, 0, 0x80, 0, 0, 0x80, 0])  # "skipped" values until a measurement

    def _glitch(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError(errno.EIO, "Input/output error")

    def read(self, register: int, length: int = 1) -> bytes:
        self._glitch()
        if register == 0xF3:
            busy = self._busy > 0
            self._busy = max(0, self._busy - 1)
            if busy:
                return bytes([0x08])
            self._latch()
        return bytes(self.regs[(register + i) & 0xFF] for i in range(length))

    def write(self, register: int, value: int) -> None:
        self._glitch()
        if register == 0xE0:
            if value == 0xB6:
                self._reset()
            return
        if register in (0xF2, 0xF4, 0xF5):
            self.regs[register] = value & 0xFF
        if register == 0xF4 and value & 0b11 == 0b01:  # forced mode: one measurement, then sleep
            self._busy = self.busy_reads
            self._pending = (self.regs[0xF2] & 0x07, (value >> 5) & 0x07, (value >> 2) & 0x07)
            if not self._busy:
                self._latch()

    def _latch(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        osrs_h, osrs_t, osrs_p = pending
        t = self.adc_t if osrs_t else 0x80000
        p = self.adc_p if osrs_p else 0x80000
        h = self.adc_h if osrs_h else 0x8000
        self.regs[0xF7:0xFF] = bytes(
            [p >> 12, (p >> 4) & 0xFF, (p & 0x0F) << 4, t >> 12, (t >> 4) & 0xFF, (t & 0x0F) << 4, h >> 8, h & 0xFF]
        )
        self.regs[0xF4] &= 0xFC  # back to sleep
        self.measurements += 1


class FakeSMBus:
    """smbus2.SMBus's interface over simulated chips, keyed by 7-bit address."""

    def __init__(self, devices: dict[int, SimBme280] | None = None) -> None:
        self.devices = devices if devices is not None else {0x76: SimBme280()}
        self.closed = 0

    def _dev(self, addr: int) -> SimBme280:
        try:
            return self.devices[addr]
        except KeyError:
            raise OSError(errno.ENXIO, "No such device or address") from None

    def read_byte_data(self, i2c_addr: int, register: int) -> int:
        return self._dev(i2c_addr).read(register)[0]

    def write_byte_data(self, i2c_addr: int, register: int, value: int) -> None:
        self._dev(i2c_addr).write(register, value)

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]:
        if not 0 < length <= 32:
            raise ValueError("smbus2 reads 1..32 bytes per block")
        return list(self._dev(i2c_addr).read(register, length))

    def close(self) -> None:
        self.closed += 1


class SimulatedBusConfig(I2cConfig):
    """The i2c schema plus the fake bus to use; exists only in tests and demos."""

    simulated_bus: Any = Field(exclude=True, description="The FakeSMBus that open_bus() returns.")


class SimulatedBusDriver(I2cDriver):
    """The real i2c driver, with open_bus() handing out the simulated bus."""

    config: SimulatedBusConfig

    def open_bus(self) -> FakeSMBus:
        bus = self.config.simulated_bus
        if bus is None:  # like a Pi with I2C not enabled
            raise FileNotFoundError(errno.ENOENT, f"No such file or directory: '/dev/i2c-{self.config.bus}'")
        assert isinstance(bus, FakeSMBus)
        return bus


SIM_MANIFEST = dataclasses.replace(
    MANIFEST, config=SimulatedBusConfig, factory="hil.devices.i2c_bme280:SimulatedBusDriver", requires=()
)
