"""Zigbee2MQTT's documented topics and payloads through the protocol module, and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.zigbee2mqtt import z2m
from hil.devices.zigbee2mqtt_bridge import DEVICES

# the bridge/devices example of the documentation as published there, with "exposes" elided
DOC_DEVICES = [
    {**d, "definition": {**d["definition"], "exposes": []} if d["definition"] else None}
    for d in DEVICES
    if d["friendly_name"] in ("my_plug", "my_sensor", "Coordinator")
]


def test_documented_device_list() -> None:
    got = z2m.parse_devices(json.dumps(DOC_DEVICES).encode())
    assert [(d.ieee, d.friendly_name, d.type, d.supported, d.model) for d in got] == [
        ("0x00158d00018255df", "my_plug", "Router", True, "ZNCZ02LM"),
        ("0x00169a00022256da", "my_sensor", "Router", False, ""),
        ("0x00124b00120144ae", "Coordinator", "Coordinator", False, ""),
    ]


def test_exposes_become_units_ranges_and_access() -> None:
    devices = {d.friendly_name: d for d in z2m.parse_devices(json.dumps(DEVICES).encode())}
    bulb = devices["my_bulb"].exposes
    assert set(bulb) == {"state", "brightness", "color_temp", "color.x", "color.y", "effect", "linkquality"}
    assert bulb["brightness"] == z2m.Expose("brightness", "numeric", 7, None, 1.0, 0.0, 254.0)
    assert bulb["state"].values == ("ON", "OFF", "TOGGLE") and bulb["state"].settable
    assert bulb["color_temp"].unit is None  # mired: no SenML unit
    climate = devices["garden/climate"].exposes
    assert (climate["temperature"].unit, climate["humidity"].unit, climate["battery"].unit) == ("Cel", "%RH", "%EL")
    assert (climate["pressure"].unit, climate["pressure"].factor) == ("Pa", 100)
    assert not climate["temperature"].settable


def test_documented_states_flattened_in_senml_units() -> None:
    devices = {d.friendly_name: d for d in z2m.parse_devices(json.dumps(DEVICES).encode())}
    # the documentation's examples: WSDCGQ01LM, WXKG01LM, RTCGQ01LM, LED1545G12
    climate = z2m.parse_state(b'{"temperature": 27.34, "humidity": 44.72, "pressure": 1013.2}')
    assert z2m.flatten_state(climate, devices["garden/climate"].exposes) == [
        ("temperature", 27.34, "Cel"),
        ("humidity", 44.72, "%RH"),
        ("pressure", 101320.0, "Pa"),
    ]
    assert z2m.flatten_state({"action": "single"}, {}) == [("action", "single", None)]
    assert z2m.flatten_state({"occupancy": True}, {}) == [("occupancy", True, None)]
    bulb = {"state": "ON", "brightness": 215, "color_temp": 325, "color": {"x": 0.123, "y": 0.456}, "x": None}
    assert z2m.flatten_state(bulb, devices["my_bulb"].exposes) == [
        ("state", "ON", None),
        ("brightness", 215, None),
        ("color_temp", 325, None),
        ("color.x", 0.123, None),
        ("color.y", 0.456, None),
    ]


@pytest.mark.parametrize(
    ("unit", "value", "senml", "expected"),
    [
        ("°F", 212, "Cel", 100.0),
        ("mV", 3000, "V", 3.0),
        ("kWh", 1.5, "Wh", 1500.0),
        ("mA", 250, "A", 0.25),
        ("min", 2, "s", 120),
        ("µg/m³", 12, "ug/m3", 12),
    ],
)
def test_unit_conversion(unit: str, value: float, senml: str, expected: float) -> None:
    dev = [
        {
            "ieee_address": "0x0000000000000001",
            "friendly_name": "d",
            "definition": {"exposes": [{"type": "numeric", "name": "v", "property": "v", "unit": unit, "access": 1}]},
        }
    ]
    exposes = z2m.parse_devices(json.dumps(dev).encode())[0].exposes
    assert z2m.flatten_state({"v": value}, exposes) == [("v", expected, senml)]


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("zigbee2mqtt/bridge/devices", ("devices", "")),
        ("zigbee2mqtt/bridge/state", ("bridge_state", "")),
        ("zigbee2mqtt/bridge/event", ("bridge_event", "")),
        ("zigbee2mqtt/bridge/logging", ("bridge", "")),
        ("zigbee2mqtt/my_bulb", ("state", "my_bulb")),
        ("zigbee2mqtt/garden/climate", ("state", "garden/climate")),  # a friendly name with a /
        ("zigbee2mqtt/garden/climate/availability", ("availability", "garden/climate")),
        ("zigbee2mqtt/my_bulb/set", ("command", "my_bulb")),
        ("zigbee2mqtt/my_bulb/set/state", ("command", "my_bulb")),
        ("zigbee2mqtt/my_bulb/get", ("command", "my_bulb")),
        ("other/my_bulb", ("unknown", "")),
    ],
)
def test_topics(topic: str, expected: tuple[str, str]) -> None:
    assert z2m.classify(topic, "zigbee2mqtt", {"my_bulb", "garden/climate"}) == expected


@pytest.mark.parametrize(
    ("payload", "online"),
    [
        (b"online", True),
        (b"offline", False),
        (b'{"state":"online"}', True),
        (b'{"state": "offline"}', False),
    ],
)
def test_availability_both_payload_modes(payload: bytes, online: bool) -> None:
    assert z2m.parse_online(payload) is online


@pytest.mark.parametrize("payload", [b"", b"maybe", b'{"state": "away"}', b"[1]", b"\xff"])
def test_availability_refused(payload: bytes) -> None:
    with pytest.raises(z2m.Z2mError):
        z2m.parse_online(payload)


def test_documented_bridge_events() -> None:
    assert z2m.parse_event(
        b'{"type":"device_leave","data":{"ieee_address":"0x90fd9ffffe6494fc","friendly_name":"my_bulb"}}'
    ) == ("device_leave", "0x90fd9ffffe6494fc", "my_bulb")
    assert (
        z2m.parse_event(
            b'{"type":"device_joined","data":{"friendly_name":"0x90fd9ffffe6494fc",'
            b'"ieee_address":"0x90fd9ffffe6494fc"}}'
        )[0]
        == "device_joined"
    )


def test_set_values_are_checked_against_exposes() -> None:
    bulb = {d.friendly_name: d for d in z2m.parse_devices(json.dumps(DEVICES).encode())}["my_bulb"].exposes
    assert z2m.set_value(bulb["state"], "TOGGLE") == "TOGGLE"
    assert z2m.set_value(bulb["state"], True) == "ON"
    assert z2m.set_value(bulb["brightness"], 254) == 254
    assert z2m.set_value(bulb["effect"], "blink") == "blink"
    assert json.loads(z2m.encode_set("state", "ON")) == {"state": "ON"}  # the documented set payload
    for expose, value, words in [
        (bulb["brightness"], 255, "outside"),
        (bulb["brightness"], "bright", "number"),
        (bulb["state"], "DIM", "takes ON"),
        (bulb["effect"], "dance", "one of"),
        (bulb["linkquality"], 1, "not settable"),
        (bulb["color.x"], 0.5, "composite"),
        (None, 1, "does not expose"),
    ]:
        with pytest.raises(z2m.Z2mError, match=words):
            z2m.set_value(expose, value)


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b"[1]",
        b'[{"ieee_address": "0x12", "friendly_name": "x"}]',
        b'[{"ieee_address": "0x0000000000000001"}]',
        b"[" * 10_000,
        b"not json",
        json.dumps([{"ieee_address": "0x0000000000000001", "friendly_name": "x"}] * (z2m.MAX_DEVICES + 1)).encode(),
    ],
)
def test_device_list_refused(payload: bytes) -> None:
    with pytest.raises(z2m.Z2mError):
        z2m.parse_devices(payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda c: (
        st.lists(c, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ieee_address",
                    "friendly_name",
                    "definition",
                    "exposes",
                    "type",
                    "property",
                    "features",
                    "unit",
                    "access",
                    "values",
                    "value_min",
                    "state",
                    "x",
                ]
            ),
            c,
            max_size=5,
        )
    ),
    max_leaves=40,
)


@given(json_values)
def test_random_documents_only_raise_z2m_error(doc: Any) -> None:
    payload = json.dumps(doc).encode()
    for parse in (z2m.parse_devices, z2m.parse_state, z2m.parse_online, z2m.parse_event):
        try:
            parse(payload)
        except z2m.Z2mError:
            pass
    if isinstance(doc, dict):
        for path, value, _unit in z2m.flatten_state(doc, {}):
            assert isinstance(path, str) and isinstance(value, bool | int | float | str)
