"""What a receiver remembers per stream, bounded: number ranges and a window of batch hashes.

Readings and batch numbers are kept as merged ranges, so their size grows with the number of
holes (declared drops, gaps, skipped numbers), never with the number of batches. The hash of
each batch and the predecessor hash it claims are kept for the latest ``WINDOW`` batch numbers
only, in a fixed ring (72 bytes a slot): enough to tell a duplicate from a conflict and to
check the chain for any batch that arrives within ``WINDOW`` numbers of the newest one. A batch
number seen before but older than the window is a duplicate whose content can no longer be
compared (docs/wire-format.md, "What a receiver keeps").
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.receiver.clock import StreamClock

WINDOW = 1024  # batch numbers whose hashes a stream keeps


class Ranges:
    """A set of integers kept as sorted, merged, inclusive ranges."""

    def __init__(self) -> None:
        self.r: list[list[int]] = []

    def add(self, a: int, b: int) -> int:
        """Add [a, b]; return how many of its members were already present."""
        if b < a:
            return 0
        overlap = self.overlap(a, b)
        i = bisect.bisect_left(self.r, [a])
        if i > 0 and self.r[i - 1][1] >= a - 1:
            i -= 1
        j = i
        lo, hi = a, b
        while j < len(self.r) and self.r[j][0] <= b + 1:
            lo, hi = min(lo, self.r[j][0]), max(hi, self.r[j][1])
            j += 1
        self.r[i:j] = [[lo, hi]]
        return overlap

    def overlap(self, a: int, b: int) -> int:
        """How many members of [a, b] are present."""
        return sum(max(0, min(b, y) - max(a, x) + 1) for x, y in self._near(a, b))

    def _near(self, a: int, b: int) -> list[list[int]]:
        i = max(0, bisect.bisect_left(self.r, [a]) - 1)
        out = []
        while i < len(self.r) and self.r[i][0] <= b:
            if self.r[i][1] >= a:
                out.append(self.r[i])
            i += 1
        return out

    def contains(self, x: int) -> bool:
        i = bisect.bisect_right(self.r, [x, float("inf")]) - 1
        return i >= 0 and self.r[i][0] <= x <= self.r[i][1]

    def holes(self) -> list[tuple[int, int]]:
        return [(self.r[k][1] + 1, self.r[k + 1][0] - 1) for k in range(len(self.r) - 1)]


class HashWindow:
    """Batch number -> (its SHA-256, the ``pv`` it claims) for the latest ``size`` numbers, in a ring.

    Slot ``bs % size`` holds batch ``bs`` until a newer number takes the slot; memory is fixed.
    """

    __slots__ = ("data", "nums", "size")

    def __init__(self, size: int = WINDOW) -> None:
        self.size = size
        self.nums = array("Q", bytes(8 * size))  # 0: empty (batch numbers start at 1)
        self.data = bytearray(64 * size)

    def get(self, bs: int) -> tuple[bytes, bytes] | None:
        """(digest, pv) of batch ``bs`` if the window still holds it."""
        i = bs % self.size
        if self.nums[i] != bs:
            return None
        return bytes(self.data[64 * i : 64 * i + 32]), bytes(self.data[64 * i + 32 : 64 * i + 64])

    def put(self, bs: int, digest: bytes, pv: bytes) -> None:
        """Remember batch ``bs`` unless its slot already holds a newer one (then it is out of the window)."""
        i = bs % self.size
        if self.nums[i] > bs:
            return
        self.nums[i] = bs
        self.data[64 * i : 64 * i + 64] = digest + pv


@dataclass
class Stream:
    """One (gateway, stream id): what arrived, what was declared, and the recent hash chain."""

    got: Ranges = field(default_factory=Ranges)  # reading numbers received
    covered: Ranges = field(default_factory=Ranges)  # received or declared dropped
    unclean: Ranges = field(default_factory=Ranges)  # declared skipped after an unclean stop
    batches: Ranges = field(default_factory=Ranges)  # batch numbers received
    window: HashWindow = field(default_factory=HashWindow)
    max_bseq: int = 0
    boot: int | None = None
    clock: StreamClock | None = None  # the gateway's clock epochs (gateway/receiver/clock.py), once it says
