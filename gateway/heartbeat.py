"""The gateway's heartbeat: its retained status, signed, saying how far it has numbered.

Readings lost after the last batch that arrived cannot be told from readings not sent yet, by
sequence numbers alone. So at every connect and every ``metrics.status_interval`` the gateway
publishes its status (``<prefix>/<gw>/status``, retained, docs/topics.md) with the health summary,
whose ``issued`` member says what it has issued, signed with its device key (gateway/signedjson.py,
kind ``heartbeat``); gateway/remote/health.py's HealthPublisher makes and publishes it::

    {"state": "online", "gateway": "gw-0042", "boot": 7, "ts": 1795000000.123,
     "health": {..., "issued": {"stream": 4411..., "boot": 7, "last_seq": 91234, "last_bseq": 812,
                                "held_from": 91200}},
     "cose": "0oRYR6MBJwN..."}

``last_seq`` and ``last_bseq`` are the highest reading and batch numbers of the stream so far;
``held_from`` the lowest reading number the gateway still holds unacknowledged (``last_seq + 1``
when it holds none): every number below it has been handed to the broker, in a batch or declared
in one. A receiver that has not received (or seen declared) a number below ``held_from`` some
time after the heartbeat arrived knows it was lost on the way (the fleet ingest's ledger:
docs/ingest.md, "Tail loss"); numbers from ``held_from`` to ``last_seq`` are still on the
gateway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.wire import MAX_UINT

KIND = "heartbeat"  # the signed JSON's "sgk"


@dataclass(frozen=True)
class Issued:
    """How far a gateway's stream has got, and what it still holds."""

    stream: int
    boot: int
    last_seq: int  # highest reading number issued (0: none yet)
    last_bseq: int  # highest batch number issued
    held_from: int  # lowest reading number not yet acknowledged by the broker (last_seq + 1: none)

    @property
    def handed_off(self) -> int:
        """Every reading number up to here has left the gateway (acknowledged, or declared)."""
        return min(self.last_seq, self.held_from - 1)

    def to_json(self) -> dict[str, int]:
        return {"stream": self.stream, "boot": self.boot, "last_seq": self.last_seq, "last_bseq": self.last_bseq,
                "held_from": self.held_from}

    @classmethod
    def from_json(cls, obj: Any) -> Issued:
        """Check the ``issued`` member of a heartbeat; ValueError says what is wrong."""
        if not isinstance(obj, dict):
            raise ValueError("no 'issued' object")
        vals = []
        for name in ("stream", "boot", "last_seq", "last_bseq", "held_from"):
            v = obj.get(name)
            if type(v) is not int or not 0 <= v <= MAX_UINT:
                raise ValueError(f"issued.{name} is not an integer 0..2^63-1")
            vals.append(v)
        issued = cls(*vals)
        if issued.held_from < 1 or issued.held_from > issued.last_seq + 1:
            raise ValueError("issued.held_from is not within 1..last_seq + 1")
        return issued


def status(state: str, gateway: str, boot: int, health: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status object (docs/topics.md); with ``health`` it is the heartbeat."""
    body: dict[str, Any] = {"state": state, "gateway": gateway, "boot": boot, "ts": round(time.time(), 3)}
    if health is not None:
        body["health"] = health
    return body
