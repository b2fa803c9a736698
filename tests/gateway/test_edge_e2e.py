"""Edge processing end to end: a driver's readings through the real daemon, its buffer and signed
batches, a real mosquitto and the verifying receiver, with a deadband and aggregation windows.

Two sim instances emit the same seeded random walks: ``raw`` with no rules, ``filt`` with a
deadband on one point and windows on the other. What the receiver gets of ``filt`` must be
exactly what the plain definitions make of ``raw``'s stream, the numbering must stay complete
(a reading left out is no gap), and a change of rules alone must apply without a restart.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from gateway.keys import init_key
from hil.mosquitto import Mosquitto
from tests.gateway.helpers import MqttReceiver, running_daemon, until

BAND = 0.5000005  # the walk has 6 decimals: no difference lies within rounding of the band's edge
WINDOW_NS = 200_000_000
POLLS = 150


def _walk(seed: int) -> dict[str, Any]:
    return {"pattern": "random_walk", "low": 0, "high": 100, "step": 0.3, "seed": seed}


def _doc(tmp: Path, url: str, report: list[dict[str, Any]]) -> dict[str, Any]:
    points = [{"name": "w", "unit": "Cel", **_walk(7)}, {"name": "agg", "unit": "W", **_walk(9)}]
    sim = {"driver": "sim", "interval": "20ms", "jitter": 0, "points": points}
    return {"gateway": {"id": "gw-test", "state_dir": str(tmp / "state")},
            "uplinks": [{"type": "mqtt", "url": url, "reconnect_max": 1}],
            "drivers": [{**sim, "name": "raw", "node": "raw"},
                        {**sim, "name": "filt", "node": "filt", "report": report}]}


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def deadband(xs: list[float], band: float) -> list[float]:
    """The plain definition: report a value when it is further than the band from the last reported one."""
    out: list[float] = []
    for v in xs:
        if not out or abs(v - out[-1]) > band:
            out.append(v)
    return out


async def test_a_deadband_and_windows_through_the_daemon_to_the_verifying_receiver(
        tmp_path: Path, broker: Mosquitto) -> None:
    pub = init_key(tmp_path / "state" / "keys").public_path
    report = [{"points": ["w"], "deadband": BAND},
              {"points": ["agg"], "window": "200ms", "aggregate": ["min", "max", "mean", "count", "last"]}]
    doc = _doc(tmp_path, broker.url, report)
    path = _write(tmp_path / "gw.yaml", doc)
    rx = MqttReceiver(broker.url, pub)
    async with rx.running():
        await rx.connected.wait()
        async with running_daemon(path) as d:
            raw, filt = d.supervisor.runners["raw"], d.supervisor.runners["filt"]
            await until(lambda: filt.stats.readings >= 2 * POLLS, within=60)
            # stop the drivers by a reload without them: the open windows are reported (partial)
            # and the pipeline, still running, delivers everything
            _write(path, {**doc, "drivers": []})
            assert await d.reload()
            assert filt.edge is not None
            emitted = filt.stats.readings
            counts = filt.edge.counts(emitted)
            total = raw.stats.readings + counts["reported"] + counts["aggregates"]
            await rx.wait_numbered(total, within=30)
    s = rx.rx.summary()
    assert s.ok and s.gaps == 0 and s.dropped == 0 and s.skipped == 0, s
    assert s.readings == total, "every numbered reading arrived: what the rules left out was never numbered"
    assert [r.seq for r in rx.readings] == list(range(1, total + 1))

    def series(node: str, point: str) -> list[Any]:
        return [r for r in rx.readings if r.node == node and r.point == point]

    polls = emitted // 2  # each poll emits w and agg
    raw_w = [r.value for r in series("raw", "w")]
    raw_agg = [r.value for r in series("raw", "agg")]
    got_w = [r.value for r in series("filt", "w")]
    assert polls >= POLLS and len(raw_w) >= POLLS // 2, "both instances ran (raw may lag a poll or two)"
    want = deadband(raw_w[:polls], BAND)
    if polls <= len(raw_w):
        assert got_w == want, "the deadband's output is the plain definition's, over the same input"
    else:  # raw stopped a poll or two earlier: its stream is a prefix
        assert got_w[:len(want)] == want
    assert len(got_w) < polls / 3, f"a 0.5 band on a 0.3-step walk leaves most readings out ({len(got_w)}/{polls})"
    assert counts == {"reported": len(got_w), "aggregated": polls, "aggregates": 5 * len(series("filt", "agg:count")),
                      "suppressed": polls - len(got_w)}

    assert not series("filt", "agg"), "every number of a windowed point is folded in"
    windows = series("filt", "agg:count")
    assert sum(r.value for r in windows) == polls, "the window counts add up to the readings emitted"
    first = 0
    for k, w in enumerate(windows):
        assert w.ts_ns % WINDOW_NS == 0 and w.path == 2 and w.unit is None
        rec = {fn: series("filt", f"agg:{fn}")[k] for fn in ("min", "max", "mean", "last")}
        assert all(r.ts_ns == w.ts_ns and r.unit == "W" for r in rec.values())
        chunk = raw_agg[first:first + w.value]  # windows take the readings in order, each a run of them
        first += w.value
        if len(chunk) == w.value:
            assert (rec["min"].value, rec["max"].value, rec["last"].value) == (min(chunk), max(chunk), chunk[-1])
            assert math.isclose(rec["mean"].value, sum(chunk) / len(chunk), rel_tol=1e-12)
    assert len(windows) >= 2, "several windows closed while the driver ran"


async def test_new_report_rules_apply_to_the_running_instance_without_a_restart(
        tmp_path: Path, broker: Mosquitto) -> None:
    init_key(tmp_path / "state" / "keys")
    doc = _doc(tmp_path, broker.url, [{"points": ["agg"], "window": "1h", "aggregate": ["count"]}])
    path = _write(tmp_path / "gw.yaml", doc)
    async with running_daemon(path) as d:
        filt = d.supervisor.runners["filt"]
        await until(lambda: filt.stats.readings >= 20)
        driver, edge = filt._driver, filt.edge
        assert edge is not None
        doc["drivers"][1]["report"] = [{"points": ["*"], "deadband": 1000}]
        _write(path, doc)
        assert await d.reload()
        assert d.supervisor.runners["filt"] is filt and filt._driver is driver and filt.stats.restarts == 0, \
            "the driver kept running"
        assert filt.edge is edge and filt.edge.rules == tuple(d.cfg.instance("filt").config.report)
        assert edge.counts(filt.stats.readings)["aggregates"] >= 1 and not edge._open, \
            "the hour's open window was reported"
        before, reported = filt.stats.readings, edge.counts(filt.stats.readings)["reported"]
        await until(lambda: filt.stats.readings >= before + 20)
        assert edge.counts(filt.stats.readings)["reported"] == reported + 2, \
            "one reading per point, then all inside the band"
        doc["drivers"][1].pop("report")
        _write(path, doc)
        assert await d.reload()
        assert filt.edge is None and d.supervisor.runners["filt"] is filt, "rules taken away, still no restart"
