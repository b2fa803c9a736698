"""Rig scenarios: the real daemon, the rig's devices, the real broker, the reference receiver.

Run with ``--rig sim`` (what ``make test`` does) or ``--rig path/to/bench.yaml``; skipped
otherwise. Every scenario ends in ``finish()``: the receiver verified every batch, found no
gap, and holds every reading the buffer numbered except those a batch declared dropped; the
reference counter's values are contiguous in every daemon run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from hil import faults
from hil.faults import BrokerOutage, ClockJump, DiskFull, FaultRecord, Partition
from hil.report import RigReport, ScenarioResult
from hil.rig import BatchLedger, RigRun, RigSpec
from tests.rig.helpers import (
    BURST_POINT,
    STOP_WITHIN,
    WITHIN,
    BrokerCrash,
    assert_counter_contiguous,
    burst_section,
    device_counts,
    finish,
    note_skipped,
    produced_now,
    ranges,
    until_rate_below,
    wait_delivering,
    wait_drained,
)

pytestmark = pytest.mark.slow
# Drivers whose libraries (asyncua, bacpypes3, pysnmp) take seconds to import at every daemon start:
# left out of the loops that start the daemon dozens of times (each other scenario still stops
# the daemon with them running and checks that it exits cleanly).
SLOW_TO_START = ("opcua", "bacnet", "snmp")


async def test_all_drivers_deliver(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                   tmp_path: Path) -> None:
    """All drivers deliver."""
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.devices, "the rig has no device that can run here"
        await rig.start_daemon()
        await wait_delivering(rig, n=3)
        await finish(rig, result)
        assert_counter_contiguous(rig)
        assert all(n >= 3 for n in device_counts(rig).values())
        if "gate_cam" in rig.devices:
            assert rig.receiver is not None and rig.receiver.rx.summary().blobs_verified >= 1, "camera images arrive"


async def test_unplug_and_replug(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                 tmp_path: Path) -> None:
    """Every device unplugged and replugged."""
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        pluggable = {n: d for n, d in rig.devices.items() if d.spec.driver != "sim" and d.supports("unplug")}
        for n in set(rig.devices) - set(pluggable) - {"counter"}:
            result.note(f"{n}: no way to unplug it on this rig (no unplug/plug commands)")
        records = {n: FaultRecord(f"{n} unplugged", f"{d.spec.sim or 'bench command'}: unplug/plug").injected()
                   for n, d in pluggable.items()}
        for dev in pluggable.values():
            await faults.unplug(dev)
        t_out = time.monotonic()
        await asyncio.sleep(3.0)
        # one device gone never stalls the others: the reference counter kept delivering
        await wait_delivering(rig, ["counter"], n=5, since=t_out)
        for n, dev in pluggable.items():
            await faults.plug(dev)
            records[n].cleared()
        t_in = time.time_ns()
        await wait_delivering(rig, list(pluggable), n=1, after_ns=t_in)
        for n in pluggable:  # recovered: the first reading that device took after the plug has arrived
            first = min(g.at for g in rig.receiver.readings(rig.nodes_of(n)) if g.reading.ts_ns >= t_in)  # type: ignore[union-attr]
            records[n].recovered_at = first
            result.faults.append(records[n])
        assert daemon.alive
        await finish(rig, result)
        assert_counter_contiguous(rig)


async def test_bus_noise(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult, tmp_path: Path) -> None:
    """Bus noise: garbage, bad CRCs, malformed replies, hostile adverts."""
    rng = random.Random(7)
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        noisy = {n: d for n, d in rig.devices.items() if d.spec.driver != "sim" and d.supports("noise")}
        for n in set(rig.devices) - set(noisy) - {"counter"}:
            result.note(f"{n}: no way to make noise on it on this rig (no noise_on/noise_off commands)")
        rec = FaultRecord("noise on every device", "garbage/CRC/malformed/hostile per device").injected()
        for dev in noisy.values():
            await faults.noise(dev, True)
        t0 = time.monotonic()
        for _ in range(10):  # raw junk on the serial lines: random bytes, a 64 KiB line with no end
            for dev in noisy.values():
                if dev.spec.sim in ("nmea-gps", "rdm6300", "barcode"):
                    faults.inject(dev, bytes(rng.randrange(256) for _ in range(200)))
            await asyncio.sleep(0.2)
        for dev in noisy.values():
            if dev.spec.sim in ("nmea-gps", "barcode"):
                faults.inject(dev, b"A" * 65536)
        await wait_delivering(rig, ["counter"], n=10, since=t0)
        for dev in noisy.values():
            await faults.noise(dev, False)
        rec.cleared()
        await wait_delivering(rig, list(noisy), n=1, after_ns=time.time_ns())
        rec.recovered()
        result.faults.append(rec)
        assert daemon.alive, "bad input never kills the daemon"
        await finish(rig, result)
        assert_counter_contiguous(rig)


async def test_broker_restart(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                              tmp_path: Path) -> None:
    """Broker restart (clean stop, then a crash)."""
    if rig_spec.broker != "local":
        pytest.skip("the rig uses an outside broker; this scenario restarts a local one")
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.broker is not None and rig.receiver is not None
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        started = BatchLedger(0, frozenset())  # the gateway's batches when the running broker instance started
        crash: BrokerCrash | None = None
        for abrupt in (False, True):
            # the crash: the broker hangs until the gateway has a batch in flight (sent, never to be
            # acknowledged), then dies; the gateway must re-send it. Hung for 1.5 s first, so the
            # buffer file shows every acknowledgement that came before the hang (within 1 s).
            outage = BrokerOutage(rig.broker, abrupt=True, hang_until=lambda: rig.ledger().unacked,
                                  hang_what="the gateway had a batch in flight", hang_at_least=1.5) \
                if abrupt else BrokerOutage(rig.broker)
            rec = FaultRecord("broker killed" if abrupt else "broker stopped", outage.mechanism).injected()
            await outage.cut()
            await asyncio.sleep(3.0)
            # with the broker down nothing can be acknowledged: the gateway's record is settled
            ledger = rig.ledger()
            if abrupt:
                crash = BrokerCrash.record(started, ledger, outage, rig.batch_topic)
            started = ledger
            await outage.heal()
            rec.cleared()
            # recovered: every reading numbered so far arrived (but any in batches the crash lost)
            await wait_drained(rig, crash=crash)
            rec.recovered()
            result.faults.append(rec)
        assert daemon.alive and crash is not None
        assert crash.unacked, "a batch was in flight when the broker died"
        # finish() fails unless every batch the gateway still held at the crash arrived: re-sent
        lost, lost_readings = await finish(rig, result, broker_crash=crash)
        assert_counter_contiguous(rig, lost=lost_readings)
        result.note(f"broker crash: batches {ranges(crash.unacked)} were unacknowledged (in flight) when the broker "
                    f"died: re-sent and received; the killed mosquitto had acknowledged {crash.unsaved} batch "
                    "message(s) after its last database save (its packet log)")
        if lost:
            result.note(f"lost in the broker crash: batches {ranges(lost)} ({result.broker_lost} readings) never "
                        "arrived; the gateway had recorded their PUBACK from the killed mosquitto, whose log shows "
                        "them acknowledged after its last save (docs/topics.md, \"What a PUBACK is worth\"); "
                        "gateway loss 0")


async def test_network_partition(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                 tmp_path: Path) -> None:
    """Network partition longer than the keepalive (readings pile up on disk)."""
    why_not = Partition.unavailable_reason() if rig_spec.broker == "local" else "the rig uses an outside broker"
    part = Partition() if not why_not else None
    if part is not None:
        part.setup()
    try:
        # inside the namespace the host's loopback servers are out of reach: leave them out
        names = [d.name for d in rig_spec.devices if d.netns] if part else None
        async with RigRun(rig_spec, tmp_path, devices=names,
                          broker_addresses=[part.host_address] if part else None,
                          uplink_host=part.host_address if part else "127.0.0.1") as rig:
            note_skipped(rig, result, rig_report.skipped_devices)
            if part is not None:
                result.note("partition by network namespace + veth (link taken down); TCP/IP devices "
                            f"({', '.join(d.name for d in rig_spec.devices if not d.netns)}) left out: "
                            "unreachable from inside the namespace")
            else:
                result.note(f"partition fell back to stopping the broker's listener: {why_not}")
            daemon = await rig.start_daemon(prefix=part.prefix if part else None)
            await wait_delivering(rig)
            before = produced_now(rig)
            rec = FaultRecord("network partition", Partition.mechanism if part else BrokerOutage.mechanism).injected()
            outage = BrokerOutage(rig.broker) if part is None else None  # type: ignore[arg-type]
            if part is not None:
                part.cut()
            else:
                await outage.cut()  # type: ignore[union-attr]
            await asyncio.sleep(15.0)  # 3x the MQTT keepalive: both ends give the connection up
            backlog = rig.buffer_meta()["buffered"]
            if part is not None:
                part.heal()
            else:
                await outage.heal()  # type: ignore[union-attr]
            rec.cleared()
            await wait_drained(rig)
            rec.recovered()
            result.faults.append(rec)
            result.note(f"backlog on disk at the end of the partition: {backlog} readings "
                        f"({produced_now(rig) - before} produced since it began)")
            assert backlog > 0, "readings waited in the buffer during the partition"
            assert daemon.alive
            await finish(rig, result)
            assert_counter_contiguous(rig)
    finally:
        if part is not None:
            part.teardown()


async def test_kill9_loop(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult, tmp_path: Path,
                          pytestconfig: pytest.Config) -> None:
    """Daemon kill -9 in a loop."""
    kills = int(pytestconfig.getoption("--rig-kills"))
    rng = random.Random(9)
    # the BLE stack and the camera add seconds to each start; the loop is about the daemon
    names = [d.name for d in rig_spec.devices if d.driver not in ("ble", "camera", *SLOW_TO_START)]
    async with RigRun(rig_spec, tmp_path, devices=names) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.receiver is not None
        tails_ms: list[float] = []
        prev_boot = 0
        for i in range(kills):
            daemon = await rig.start_daemon(write_config=i == 0)
            if i % 2 == 0:  # half the kills once it delivers, half at any moment from its start
                n = len(rig.receiver.got)
                await rig.receiver.wait(lambda n=n: len(rig.receiver.got) > n, within=WITHIN, what="delivery")  # type: ignore[misc, union-attr]
                await asyncio.sleep(rng.uniform(0.0, 0.5))
            else:
                await asyncio.sleep(rng.uniform(0.0, 1.5))
            killed_ns = time.time_ns()
            await faults.kill9(daemon)
            boots = [g.boot for g in rig.receiver.got]
            if boots and max(boots) > prev_boot:  # this run delivered: how stale was its last reading?
                prev_boot = max(boots)
                last = [g.reading.ts_ns for g in rig.receiver.readings(["counter"]) if g.boot == prev_boot]
                if last:
                    tails_ms.append((killed_ns - max(last)) / 1e6)
        daemon = await rig.start_daemon(write_config=False)
        await wait_delivering(rig, ["counter"], n=3, since=time.monotonic())
        await finish(rig, result)
        meta = rig.buffer_meta()
        opened = int(meta["boot"])
        assert kills // 2 + 1 <= opened <= kills + 1, "every run that got as far as the buffer counted its boot"
        n = assert_counter_contiguous(rig)
        s = rig.receiver.rx.summary()
        result.note(f"{kills} kills; {len(rig.daemons)} daemon runs, {opened} opened the buffer; "
                    f"{s.restarts} restarts seen by the receiver; "
                    f"{n} counter readings, contiguous in every run; "
                    f"{s.skipped} reading numbers declared skipped after the kills (lost in them, or never used)")
        if tails_ms:
            result.note(f"time from the last delivered counter reading to each kill (the lost tail is at most "
                        f"one commit interval of readings, unnumbered or declared skipped): "
                        f"max {max(tails_ms):.0f} ms, "
                        f"median {sorted(tails_ms)[len(tails_ms) // 2]:.0f} ms")
        result.faults.append(FaultRecord(f"kill -9 x{kills}", "SIGKILL"))


async def test_broker_outage_ten_minutes_of_readings(rig_spec: RigSpec, rig_report: RigReport,
                                                     result: ScenarioResult, tmp_path: Path) -> None:
    """Broker outage holding more than 10 minutes of the rig's readings."""
    if rig_spec.broker != "local":
        pytest.skip("the rig uses an outside broker; this scenario stops a local one")
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.broker is not None and rig.receiver is not None
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        n0, t0 = len(rig.receiver.got), time.monotonic()
        await asyncio.sleep(5.0)  # the rig's nominal rate, measured
        rate = (len(rig.receiver.got) - n0) / (time.monotonic() - t0)
        target = int(660 * rate)  # 11 minutes' worth
        outage = BrokerOutage(rig.broker)
        rec = FaultRecord("broker outage, >= 10 min of readings", outage.mechanism).injected()
        await outage.cut()
        start_seq = produced_now(rig)
        # time compression: a config push (SIGHUP) adds a 2,000 readings/s source during the outage
        rig.extra_drivers = [burst_section(2000)]
        rig.write_config()
        daemon.reload()
        await faults.until(lambda: produced_now(rig) - start_seq >= target, within=120,
                           what=f"a backlog of {target} readings")
        backlog = produced_now(rig) - start_seq
        await outage.heal()
        rec.cleared()
        # the burst stops (a push) so the backlog drains to the end: with the burst still on, a
        # receiver that has caught up with the count taken when the outage healed may still trail
        # the gateway by seconds of burst, more than a clean stop's grace delivers on a loaded
        # machine (what is left stays buffered for the next start, and finish() would wait for it)
        rig.extra_drivers = []
        rig.write_config()
        daemon.reload()
        await until_rate_below(rig, 500.0, within=60)
        await wait_drained(rig, within=120)
        rec.recovered()
        result.faults.append(rec)
        result.note(f"nominal rate {rate:.1f} readings/s; backlog {backlog} readings = "
                    f"{backlog / rate / 60:.1f} min of the rig's readings; outage lasted {rec.duration_s:.0f} s")
        assert backlog / rate >= 600
        assert daemon.alive
        await finish(rig, result)
        assert_counter_contiguous(rig)
        assert_counter_contiguous(rig, "burst", BURST_POINT)


