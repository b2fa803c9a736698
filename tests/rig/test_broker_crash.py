"""What a mosquitto crash loses, on a real mosquitto (no rig needed).

Mosquitto acknowledges a QoS 1 PUBLISH before it writes it to its database, so a SIGKILL loses
what it acknowledged since its last save that no subscriber had taken. ``acked_unsaved`` reads
exactly that from the broker's packet log; the broker restart scenario relies on it to tell the
broker's loss from the gateway's (hil/README.md, "Broker restart").
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.mqtt import MqttSession, MqttSettings
from gateway.receiver.mqtt import receiver_settings
from hil.mosquitto import Mosquitto, acked_unsaved
from tests.gateway.helpers import until
from tests.rig.helpers import BrokerCrash, lost_in_crash

TOPIC = "sensegate/gw-1/batch"
N = 12


async def _away_receiver(broker: Mosquitto) -> None:
    """A receiver's persistent session subscribed to TOPIC, on disk (a clean stop saves it), and away."""
    rx = MqttSession(receiver_settings(broker.url, client_id="rx"))
    await rx.connect()
    rx.client.subscribe(TOPIC, qos=1)
    await until(lambda: "Sending SUBACK to rx" in broker.instance_log())
    await rx.close()
    broker.stop()
    broker.start()


async def _publish(broker: Mosquitto) -> MqttSession:
    """N QoS 1 messages (payload = index, paho's mids 1..N), each acknowledged by the broker."""
    gw = MqttSession(MqttSettings.from_url(broker.url, client_id="gw-1", protocol="5"))
    await gw.connect()
    infos = [gw.client.publish(TOPIC, str(i).encode(), qos=1) for i in range(N)]
    await until(lambda: all(i.is_published() for i in infos))
    assert [i.mid for i in infos] == list(range(1, N + 1))
    return gw


async def _delivered_after_restart(broker: Mosquitto) -> set[int]:
    """Restart the broker and take what the receiver's session still holds: a marker published
    after the restart comes after everything restored (one session's queue is in order)."""
    broker.start()
    got: list[bytes] = []
    rx = MqttSession(receiver_settings(broker.url, client_id="rx"), on_message=lambda m: got.append(bytes(m.payload)))
    await rx.connect()
    gw = MqttSession(MqttSettings.from_url(broker.url, client_id="gw-1b", protocol="5"))
    await gw.connect()
    gw.client.publish(TOPIC, b"end", qos=1)
    try:
        await until(lambda: b"end" in got)
    finally:
        await gw.close()
        await rx.close()
    return {int(p) for p in got if p != b"end"}


async def test_a_crash_loses_what_was_acknowledged_after_the_last_save(tmp_path: Path) -> None:
    """The rig's broker (autosave every second): the messages a SIGKILL took are exactly those
    the log shows acknowledged after the last save."""
    broker = Mosquitto(tmp_path, log_packets=True)
    broker.start()
    try:
        await _away_receiver(broker)
        gw = await _publish(broker)
        broker.kill()
        await gw.close(graceful=False)
        unsaved = acked_unsaved(broker.instance_log(), "/batch")
        assert {m.client for m in unsaved} <= {"gw-1"} and all(m.topic == TOPIC for m in unsaved)
        lost = {m.mid - 1 for m in unsaved}
        delivered = await _delivered_after_restart(broker)
        assert delivered == set(range(N)) - lost, f"lost {sorted(set(range(N)) - delivered)}, log says {sorted(lost)}"
    finally:
        broker.stop()


async def test_autosave_on_changes_saves_in_the_pass_after_the_puback(tmp_path: Path) -> None:
    """With autosave_on_changes, a message queued for an away session is on disk right after the
    loop pass that acknowledged it; killed after that save, the broker loses nothing."""
    broker = Mosquitto(tmp_path, log_packets=True, autosave_on_changes=True)
    broker.start()
    try:
        await _away_receiver(broker)
        gw = await _publish(broker)

        def saved_after_last_puback() -> bool:
            log = broker.instance_log()
            return log.rfind("Saving in-memory database") > log.rfind(f"Sending PUBACK to gw-1 (m{N}, rc0)") > 0

        await until(saved_after_last_puback)
        gw.client.publish("other/topic", b"x", qos=0)  # a line after the save: it completed
        await until(lambda: "'other/topic'" in broker.instance_log())
        broker.kill()
        await gw.close(graceful=False)
        assert acked_unsaved(broker.instance_log(), "/batch") == []
        assert await _delivered_after_restart(broker) == set(range(N))
    finally:
        broker.stop()


