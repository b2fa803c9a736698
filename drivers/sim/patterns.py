"""Value generators for simulated points; plain Python, no gateway imports."""

from __future__ import annotations

import math
import random


class Pattern:
    """Produces the next value of one simulated point at a given time (seconds)."""

    def value(self, t: float) -> float | int | bool | str:
        raise NotImplementedError


class Constant(Pattern):
    def __init__(self, value: float | int | bool | str) -> None:
        self._value = value

    def value(self, t: float) -> float | int | bool | str:
        return self._value


class Counter(Pattern):
    """Counts up by ``step`` per reading, wrapping at ``wrap`` when given."""

    def __init__(self, start: int = 0, step: int = 1, wrap: int | None = None) -> None:
        self._next = start
        self._step = step
        self._wrap = wrap

    def value(self, t: float) -> int:
        v = self._next
        self._next += self._step
        if self._wrap:
            self._next %= self._wrap
        return v


class Sine(Pattern):
    """Sine wave between ``low`` and ``high`` with the given period (seconds)."""

    def __init__(self, low: float, high: float, period: float) -> None:
        self._mid = (low + high) / 2
        self._amp = (high - low) / 2
        self._w = 2 * math.pi / period

    def value(self, t: float) -> float:
        return round(self._mid + self._amp * math.sin(self._w * t), 6)


class RandomWalk(Pattern):
    """Bounded random walk: each reading moves at most ``step`` and stays in [low, high]."""

    def __init__(
        self, low: float, high: float, step: float, start: float | None = None, seed: int | None = None
    ) -> None:
        self._low, self._high, self._step = low, high, step
        self._v = (low + high) / 2 if start is None else start
        self._rng = random.Random(seed)

    def value(self, t: float) -> float:
        self._v = min(self._high, max(self._low, self._v + self._rng.uniform(-self._step, self._step)))
        return round(self._v, 6)


class Step(Pattern):
    """Cycles through ``values``, holding each for ``hold`` seconds."""

    def __init__(self, values: list[float | int | bool | str], hold: float) -> None:
        self._values = values
        self._hold = hold

    def value(self, t: float) -> float | int | bool | str:
        return self._values[int(t // self._hold) % len(self._values)]
