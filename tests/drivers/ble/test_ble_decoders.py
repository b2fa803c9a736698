"""The advertisement decoders against the formats' published test vectors, and against
random bytes: only DecodeError (or None) may come out, never anything else."""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble.decoders import (
    BTHOME_UUID,
    EDDYSTONE_UUID,
    DecodeError,
    Encrypted,
    Partial,
    Unsupported,
    decode_advertisement,
    decode_bthome,
    decode_eddystone,
    decode_ibeacon,
    decode_ruuvi,
    decode_struct,
)

G = 9.80665
POINT_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")  # gateway.senml.NAME_RE


def as_dict(decoded: list[tuple[str, Any, str | None]]) -> dict[str, tuple[Any, str | None]]:
    return {p: (v, u) for p, v, u in decoded}


# -- Ruuvi RAWv2: the four vectors of docs.ruuvi.com / ruuvi-sensor-protocols dataformat_05.md --


def ruuvi_expected(
    temp: float, pres: int, hum: float, acc: tuple[float, float, float], tx: int, volt: float, move: int, seq: int
) -> dict[str, tuple[Any, str | None]]:
    """The published values (G for acceleration) in the units the driver emits."""
    return {
        "temperature": (temp, "Cel"),
        "humidity": (hum, "%RH"),
        "pressure": (pres, "Pa"),
        "acceleration_x": (round(acc[0] * G, 5), "m/s2"),
        "acceleration_y": (round(acc[1] * G, 5), "m/s2"),
        "acceleration_z": (round(acc[2] * G, 5), "m/s2"),
        "battery_voltage": (volt, "V"),
        "tx_power": (tx, "dBm"),
        "movement_counter": (move, "count"),
        "measurement_sequence": (seq, None),
    }


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F",
            ruuvi_expected(24.3, 100044, 53.49, (0.004, -0.004, 1.036), 4, 2.977, 66, 205),
            id="valid",
        ),
        pytest.param(
            "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F",
            ruuvi_expected(163.835, 115534, 163.835, (32.767, 32.767, 32.767), 20, 3.646, 254, 65534),
            id="maximum",
        ),
        pytest.param(
            "058001000000008001800180010000000000CBB8334C884F",
            ruuvi_expected(-163.835, 50000, 0.0, (-32.767, -32.767, -32.767), -40, 1.6, 0, 0),
            id="minimum",
        ),
        pytest.param("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF", {}, id="invalid: all not available"),
    ],
)
def test_ruuvi_rawv2_vectors(raw: str, expected: dict[str, tuple[Any, str | None]]) -> None:
    assert as_dict(decode_ruuvi(bytes.fromhex(raw))) == expected


