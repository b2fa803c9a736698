"""ChirpStack's documented event payloads (JSON, and the same messages in Protobuf through
chirpstack-api), topics, downlink commands, frame counters, and hostile input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.lorawan import chirpstack as cs
from drivers.lorawan.frames import FrameCounters, Seen
from hil.devices.chirpstack_ns import DOCUMENTED, to_protobuf

EUI = "0101010101010101"
APP = "17c82e96-be03-4f38-aef3-f83d48582d97"
DEVICE = {"dev_eui": EUI, "application_id": APP, "device_name": "Test device"}

# What each documented example (chirpstack-docs src/chirpstack/integrations/events.md) says.
EXPECTED: dict[str, cs.Event] = {
    "up": cs.Uplink(
        kind="up",
        **DEVICE,
        time_ns=1658136855775023242,
        deduplication_id="3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        dev_addr="00189440",
        f_cnt=0,
        f_port=1,
        dr=1,
        data=b"\xaa",
        rssi=-36,
        snr=10.5,
        gateways=1,
        frequency=867100000,
    ),
    "status": cs.Status(kind="status", **DEVICE, time_ns=1658136906927172638, margin=10, battery=88.3),
    "join": cs.Join(kind="join", **DEVICE, time_ns=1658136808823500726, dev_addr="00189440"),
    "ack": cs.Ack(
        kind="ack",
        **DEVICE,
        time_ns=1658137129235700766,
        queue_item_id="1bbcab1d-6ec6-4136-b3f5-d63be1dc08de",
        acknowledged=True,
        f_cnt_down=3,
    ),
    "txack": cs.TxAck(
        kind="txack",
        **DEVICE,
        time_ns=1658137068929184085,
        queue_item_id="42cb6459-a640-46ec-9623-bdff39dc4736",
        f_cnt_down=2,
        gateway_id="0016c001f153a14c",
    ),
    "log": cs.Log(
        kind="log",
        **DEVICE,
        time_ns=1658137197311414029,
        level="ERROR",
        code="UPLINK_MIC",
        description="MIC of join-request is invalid, make sure keys are correct",
        context={"deduplication_id": "4e91db13-5ce3-4c8c-ab0f-dfc626cf0771"},
    ),
    "location": cs.Location(
        kind="location", **DEVICE, time_ns=1658138111059481003, lat=37.344214, lon=-8.839375, alt=2
    ),
}


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_documented_json_examples(kind: str) -> None:
    topic = f"application/{APP}/device/{EUI}/event/{kind}"
    app, eui, event = cs.parse_topic(topic)
    assert (app, eui, event) == (APP, EUI, kind)
    assert cs.parse_json(kind, json.dumps(DOCUMENTED[kind]).encode(), app, eui) == EXPECTED[kind]


@pytest.mark.parametrize("kind", list(DOCUMENTED))
def test_documented_examples_in_protobuf(kind: str) -> None:
    payload = to_protobuf(kind, DOCUMENTED[kind])  # chirpstack-api's own classes encode them
    assert cs.parse_protobuf(kind, payload, APP, EUI) == EXPECTED[kind]


def test_proto_field_names_and_battery_unavailable() -> None:
    # a JSON-mapping parser must accept the proto field names as well as the lowerCamelCase ones
    doc = {
        "device_info": {"dev_eui": EUI},
        "margin": -3,
        "battery_level_unavailable": True,
        "batteryLevel": 0,
        "external_power_source": True,
    }
    assert cs.parse_json("status", json.dumps(doc).encode(), APP, EUI) == cs.Status(
        kind="status", dev_eui=EUI, application_id=APP, margin=-3, external_power=True, battery=None
    )


def test_uplink_best_gateway_object_and_url_safe_base64() -> None:
    doc = dict(
        DOCUMENTED["up"],
        fCnt=7,
        confirmed=True,
        data=base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("="),
        object={"temperature": 21.5},
        rxInfo=[{"rssi": -110, "snr": -7.5}, {"rssi": -80, "snr": 3.25}, {}],
    )
    up = cs.parse_json("up", json.dumps(doc).encode(), APP, EUI)
    assert isinstance(up, cs.Uplink)
    assert (up.f_cnt, up.confirmed, up.data, up.object) == (7, True, b"\xfb\xff", {"temperature": 21.5})
    assert (up.rssi, up.snr, up.gateways) == (-80, 3.25, 3)


@pytest.mark.parametrize(
    ("topic", "words"),
    [
        ("application/x/device/0101010101010101/event/integration", "not read"),
        ("application/x/device/01010101/event/up", "16 hex"),
        ("other/x/device/0101010101010101/event/up", "not a ChirpStack"),
        ("application/x/device/0101010101010101/command/down", "not a ChirpStack"),
    ],
)
def test_topics_refused(topic: str, words: str) -> None:
    with pytest.raises(cs.EventError, match=words):
        cs.parse_topic(topic)


@pytest.mark.parametrize(
    ("kind", "doc", "words"),
    [
        ("up", {"fCnt": -1}, "fCnt"),
        ("up", {"fCnt": 2**32}, "fCnt"),
        ("up", {"fPort": "x"}, "fPort"),
        ("up", {"data": "%%%"}, "base64"),
        ("up", {"data": base64.b64encode(bytes(243)).decode()}, "at most 242"),
        ("up", {"rxInfo": {"rssi": 1}}, "rxInfo"),
        ("up", {"rxInfo": [{"snr": "loud"}]}, "snr"),
        ("up", {"object": [1, 2]}, "object"),
        ("up", {"time": "yesterday"}, "RFC 3339"),
        ("up", {"time": "2022-07-18T09:34:15"}, "time zone"),
        ("up", {"deviceInfo": {"devEui": "0202020202020202"}}, "does not match"),
        ("status", {"margin": 1.5}, "margin"),
        ("ack", {"acknowledged": "yes"}, "acknowledged"),
        ("location", {"location": {"latitude": 91, "longitude": 0}}, "latitude"),
        ("log", {"level": ["ERROR"]}, "level"),
    ],
)
def test_events_refused(kind: str, doc: dict[str, Any], words: str) -> None:
    with pytest.raises(cs.EventError, match=words):
        cs.parse_json(kind, json.dumps(doc).encode(), APP, EUI)


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"\xff\xfe", b"[" * 100_000, b"{" * 10, b"1e999999", b"x" * (cs.MAX_PAYLOAD + 1)]
)
def test_garbage_json(payload: bytes) -> None:
    with pytest.raises(cs.EventError):
        cs.parse_json("up", payload, APP, EUI)


@given(st.binary(max_size=200))
def test_random_protobuf_only_raises_event_error(payload: bytes) -> None:
    for kind in cs.EVENTS:
        try:
            cs.parse_protobuf(kind, payload, APP, EUI)
        except cs.EventError:
            pass


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "fCnt",
                    "fPort",
                    "data",
                    "rxInfo",
                    "rssi",
                    "snr",
                    "deviceInfo",
                    "devEui",
                    "object",
                    "time",
                    "margin",
                    "batteryLevel",
                    "location",
                    "latitude",
                    "level",
                    "context",
                    "x",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(json_docs)
def test_random_json_only_raises_event_error(doc: Any) -> None:
    for kind in cs.EVENTS:
        try:
            cs.event_from_dict(kind, doc, APP, EUI)
        except cs.EventError:
            pass


# -- downlinks -------------------------------------------------------------------------------------


def test_downlink_json_as_documented() -> None:
    # docs (integrations/mqtt.md): {"devEui", "confirmed", "fPort", "data" (base64) or "object"}
    got = json.loads(cs.encode_downlink(EUI, 10, data=b"\x01\x02", confirmed=True))
    assert got == {"devEui": EUI, "confirmed": True, "fPort": 10, "data": "AQI="}
    got = json.loads(cs.encode_downlink(EUI, 10, obj={"temperatureSensor": {"1": 25}}))
    assert got == {"devEui": EUI, "confirmed": False, "fPort": 10, "object": {"temperatureSensor": {"1": 25}}}
    assert cs.down_topic(APP, EUI) == f"application/{APP}/device/{EUI}/command/down"


def test_downlink_protobuf() -> None:
    from chirpstack_api.integration import integration_pb2

    pb = integration_pb2.DownlinkCommand()
    pb.ParseFromString(cs.encode_downlink(EUI, 5, data=b"\xaa", confirmed=True, encoding="protobuf"))
    assert (pb.dev_eui, pb.f_port, pb.data, pb.confirmed) == (EUI, 5, b"\xaa", True)


@pytest.mark.parametrize(("port", "data"), [(0, b""), (224, b""), (1, bytes(243))])
def test_downlink_refused(port: int, data: bytes) -> None:
    with pytest.raises(ValueError):
        cs.encode_downlink(EUI, port, data=data)


# -- frame counters ---------------------------------------------------------------------------------


def test_frame_counters() -> None:
    fc = FrameCounters(max_gap=100)
    assert fc.seen("a", 10) == Seen("first")
    assert fc.seen("a", 11) == Seen("next", 0, 10)
    assert fc.seen("a", 15) == Seen("gap", 3, 11)  # 12, 13, 14 never arrived
    assert fc.seen("a", 15) == Seen("repeat", 0, 15)
    assert fc.seen("a", 2) == Seen("reset", 0, 15)  # counted again from the start
    assert fc.seen("a", 500) == Seen("reset", 0, 2)  # past max_gap: not a plausible gap
    fc.forget("a")
    assert fc.seen("a", 0) == Seen("first")
    wrap = FrameCounters()
    wrap.seen("b", 2**32 - 1)
    assert wrap.seen("b", 0) == Seen("next", 0, 2**32 - 1)  # 32-bit counters wrap
    assert wrap.seen("b", 3) == Seen("gap", 2, 0)


def test_frame_counters_are_bounded() -> None:
    fc = FrameCounters(max_devices=3)
    for n in range(5):
        fc.seen(f"d{n}", 1)
    assert fc.seen("d0", 2) == Seen("first")  # forgotten, least recently heard first
    assert fc.seen("d4", 2) == Seen("next", 0, 1)