async def test_outage_beyond_buffer_bound_declares_drops(rig_spec: RigSpec, rig_report: RigReport,
                                                         result: ScenarioResult, tmp_path: Path) -> None:
    """Outage past buffer.max_bytes: the gap equals the declared drops."""
    if rig_spec.broker != "local":
        pytest.skip("the rig uses an outside broker; this scenario stops a local one")
    # one source with one counter point: sequence number and value map one to one (value = seq - 1)
    async with RigRun(rig_spec, tmp_path, devices=[]) as rig:
        assert rig.broker is not None and rig.receiver is not None
        rig.extra_drivers = [burst_section(10_000, "load")]
        rig.overrides = {"buffer": {"max_bytes": "1MiB", "policy": "drop_oldest", "commit_interval": "200ms"}}
        daemon = await rig.start_daemon()
        await rig.receiver.wait(lambda: len(rig.receiver.got) > 100, within=WITHIN, what="delivery")  # type: ignore[union-attr]
        outage = BrokerOutage(rig.broker)
        rec = FaultRecord("broker outage past max_bytes", outage.mechanism).injected()
        await outage.cut()
        start = produced_now(rig)
        await faults.until(lambda: rig.buffer_meta()["buffered"] > 0 and produced_now(rig) - start > 150_000,
                           within=120, what="a backlog well past 1 MiB")
        meta = rig.buffer_meta()
        rig.extra_drivers = []  # the load stops (a push), so the backlog can drain to the end
        rig.write_config()
        daemon.reload()
        await faults.until(lambda: "reload:" in daemon.log_text(), within=WITHIN, what="the reload")
        await outage.heal()
        rec.cleared()
        await wait_drained(rig, within=120)
        rec.recovered()
        result.faults.append(rec)
        assert daemon.alive
        await finish(rig, result, drops_allowed=True)
        s = rig.receiver.rx.summary()
        result.note(f"max_bytes 1 MiB; at the end of the outage {meta['buffered']} readings were buffered; "
                    f"{s.dropped} declared dropped ({s.drop_reasons}); {s.readings} received")
        assert s.dropped > 0 and set(s.drop_reasons) == {"buffer_full"}
        assert all(g.reading.value == g.reading.seq - 1 for g in rig.receiver.got), \
            "every received reading is the one the device produced with that number"
        produced = result.produced
        assert s.readings == produced - s.dropped


