"""Uplink frame counters per device: what a new FCnt says about the frames in between; no gateway.

LoRaWAN numbers a device's uplinks (FCntUp, 32 bits, counted modulo 2^32). ChirpStack drops
replays and retransmissions, so each ``up`` event should carry the last counter plus one;
anything else means uplinks never reached the network (a gap: how many), or the device restarted
its counter (a rejoin, a reboot of an ABP device: a reset), or the same frame again (a repeat,
e.g. an MQTT re-delivery). ``MAX_FCNT_GAP`` is the LoRaWAN 1.0 bound past which a network server
no longer accepts a frame as the next one, so a larger jump is taken as a reset, not a gap.
Memory is bounded: at most ``max_devices`` counters, the least recently heard forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

MAX_FCNT_GAP = 16384
_MOD = 2**32

Step = Literal["first", "next", "gap", "reset", "repeat"]


@dataclass(frozen=True, slots=True)
class Seen:
    """What one frame counter means: the step, the uplinks lost before it, the counter before."""

    step: Step
    lost: int = 0
    previous: int | None = None


class FrameCounters:
    """The last uplink frame counter of each device."""

    def __init__(self, max_gap: int = MAX_FCNT_GAP, max_devices: int = 10_000) -> None:
        self.max_gap = max_gap
        self.max_devices = max_devices
        self._last: OrderedDict[str, int] = OrderedDict()

    def seen(self, device: str, f_cnt: int) -> Seen:
        """Record ``f_cnt`` as the device's latest uplink and say what it means."""
        previous = self._last.get(device)
        self._last[device] = f_cnt
        self._last.move_to_end(device)
        if len(self._last) > self.max_devices:
            self._last.popitem(last=False)
        if previous is None:
            return Seen("first")
        delta = (f_cnt - previous) % _MOD
        if delta == 0:
            return Seen("repeat", 0, previous)
        if delta == 1:
            return Seen("next", 0, previous)
        if delta <= self.max_gap:
            return Seen("gap", delta - 1, previous)
        return Seen("reset", 0, previous)

    def forget(self, device: str) -> None:
        """After a join the device counts from 0 again: the next frame is a first."""
        self._last.pop(device, None)
