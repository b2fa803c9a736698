"""Logging set-up: journald-friendly under systemd, timestamped on a terminal."""

from __future__ import annotations

import logging
import os
import sys

_SD_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """Prefix lines with <N> (sd-daemon(3) priority) and leave timestamps to journald."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SD_PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def setup_logging(level: str = "info", stream: object = None) -> None:
    """Configure the `sensegate` logger tree once; later calls only change the level."""
    root = logging.getLogger("sensegate")
    root.setLevel(level.upper())
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.propagate = False


def set_level(level: str) -> None:
    """Change the log level at run time (SIGHUP reload, remote command)."""
    logging.getLogger("sensegate").setLevel(level.upper())


class LogOnce:
    """Warn once per (source, kind) of problem, not once per message: for drivers whose input
    keeps coming (adverts, uplinks, pushes). Bounded: past ``limit`` remembered pairs it starts
    over, so a crowd of bad senders cannot grow memory, at worst repeating a line."""

    def __init__(self, log: logging.Logger, limit: int = 1024) -> None:
        self.log = log
        self.limit = limit
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, source: str, kind: str, message: str) -> bool:
        """Log ``message`` at warning unless this (source, kind) was logged; True when it was logged now."""
        key = (source, kind)
        if key in self._seen:
            return False
        if len(self._seen) >= self.limit:
            self._seen.clear()
        self._seen.add(key)
        self.log.warning("%s", message)
        return True

    def forget(self, source: str, kind: str) -> None:
        """Log the next problem of this (source, kind) again (it recovered in between)."""
        self._seen.discard((source, kind))
