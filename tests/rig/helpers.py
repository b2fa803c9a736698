"""What every rig scenario checks at the end, and small waits shared by the scenarios."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hil.faults import BrokerOutage
from hil.report import ScenarioResult
from hil.rig import BatchLedger, RigRun

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


async def until_rate_below(rig: RigRun, per_s: float, within: float) -> None:
    """Until the daemon numbers fewer than ``per_s`` readings a second (a load a push removed has
    stopped), sampled over one-second windows."""
    async with asyncio.timeout(within):
        while True:
            n0, t0 = produced_now(rig), time.monotonic()
            await asyncio.sleep(1.0)
            if (produced_now(rig) - n0) / (time.monotonic() - t0) < per_s:
                return


async def wait_drained(rig: RigRun, within: float = WITHIN, crash: BrokerCrash | None = None) -> None:
    """Until the receiver holds every reading numbered so far (received, or declared dropped or
    skipped after an unclean stop); after a broker ``crash``, but those in batches that crash
    may have lost (``crash_spans``)."""
    assert rig.receiver is not None
    target = produced_now(rig)

    def covered() -> bool:
        if crash is None:
            s = rig.receiver.rx.summary()  # type: ignore[union-attr]
            return s.readings + s.dropped + s.skipped >= target
        return not missing_readings(rig, target) - crash_spans(rig.receiver.batches, crash)  # type: ignore[union-attr]

    await rig.receiver.wait(covered, within=within, what=f"the receiver to cover {target} readings")


def missing_readings(rig: RigRun, upto: int) -> set[int]:
    """Reading numbers 1..``upto`` neither received nor declared dropped or skipped."""
    assert rig.receiver is not None
    return set(range(1, upto + 1)) - rig.receiver.seqs() - _dropped_seqs(rig)


@dataclass(frozen=True)
class BrokerCrash:
    """A broker crash as both sides recorded it, so that a reading the broker lost is never
    blamed on the gateway, and a reading the gateway lost never on the broker.

    ``acked``: batch numbers the gateway's buffer recorded as acknowledged (PUBACK) while the
    killed broker instance ran; ``unacked``: batches it still held after the crash, which it must
    re-send; ``unsaved``: batch messages the killed broker's own packet log shows it acknowledged
    after its last database save (hil.mosquitto.acked_unsaved)."""

    acked: frozenset[int]
    unacked: frozenset[int]
    unsaved: int

    @classmethod
    def record(cls, started: BatchLedger, after: BatchLedger, outage: BrokerOutage, topic: str) -> BrokerCrash:
        """From the gateway's ledger when the killed instance started and after the crash (read
        with the broker down), and the killed instance's log."""
        return cls(after.acked - started.acked, after.unacked, len(outage.acked_unsaved(topic)))


def ranges(numbers: Iterable[int]) -> str:
    """``1-3, 7`` for {1, 2, 3, 7}."""
    out: list[list[int]] = []
    for n in sorted(numbers):
        if out and n == out[-1][1] + 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


def crash_spans(batches: dict[int, tuple[int, int]], crash: BrokerCrash) -> set[int]:
    """Reading numbers of batches that never arrived and that the crashed broker had acknowledged.

    Batches tile the reading numbers, so the readings of a run of missing batch numbers are
    those between the received batches around it; a run counts only when every batch in it is
    one the gateway recorded as acknowledged by the crashed broker (``crash.acked``)."""
    got = sorted(batches)
    out: set[int] = set()
    for lo, hi in itertools.pairwise(got):
        if hi - lo > 1 and set(range(lo + 1, hi)) <= crash.acked:
            out.update(range(batches[lo][1] + 1, batches[hi][0]))
    return out


def lost_in_crash(batches: dict[int, tuple[int, int]], made: int, missing: set[int],
                  crash: BrokerCrash) -> tuple[list[int], set[int]]:
    """The batches the crashed broker lost, and which of the ``missing`` readings were in them.

    A batch that never arrived is the broker's loss only if the gateway recorded its PUBACK
    from the killed instance, and the broker's log shows at least that many acknowledged
    and unsaved batch messages; a missing reading is the broker's only if it lies in such a
    batch. The caller fails on the rest: the gateway's loss."""
    lost = [b for b in range(1, made + 1) if b not in batches]
    gateways = [b for b in lost if b not in crash.acked]
    assert not gateways, (f"batches {ranges(gateways)} never arrived, and the gateway had no PUBACK for them from "
                          "the crashed broker: lost by the gateway")
    assert len(lost) <= crash.unsaved, (
        f"{len(lost)} batches never arrived ({ranges(lost)}) but the crashed broker's log shows only "
        f"{crash.unsaved} batch messages acknowledged after its last database save")
    return lost, missing & crash_spans(batches, crash)


