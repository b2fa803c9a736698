"""The pure half of the opcua driver: node ids, browse paths, value conversion, write checks and
the schema, with hostile input (hypothesis): only the documented errors escape."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.opcua import MANIFEST, nodes
from gateway.schema import ValidationError
from gateway.testing import make_instance


@pytest.mark.parametrize(
    "text",
    [
        "i=2259",
        "ns=2;i=7",
        "ns=2;s=Boiler.Temperature",
        "nsu=urn:x;s=A",
        "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
        "ns=3;b=AAEC",
    ],
)
def test_node_ids(text: str) -> None:
    assert nodes.parse_node_id(text) == text


@pytest.mark.parametrize("text", ["", "7", "ns=2", "ns=x;i=1", "ns=70000;i=1", "i=99999999999", "ns=2;q=1", "s="])
def test_bad_node_ids(text: str) -> None:
    with pytest.raises(nodes.NodeError):
        nodes.parse_node_id(text)


def test_browse_paths() -> None:
    assert nodes.parse_browse_path("2:Boiler/2:Temperature") == ["2:Boiler", "2:Temperature"]
    for bad in ("", "/", "Boiler/Temperature", "2:", "x:Boiler", "/".join(["1:a"] * 33)):
        with pytest.raises(nodes.NodeError):
            nodes.parse_browse_path(bad)


@given(st.text(max_size=200))
def test_parsers_never_raise_anything_else(text: str) -> None:
    for fn in (nodes.parse_node_id, nodes.parse_browse_path):
        try:
            fn(text)
        except nodes.NodeError:
            pass


class Localized:
    Text = "Betrieb"


def spec(**kw: Any) -> nodes.PointSpec:
    return nodes.PointSpec(name="p", node_id="i=1", **kw)


def test_convert() -> None:
    assert nodes.convert(spec(scale=100000), 1.5) == 150000.0
    assert nodes.convert(spec(), 42) == 42
    assert nodes.convert(spec(), False) is False
    assert nodes.convert(spec(), Localized()) == "Betrieb"
    assert nodes.convert(spec(), dt.datetime(2024, 5, 1, tzinfo=dt.UTC)) == "2024-05-01T00:00:00+00:00"
    assert nodes.convert(spec(), b"\x00" * 5000) == b"\x00" * nodes.MAX_TEXT
    for bad in (None, math.nan, -math.inf, [1, 2], {"a": 1}, object()):
        with pytest.raises(nodes.BadValue):
            nodes.convert(spec(), bad)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=50),
        st.binary(max_size=50),
        st.lists(st.integers(), max_size=3),
        st.datetimes(),
    ),
    st.floats(),
    st.floats(),
)
def test_convert_hostile(value: Any, scale: float, offset: float) -> None:
    try:
        v = nodes.convert(spec(scale=scale, offset=offset), value)
    except nodes.BadValue:
        return
    assert not isinstance(v, float) or math.isfinite(v)


def test_check_write() -> None:
    assert nodes.check_write(spec(min=40, max=90), 65) == 65
    assert nodes.check_write(spec(scale=100000), 150000.0) == 1.5
    for s, value in [
        (spec(max=90), 95),
        (spec(min=40), 30),
        (spec(), math.nan),
        (spec(scale=0, offset=1), 1.0),
        (spec(), None),
    ]:
        with pytest.raises(ValueError):
            nodes.check_write(s, value)


BASE: dict[str, Any] = {
    "name": "o",
    "url": "opc.tcp://10.0.0.5:4840/",
    "points": [{"name": "t", "node_id": "ns=2;i=2"}],
}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "http://10.0.0.5/"}, "url"),
        ({"points": [{"name": "t"}]}, "either node_id or browse_path"),
        ({"points": [{"name": "t", "node_id": "ns=2;i=2", "browse_path": "2:A"}]}, "either node_id or browse_path"),
        ({"points": [{"name": "t", "node_id": "2"}]}, "standard form"),
        ({"points": [{"name": "t", "browse_path": "Boiler"}]}, "namespace index"),
        ({"security": "sign"}, "needs certificate and private_key"),
        ({"request_timeout": 10}, "must cover request_timeout"),
        ({"points": [{"name": "t", "node_id": "i=1"}, {"name": "t", "node_id": "i=2"}]}, "appears twice"),
    ],
)
def test_config_refusals(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        make_instance(MANIFEST, **{**BASE, **options})
    assert message in str(e.value)
