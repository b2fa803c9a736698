"""Which advertisers are nodes, what they are called, and when they were last heard.

Pure bookkeeping (no bleak, no gateway), so the allow-list, naming, de-duplication and
offline rules are tested on their own. Memory is bounded: at most ``max_nodes`` entries, the
longest-silent one is forgotten first.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def node_id_for(address: str, prefix: str) -> str:
    """Default node id: ``ble-c47c8d6a0001`` for ``C4:7C:8D:6A:00:01`` (prefix ``ble-``)."""
    return prefix + address.replace(":", "").replace("-", "").lower()


@dataclass(slots=True)
class Entry:
    node: str
    last_seen: float
    online: bool = False
    last_payload: object = None
    last_emit: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Heard:
    """What one received advertisement means for its node."""

    node: str
    came_online: bool  # first time heard, or heard again after going offline
    duplicate: bool  # same payload as the last one emitted, within the de-duplication window
    forgotten: str | None = None  # a node dropped to make room (report it offline)


class NodeBook:
    """Allow-list, node names, de-duplication and last-seen times of BLE advertisers."""

    def __init__(
        self,
        *,
        addresses: Iterable[str] = (),
        names: Iterable[str] = (),
        node_names: Mapping[str, str] | None = None,
        prefix: str = "ble-",
        dedup_window: float = 10.0,
        offline_after: float = 300.0,
        max_nodes: int = 256,
    ) -> None:
        self._addresses = [a.upper() for a in addresses]
        self._names = [n.lower() for n in names]
        self._node_names = {k.upper(): v for k, v in (node_names or {}).items()}
        self._prefix = prefix
        self.dedup_window = dedup_window
        self.offline_after = offline_after
        self.max_nodes = max_nodes
        self.entries: dict[str, Entry] = {}

    @property
    def open(self) -> bool:
        """No allow-list: any device advertising a known format is a node."""
        return not self._addresses and not self._names

    def listed(self, address: str, name: str | None) -> bool:
        """The device matches the allow-list (an address pattern or a name pattern)."""
        address = address.upper()
        if address in self._node_names:
            return True
        if any(fnmatch.fnmatchcase(address, p) for p in self._addresses):
            return True
        return bool(name) and any(fnmatch.fnmatchcase(name.lower(), p) for p in self._names)  # type: ignore[union-attr]

    def node(self, address: str) -> str:
        """Node id of an address: its configured name, else derived from the address."""
        address = address.upper()
        return self._node_names.get(address) or node_id_for(address, self._prefix)

    def heard(self, address: str, payload: object, now: float) -> Heard:
        """Record an advertisement from ``address`` at ``now`` (monotonic seconds)."""
        address = address.upper()
        entry = self.entries.get(address)
        forgotten = None
        if entry is None:
            if len(self.entries) >= self.max_nodes:
                oldest = min(self.entries, key=lambda a: self.entries[a].last_seen)
                gone = self.entries.pop(oldest)
                forgotten = gone.node if gone.online else None
            entry = self.entries[address] = Entry(self.node(address), now)
        came_online = not entry.online
        entry.online = True
        entry.last_seen = now
        duplicate = payload == entry.last_payload and now - entry.last_emit < self.dedup_window
        if not duplicate:
            entry.last_payload = payload
            entry.last_emit = now
        return Heard(entry.node, came_online, duplicate, forgotten)

    def sweep(self, now: float) -> list[tuple[str, float]]:
        """Nodes silent for ``offline_after`` that were online: (node, seconds silent); marks them offline."""
        out = []
        for entry in self.entries.values():
            silent = now - entry.last_seen
            if entry.online and silent >= self.offline_after:
                entry.online = False
                out.append((entry.node, silent))
        return out

    def online_nodes(self) -> list[str]:
        """Nodes currently online."""
        return [e.node for e in self.entries.values() if e.online]

    def next_deadline(self, now: float) -> float:
        """Seconds until the next online node would go offline (``offline_after`` if none)."""
        pending = [e.last_seen + self.offline_after - now for e in self.entries.values() if e.online]
        return max(0.0, min(pending)) if pending else self.offline_after
