"""The pure half of the snmp driver: OID parsing, value conversion, engine IDs, and the schema,
with hostile input (hypothesis): nothing but the documented errors escapes."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.snmp import MANIFEST, oids
from gateway.schema import ValidationError
from gateway.testing import make_instance


def spec(**kw: Any) -> oids.PointSpec:
    return oids.PointSpec(name="p", oid=(1, 3, 6, 1), **kw)


@pytest.mark.parametrize(
    ("text", "arcs"),
    [
        ("1.3.6.1.2.1.1.3.0", (1, 3, 6, 1, 2, 1, 1, 3, 0)),
        (".1.3.6", (1, 3, 6)),
        ("2.999.4294967295", (2, 999, 2**32 - 1)),
    ],
)
def test_oids_parse(text: str, arcs: tuple[int, ...]) -> None:
    assert oids.parse_oid(text) == arcs
    assert oids.parse_oid(oids.oid_str(arcs)) == arcs


@pytest.mark.parametrize(
    "text", ["", "1", "1..3", "1.3.x", "sysUpTime.0", "3.1", "1.40", "1.3.4294967296", "1.3.-1", "1.3.\uff16", "." * 5]
)
def test_bad_oids_are_refused(text: str) -> None:
    with pytest.raises(oids.OidError):
        oids.parse_oid(text)


@given(st.text(max_size=300))
def test_parse_oid_never_raises_anything_else(text: str) -> None:
    try:
        arcs = oids.parse_oid(text)
    except oids.OidError:
        return
    assert 2 <= len(arcs) <= oids.MAX_ARCS and all(0 <= a <= oids.MAX_ARC for a in arcs)


def test_suffix() -> None:
    assert oids.suffix((1, 3, 6), (1, 3, 6, 1, 2)) == "1.2"
    assert oids.suffix((1, 3, 6), (1, 3, 6)) is None
    assert oids.suffix((1, 3, 6), (1, 3, 7, 1)) is None


@pytest.mark.parametrize(
    ("kind", "raw", "options", "value"),
    [
        ("integer", -215, {"scale": 0.1, "precision": 1}, -21.5),
        ("counter64", 2**64 - 1, {}, 2**64 - 1),
        ("gauge", 7, {"scale": 2, "offset": 1}, 15.0),
        ("timeticks", 12345, {}, 123.45),
        ("timeticks", 12345, {"type": "string"}, "12345"),
        ("octets", b"cabinet-7\x00\x00", {}, "cabinet-7"),
        ("octets", b"\x00\x1a\x2b\xff", {}, b"\x00\x1a\x2b\xff"),
        ("octets", b"\x00\x1a\x2b\xff", {"type": "hex"}, "00:1a:2b:ff"),
        ("octets", b" 0.75\n", {"type": "number"}, 0.75),
        ("octets", b"42", {"type": "number", "scale": 10}, 420.0),
        ("octets", b"\xff\xfe", {"type": "string"}, "\ufffd\ufffd"),
        ("ipaddress", "10.1.2.3", {}, "10.1.2.3"),
        ("oid", "1.3.6.1", {}, "1.3.6.1"),
    ],
)
def test_convert(kind: str, raw: Any, options: dict[str, Any], value: Any) -> None:
    got = oids.convert(spec(**options), kind, raw)
    assert (got, type(got)) == (value, type(value))


@pytest.mark.parametrize(
    ("kind", "raw", "options"),
    [
        ("missing", None, {}),
        ("null", None, {}),
        ("nonsense", 1, {}),
        ("integer", "1", {}),
        ("integer", True, {}),
        ("octets", b"abc", {"type": "number"}),
        ("octets", b"nan", {"type": "number"}),
        ("octets", b"\xff", {"type": "number"}),
        ("ipaddress", "10.1.2.3", {"type": "number"}),
        ("octets", "text", {}),
        ("integer", 10**400, {"scale": 1e300}),
    ],
)
def test_convert_refuses(kind: str, raw: Any, options: dict[str, Any]) -> None:
    with pytest.raises(oids.BadValue):
        oids.convert(spec(**options), kind, raw)


RAW = st.one_of(st.none(), st.integers(), st.binary(max_size=2000), st.text(max_size=200), st.booleans(), st.floats())


@given(
    st.sampled_from([*sorted(oids.KINDS), "bogus"]),
    RAW,
    st.sampled_from(["auto", "number", "string", "hex"]),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_convert_hostile_values(kind: str, raw: Any, type_: str, scale: float) -> None:
    try:
        v = oids.convert(spec(type=type_, scale=scale), kind, raw)
    except oids.BadValue:
        return
    assert isinstance(v, int | float | str | bytes)
    assert not isinstance(v, float) or math.isfinite(v)
    assert not isinstance(v, str | bytes) or len(v) <= oids.MAX_TEXT


def test_engine_ids() -> None:
    assert oids.parse_engine_id("0x80:00:1f:88:80") == bytes.fromhex("80001f8880")
    for bad in ("zz", "8000", "80" * 33):
        with pytest.raises(ValueError):
            oids.parse_engine_id(bad)


BASE = {"name": "ups", "host": "192.0.2.1", "oids": [{"name": "a", "oid": "1.3.6.1.2.1.1.3.0"}]}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"host": ""}, "polled oids need host"),
        ({"oids": []}, "give oids to poll, traps to receive, or both"),
        ({"oids": [{"name": "a", "oid": "sysUpTime.0"}]}, "MIB names are not resolved"),
        ({"oids": [{"name": "a", "oid": "1.3.6"}, {"name": "a", "oid": "1.3.7"}]}, "appears twice"),
        ({"version": "v3"}, "version v3 needs user"),
        ({"version": "v3", "user": "u", "auth_key": "short", "priv_key": "longenough"}, "at least 8 characters"),
        ({"version": "v3", "user": "u", "auth_protocol": "none", "priv_key": "longenough"}, "needs authentication"),
        ({"traps": {"engine_ids": ["8000000001"]}}, "engine_ids are for version v3"),
        ({"traps": {"engine_ids": ["xyz"]}, "version": "v3", "user": "u", "priv_protocol": "none"}, "not hexadecimal"),
        ({"request_timeout": 3, "retries": 2}, "timeout (5s) must cover"),
        ({"trap": {}}, "trap"),
    ],
)
def test_config_refusals(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as e:
        make_instance(MANIFEST, **{**BASE, **options})
    assert message in str(e.value)


def test_trap_only_instance_needs_no_host() -> None:
    inst = make_instance(MANIFEST, name="t", traps={"port": 1162})
    assert inst.config.traps.port == 1162 and inst.config.traps.communities == []