async def test_disk_full(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult, tmp_path: Path) -> None:
    """Disk full on the state directory."""
    why_not = DiskFull.unavailable_reason()
    if why_not:
        pytest.skip(f"disk full needs a small mount: {why_not}")
    names = [d.name for d in rig_spec.devices if d.driver != "ble"]
    with DiskFull(tmp_path / "state", size="16m") as disk:
        async with RigRun(rig_spec, tmp_path, devices=names) as rig:
            note_skipped(rig, result, rig_report.skipped_devices)
            assert rig.receiver is not None
            rig.extra_drivers = [burst_section(500)]
            daemon = await rig.start_daemon()
            await wait_delivering(rig)
            rec = FaultRecord("state directory full", DiskFull.mechanism).injected()
            taken = disk.fill()
            await asyncio.sleep(6.0)
            log = daemon.log_text()
            failures = log.count("buffer commit failed") + log.count("pipeline error")
            assert daemon.alive, "a full disk never kills the daemon"
            disk.free()
            rec.cleared()
            t1 = time.monotonic()
            await wait_delivering(rig, ["counter"], n=5, since=t1)
            await wait_drained(rig)
            rec.recovered()
            result.faults.append(rec)
            result.note(f"tmpfs 16 MiB, filler took {taken} bytes; {failures} failure line(s) in the daemon log "
                        "while full; readings kept in memory and committed once space returned")
            assert failures > 0, "the daemon reports the full disk"
            await finish(rig, result, drops_allowed=True)
            s = rig.receiver.rx.summary()
            assert set(s.drop_reasons) <= {"overflow"}, "only the documented in-memory overflow may drop"
            assert_counter_contiguous(rig)


