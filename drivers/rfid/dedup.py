"""Suppress repeated reads of a tag that stays in the field (readers repeat it many times a second)."""

from __future__ import annotations


class Deduplicator:
    """A tag is reported again only after it has been out of the field for ``window`` seconds.

    The window slides: every read of a tag, reported or not, pushes its expiry back. Memory is
    bounded by ``max_tags`` (least recently seen forgotten first, so a forgotten tag could be
    reported again early; with the default of 4096 that needs 4096 other tags in one window).
    """

    def __init__(self, window: float, max_tags: int = 4096) -> None:
        self.window = window
        self.max_tags = max_tags
        self.suppressed = 0
        self._last: dict[str, float] = {}  # tag -> last time seen, least recent first

    def accept(self, tag: str, now: float) -> bool:
        """True when this read should be reported; records the read either way."""
        if self.window <= 0:
            return True
        last = self._last.pop(tag, None)
        self._last[tag] = now
        self._prune(now)
        if last is not None and now - last < self.window:
            self.suppressed += 1
            return False
        return True

    def _prune(self, now: float) -> None:
        last = self._last
        while last:
            oldest = next(iter(last))
            if now - last[oldest] >= self.window or len(last) > self.max_tags:
                del last[oldest]
            else:
                break
