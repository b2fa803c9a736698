"""What the operator sees while a rollout runs: one line per wave, failures as they come, pending
gateways by name. On a terminal the current wave's count updates in place."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def names(gws: list[str], most: int = 8) -> str:
    """'gw-1, gw-2, gw-3' or 'gw-1, ... (+12 more)'."""
    shown = ", ".join(gws[:most])
    return shown + (f" (+{len(gws) - most} more)" if len(gws) > most else "")


def span(gws: list[str]) -> str:
    return gws[0] if len(gws) == 1 else f"{gws[0]} .. {gws[-1]}" if gws else "-"


class Progress:
    """Prints a rollout's progress to ``out`` (stdout by default)."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._wave: list[str] = []
        self._line = False
        self._last_tick = 0.0

    def _print(self, text: str) -> None:
        if self._line:
            self.out.write("\r\033[K")
            self._line = False
        self.out.write(text + "\n")
        self.out.flush()

    def header(self, ro: Any, what: str) -> None:
        sizes = [len(w) for w in ro.waves]
        first = sizes[0] if sizes else 0
        rest = f"then {len(sizes) - 1} wave(s) of up to {max(sizes[1:])}" if len(sizes) > 1 else "no further waves"
        expiry = time.strftime("%Y-%m-%d %H:%M", time.localtime(ro.expires))
        self._print(f"rollout {ro.id}: {what} to group {ro.group}: {len(ro.gateways)} gateway(s)")
        self._print(f"  {'canary' if ro.canary else 'first wave'} {first}, {rest}; stops after "
                    f"{ro.max_failures} failure(s) (any in the canary); {ro.wave_timeout:g} s per wave; "
                    f"offline gateways take it until {expiry}")

    def wave_start(self, ro: Any, index: int, canary: bool) -> None:
        self._wave = ro.waves[index]
        plain_waves = len(ro.waves) - (1 if ro.canary else 0)
        label = "canary" if canary else f"wave {index + (0 if ro.canary else 1)}/{plain_waves}"
        self._label = label
        self._started = time.monotonic()
        if not self.live:
            self._print(f"{label:<12} {len(self._wave):>3} gateway(s) [{span(self._wave)}] sent")

    def tick(self, ro: Any) -> None:
        if not self.live or time.monotonic() - self._last_tick < 0.3 or not self._wave:
            return
        self._last_tick = time.monotonic()
        done = sum(1 for g in self._wave if ro.gateways[g].state in ("ok", "failed"))
        self.out.write(f"\r\033[K{self._label:<12} {len(self._wave):>3} gateway(s) [{span(self._wave)}] "
                       f"{done}/{len(self._wave)} answered ({time.monotonic() - self._started:.1f} s)")
        self.out.flush()
        self._line = True

    def failure(self, gw: str, reason: str) -> None:
        self._print(f"  {gw}: {reason}")

    def wave_end(self, ro: Any, index: int, seconds: float) -> None:
        states: dict[str, list[str]] = {}
        for g in self._wave:
            states.setdefault(ro.gateways[g].state, []).append(g)
        ok = len(states.get("ok", []))
        parts = [f"{ok} ok"]
        for st in ("failed", "no answer"):
            if states.get(st):
                parts.append(f"{len(states[st])} {st} ({names(states[st])})")
        if states.get("pending"):
            parts.append(f"{len(states['pending'])} pending, offline ({names(states['pending'])})")
        self._print(f"{self._label:<12} {len(self._wave):>3} gateway(s) [{span(self._wave)}] "
                    f"{', '.join(parts)}  ({seconds:.1f} s)")
        self._wave = []

    def halted(self, ro: Any) -> None:
        self._print(f"HALTED: {ro.reason}")
        left = ro.named("waiting")
        self._print(f"  {ro.count('ok')} took it, {len(left)} not sent; "
                    f"`sensegate rollout resume {ro.id}` goes on, `sensegate rollout rollback {ro.id}` puts the "
                    f"{ro.count('ok')} back, `sensegate rollout abort {ro.id}` stops here")

    def waiting(self, ro: Any, seconds: float) -> None:
        self._print(f"waiting up to {seconds:g} s for {ro.count('pending', 'sent')} pending gateway(s)")

    def finished(self, ro: Any) -> None:
        pending = ro.named("pending", "sent")
        failed = ro.named("failed", "no answer")
        text = f"{ro.state.upper()}: {ro.count('ok')} ok, {len(failed)} failed"
        if failed:
            text += f" ({names(failed)})"
        if pending:
            until = time.strftime("%Y-%m-%d %H:%M", time.localtime(ro.expires))
            text += (f", {len(pending)} pending ({names(pending, 20)}; offline, they take it when they return, "
                     f"until {until}; `sensegate rollout status {ro.id}` shows who answered since)")
        self._print(text)