async def test_clock_jump(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult, tmp_path: Path) -> None:
    """Clock jump forward a day, then back before the start."""
    why_not = ClockJump.unavailable_reason()
    if why_not:
        pytest.skip(why_not)
    # the OPC UA device stamps its values with its own server's clock (the test process's true
    # time, which libfaketime does not move): a test of the gateway's clock leaves it out
    names = [d.name for d in rig_spec.devices if d.driver not in ("ble", "opcua")]
    async with RigRun(rig_spec, tmp_path, devices=names) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.receiver is not None
        rx = rig.receiver
        clock = ClockJump(tmp_path)  # synchronised at first
        daemon = await rig.start_daemon(env=clock.env())
        await wait_delivering(rig)
        # a step by hand (or a bad time source) leaves the kernel unsynchronised; NTP steps the
        # clock back to true time and then declares it synchronised
        for step, label, synced in ((86400, "+1 day", False), (-86400 - 3600, "-1 day -1 h", False),
                                    (3600, "back to true time, then synchronised", True)):
            rec = FaultRecord(f"wall clock {label}", ClockJump.mechanism + "; adjtimex by hil/clockstate.c").injected()
            if not synced:
                clock.synchronise(False)
            clock.jump(step)
            rec.cleared()
            t = time.monotonic()

            def stamped_by_new_clock(t: float = t) -> bool:  # taken after the jump, on the jumped clock
                now = clock.now_ns()
                return any(abs(g.reading.ts_ns - now) < 5 * 10**9 and g.at >= t for g in rx.readings(["counter"]))

            await rx.wait(stamped_by_new_clock, within=WITHIN, what=f"readings stamped by the jumped clock ({label})")
            if synced:
                clock.synchronise(True)
                t = time.monotonic()
                await rx.wait(lambda t=t: any(g.synced and g.at >= t for g in rx.readings(["counter"])),  # type: ignore[misc]
                              within=WITHIN, what="readings of a synchronised clock again")
            rec.recovered()
            result.faults.append(rec)
        counter = rx.readings(["counter"])
        flagged = [g for g in counter if g.synced is False]
        assert flagged, "readings taken on the stepped clock are flagged"
        await rx.wait(lambda: all(g.fixed_ns is not None for g in flagged), within=WITHIN,
                      what="every flagged reading re-dated")
        assert daemon.alive
        await finish(rig, result)
        assert_counter_contiguous(rig)
        # each reading's best time (corrected, else its own) is when it was really taken: before it
        # arrived here, within the delivery latency
        late = [g for g in counter if not g.at_wall_ns - 10 * 10**9 <= (g.fixed_ns or g.reading.ts_ns)
                <= g.at_wall_ns + 10**9]
        assert not late, f"{len(late)} readings not re-dated to their true time, e.g. {late[:3]}"
        assert all(g.synced is not None for g in counter), "every batch says what its clock was worth"
        stamps = [g.reading.ts_ns for g in counter]
        s = rx.rx.summary()
        stepped = sorted(bs for bs, h in rx.headers.items() if h["cj"])
        for bs in [stepped[0] - 1, *stepped]:  # batch headers before the first step and with each, as received
            h = rx.headers.get(bs)
            if h is not None:
                result.note(f"batch {bs} header: " + json.dumps({k: h[k] for k in ("bo", "bs", "sq", "ck", "cj")}))
        result.note(f"counter timestamps span {(max(stamps) - min(stamps)) / 3.6e12:.1f} h of wall clock as "
                    f"stamped; {len(flagged)} of {len(counter)} counter readings flagged (unsynchronised clock), all "
                    f"re-dated to within 10 s of arrival; receiver: {s.time_uncertain} flagged, {s.time_redated} "
                    f"re-dated, {s.clock_steps} steps declared")


