"""What every rig scenario checks at the end, and small waits shared by the scenarios."""

from __future__ import annotations

import time
from typing import Any

from hil.report import ScenarioResult
from hil.rig import RigRun

WITHIN = 60.0  # generous bound for anything to happen on a busy 2-core machine; never a timing assertion
BURST_POINT = "burst_n"
STOP_WITHIN = 30.0  # SIGTERM to exit: systemd's TimeoutStopSec (systemd/sensegate.service) would SIGKILL after that


def burst_section(rate: int, name: str = "burst") -> dict[str, Any]:
    """A sim instance emitting ``rate`` readings/s of one counter point (time compression for outages)."""
    per_poll = max(1, rate // 50)
    return {"driver": "sim", "name": name, "interval": "20ms", "jitter": 0, "node": name, "repeat": per_poll,
            "points": [{"name": BURST_POINT, "pattern": "counter"}]}


def device_counts(rig: RigRun, since: float = 0.0, after_ns: int = 0) -> dict[str, int]:
    """Readings received per rig device (by node), optionally only those that arrived after ``since``
    (monotonic) or were taken after ``after_ns`` (wall clock, the reading's own timestamp)."""
    assert rig.receiver is not None
    out = {}
    for name in rig.devices:
        nodes = set(rig.nodes_of(name))
        out[name] = sum(1 for g in rig.receiver.got
                        if g.reading.node in nodes and g.at >= since and g.reading.ts_ns >= after_ns)
    return out


async def wait_delivering(rig: RigRun, devices: list[str] | None = None, n: int = 2,
                          since: float = 0.0, within: float = WITHIN, after_ns: int = 0) -> None:
    """Until every (named) device has ``n`` readings received (after ``since``)."""
    assert rig.receiver is not None
    names = list(rig.devices) if devices is None else [d for d in devices if d in rig.devices]

    def ok() -> bool:
        counts = device_counts(rig, since, after_ns)
        return all(counts[d] >= n for d in names)

    try:
        await rig.receiver.wait(ok, within=within, what="every device delivering")
    except TimeoutError:
        raise AssertionError(f"devices not delivering: {device_counts(rig, since)}\n"
                             + (rig.daemons[-1].log_text()[-3000:] if rig.daemons else "")) from None


def produced_now(rig: RigRun) -> int:
    return rig.produced()


async def wait_drained(rig: RigRun, within: float = WITHIN) -> None:
    """Until the receiver holds every reading numbered so far (received, or declared dropped or
    skipped after an unclean stop)."""
    assert rig.receiver is not None
    target = produced_now(rig)

    def covered() -> bool:
        s = rig.receiver.rx.summary()  # type: ignore[union-attr]
        return s.readings + s.dropped + s.skipped >= target

    await rig.receiver.wait(covered, within=within, what=f"the receiver to cover {target} readings")


def counter_runs(rig: RigRun, node: str = "counter", point: str = "n") -> list[list[int]]:
    """The counter's values in reading-sequence order, split into runs where it starts again at 0.

    Not grouped by the batch header's boot counter: `bo` is the boot of the daemon that *signed* the
    batch, and readings one run committed but had not yet sent at a kill -9 are signed by the next run."""
    assert rig.receiver is not None
    by_seq: dict[int, int] = {}
    for g in rig.receiver.got:
        if g.reading.node == node and g.reading.point == point:
            by_seq[g.reading.seq] = int(g.reading.value)
    runs: list[list[int]] = []
    for _seq, v in sorted(by_seq.items()):
        if v == 0 or not runs:
            runs.append([])
        runs[-1].append(v)
    return runs


def assert_counter_contiguous(rig: RigRun, node: str = "counter", point: str = "n") -> int:
    """Each run's counter values are 0, 1, 2, ... with nothing missing (a tail lost at a kill -9 is
    the documented window: readings not yet stored, or numbered and declared skipped), and there
    are no more runs than the daemon had boots. Returns how many counter readings arrived."""
    runs = counter_runs(rig, node, point)
    assert runs, f"no {node}/{point} readings received"
    for i, values in enumerate(runs):
        assert values == list(range(len(values))), (
            f"run {i}: {node}/{point} values are not 0..{len(values) - 1} in order: "
            f"first bad at index {next(j for j, v in enumerate(values) if v != j)}: {values[:20]}")
    boots = int(rig.buffer_meta()["boot"])
    assert len(runs) <= boots, f"{len(runs)} runs of {node}/{point} but the buffer counted {boots} boots"
    return sum(len(v) for v in runs)


async def finish(rig: RigRun, result: ScenarioResult, *, stop: bool = True, drops_allowed: bool = False) -> None:
    """Stop the daemon cleanly, let the receiver take everything, and check the end-to-end counts."""
    assert rig.receiver is not None
    for d in rig.daemons:
        if d.alive and stop:
            rc = await d.stop()
            assert rc == 0, f"daemon exited with {rc}:\n{d.log_text()[-3000:]}"
    meta = rig.buffer_meta()
    produced = int(meta["next_seq"]) - 1
    result.produced = produced
    await wait_drained(rig)
    s = rig.receiver.rx.summary()
    result.take(s)
    result.per_device = device_counts(rig)
    assert meta["segments"] == 0 and meta["batches_unacked"] == 0, f"a clean stop delivers everything: {meta}"
    assert s.bad_signatures == 0 and s.malformed == 0 and s.chain_breaks == 0, s.to_json()
    assert s.gaps == 0, f"readings lost without a declared drop: {s.gap_ranges[:5]}"
    if not drops_allowed:
        assert s.dropped == 0, f"unexpected drops: {s.drop_reasons}"
    assert s.readings + s.dropped + s.skipped == produced, (
        f"received {s.readings} + dropped {s.dropped} + skipped {s.skipped} != produced {produced}")
    assert rig.receiver.seqs() | _dropped_seqs(rig) == set(range(1, produced + 1))


def _dropped_seqs(rig: RigRun) -> set[int]:
    out: set[int] = set()
    for st in rig.receiver.rx.streams.values():  # type: ignore[union-attr]
        got = st.got.r
        for a, b in st.covered.r:
            out.update(range(a, b + 1))
        for a, b in got:
            out.difference_update(range(a, b + 1))
    return out


def note_skipped(rig: RigRun, result: ScenarioResult, skipped: dict[str, str]) -> None:
    skipped.update(rig.skipped)
    for name, why in rig.skipped.items():
        result.note(f"device {name} left out: {why}")


def now() -> float:
    return time.monotonic()