async def test_an_away_session_past_max_queued_messages_loses_acknowledged_messages(tmp_path: Path) -> None:
    """No crash needed: a session that is away keeps max_queued_messages; mosquitto acknowledges
    the rest to the publisher (reason 0) and drops them for the session (docs/topics.md)."""
    broker = Mosquitto(tmp_path, log_packets=True, extra=["max_queued_messages 5"])
    broker.start()
    try:
        await _away_receiver(broker)
        gw = await _publish(broker)
        await gw.close()
        log = broker.instance_log()
        assert len(re.findall(r"Sending PUBACK to gw-1 \(m\d+, rc0\)", log)) == N  # every one taken, says the PUBACK
        assert "Outgoing messages are being dropped for client rx" in log
        broker.stop()
        assert await _delivered_after_restart(broker) == set(range(5))
    finally:
        broker.stop()


LOG = """\
1700000000: mosquitto version 2.0.11 running
1700000001: Received PUBLISH from gw-1 (d0, q1, r0, m1, 'sensegate/gw-1/batch', ... (300 bytes))
1700000001: Sending PUBLISH to rx (d0, q1, r0, m7, 'sensegate/gw-1/batch', ... (300 bytes))
1700000001: Sending PUBACK to gw-1 (m1, rc0)
1700000002: Saving in-memory database to /tmp/x/mosquitto.db.
1700000002: Received PUBLISH from gw-1 (d0, q1, r0, m2, 'sensegate/gw-1/batch', ... (310 bytes))
1700000002: Sending PUBACK to gw-1 (m2, rc0)
1700000002: Received PUBLISH from gw-1 (d0, q1, r1, m3, 'sensegate/gw-1/status', ... (74 bytes))
1700000002: Sending PUBACK to gw-1 (m3, rc16)
1700000002: Received PUBLISH from gw-2 (d0, q1, r0, m2, 'sensegate/gw-2/batch', ... (200 bytes))
1700000002: Sending PUBACK to gw-2 (m2, rc16)
1700000003: Received PUBLISH from gw-1 (d1, q1, r0, m4, 'sensegate/gw-1/batch', ... (320 bytes))
1700000003: Sending PUBACK to gw-1 (m4, rc0)
1700000003: Received PUBLISH from gw-1 (d0, q1, r0, m5, 'sensegate/gw-1/batch', ... (330 bytes))
"""


def test_acked_unsaved_reads_the_window() -> None:
    got = acked_unsaved(LOG, "/batch")
    # m1 was saved; m3 is not a batch; gw-2's had no subscriber (rc16: not taken); m5 was never acknowledged
    assert [(m.client, m.mid, m.size) for m in got] == [("gw-1", 2, 310), ("gw-1", 4, 320)]
    assert [m.mid for m in acked_unsaved(LOG)] == [2, 4]  # m3's PUBACK is rc16: no subscriber, nothing held


def test_a_save_the_crash_may_have_cut_does_not_count() -> None:
    cut = LOG + "1700000004: Saving in-memory database to /tmp/x/mosquitto.db.\n"
    assert [m.mid for m in acked_unsaved(cut, "/batch")] == [2, 4]
    failed = cut + "1700000004: Error saving in-memory database, unable to open /tmp/x/mosquitto.db.new for writing.\n"
    assert [m.mid for m in acked_unsaved(failed, "/batch")] == [2, 4]
    done = cut + "1700000004: Received PINGREQ from gw-1\n"
    assert acked_unsaved(done, "/batch") == []
    assert acked_unsaved("", "/batch") == [] and acked_unsaved("garbage\n\x00((( m1, rc0)\n", "") == []


def test_only_what_both_sides_prove_is_the_brokers() -> None:
    """lost_in_crash, as the scenario's finish() uses it: batches 3 and 4 (readings 13-19) never
    arrived; the gateway recorded their PUBACK from the killed broker, whose log shows 2 unsaved."""
    batches = {1: (1, 10), 2: (11, 12), 5: (20, 25), 6: (26, 30)}
    crash = BrokerCrash(acked=frozenset({2, 3, 4}), unacked=frozenset({5}), unsaved=2)
    missing = set(range(13, 20))
    assert lost_in_crash(batches, 6, missing, crash) == ([3, 4], missing)
    with pytest.raises(AssertionError, match="batches 4 never arrived, and the gateway had no PUBACK"):
        lost_in_crash(batches, 6, missing, replace(crash, acked=frozenset({3})))
    with pytest.raises(AssertionError, match="log shows only 1 batch messages"):
        lost_in_crash(batches, 6, missing, replace(crash, unsaved=1))
    with pytest.raises(AssertionError, match="batches 7 never arrived"):  # the last batch is the gateway's to send
        lost_in_crash(batches, 7, missing | {31}, crash)
    # a reading missing from a batch that arrived is not the broker's: finish() fails on it
    assert lost_in_crash(batches, 6, missing | {4}, crash)[1] == missing
