"""The clock watch: steps and sync state, from injected time sources and from libfaketime.

The injected sources step the wall clock exactly where a test says; the libfaketime test runs
``ClockWatch`` in a child process whose wall clock libfaketime moves (as the rig moves the
daemon's) and whose adjtimex answer hil/clockstate.c gives, so the step is seen through the
real clock_gettime and adjtimex calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.clock import SPLIT_SLACK_NS, STEP_THRESHOLD_NS, ClockWatch, Step, kernel_clock, split
from gateway.testing import SteppedClock
from hil.faults import ClockJump

S = 1_000_000_000
DAY = 86_400 * S


def sources(synced: bool = True) -> SteppedClock:
    return SteppedClock(1_795_000_000 * S, synced=synced, mono_ns=5 * S)


def test_a_forward_step_is_seen_with_its_window_and_both_wall_times() -> None:
    src = sources(synced=False)
    w = src.watch()
    assert w.epoch.synchronised is False and w.epoch.max_error_us == 16_000_000
    src.advance(S)
    assert w.check() is None  # nothing moved but time
    src.advance(S)
    assert w.check() is None
    last_check = src.mono
    src.advance(S // 2)
    src.step(DAY, synced=True)  # NTP steps a clock that booted a day behind
    src.advance(S // 2)
    change = w.check()
    assert change is not None and change.step is not None
    step = change.step
    assert step.since_ns == last_check and step.mono_ns == last_check + S
    assert step.delta_ns == DAY and step.wall_after_ns == src.mono + src.offset
    assert change.epoch.synchronised and change.epoch.max_error_us == 4_000  # read again at the step
    assert change.epoch.offset_ns - change.previous.offset_ns == DAY
    assert w.steps == 1 and w.last_step == step and w.snapshot()["last_step_s"] == 86400.0


def test_a_backward_step_and_a_slew_below_the_threshold() -> None:
    src = sources()
    w = src.watch()
    for _ in range(50):  # a slew of 500 ppm: 0.5 ms a second, never a step however long
        src.advance(S)
        src.step(500_000)
        assert w.check() is None
    src.advance(S)
    src.step(-3600 * S)
    change = w.check()
    assert change is not None and change.step is not None and change.step.delta_ns == -3600 * S
    src.advance(S)
    src.step(STEP_THRESHOLD_NS - 1)  # just below the threshold
    assert w.check() is None


def test_sync_changes_are_epochs_and_the_kernel_is_asked_at_most_once_a_second() -> None:
    src = sources(synced=False)
    w = src.watch()
    reads = src.state_reads
    for _ in range(10):
        src.advance(S // 10)
        w.check()
    assert src.state_reads - reads <= 1
    src.synced = True
    src.advance(S)
    change = w.check()
    assert change is not None and change.step is None and change.epoch.synchronised
    assert change.previous.synchronised is False
    src.advance(S)
    assert w.check() is None


def test_an_unreadable_state_counts_as_unsynchronised_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    src = sources()
    src.broken = True
    w = src.watch()
    assert w.epoch.synchronised is False and "Operation not permitted" in w.state_error
    assert "ProtectClock" in caplog.text
    assert w.snapshot()["state"].startswith("cannot read it")
    src.broken = False
    src.advance(2 * S)
    change = w.check()
    assert change is not None and change.epoch.synchronised and w.state_error == ""


def test_the_real_kernel_clock_reads() -> None:
    state = kernel_clock()  # whatever this machine's state is, it reads without error
    assert isinstance(state.synchronised, bool) and state.max_error_s is not None and state.max_error_s >= 0
    w = ClockWatch()
    assert w.epoch.synchronised == kernel_clock().synchronised or w.state_error == ""
    mono, wall = w.read()
    assert abs(wall - time.time_ns()) < S and abs(mono - time.monotonic_ns()) < S


# -- where a step falls among the readings of its window ------------------------------------


def _stamped(monos: list[int], at: int, old: int, new: int) -> list[int]:
    return [m + (old if i < at else new) for i, m in enumerate(monos)]


def test_split_is_exact_when_the_step_is_larger_than_its_window() -> None:
    since, seen = 100 * S, 101 * S
    monos = [since + i * S // 20 for i in range(1, 20)]
    for delta in (DAY, -DAY - 3600 * S, 2 * S, -2 * S):
        for at in (0, 7, 19):
            step = Step(seen, since, seen + 1000 * S, seen + 1000 * S + delta)
            stamps = _stamped(monos, at, 1000 * S, 1000 * S + delta)
            assert split(stamps, step) == at, (delta, at)


def test_split_ignores_device_timestamps() -> None:
    since, seen = 100 * S, 101 * S
    monos = [since + i * S // 10 for i in range(1, 10)]
    step = Step(seen, since, seen + 1000 * S, seen + 1000 * S + DAY)
    stamps = _stamped(monos, 4, 1000 * S, 1000 * S + DAY)
    stamps[2] = 1_600_000_000 * S  # a PLC's own timestamp, years off
    stamps[6] = 5
    assert split(stamps, step) == 4


@given(st.integers(1, 40), st.data(), st.integers(-10 * S, 10 * S))
def test_split_errs_by_at_most_the_step(n: int, data: st.DataObject, delta: int) -> None:
    since, seen = 100 * S, 100 * S + 2 * S  # a 2 s window
    monos = sorted(data.draw(st.lists(st.integers(since + 1, seen), min_size=n, max_size=n)))
    at = data.draw(st.integers(0, n))
    old = 7 * S
    step = Step(seen, since, seen + old, seen + old + delta)
    stamps = _stamped(monos, at, old, old + delta)
    got = split(stamps, step)
    assert 0 <= got <= n
    if got != at:  # a reading put on the wrong side is re-dated off by the step: only a step within its window
        assert abs(delta) <= 2 * S + 2 * SPLIT_SLACK_NS


# -- libfaketime: the step as the rig makes it ------------------------------------------------

CHILD = """
import json, select, time
from gateway.clock import ClockWatch
w = ClockWatch()
print(json.dumps({"ready": True, "synced": w.epoch.synchronised}), flush=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    change = w.check()
    if change is not None and change.step is not None:
        s = change.step
        print(json.dumps({"delta": s.delta_ns, "window": s.mono_ns - s.since_ns, "synced": change.epoch.synchronised,
                          "wall_after": s.wall_after_ns}), flush=True)
        break
    select.select([], [], [], 0.05)  # (libfaketime breaks time.sleep's absolute monotonic deadline)
"""


def test_a_step_made_by_libfaketime_is_seen(tmp_path: Path) -> None:
    why = ClockJump.unavailable_reason()
    if why:
        pytest.fail(why + ": hil/system-deps.sh installs it")
    clock = ClockJump(tmp_path, synchronised=False)
    clock.jump(-86400)  # booted a day behind, as fake-hwclock leaves a Pi after a long power cut
    with subprocess.Popen([sys.executable, "-c", CHILD], env={**os.environ, **clock.env()},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            first = json.loads(child.stdout.readline())
            assert first == {"ready": True, "synced": False}  # hil/clockstate.c answered for the kernel
            time.sleep(1.2)  # the child checks with the day-behind clock for a while
            clock.synchronise(True)
            clock.jump(86400)  # NTP comes: a day forward, synchronised
            line = child.stdout.readline()
            assert line, child.stderr.read() if child.stderr else ""
            seen = json.loads(line)
        finally:
            child.kill()
            child.wait(10)
    assert abs(seen["delta"] - DAY) < S // 2 and seen["synced"] is True
    assert seen["window"] < S // 2  # checked every 50 ms
    assert abs(seen["wall_after"] - time.time_ns()) < 30 * S