def counter_runs(rig: RigRun, node: str = "counter", point: str = "n") -> list[list[tuple[int, int]]]:
    """The counter's (reading number, value) in reading-sequence order, split into runs where it
    starts again at 0.

    Not grouped by the batch header's boot counter: `bo` is the boot of the daemon that *signed* the
    batch, and readings one run committed but had not yet sent at a kill -9 are signed by the next run."""
    assert rig.receiver is not None
    by_seq: dict[int, int] = {}
    for g in rig.receiver.got:
        if g.reading.node == node and g.reading.point == point:
            by_seq[g.reading.seq] = int(g.reading.value)
    runs: list[list[tuple[int, int]]] = []
    for seq, v in sorted(by_seq.items()):
        if v == 0 or not runs:
            runs.append([])
        runs[-1].append((seq, v))
    return runs


def assert_counter_contiguous(rig: RigRun, node: str = "counter", point: str = "n",
                              lost: set[int] | frozenset[int] = frozenset()) -> int:
    """Each run's counter values are 0, 1, 2, ... with nothing missing (a tail lost at a kill -9 is
    the documented window: readings not yet stored, or numbered and declared skipped), and there
    are no more runs than the daemon had boots. Returns how many counter readings arrived.

    ``lost``: reading numbers a crashed broker lost (``finish``): values may be missing only
    where those numbers are, at most one value per lost number."""
    runs = counter_runs(rig, node, point)
    assert runs, f"no {node}/{point} readings received"
    holes = sorted(lost)
    for i, run in enumerate(runs):
        prev_seq, want = 0, 0
        for seq, v in run:
            room = bisect.bisect_left(holes, seq) - bisect.bisect_right(holes, prev_seq) if prev_seq else 0
            assert want <= v <= want + room, (
                f"run {i}: {node}/{point} value {v} at reading {seq}, expected {want}"
                + (f" (or up to {room} more: readings lost in the broker crash lie before it)" if room else "")
                + f"; the run starts {[v for _, v in run[:20]]}")
            prev_seq, want = seq, v + 1
    boots = int(rig.buffer_meta()["boot"])
    assert len(runs) <= boots, f"{len(runs)} runs of {node}/{point} but the buffer counted {boots} boots"
    return sum(len(v) for v in runs)


async def finish(rig: RigRun, result: ScenarioResult, *, stop: bool = True, drops_allowed: bool = False,
                 broker_crash: BrokerCrash | None = None) -> tuple[list[int], set[int]]:
    """Stop the daemon cleanly, let the receiver take everything, and check the end-to-end counts.

    After a ``broker_crash``, readings in batches the crashed broker had acknowledged and lost
    are counted apart (``result.broker_lost``; ``lost_in_crash`` proves them the broker's);
    the gateway's own loss must still be 0. Returns the batch and reading numbers the broker lost."""
    assert rig.receiver is not None
    if stop and any(d.alive for d in rig.daemons):
        # let the running daemon deliver what it has first: a clean stop delivers for a few seconds
        # only (the rest stays buffered for the next start, nothing lost), which a loaded machine
        # with every driver running may not reach; what this cannot cover, the check below finds
        with contextlib.suppress(TimeoutError):
            await wait_drained(rig, crash=broker_crash)
    for d in rig.daemons:
        if d.alive and stop:
            rc = await d.stop()
            assert rc == 0, f"daemon exited with {rc}:\n{d.log_text()[-3000:]}"
    meta = rig.buffer_meta()
    produced = int(meta["next_seq"]) - 1
    made = int(meta["next_bseq"]) - 1
    result.produced = produced
    await wait_drained(rig, crash=broker_crash)
    s = rig.receiver.rx.summary()
    result.take(s)
    result.per_device = device_counts(rig)
    missing = missing_readings(rig, produced)
    lost_batches: list[int] = []
    lost: set[int] = set()
    if broker_crash is not None:
        lost_batches, lost = lost_in_crash(rig.receiver.batches, made, missing, broker_crash)
    result.broker_lost, result.gaps = len(lost), len(missing - lost)
    assert meta["segments"] == 0 and meta["batches_unacked"] == 0, f"a clean stop delivers everything: {meta}"
    assert s.bad_signatures == 0 and s.malformed == 0 and s.chain_breaks == 0, s.to_json()
    assert not missing - lost, f"readings lost without a declared drop: {ranges(missing - lost)[:200]}"
    if not drops_allowed:
        assert s.dropped == 0, f"unexpected drops: {s.drop_reasons}"
    assert s.readings + s.dropped + s.skipped + len(lost) == produced, (
        f"received {s.readings} + dropped {s.dropped} + skipped {s.skipped} + lost in the broker {len(lost)} "
        f"!= produced {produced}")
    assert rig.receiver.seqs() | _dropped_seqs(rig) | lost == set(range(1, produced + 1))
    return lost_batches, lost


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