async def test_config_push_during_load(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                       tmp_path: Path) -> None:
    """Config push (SIGHUP) during load."""
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.receiver is not None
        rig.extra_drivers = [burst_section(2000)]
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        # 1. add an instance and change another's interval
        rec = FaultRecord("push: add an instance, change one", "SIGHUP with a new file").injected()
        rig.extra_drivers = [burst_section(2000), {"driver": "sim", "name": "pushed", "interval": "100ms",
                                                   "node": "pushed", "points": [{"name": "v", "pattern": "counter"}]}]
        rig.write_config()
        daemon.reload()
        rec.cleared()
        await rig.receiver.wait(lambda: any(g.reading.node == "pushed" for g in rig.receiver.got),  # type: ignore[union-attr]
                                within=WITHIN, what="the pushed instance delivering")
        rec.recovered()
        result.faults.append(rec)
        # 2. a broken file: refused, the running config kept
        rec = FaultRecord("push: invalid file", "SIGHUP with a bad file").injected()
        good = rig.config_path.read_text()
        rig.config_path.write_text(good + "\nnot_a_key: [\n")
        daemon.reload()
        await faults.until(lambda: "reload refused" in daemon.log_text(), within=WITHIN, what="the refusal")
        rec.cleared()
        t = time.monotonic()
        await wait_delivering(rig, ["counter"], n=5, since=t)
        rec.recovered()
        result.faults.append(rec)
        # 3. a buffer change: the pipeline restarts under load
        rec = FaultRecord("push: buffer section changed", "SIGHUP, pipeline restart").injected()
        rig.overrides = {"buffer": {"commit_interval": "100ms"}}
        rig.write_config()
        daemon.reload()
        rec.cleared()
        t = time.monotonic()
        await wait_delivering(rig, ["counter", "pushed"], n=5, since=t + 1.0)
        rec.recovered()
        result.faults.append(rec)
        assert daemon.alive
        await finish(rig, result)
        assert_counter_contiguous(rig)
        assert_counter_contiguous(rig, "burst", BURST_POINT)


