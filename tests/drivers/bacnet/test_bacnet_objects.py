"""The pure half of the bacnet driver: object and property references, value conversion, write
encoding, and the schema, with hostile input (hypothesis): only the documented errors escape."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.bacnet import MANIFEST, objects
from gateway.schema import ValidationError
from gateway.testing import make_instance


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("analog-input:1", ("analog-input", 1)),
        ("analog-input,7", ("analog-input", 7)),
        ("AI:3", ("analog-input", 3)),
        ("binaryOutput:4194302", ("binary-output", 4194302)),
        (" msv : 2 ", ("multi-state-value", 2)),
    ],
)
def test_objects_parse(text: str, ref: tuple[str, int]) -> None:
    assert objects.parse_object(text) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        "analog-input",
        ":1",
        "analog-input:x",
        "analog-input:4194303",
        "toaster:1",
        "analog-input:-1",
        "analog-input:\uff11",
    ],
)
def test_bad_objects_refused(text: str) -> None:
    with pytest.raises(objects.RefError):
        objects.parse_object(text)


@given(st.text(max_size=100))
def test_parse_never_raises_anything_else(text: str) -> None:
    for fn in (objects.parse_object, objects.parse_property):
        try:
            fn(text)
        except objects.RefError:
            pass


def test_properties() -> None:
    assert objects.parse_property("presentValue") == "present-value"
    assert objects.parse_property("status-flags") == "status-flags"
    for bad in ("", "present value", "-x", "x" * 70):
        with pytest.raises(objects.RefError):
            objects.parse_property(bad)


def spec(**kw: Any) -> objects.PointSpec:
    return objects.PointSpec(**{"name": "p", "object_type": "analog-value", "instance": 1, **kw})


def test_convert() -> None:
    assert objects.convert(spec(), 21.5) == 21.5
    assert objects.convert(spec(scale=1.8, offset=32, precision=1), 20.0) == 68.0
    assert objects.convert(spec(), True) is True
    assert objects.convert(spec(scale=10), 3) == 30.0
    assert objects.convert(spec(), "x" * 5000) == "x" * objects.MAX_TEXT
    for bad in (math.nan, math.inf, objects.Refused("unknown-object"), None, [1], b"x"):
        with pytest.raises(objects.BadValue):
            objects.convert(spec(), bad)


@given(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=50), st.binary(max_size=20)),
    st.floats(),
    st.floats(),
)
def test_convert_hostile(raw: Any, scale: float, offset: float) -> None:
    try:
        v = objects.convert(spec(scale=scale, offset=offset), raw)
    except objects.BadValue:
        return
    assert not isinstance(v, float) or math.isfinite(v)


def test_encode_write() -> None:
    assert objects.encode_write(spec(min=14, max=26), 23.5) == 23.5
    assert objects.encode_write(spec(scale=1.8, offset=32), 68.0) == pytest.approx(20.0)
    assert objects.encode_write(spec(object_type="binary-output"), True) == "active"
    assert objects.encode_write(spec(object_type="multi-state-value"), 3) == 3
    assert objects.encode_write(spec(), "relinquish") is None
    for s, value in [
        (spec(max=26), 27),
        (spec(min=14), 13),
        (spec(object_type="binary-output"), 1),
        (spec(object_type="multi-state-value"), 0),
        (spec(), "warm"),
        (spec(), math.nan),
        (spec(priority=None), "relinquish"),
        (spec(scale=0), 1.0),
    ]:
        with pytest.raises(ValueError):
            objects.encode_write(s, value)


BASE: dict[str, Any] = {
    "name": "b",
    "address": "192.168.1.10/24",
    "devices": [{"id": "d1", "instance": 1, "points": [{"name": "t", "object": "AI:1"}]}],
}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"address": "192.168.1.10"}, "add the prefix length"),
        ({"address": "gateway"}, "IPv4 address with its prefix"),
        ({"broadcast": "nowhere"}, "give an IPv4 address"),
        (
            {"devices": [{"id": "d1", "instance": 1, "points": [{"name": "t", "object": "toaster:1"}]}]},
            "unknown object type",
        ),
        (
            {
                "devices": [
                    {
                        "id": "d1",
                        "instance": 1,
                        "address": "10.0.0.1:99999",
                        "points": [{"name": "t", "object": "AI:1"}],
                    }
                ]
            },
            "the port must be",
        ),
        (
            {"devices": [{"id": "d1", "instance": 1, "points": [{"name": "t", "object": "AI:1", "writable": True}]}]},
            "not commandable",
        ),
        (
            {"devices": [{"id": "d1", "instance": 4194302, "points": [{"name": "t", "object": "AI:1"}]}]},
            "own device_instance",
        ),
        ({"apdu_timeout": 3, "retries": 1}, "must cover"),
    ],
)
def test_config_refusals(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        make_instance(MANIFEST, **{**BASE, **options})
    assert message in str(e.value)
