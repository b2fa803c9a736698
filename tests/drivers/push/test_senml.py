"""The SenML parser against RFC 8428's examples (JSON and its CBOR representation), and
hostile packs: only SenmlError escapes, and a pack is taken whole or refused."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.push.senml import Record, SenmlError, parse, resolve
from hil.devices.push_device import RFC_EXAMPLE_CBOR, RFC_EXAMPLE_JSON, encode

NOW = 1_700_000_000.0
NAME_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]*$")

RFC_JSON, RFC_CBOR = RFC_EXAMPLE_JSON, RFC_EXAMPLE_CBOR  # RFC 8428 sections 5.1.3 and 6
BT = 1276020076.001
RFC_RESOLVED = [  # section 5.1.5, the resolved form
    Record("urn:dev:ow:10e2073a0108006:voltage", 120.1, "V", BT),
    *(
        Record("urn:dev:ow:10e2073a0108006:current", v, "A", BT + t)
        for t, v in ((-5, 1.2), (-4, 1.3), (-3, 1.4), (-2, 1.5), (-1, 1.6), (0, 1.7))
    ),
]


def test_rfc_example_json() -> None:
    assert parse(json.dumps(RFC_JSON).encode(), "json", NOW) == RFC_RESOLVED


def test_rfc_example_cbor() -> None:
    assert parse(RFC_CBOR, "cbor", NOW) == RFC_RESOLVED
    assert parse(RFC_CBOR, "auto", NOW) == RFC_RESOLVED


def test_rfc_single_datapoint_and_relative_time() -> None:
    # section 5.1.1: no time at all means "now"; a small time is relative to now
    assert parse(b'[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}]', "json", NOW) == [
        Record("urn:dev:ow:10e2073a01080063", 23.1, "Cel", NOW)
    ]
    assert parse(b'[{"n":"x","v":1,"t":-60}]', "json", NOW)[0].time == NOW - 60


def test_rfc_multiple_data_types() -> None:
    # section 5.1.6 (abridged): base unit, a string value, a boolean, data, base value and sums
    pack = [
        {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e09, "bu": "%RH", "v": 20},
        {"u": "lon", "v": 24.30621},
        {"u": "%EL", "t": 150, "v": 98},
        {"n": "label", "t": 180, "vs": "sensor A"},
        {"n": "open", "vb": True},
        {"n": "blob", "vd": "aGkgCg"},
        {"bv": 1000, "n": "counter", "v": 5},
        {"bs": 10, "n": "rain", "s": 2.5, "u": "mm"},
    ]
    got = parse(json.dumps(pack).encode(), "json", NOW)
    base = "urn:dev:ow:10e2073a01080063:"
    assert [(r.name, r.value, r.unit, r.time, r.is_sum) for r in got] == [
        (base, 20, "%RH", 1320067464.0, False),
        (base, 24.30621, "lon", 1320067464.0, False),
        (base, 98, "%EL", 1320067614.0, False),
        (base + "label", "sensor A", "%RH", 1320067644.0, False),
        (base + "open", True, "%RH", 1320067464.0, False),
        (base + "blob", b"hi \n", "%RH", 1320067464.0, False),
        (base + "counter", 1005, "%RH", 1320067464.0, False),
        (base + "rain", 12.5, "mm", 1320067464.0, True),
    ]
    cbor_pack = encode([{k: (b"hi \n" if k == "vd" else v) for k, v in r.items()} for r in pack], "cbor")
    assert parse(cbor_pack, "cbor", NOW) == got


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"", "not JSON"),
        (b"{}", "array of records"),
        (b"[]", "no records"),
        (b"[1]", "not a map"),
        (b'[{"n":"a"}]', "no value"),
        (b'[{"bn":"a"}]', "no record with a value"),
        (b'[{"n":"a","v":1,"vs":"x"}]', "more than one value"),
        (b'[{"n":"a","v":"1"}]', "finite number"),
        (b'[{"n":"a","v":1e999}]', "finite number"),
        (b'[{"n":"a","v":NaN}]', "finite number"),
        (b'[{"n":"a","v":1e30, "bv": 1}]', "64 bits"),
        (b'[{"n":"a","vb":1}]', "true or false"),
        (b'[{"n":"a","vd":"***"}]', "base64url"),
        (b'[{"n":" a","v":1}]', "not a SenML name"),
        (b'[{"n":"","v":1}]', "not a SenML name"),
        (b'[{"n":"a/../b?","v":1}]', "not a SenML name"),
        (b'[{"n":"a","v":1,"new_":true}]', "must be understood"),
        (b'[{"bver":11,"n":"a","v":1}]', "newer"),
        (b'[{"bver":"x","n":"a","v":1}]', "positive integer"),
        (b'[{"n":"a","v":1,"u":5}]', "text"),
        (b'[{"bn":null,"s":1}]', "null"),  # found by hypothesis
        (b"[" * 100_000, "not JSON"),
        (b'[{"n":"a","v":1},{"n":"b"}]', "record 1"),  # one bad record refuses the pack
    ],
)
def test_refused_json(payload: bytes, words: str) -> None:
    with pytest.raises(SenmlError, match=words):
        parse(payload, "json", NOW)


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"\xff", "not CBOR|array of records"),  # a lone break marker
        (bytes.fromhex("9f"), "not CBOR"),  # an indefinite array never closed
        (bytes.fromhex("5b7fffffffffffffff"), "not CBOR"),  # a byte string claiming 2^63 bytes
        (cbor2.dumps([{0: "a", 8: "not bytes"}]), "byte string"),
        (cbor2.dumps([{0: "a", 2: 1, -7: 1}]), None),  # an unknown integer label is ignored
        (cbor2.dumps([{b"n": "a", 2: 1}]), "neither text nor an integer"),
        (cbor2.dumps([{0: "a", 2: cbor2.CBORTag(1, 5)}]), "finite number"),
    ],
)
def test_refused_cbor(payload: bytes, words: str | None) -> None:
    if words is None:
        assert parse(payload, "cbor", NOW) == [Record("a", 1, None, NOW)]
        return
    with pytest.raises(SenmlError, match=words):
        parse(payload, "cbor", NOW)


def test_record_limit() -> None:
    pack = json.dumps([{"n": "a", "v": 1}] * 11).encode()
    assert len(parse(pack, "json", NOW, max_records=11)) == 11
    with pytest.raises(SenmlError, match="at most 10"):
        parse(pack, "json", NOW, max_records=10)


def _check(records: list[Record]) -> None:
    for r in records:
        assert NAME_RE.match(r.name)
        assert isinstance(r.value, bool | int | float | str | bytes)
        if isinstance(r.value, float):
            assert math.isfinite(r.value)
        assert math.isfinite(r.time)


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_senml_error(data: bytes) -> None:
    for fmt in ("json", "cbor", "auto"):
        try:
            _check(parse(data, fmt, NOW))
        except SenmlError:
            pass


field_values = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.binary(max_size=4)
records = st.dictionaries(
    st.sampled_from(
        [
            "bn",
            "bt",
            "bu",
            "bv",
            "bs",
            "bver",
            "n",
            "u",
            "v",
            "vs",
            "vb",
            "vd",
            "s",
            "t",
            "ut",
            "x_",
            "y",
            -2,
            -3,
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            8,
            99,
        ]
    ),
    field_values,
    max_size=6,
)


@given(st.lists(records, max_size=8) | field_values)
def test_random_packs_only_raise_senml_error(pack: Any) -> None:
    for cbor in (False, True):
        try:
            _check(resolve(pack, NOW, cbor=cbor))
        except SenmlError:
            pass
