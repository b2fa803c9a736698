"""The payload codecs against published vectors, and against random bytes: only CodecError escapes."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.lorawan.codecs import (
    CODECS,
    CodecError,
    Partial,
    Position,
    decode_cayenne_lpp,
    decode_raw,
    flatten_object,
    point_name,
)
from drivers.lorawan.config import Codec

G = 9.80665
POINT_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")  # gateway.senml.NAME_RE


def test_every_registered_codec_can_be_configured() -> None:
    assert set(CODECS) | {"object", "none"} == set(Codec.__args__)  # type: ignore[attr-defined]


# -- Cayenne LPP: the examples of the myDevices Cayenne LPP documentation ---------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(
            "03 67 01 10 05 67 00 FF",
            [("temperature_3", 27.2, "Cel"), ("temperature_5", 25.5, "Cel")],
            id="device with 2 temperature sensors",
        ),
        pytest.param("01 67 FF D7", [("temperature_1", -4.1, "Cel")], id="temperature, frame N"),
        pytest.param(
            "06 71 04 D2 FB 2E 00 00",
            [
                ("acceleration_6_x", round(1.234 * G, 5), "m/s2"),
                ("acceleration_6_y", round(-1.234 * G, 5), "m/s2"),
                ("acceleration_6_z", 0.0, "m/s2"),
            ],
            id="accelerometer, frame N+1",
        ),
        pytest.param(
            "01 88 06 76 5F F2 96 0A 00 03 E8",
            [("location_1", Position(42.3519, -87.9094, 10.0), None)],
            id="device with GPS",
        ),
    ],
)
def test_cayenne_lpp_documented_examples(payload: str, expected: list[tuple[str, Any, str | None]]) -> None:
    assert decode_cayenne_lpp(bytes.fromhex(payload)) == expected


# ChirpStack's own Cayenne LPP codec test (chirpstack/src/codec/cayenne_lpp.rs, test_lpp): every
# type on channels 3 and 5, and the values ChirpStack decodes them to, in our names and SenML units.
CHIRPSTACK_LPP = bytes(
    [
        3,
        0,
        100,
        5,
        0,
        210,
        3,
        1,
        100,
        5,
        1,
        210,
        3,
        2,
        0,
        10,
        5,
        2,
        3,
        232,
        3,
        3,
        0,
        10,
        5,
        3,
        3,
        232,
        3,
        100,
        0,
        0,
        0,
        1,
        5,
        100,
        255,
        254,
        253,
        252,
        3,
        101,
        0,
        10,
        5,
        101,
        3,
        232,
        3,
        102,
        5,
        5,
        102,
        3,
        3,
        103,
        1,
        16,
        5,
        103,
        0,
        255,
        3,
        104,
        41,
        5,
        104,
        150,
        3,
        113,
        0,
        1,
        0,
        2,
        0,
        3,
        5,
        113,
        3,
        234,
        7,
        211,
        11,
        187,
        3,
        115,
        4,
        31,
        5,
        115,
        9,
        196,
        3,
        116,
        0,
        1,
        5,
        116,
        255,
        254,
        3,
        117,
        0,
        2,
        5,
        117,
        255,
        253,
        3,
        118,
        0,
        0,
        0,
        1,
        5,
        118,
        255,
        254,
        253,
        251,
        3,
        120,
        0,
        5,
        120,
        100,
        3,
        121,
        0,
        1,
        5,
        121,
        255,
        251,
        3,
        125,
        0,
        7,
        5,
        125,
        255,
        254,
        3,
        128,
        0,
        8,
        5,
        128,
        254,
        253,
        3,
        130,
        0,
        0,
        1,
        16,
        5,
        130,
        1,
        2,
        3,
        4,
        3,
        131,
        0,
        0,
        0,
        12,
        5,
        131,
        255,
        254,
        253,
        254,
        3,
        132,
        0,
        9,
        5,
        132,
        255,
        252,
        3,
        133,
        0,
        0,
        0,
        13,
        5,
        133,
        255,
        254,
        253,
        253,
        3,
        134,
        0,
        1,
        0,
        2,
        0,
        3,
        5,
        134,
        3,
        233,
        7,
        210,
        11,
        187,
        3,
        135,
        100,
        150,
        200,
        5,
        135,
        250,
        190,
        0,
        1,
        136,
        6,
        118,
        95,
        242,
        150,
        10,
        0,
        3,
        232,
        3,
        142,
        0,
        5,
        142,
        1,
    ]
)


def _acc(g: float) -> float:
    return round(g * G, 5)


CHIRPSTACK_LPP_VALUES = {
    "digital_input_3": (100, None),
    "digital_input_5": (210, None),
    "digital_output_3": (100, None),
    "digital_output_5": (210, None),
    "analog_input_3": (0.1, None),
    "analog_input_5": (10.0, None),
    "analog_output_3": (0.1, None),
    "analog_output_5": (10.0, None),
    "generic_3": (1, None),
    "generic_5": (4294901244, None),
    "illuminance_3": (10, "lx"),
    "illuminance_5": (1000, "lx"),
    "presence_3": (5, None),
    "presence_5": (3, None),
    "temperature_3": (27.2, "Cel"),
    "temperature_5": (25.5, "Cel"),
    "humidity_3": (20.5, "%RH"),
    "humidity_5": (75.0, "%RH"),
    "acceleration_3_x": (_acc(0.001), "m/s2"),
    "acceleration_3_y": (_acc(0.002), "m/s2"),
    "acceleration_3_z": (_acc(0.003), "m/s2"),
    "acceleration_5_x": (_acc(1.002), "m/s2"),
    "acceleration_5_y": (_acc(2.003), "m/s2"),
    "acceleration_5_z": (_acc(3.003), "m/s2"),
    "pressure_3": (10550, "Pa"),
    "pressure_5": (25000, "Pa"),  # 105.5 and 250.0 hPa
    "voltage_3": (0.01, "V"),
    "voltage_5": (655.34, "V"),
    "current_3": (0.002, "A"),
    "current_5": (65.533, "A"),
    "frequency_3": (1, "Hz"),
    "frequency_5": (4294901243, "Hz"),
    "percentage_3": (0, "%"),
    "percentage_5": (100, "%"),
    "altitude_3": (1, "m"),
    "altitude_5": (-5, "m"),
    "concentration_3": (7, "ppm"),
    "concentration_5": (65534, "ppm"),
    "power_3": (8, "W"),
    "power_5": (65277, "W"),
    "distance_3": (0.272, "m"),
    "distance_5": (16909.06, "m"),
    "energy_3": (12, "Wh"),
    "energy_5": (4294901246, "Wh"),  # 0.012 and 4294901.246 kWh
    "direction_3": (9, "deg"),
    "direction_5": (65532, "deg"),
    "unix_time_3": (13, "s"),
    "unix_time_5": (4294901245, "s"),
    "gyrometer_3_x": (0.01, None),
    "gyrometer_3_y": (0.02, None),
    "gyrometer_3_z": (0.03, None),
    "gyrometer_5_x": (10.01, None),
    "gyrometer_5_y": (20.02, None),
    "gyrometer_5_z": (30.03, None),
    "colour_3_r": (100, None),
    "colour_3_g": (150, None),
    "colour_3_b": (200, None),
    "colour_5_r": (250, None),
    "colour_5_g": (190, None),
    "colour_5_b": (0, None),
    "location_1": (Position(42.3519, -87.9094, 10.0), None),
    "switch_3": (0, None),
    "switch_5": (1, None),
}


def test_cayenne_lpp_chirpstack_vector() -> None:
    got = decode_cayenne_lpp(CHIRPSTACK_LPP)
    assert {p: (v, u) for p, v, u in got} == CHIRPSTACK_LPP_VALUES
    assert len(got) == len(CHIRPSTACK_LPP_VALUES)


@pytest.mark.parametrize(
    ("payload", "kept", "words"),
    [
        ("03", [], "truncated"),
        ("0367", [], "truncated"),
        ("036701", [], "truncated"),
        ("03670110" + "05FF00", [("temperature_3", 27.2, "Cel")], "unknown data type 255"),
        ("0188067660", [], "GPS on channel 1 truncated"),
        ("0188" + "7FFFFF" + "000000" + "000000", [], "out of range"),
    ],
)
def test_cayenne_lpp_refuses(payload: str, kept: list[Any], words: str) -> None:
    with pytest.raises(Partial, match=words) as e:
        decode_cayenne_lpp(bytes.fromhex(payload))
    assert e.value.readings == kept


def test_raw() -> None:
    assert decode_raw(b"\xaa\x01") == [("payload", b"\xaa\x01", None)]


# -- ChirpStack's decoded object -------------------------------------------------------------


def test_flatten_object() -> None:
    # the object of the MQTT integration's downlink example, and a typical decoder's output
    obj = {
        "temperatureSensor": {"1": 25},
        "humiditySensor": {"1": 32},
        "battery": {"voltage": 3.1, "low": False},
        "label": "ok",
        "nothing": None,
        "samples": [1, 2.5],
        "names": ["a", "b"],
        "nan": math.nan,
    }
    assert flatten_object(obj) == [
        ("temperatureSensor.1", 25),
        ("humiditySensor.1", 32),
        ("battery.voltage", 3.1),
        ("battery.low", False),
        ("label", "ok"),
        ("samples.0", 1),
        ("samples.1", 2.5),
    ]
    with pytest.raises(CodecError, match="more than 3"):
        flatten_object({"a": 1, "b": 2, "c": 3, "d": 4}, max_leaves=3)
    with pytest.raises(CodecError):
        flatten_object([1, 2])
    deep: dict[str, Any] = {"v": 1}
    for _ in range(20):
        deep = {"x": deep}
    assert flatten_object(deep) == []  # deeper than MAX_DEPTH: left out


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("temperatureSensor.1", "temperatureSensor.1"),
        ("a b/c", "a_b/c"),
        ("__x", "x"),
        ("ü", None),
        ("", None),
    ],
)
def test_point_name(path: str, name: str | None) -> None:
    assert point_name(path) == name


# -- hostile input ------------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_cayenne_lpp_random_bytes(data: bytes) -> None:
    try:
        out = decode_cayenne_lpp(data)
    except Partial as e:
        out = e.readings
    except CodecError:
        return
    for point, value, _unit in out:
        assert POINT_RE.match(point)
        assert isinstance(value, int | float | Position)
        if isinstance(value, float):
            assert math.isfinite(value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=40,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_flatten_random_objects(obj: dict[str, Any]) -> None:
    try:
        leaves = flatten_object(obj)
    except CodecError:
        return
    for path, value in leaves:
        assert isinstance(path, str)
        assert isinstance(value, bool | int | float | str)
        name = point_name(path)
        assert name is None or POINT_RE.match(name)
