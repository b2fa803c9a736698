"""Simulated 1-Wire bus for drivers/onewire: a fake /sys/bus/w1/devices tree of real files.

The files look like the kernel's ``w1_therm`` output, with a real scratchpad and Dallas CRC-8,
so the driver's parser sees what hardware produces. Use from tests (``FakeW1Bus(tmp_path)``)
or a demo (``python -m hil.devices.onewire_sysfs DIR``). File writes are atomic (rename), so a
driver reading concurrently never sees a half-written file.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

POWER_ON_RESET = 85000


def crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def scratchpad(millic: int) -> bytes:
    """The 9 scratchpad bytes a DS18B20 in 12-bit mode holds for a temperature."""
    raw = round(millic / 62.5) & 0xFFFF  # 1/16 degree steps, two's complement
    body = bytes([raw & 0xFF, raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
    return body + bytes([crc8(body)])


def w1_slave_text(millic: int, crc_ok: bool = True) -> str:
    """The two lines of a ``w1_slave`` file."""
    pad = bytearray(scratchpad(millic))
    if not crc_ok:
        pad[8] ^= 0x5A  # what line noise does: the CRC no longer matches
    hexes = " ".join(f"{b:02x}" for b in pad)
    verdict = "YES" if crc8(bytes(pad[:8])) == pad[8] else "NO"
    return f"{hexes} : crc={pad[8]:02x} {verdict}\n{hexes} t={millic}\n"


class FakeW1Bus:
    """A sysfs devices folder with DS18B20 sensors that tests can change while a driver reads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "w1_bus_master1").mkdir(exist_ok=True)  # present on real systems; not a sensor
        self._temps: dict[str, int] = {}

    @property
    def path(self) -> str:
        return str(self.root)

    def _write(self, sensor_id: str, name: str, text: str) -> None:
        tmp = self.root / sensor_id / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(self.root / sensor_id / name)

    def add(self, sensor_id: str, millic: int, *, temperature_file: bool = False, w1_slave: bool = True) -> None:
        """Plug a sensor in reading ``millic`` milli-degrees Celsius."""
        (self.root / sensor_id).mkdir(exist_ok=True)
        self._temps[sensor_id] = millic
        if w1_slave:
            self._write(sensor_id, "w1_slave", w1_slave_text(millic))
        if temperature_file:
            self._write(sensor_id, "temperature", f"{millic}\n")

    def set(self, sensor_id: str, millic: int) -> None:
        """Change a sensor's temperature (in every file it has)."""
        self._temps[sensor_id] = millic
        d = self.root / sensor_id
        if (d / "w1_slave").exists():
            self._write(sensor_id, "w1_slave", w1_slave_text(millic))
        if (d / "temperature").exists():
            self._write(sensor_id, "temperature", f"{millic}\n")

    def crc_error(self, sensor_id: str, on: bool = True) -> None:
        """Make the kernel report a CRC mismatch ("NO") for this sensor, or stop doing so."""
        self._write(sensor_id, "w1_slave", w1_slave_text(self._temps[sensor_id], crc_ok=not on))

    def power_on_reset(self, sensor_id: str) -> None:
        """The sensor answers its power-on value, 85 C."""
        self.set(sensor_id, POWER_ON_RESET)

    def write_raw(self, sensor_id: str, name: str, text: str) -> None:
        """Put arbitrary content in one of a sensor's files (garbage tests)."""
        self._write(sensor_id, name, text)

    def remove(self, sensor_id: str) -> None:
        """Unplug a sensor: the kernel drops its folder."""
        shutil.rmtree(self.root / sensor_id, ignore_errors=True)


if __name__ == "__main__":  # demo: a tree with two sensors, e.g. for `sensegate run`
    bus = FakeW1Bus(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sensegate-w1")
    bus.add("28-0316a2791aff", 21125)
    bus.add("28-0416b0c3e2ff", -4500)
    print(bus.path)