def _proc_sample(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process from /proc."""
    import os

    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss_kib / 1024, (int(fields[11]) + int(fields[12])) / ticks


async def test_soak(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult, tmp_path: Path,
                    pytestconfig: pytest.Config) -> None:
    """Soak: RSS, CPU and buffer depth over time."""
    seconds = float(pytestconfig.getoption("--soak-seconds"))
    async with RigRun(rig_spec, tmp_path) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        rig.extra_drivers = [burst_section(500)]
        daemon = await rig.start_daemon()
        await wait_delivering(rig)
        t0 = time.monotonic()
        cpu0 = _proc_sample(daemon.pid)[1]
        last_cpu, last_t = cpu0, t0
        while (now := time.monotonic()) - t0 < seconds:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rss, cpu = _proc_sample(daemon.pid)
            buffered = rig.buffer_meta()["buffered"]
            result.samples.append({"t": now - t0, "rss_mib": rss, "cpu_pct": 100 * (cpu - last_cpu) / (now - last_t),
                                   "buffered": float(buffered)})
            last_cpu, last_t = cpu, now
        assert daemon.alive
        samples = result.samples
        third = max(1, len(samples) // 3)
        middle, last = samples[third:2 * third], samples[-third:]
        rss_mid, rss_last = max(s["rss_mib"] for s in middle), max(s["rss_mib"] for s in last)
        buf_mid = max(s["buffered"] for s in middle)
        cpu_avg = sum(s["cpu_pct"] for s in samples) / len(samples)
        result.note(f"{seconds:.0f} s at ~{500 + 30} readings/s: RSS {samples[0]['rss_mib']:.1f} -> "
                    f"{samples[-1]['rss_mib']:.1f} MiB (max middle third {rss_mid:.1f}, last third {rss_last:.1f}); "
                    f"CPU {cpu_avg:.1f}% of a core on average; "
                    f"buffer depth max {max(s['buffered'] for s in samples):.0f}")
        assert rss_last <= rss_mid * 1.15 + 4, f"RSS keeps growing: {rss_mid:.1f} -> {rss_last:.1f} MiB"
        assert not all(s["buffered"] > max(buf_mid, 5000) for s in last), "the buffer keeps growing with the uplink up"
        await finish(rig, result)
        assert_counter_contiguous(rig)


async def test_sigterm_after_first_delivery(rig_spec: RigSpec, rig_report: RigReport, result: ScenarioResult,
                                            tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """SIGTERM right after the first delivered batch, in a loop: every stop is clean and bounded."""
    stops = int(pytestconfig.getoption("--rig-stops"))
    names = [d.name for d in rig_spec.devices if d.driver not in SLOW_TO_START]
    async with RigRun(rig_spec, tmp_path, devices=names) as rig:
        note_skipped(rig, result, rig_report.skipped_devices)
        assert rig.receiver is not None
        took: list[float] = []
        for i in range(stops):
            n = len(rig.receiver.got)
            daemon = await rig.start_daemon(write_config=i == 0)
            await rig.receiver.wait(lambda n=n: len(rig.receiver.got) > n, within=WITHIN,  # type: ignore[misc, union-attr]
                                    what=f"the first delivery of run {i + 1}")
            t0 = time.monotonic()
            rc = await daemon.stop(within=STOP_WITHIN)
            took.append(time.monotonic() - t0)
            assert rc == 0, (f"run {i + 1} of {stops}: daemon exited with {rc} after SIGTERM "
                             f"(SIGKILL after {STOP_WITHIN:g} s):\n{daemon.log_text()[-4000:]}")
        await finish(rig, result)
        assert_counter_contiguous(rig)
        assert rig.receiver.rx.summary().skipped == 0, "every stop was clean: the buffer returned its reserved numbers"
        result.note(f"{stops} SIGTERMs right after the first delivery: every run exited 0; "
                    f"stop took max {max(took):.1f} s, median {sorted(took)[len(took) // 2]:.1f} s")
        result.faults.append(FaultRecord(f"SIGTERM after first delivery x{stops}", "SIGTERM"))
