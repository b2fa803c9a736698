"""Pushed configs on disk: staged, current, last known good and a few earlier ones.

Layout under ``<state_dir>/remote/``: ``configs/r<revision>.yaml`` (the pushed YAML, as signed)
and ``state.json``, the one file whose atomic replacement (write, fsync, rename, fsync the
directory) moves the gateway from one config to the next::

    {"current": 7, "good": [7, 5, 4], "pending": {"revision": 8, "previous": 7},
     "highest": 8, "seen": "<sha256 of the last document taken>"}

``current`` null means the local bootstrap file. A ``pending`` entry is written before an apply
starts and removed when it commits or rolls back, so a power cut at any point boots either the
previous config (pending still there: the apply never finished) or the new one (commit written):
never none, since a config file is on disk before ``state.json`` names it and is deleted only
after ``state.json`` stops naming it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sensegate.remote")


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write, fsync, rename over ``path``, fsync the directory: all or nothing after a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass
class StoreState:
    """What ``state.json`` holds."""

    current: int | None = None
    good: list[int] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    highest: int = 0
    seen: str = ""


@dataclass(frozen=True)
class BootChoice:
    """Which config to boot: a pushed revision's bytes, or None for the bootstrap file."""

    revision: int | None
    data: bytes | None
    note: str = ""  # set when an interrupted apply was undone


class ConfigStore:
    """The on-disk history of pushed configs; every change is one atomic state.json replacement."""

    def __init__(self, root: Path, history: int = 3) -> None:
        self.root = root
        self.dir = root / "configs"
        self.history = history
        self.state = StoreState()

    def path(self, revision: int) -> Path:
        return self.dir / f"r{revision}.yaml"

    def open(self) -> None:
        """Create the directories and read state.json (a damaged one means: bootstrap file)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        f = self.root / "state.json"
        if not f.exists():
            return
        try:
            raw = json.loads(f.read_bytes())
            self.state = StoreState(
                current=raw.get("current"), good=[int(r) for r in raw.get("good", [])],
                pending=raw.get("pending"), highest=int(raw.get("highest", 0)), seen=str(raw.get("seen", "")),
            )
        except (ValueError, TypeError, AttributeError) as e:
            log.error("remote config state %s is unreadable (%s); booting the local config file", f, e)
            self.state = StoreState()

    def _save(self) -> None:
        s = self.state
        body = {"current": s.current, "good": s.good, "pending": s.pending, "highest": s.highest, "seen": s.seen}
        write_atomic(self.root / "state.json", json.dumps(body, indent=1).encode())

    def read(self, revision: int) -> bytes | None:
        try:
            return self.path(revision).read_bytes()
        except OSError:
            return None

    def boot(self) -> BootChoice:
        """Undo an apply a restart interrupted, tidy up, and say which config to boot."""
        note = ""
        if self.state.pending is not None:
            rev = self.state.pending.get("revision")
            self.state.pending = None
            self._save()
            note = f"the gateway restarted during the apply of revision {rev}; back on the previous config"
            log.warning("remote config: %s", note)
        self._tidy()
        cur = self.state.current
        if cur is None:
            return BootChoice(None, None, note)
        return BootChoice(cur, self.read(cur), note)

    def candidates(self) -> list[tuple[int, bytes]]:
        """Known good pushed configs, newest first (fallbacks if the current one cannot load)."""
        out = []
        for rev in self.state.good:
            data = self.read(rev)
            if data is not None:
                out.append((rev, data))
        return out

    def stage(self, revision: int, data: bytes, digest: str) -> None:
        """Put the new config on disk and mark the apply as pending (both durable on return)."""
        write_atomic(self.path(revision), data)
        self.state.pending = {"revision": revision, "previous": self.state.current}
        self.state.highest = max(self.state.highest, revision)
        self.state.seen = digest
        self._save()

    def mark_pending(self, revision: int | None) -> None:
        """A revert to ``revision`` (None: the local file) starts: a power cut boots the running one."""
        self.state.pending = {"revision": revision, "previous": self.state.current}
        self._save()

    def refuse(self, revision: int, digest: str) -> None:
        """Remember a refused document so a newer-only rule also covers it."""
        self.state.highest = max(self.state.highest, revision)
        self.state.seen = digest
        self._save()

    def commit(self, revision: int | None) -> None:
        """The apply passed its health gate: make it current and last known good (None: the local file)."""
        self.state.pending = None
        self.state.current = revision
        if revision is not None:
            good = [revision] + [r for r in self.state.good if r != revision]
            self.state.good = good[: self.history + 1]
        self._save()
        self._tidy()

    def rollback(self, revision: int | None) -> None:
        """The apply failed: stay on the previous config and forget the staged one."""
        self.state.pending = None
        self._save()
        self._tidy()

    def fall_back(self, revision: int | None) -> None:
        """Booting found the current config unusable: run ``revision`` (None: bootstrap file)."""
        self.state.current = revision
        self._save()

    def _tidy(self) -> None:
        """Remove temporary files and configs state.json no longer names."""
        keep = {self.path(r).name for r in self.state.good}
        if self.state.current is not None:
            keep.add(self.path(self.state.current).name)
        if self.state.pending is not None and self.state.pending.get("revision") is not None:
            keep.add(self.path(int(self.state.pending["revision"])).name)
        for f in self.dir.iterdir():
            if f.name not in keep:
                with contextlib.suppress(OSError):
                    f.unlink()