def test_ruuvi_field_examples() -> None:
    # the spec's per-field examples: 0x01C3 = +2.255 degC, 0xFE3D = -2.255 degC, 1000 mG
    base = bytearray.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    base[1:3] = b"\x01\xc3"
    base[7:9] = b"\x03\xe8"
    got = as_dict(decode_ruuvi(bytes(base)))
    assert got["temperature"] == (2.255, "Cel")
    assert got["acceleration_x"] == (round(1.0 * G, 5), "m/s2")
    base[1:3] = b"\xfe\x3d"
    assert as_dict(decode_ruuvi(bytes(base)))["temperature"] == (-2.255, "Cel")


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", DecodeError),
        ("0512FC", DecodeError),  # truncated
        ("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F00", DecodeError),  # one byte too many
        ("03291A1ECE1EFC18F94202CA0B53", Unsupported),  # RAWv1 (format 3) is not read
    ],
)
def test_ruuvi_refuses(raw: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_ruuvi(bytes.fromhex(raw))


# -- BTHome v2: the examples of bthome.io/format ------------------------------------------

# (object hex from the spec table's "Example" column, point, result, SenML unit)
BTHOME_TABLE = [
    ("518756", "acceleration", 22.151, "m/s2"),
    ("0161", "battery", 97, "%EL"),
    ("12E204", "co2", 1250, "ppm"),
    ("56E803", "conductivity", 0.1, "S/m"),  # 1000 uS/cm
    ("0960", "count", 96, "count"),
    ("3D0960", "count", 24585, "count"),
    ("3E2A2C0960", "count", 1611213866, "count"),
    ("59EA", "count", -22, "count"),
    ("5AEAEA", "count", -5398, "count"),
    ("5BEA0234EA", "count", -365690134, "count"),
    ("434E34", "current", 13.39, "A"),
    ("5D02EA", "current", -5.63, "A"),
    ("08CA06", "dewpoint", 17.38, "Cel"),
    ("400C00", "distance", 12, "mm"),
    ("414E00", "distance", 7.8, "m"),
    ("424E3400", "duration", 13.39, "s"),
    ("4D12138A14", "energy", 344593.17, "kWh"),
    ("0A138A14", "energy", 1346.067, "kWh"),
    ("4B138A14", "gas", 1346.067, "m3"),
    ("4C41018A01", "gas", 25821.505, "m3"),
    ("528756", "gyroscope", 22.151, None),
    ("03BF13", "humidity", 50.55, "%RH"),
    ("2E23", "humidity", 35, "%RH"),
    ("05138A14", "illuminance", 13460.67, "lx"),
    ("065E1F", "mass", 80.3, "kg"),
    ("073E1D", "mass", 7486 * 45359237 / 10**10, "kg"),  # 74.86 lb
    ("14020C", "moisture", 30.74, "%"),
    ("2F23", "moisture", 35, "%"),
    ("0D120C", "pm2_5", 3090, "ug/m3"),
    ("0E021C", "pm10", 7170, "ug/m3"),
    ("0B021B00", "power", 69.14, "W"),
    ("5C02FBFFFF", "power", -12.78, "W"),
    ("04138A01", "pressure", 100883, "Pa"),  # 1008.83 hPa
    ("540C48656C6C6F20576F726C6421", "raw", b"Hello World!", None),
    ("3F020C", "rotation", 307.4, "deg"),
    ("444E34", "speed", 133.9, "m/s"),
    ("57EA", "temperature", -22, "Cel"),
    ("58EA", "temperature", -7.7, "Cel"),
    ("451101", "temperature", 27.3, "Cel"),
    ("02CA09", "temperature", 25.06, "Cel"),
    ("530C48656C6C6F20576F726C6421", "text", "Hello World!", None),
    ("505D396164", "timestamp", 1684093277, "s"),
    ("133301", "tvoc", 307, "ug/m3"),
    ("0C020C", "voltage", 3.074, "V"),
    ("4A020C", "voltage", 307.4, "V"),
    ("4E87562A01", "volume", 19551.879, "l"),
    ("478756", "volume", 2215.1, "l"),
    ("48DC87", "volume", 34.78, "l"),  # 34780 mL
    ("5587562A01", "volume_storage", 19551.879, "l"),
    ("49DC87", "volume_flow_rate", 34.78 / 3600, "m3/s"),  # 34.780 m3/h
    ("4632", "uv_index", 5.0, None),
    ("4F87562A01", "water", 19551.879, "l"),
    ("5E9F8C", "direction", 359.99, "deg"),
    ("5FA00F", "precipitation", 400.0, "mm"),  # 0.1 mm steps (issue 16: was read as 4000)
    ("6001", "channel", 1, None),
    ("61AC0D", "rotational_speed", 3500, "1/min"),  # rpm
    ("624099DFFF", "speed", -2.123456, "m/s"),
    ("630057D0FF", "acceleration", -3.123456, "m/s2"),
    ("6402", "light_level", 2, None),  # 0 dark, 1 twilight, 2 bright
    ("6503", "settings_revision", 3, None),
    ("1501", "battery_low", True, None),
    ("1A00", "door", False, None),
    ("2100", "motion", False, None),
    ("2D01", "window", True, None),
    ("3A01", "button", "press", None),
    ("3A04", "button", "long_press", None),
    ("3C0103", "dimmer", -3, "count"),  # rotate left 3 steps
    ("3C020A", "dimmer", 10, "count"),  # rotate right 10 steps
    ("3B0000", "command", "off", None),
    ("3B0001", "command", "on", None),
    ("3B0002", "command", "toggle", None),
]


@pytest.mark.parametrize(("obj", "point", "value", "unit"), BTHOME_TABLE, ids=[r[0] for r in BTHOME_TABLE])
def test_bthome_object_examples(obj: str, point: str, value: Any, unit: str | None) -> None:
    got = decode_bthome(bytes.fromhex("40" + obj))
    assert got == [(point, value, unit)]
    assert type(got[0][1]) is type(value)


def test_bthome_format_page_example_with_multiple_objects() -> None:
    # bthome.io/format: service data D2FC 40 02C409 03BF13 -> 25.00 degC, 50.55 %
    ad = bytes.fromhex("020106" + "0B094449592D73656E736F72" + "0A16D2FC4002C40903BF13")
    service_data = ad[-9:]
    assert service_data[:2] == b"\xd2\xfc"  # the UUID, little-endian
    assert decode_bthome(service_data[2:]) == [("temperature", 25.0, "Cel"), ("humidity", 50.55, "%RH")]


def test_bthome_packet_id_device_info_and_repeats() -> None:
    data = bytes.fromhex("44" + "0009" + "0161" + "02CA09" + "02C409" + "F00100" + "F100010204" + "F2000106")
    assert decode_bthome(data) == [  # 0x44: v2, trigger based; packet id and device info consumed
        ("battery", 97, "%EL"),
        ("temperature", 25.06, "Cel"),
        ("temperature_2", 25.0, "Cel"),
    ]


def test_bthome_no_event_keeps_its_slot() -> None:
    # 3A00 3A01: "no event for the first button, press for the second"
    assert decode_bthome(bytes.fromhex("403A003A01")) == [("button_2", "press", None)]


def test_bthome_stops_at_unknown_object_id_and_says_so() -> None:
    # the spec: stop at an object id this receiver does not know; what came before still counts,
    # and the rest of the payload is reported, not silently thrown away
    with pytest.raises(Partial, match=r"unknown object id 0xFE at byte 4: 6 byte\(s\) not read") as e:
        decode_bthome(bytes.fromhex("40" + "02CA09" + "FE0102" + "03BF13"))
    assert e.value.readings == [("temperature", 25.06, "Cel")]
    with pytest.raises(Partial) as e:
        decode_bthome(bytes.fromhex("40FECA09"))  # nothing readable at all
    assert e.value.readings == []


def test_bthome_command_steps() -> None:
    # 0x3B: argument length (low 5 bits), opcode, arguments; step up/down carry the steps
    assert decode_bthome(bytes.fromhex("403B010305")) == [("command", "step_up", None), ("command_steps", 5, "count")]
    assert decode_bthome(bytes.fromhex("403B010405")) == [
        ("command", "step_down", None),
        ("command_steps", -5, "count"),
    ]
    # an opcode this version does not name keeps its number; its arguments are skipped
    assert decode_bthome(bytes.fromhex("403B0209AABB" + "02CA09")) == [
        ("command", "opcode_0x09", None),
        ("temperature", 25.06, "Cel"),
    ]
    with pytest.raises(DecodeError, match="truncated"):
        decode_bthome(bytes.fromhex("403B0503"))


def test_bthome_mac_address_flag() -> None:
    # device info bit 1: the device's MAC (6 bytes, reversed) precedes the objects
    data = bytes.fromhex("42" + "B2188D38C1A4" + "04138A01")
    assert decode_bthome(data) == [("pressure", 100883, "Pa")]  # 1008.83 hPa
    with pytest.raises(DecodeError, match="MAC address truncated"):
        decode_bthome(bytes.fromhex("42B2188D38"))


# -- BTHome v2: the vectors of the reference parser's tests (Bluetooth-Devices/bthome-ble,
# tests/test_parser_v2.py): service data after the UUID, and its values in our points and SenML
# units (hPa -> Pa, uS/cm -> S/m, mL -> l, lb -> kg, m3/h -> m3/s; timestamps as epoch seconds).
# Where that parser numbers repeated measurements temperature_1, temperature_2, we follow the
# BTHome format page: temperature, temperature_2.
BTHOME_REFERENCE: list[tuple[str, str, list[tuple[str, Any, str | None]]]] = [
    ("mac_as_name", "4004138a01", [("pressure", 100883, "Pa")]),
    ("sleepy_device", "4404138a01", [("pressure", 100883, "Pa")]),
    ("with_mac", "42b2188d38c1a404138a01", [("pressure", 100883, "Pa")]),
    ("shelly_blu_ht_display_zb", "40002e01641e012e34451601",
     [("battery", 100, "%EL"), ("light", True, None), ("humidity", 52, "%RH"), ("temperature", 27.8, "Cel")]),
    ("packet_id_temperature_humidity_battery", "400009015d025d0903b718",
     [("battery", 93, "%EL"), ("temperature", 23.97, "Cel"), ("humidity", 63.27, "%RH")]),
    ("temperature_humidity", "4002ca0903bf13", [("temperature", 25.06, "Cel"), ("humidity", 50.55, "%RH")]),
    ("identical_packet_id", "400009", []),
    ("illuminance", "4005138a14", [("illuminance", 13460.67, "lx")]),
    ("mass_kilograms", "40065e1f", [("mass", 80.3, "kg")]),
    ("mass_pounds", "40073e1d", [("mass", 7486 * 45359237 / 10**10, "kg")]),
    ("dew_point", "4008ca06", [("dewpoint", 17.38, "Cel")]),
    ("count", "400960", [("count", 96, "count")]),
    ("energy", "400a138a14", [("energy", 1346.067, "kWh")]),
    ("power", "400b021b00", [("power", 69.14, "W")]),
    ("voltage", "400c020c", [("voltage", 3.074, "V")]),
    ("binary_sensor", "400f01", [("generic_boolean", True, None)]),
    ("binary_sensor_power", "401001", [("power_on", True, None)]),
    ("binary_sensor_opening", "401100", [("opening", False, None)]),
    ("binary_sensor_window", "402d01", [("window", True, None)]),
    ("pm", "400d120c0e021c", [("pm2_5", 3090, "ug/m3"), ("pm10", 7170, "ug/m3")]),
    ("co2", "4012e204", [("co2", 1250, "ppm")]),
    ("voc", "40133301", [("tvoc", 307, "ug/m3")]),
    ("moisture", "4014020c", [("moisture", 30.74, "%")]),
    ("event_button_long_press", "403a04", [("button", "long_press", None)]),
    ("event_triple_button_device", "403a003a013a03", [("button_2", "press", None), ("button_3", "triple_press", None)]),
    ("event_button_hold_press", "403a80", [("button", "hold_press", None)]),
    ("event_dimmer_rotate_left_3_steps", "403c0103", [("dimmer", -3, "count")]),
    ("rotation", "403f020c", [("rotation", 307.4, "deg")]),
    ("distance_millimeters", "40400c00", [("distance", 12, "mm")]),
    ("distance_meters", "40414e00", [("distance", 7.8, "m")]),
    ("duration", "40424e3400", [("duration", 13.39, "s")]),
    ("current", "40434e34", [("current", 13.39, "A")]),
    ("speed", "40444e34", [("speed", 133.9, "m/s")]),
    ("speed_signed", "40624099dfff", [("speed", -2.123456, "m/s")]),
    ("temperature_2", "40451101", [("temperature", 27.3, "Cel")]),
    ("uv_index", "404632", [("uv_index", 5.0, None)]),
    ("volume_liters", "40478756", [("volume", 2215.1, "l")]),
    ("volume_milliliters", "4048dc87", [("volume", 34.78, "l")]),
    ("volume_flow_rate", "4049dc87", [("volume_flow_rate", 34.78 / 3600, "m3/s")]),
    ("voltage_2", "404a020c", [("voltage", 307.4, "V")]),
    ("gas", "404b138a14", [("gas", 1346.067, "m3")]),
    ("gas_2", "404c41018a01", [("gas", 25821.505, "m3")]),
    ("energy_2", "404d12138a14", [("energy", 344593.17, "kWh")]),
    ("volume_liters_2", "404e87562a01", [("volume", 19551.879, "l")]),
    ("volume_water", "404f87562a01", [("water", 19551.879, "l")]),
    ("timestamp", "44505d396164", [("timestamp", 1684093277, "s")]),  # 2023-05-14T19:41:17Z
    ("acceleration", "44518756", [("acceleration", 22.151, "m/s2")]),
    ("acceleration_signed", "40630057d0ff", [("acceleration", -3.123456, "m/s2")]),
    ("gyroscope", "44528756", [("gyroscope", 22.151, None)]),
    ("text", "44530c48656c6c6f20576f726c6421", [("text", "Hello World!", None)]),
    ("raw", "44540c48656c6c6f20576f726c6421", [("raw", b"Hello World!", None)]),
    ("volume_storage", "405587562a01", [("volume_storage", 19551.879, "l")]),
    ("conductivity", "4056e803", [("conductivity", 0.1, "S/m")]),
    ("temperature_1_byte", "4057ea", [("temperature", -22, "Cel")]),
    ("temperature_1_byte_2", "4058ea", [("temperature", -7.7, "Cel")]),
    ("count_signed", "4059ea", [("count", -22, "count")]),
    ("count_signed_2_bytes", "405aeaea", [("count", -5398, "count")]),
    ("count_signed_4_bytes", "405bea0234ea", [("count", -365690134, "count")]),
    ("power_signed", "405c02fbffff", [("power", -12.78, "W")]),
    ("current_signed", "405d02ea", [("current", -5.63, "A")]),
    ("double_temperature", "4002ca0902cf09", [("temperature", 25.06, "Cel"), ("temperature_2", 25.11, "Cel")]),
    ("triple_temperature_double_humidity_battery", "4002ca0902cf0902cf0803b71803b717015d",
     [("temperature", 25.06, "Cel"), ("temperature_2", 25.11, "Cel"), ("temperature_3", 22.55, "Cel"),
      ("humidity", 63.27, "%RH"), ("humidity_2", 60.71, "%RH"), ("battery", 93, "%EL")]),
    ("double_voltage_different_object_id", "4000010b0000004a0d0901330ce90c",
     [("power", 0.0, "W"), ("voltage", 231.7, "V"), ("battery", 51, "%EL"), ("voltage_2", 3.305, "V")]),
    ("shelly_button", "40005201643a01", [("battery", 100, "%EL"), ("button", "press", None)]),
    ("shelly_button_press", "440021015e3a01", [("battery", 94, "%EL"), ("button", "press", None)]),
    ("shelly_button_no_press", "440023015e3a00", [("battery", 94, "%EL")]),
    ("bthome_test", "4000a70c780b1000", [("voltage", 2.936, "V"), ("power_on", False, None)]),
    ("direction_precipitation", "405e3f755f11d5", [("direction", 300.15, "deg"), ("precipitation", 5454.5, "mm")]),
    ("channel", "406001", [("channel", 1, None)]),
    ("revolutions_per_minute", "4061ac0d", [("rotational_speed", 3500, "1/min")]),
    ("light_level", "406402", [("light_level", 2, None)]),
]


@pytest.mark.parametrize(("data", "expected"), [r[1:] for r in BTHOME_REFERENCE], ids=[r[0] for r in BTHOME_REFERENCE])
def test_bthome_reference_parser_vectors(data: str, expected: list[tuple[str, Any, str | None]]) -> None:
    got = decode_bthome(bytes.fromhex(data))
    assert got == expected
    assert [type(v) for _, v, _ in got] == [type(v) for _, v, _ in expected]


@pytest.mark.parametrize(
    ("data", "error", "readings"),
    [
        pytest.param("40feca09", Partial, [], id="wrong_object_id"),
        pytest.param("40015dfe5d0903b718", Partial, [("battery", 93, "%EL")], id="battery_wrong_object_id_humidity"),
        pytest.param("e102000c0404138a01", Unsupported, None, id="has_incorrect_version"),
        pytest.param("00", Unsupported, None, id="incorrect_bthome_version"),
        pytest.param("4002ca0903bf", DecodeError, None, id="invalid_object_payload_data_length"),
        pytest.param("44530187", DecodeError, None, id="text_invalid"),
        pytest.param("41a47266c95f730011223378237214", Encrypted, None, id="bindkey_correct (encrypted)"),
        pytest.param("450aeb84467f85ba0100003188788c", Encrypted, None, id="encrypted_shelly_blu_button_event"),
    ],
)
def test_bthome_reference_parser_refusals(data: str, error: type[DecodeError], readings: list[Any] | None) -> None:
    with pytest.raises(error) as e:
        decode_bthome(bytes.fromhex(data))
    if readings is not None:
        assert e.value.readings == readings  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ("41A4720C1E", Encrypted, "encrypted"),  # encryption flag (bit 0) set
        ("45A4720C1E", Encrypted, "encrypted"),
        ("2002CA09", Unsupported, "version 1"),
        ("6002CA09", Unsupported, "version 3"),
        ("", DecodeError, "empty"),
        ("4002CA", DecodeError, "truncated"),
        ("4053", DecodeError, "truncated"),
        ("40530548", DecodeError, "truncated"),
        ("4053028080", DecodeError, "UTF-8"),
        ("403C01", DecodeError, "truncated"),
    ],
)
def test_bthome_refuses(data: str, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        decode_bthome(bytes.fromhex(data))


# -- iBeacon (Apple's layout: 0x02 0x15, UUID, major, minor, measured power) --------------


def test_ibeacon() -> None:
    data = bytes.fromhex("0215" + "E2C56DB5DFFB48D2B060D0F5A71096E0" + "0001" + "0002" + "C5")
    assert decode_ibeacon(data) == [
        ("ibeacon_uuid", "e2c56db5-dffb-48d2-b060-d0f5a71096e0", None),
        ("ibeacon_major", 1, None),
        ("ibeacon_minor", 2, None),
        ("tx_power_1m", -59, "dBm"),
    ]
    assert decode_ibeacon(bytes.fromhex("1005031C6E1F59")) is None  # other Apple data: not ours
    with pytest.raises(DecodeError):
        decode_ibeacon(data[:-1])


# -- Eddystone (github.com/google/eddystone: UID, URL, TLM frame specifications) ----------


def test_eddystone_uid() -> None:
    # namespace: the spec's elided-UUID example; tx power: the spec's 0xEE = -18 dBm example
    frame = bytes.fromhex("00EE" + "8b0ca750095477cb3e77" + "0000000000AB")
    expected = [
        ("eddystone_namespace", "8b0ca750095477cb3e77", None),
        ("eddystone_instance", "0000000000ab", None),
        ("tx_power_0m", -18, "dBm"),
    ]
    assert decode_eddystone(frame) == expected
    assert decode_eddystone(frame + b"\x00\x00") == expected  # with the two RFU bytes
    with pytest.raises(DecodeError):
        decode_eddystone(frame[:-1])


@pytest.mark.parametrize(
    ("encoded", "url"),
    [
        ("03" + b"goo.gl/S6zT6P".hex(), "https://goo.gl/S6zT6P"),  # the spec's example URL
        ("00" + b"example".hex() + "07", "http://www.example.com"),
        ("01" + b"bthome".hex() + "08" + b"/x".hex(), "https://www.bthome.org/x"),
        ("02" + b"ruuvi".hex() + "00" + b"vi".hex(), "http://ruuvi.com/vi"),
    ],
)
def test_eddystone_url(encoded: str, url: str) -> None:
    assert decode_eddystone(bytes.fromhex("1012" + encoded)) == [("url", url, None), ("tx_power_0m", 18, "dBm")]


@pytest.mark.parametrize("bad", ["1012", "101204", "1012037F", "10120320", "1012030E"])
def test_eddystone_url_refuses(bad: str) -> None:
    with pytest.raises(DecodeError):
        decode_eddystone(bytes.fromhex(bad))


def test_eddystone_tlm() -> None:
    # VBATT 3000 mV, TEMP 0x1980 = 25.5 degC (8.8 fixed point), ADV_CNT 100, SEC_CNT 3600 (0.1 s)
    frame = bytes.fromhex("2000" + "0BB8" + "1980" + "00000064" + "00000E10")
    assert decode_eddystone(frame) == [
        ("battery_voltage", 3.0, "V"),
        ("temperature", 25.5, "Cel"),
        ("advertising_count", 100, "count"),
        ("uptime", 360.0, "s"),
    ]
    negative = bytes.fromhex("2000" + "0BB8" + "FF80" + "00000064" + "00000E10")  # -0.5 degC
    assert ("temperature", -0.5, "Cel") in decode_eddystone(negative)
    unsupported = bytes.fromhex("2000" + "0000" + "8000" + "00000001" + "00000002")  # no battery, no sensor
    assert decode_eddystone(unsupported) == [("advertising_count", 1, "count"), ("uptime", 0.2, "s")]
    with pytest.raises(Encrypted):
        decode_eddystone(bytes.fromhex("2001") + bytes(16))
    with pytest.raises(DecodeError):
        decode_eddystone(frame[:-1])
    assert decode_eddystone(bytes.fromhex("30EE0102030405060708")) == []  # EID: no readings
    with pytest.raises(DecodeError):
        decode_eddystone(bytes.fromhex("40EE"))


# -- one advertisement, every format --------------------------------------------------------


def test_decode_advertisement_combines_and_collects_problems() -> None:
    readings, problems = decode_advertisement(
        {0x0499: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"), 0x0059: b"\x01\x02"},
        {"fcd2": bytes.fromhex("4002C409"), EDDYSTONE_UUID: bytes.fromhex("2001") + bytes(16)},
    )
    assert readings[0] == ("temperature", 25.0, "Cel")  # BTHome first, then Ruuvi
    assert ("pressure", 100044, "Pa") in readings
    assert len(problems) == 1 and isinstance(problems[0], Encrypted)
    only_ruuvi, _ = decode_advertisement({}, {BTHOME_UUID: bytes.fromhex("4002C409")}, formats=["ruuvi"])
    assert only_ruuvi == []
    assert decode_advertisement({0x004C: bytes.fromhex("1005031C6E1F59")}, {}) == ([], [])


def test_decode_advertisement_keeps_a_partial_payloads_readings_and_reports_it() -> None:
    readings, problems = decode_advertisement({}, {BTHOME_UUID: bytes.fromhex("40015dfe5d0903b718")})
    assert readings == [("battery", 93, "%EL")]
    assert len(problems) == 1 and isinstance(problems[0], Partial)


# -- GATT values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "fmt", "scale", "value"),
    [
        ((2506).to_bytes(2, "little"), "<h", 0.01, 25.06),  # 0x2A6E Temperature: sint16, 0.01 degC
        ((-1234).to_bytes(2, "little", signed=True), "<h", 0.01, -12.34),
        ((5055).to_bytes(2, "little"), "<H", 0.01, 50.55),  # 0x2A6F Humidity: uint16, 0.01 %
        ((1008830).to_bytes(4, "little"), "<I", 0.1, 100883.0),  # 0x2A6D Pressure: uint32, 0.1 Pa
        (b"\x07", "B", 1, 7),
        (struct.pack(">f", 1.5), ">f", 2, 3.0),
    ],
)
def test_decode_struct(raw: bytes, fmt: str, scale: float, value: float) -> None:
    assert decode_struct(raw, fmt, scale) == value


@pytest.mark.parametrize(
    ("raw", "fmt", "scale"),
    [
        (b"\x01", "<h", 1),
        (b"\x01\x02\x03", "<h", 1),
        (struct.pack("<f", math.nan), "<f", 1),
        (struct.pack("<f", math.inf), "<f", 1),
        (struct.pack("<d", 1e308), "<d", 10.0),  # overflows once scaled
    ],
)
def test_decode_struct_refuses(raw: bytes, fmt: str, scale: float) -> None:
    with pytest.raises(DecodeError):
        decode_struct(raw, fmt, scale)


# -- hostile input: random bytes into every decoder ------------------------------------------


def _check(out: list[tuple[str, Any, str | None]] | None) -> None:
    if out is None:
        return
    for point, value, unit in out:
        assert POINT_RE.match(point), point
        assert isinstance(value, int | float | bool | str | bytes)
        if isinstance(value, float):
            assert math.isfinite(value)
        assert unit is None or isinstance(unit, str)


@given(st.binary(max_size=40))
def test_every_decoder_only_raises_decode_error(data: bytes) -> None:
    for fn in (decode_bthome, decode_ruuvi, decode_ibeacon, decode_eddystone):
        try:
            _check(fn(data))
        except DecodeError:
            pass


@given(st.binary(max_size=40))
def test_bthome_v2_random_objects(objects: bytes) -> None:
    try:
        _check(decode_bthome(b"\x40" + objects))
    except DecodeError as e:
        assert not isinstance(e, Unsupported)  # a v2 unencrypted header is never "unsupported"


@given(st.binary(min_size=23, max_size=23))
def test_ruuvi_any_24_byte_frame_decodes(body: bytes) -> None:
    _check(decode_ruuvi(b"\x05" + body))


@given(st.sampled_from([0x00, 0x10, 0x20, 0x30]), st.binary(max_size=24))
def test_eddystone_random_frames(frame: int, body: bytes) -> None:
    try:
        _check(decode_eddystone(bytes([frame]) + body))
    except DecodeError:
        pass


@given(
    st.dictionaries(st.sampled_from([0x0499, 0x004C, 0x0059, 0xFFFF]), st.binary(max_size=30), max_size=4),
    st.dictionaries(
        st.sampled_from([BTHOME_UUID, EDDYSTONE_UUID, "fcd2", "FEAA", "180f"]), st.binary(max_size=30), max_size=4
    ),
)
def test_decode_advertisement_never_raises(mfr: dict[int, bytes], svc: dict[str, bytes]) -> None:
    readings, problems = decode_advertisement(mfr, svc)
    _check(readings)
    assert all(isinstance(p, DecodeError) for p in problems)


@given(st.sampled_from(["<h", ">H", "<i", "<I", "<f", "<d", "b", "<q"]), st.binary(max_size=10), st.floats(-1e3, 1e3))
def test_decode_struct_random(fmt: str, raw: bytes, scale: float) -> None:
    try:
        value = decode_struct(raw, fmt, scale)
    except DecodeError:
        return
    assert isinstance(value, int | float) and math.isfinite(value)
