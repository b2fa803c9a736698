"""Signals for the bench's simulated devices that move the way field signals do.

A counter that changes every second makes every deadband useless and a constant makes it
perfect; neither says what edge processing saves on a real site. These are seeded models of
what the bench's devices measure (a plant's registers, a neighbourhood's thermometers), so a
run with report rules and one without see the same values and the saving is the rules' alone.

Each register of a ``Plant`` meter is one of:

* 60 % slow process values (voltages, levels, pressures, temperatures): a base between 1,000
  and 30,000 counts, a slow swing of 2 % over 10 to 60 minutes, and noise of 0.1 % (one sigma);
* 20 % fast values (currents, power under a fluctuating load): the same with 3 % noise;
* 10 % counters (energy, volume): rising by 0.1 to 1 count a second;
* 10 % states (status words, modes): changing once in about ten minutes.

A ``Climate`` sensor reports a temperature (a base of 15 to 30 Cel, a swing of 0.5 to 3 Cel over
30 to 120 minutes, 0.02 Cel noise, 0.01 Cel resolution), a humidity (40 to 70 %RH, a swing of
5 %RH, 0.1 %RH noise) and a received signal strength that wanders by a few dB.
"""

from __future__ import annotations

import math
import random


class Plant:
    """The holding registers of one simulated meter or controller, as functions of time."""

    def __init__(self, seed: int, registers: int) -> None:
        rng = random.Random(seed)
        self._rng = random.Random(seed + 1)
        self._regs: list[tuple[str, float, float, float, float, float]] = []
        for i in range(registers):
            kind = ("slow",) * 6 + ("fast",) * 2 + ("counter", "state")
            k = kind[i % 10]
            base = rng.uniform(1000, 30000)
            period = rng.uniform(600, 3600)
            phase = rng.uniform(0, 2 * math.pi)
            rate = rng.uniform(0.1, 1.0)
            noise = {"slow": 0.001, "fast": 0.03}.get(k, 0.0)
            self._regs.append((k, base, period, phase, rate, noise))

    def values(self, t: float) -> list[int]:
        """Every register's value at time ``t`` (seconds), as 16-bit words."""
        out = []
        gauss = self._rng.gauss
        for k, base, period, phase, rate, noise in self._regs:
            if k == "counter":
                v = base + rate * t
            elif k == "state":
                v = float(int(t / period * 6 + phase) % 4)
            else:
                v = base * (1 + 0.02 * math.sin(2 * math.pi * t / period + phase) + noise * gauss(0, 1))
            out.append(int(v) & 0xFFFF)
        return out


class Climate:
    """One BLE thermometer/hygrometer's readings, as functions of time."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._rng = random.Random(seed + 1)
        self.temp = (rng.uniform(15, 30), rng.uniform(0.5, 3), rng.uniform(1800, 7200), rng.uniform(0, 6.3))
        self.hum = (rng.uniform(40, 70), 5.0, rng.uniform(1800, 7200), rng.uniform(0, 6.3))
        self.rssi = rng.randint(-90, -50)

    def reading(self, t: float) -> tuple[int, int, int]:
        """(temperature in 0.01 Cel, humidity in 0.01 %RH, RSSI in dBm) at time ``t``."""
        g = self._rng.gauss
        base, amp, period, phase = self.temp
        temp = base + amp * math.sin(2 * math.pi * t / period + phase) + g(0, 0.02)
        base, amp, period, phase = self.hum
        hum = base + amp * math.sin(2 * math.pi * t / period + phase) + g(0, 0.1)
        return round(temp * 100), round(hum * 100), self.rssi + self._rng.randint(-3, 3)
