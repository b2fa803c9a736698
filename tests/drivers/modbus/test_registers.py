"""The pure register-map layer: request planning, decoding, encoding, against hostile input."""

from __future__ import annotations

import itertools
import math
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.modbus.registers import (
    MAX_BITS,
    MAX_REGISTERS,
    NUMERIC_TYPES,
    DecodeError,
    MapError,
    Point,
    Request,
    Table,
    WriteError,
    bytes_to_words,
    decode_block,
    decode_point,
    encode,
    plan,
    words_to_bytes,
)

H = Table.HOLDING


def reg(name: str, address: int, type_: str = "u16", **kw: object) -> Point:
    return Point(name, H, address, type_, **kw)  # type: ignore[arg-type]


# -- planning -----------------------------------------------------------------------------


def test_adjacent_points_merge_into_one_read() -> None:
    pts = [reg("a", 0, "f32"), reg("b", 2, "f32"), reg("c", 4), reg("d", 5, "u64")]
    assert [(r.address, r.count, len(r.points)) for r in plan(pts)] == [(0, 9, 4)]


def test_gap_splits_unless_bridged() -> None:
    pts = [reg("a", 0), reg("b", 4)]  # three unmapped registers in between
    assert [(r.address, r.count) for r in plan(pts)] == [(0, 1), (4, 1)]
    assert [(r.address, r.count) for r in plan(pts, max_gap=2)] == [(0, 1), (4, 1)]
    assert [(r.address, r.count) for r in plan(pts, max_gap=3)] == [(0, 5)]


def test_register_limit_splits_reads() -> None:
    pts = [reg(f"p{i}", i * 2, "u32") for i in range(100)]  # 200 contiguous registers
    reads = plan(pts)
    assert [(r.address, r.count) for r in reads] == [(0, 124), (124, 76)]  # 125 would split a u32
    assert [(r.address, r.count) for r in plan(pts, max_registers=50)][:2] == [(0, 50), (50, 50)]


def test_bit_limit_is_2000() -> None:
    pts = [Point(f"c{i}", Table.COILS, i, "bool") for i in range(2001)]
    assert [(r.address, r.count) for r in plan(pts)] == [(0, 2000), (2000, 1)]


def test_tables_are_never_mixed_and_overlaps_share_a_read() -> None:
    pts = [
        Point("i", Table.INPUT, 0, "u16"),
        reg("word", 0, "u16"),
        reg("flags", 0, "bitfield", bits=((0, "x"),)),
        Point("c", Table.COILS, 0, "bool"),
    ]
    reads = plan(pts)
    assert [(r.table, r.address, r.count) for r in reads] == [(Table.COILS, 0, 1), (H, 0, 1), (Table.INPUT, 0, 1)]
    assert {p.name for p in reads[1].points} == {"word", "flags"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"type": "float"},
        {"type": "string"},  # no count
        {"type": "string", "count": 126},
        {"type": "bitfield"},  # no bits
        {"type": "bitfield", "bits": ((16, "x"),)},
        {"type": "u32", "count": 3},
        {"type": "u16", "scale": 0.0},
        {"type": "u16", "scale": math.nan},
        {"type": "f64", "address": 65533},
        {"type": "u16", "min": 5.0, "max": 1.0},
        {"type": "bitfield", "bits": ((0, "x"),), "writable": True},
    ],
)
def test_bad_points_are_map_errors(kwargs: dict[str, object]) -> None:
    kwargs.setdefault("address", 0)
    with pytest.raises(MapError):
        Point("p", H, **kwargs)  # type: ignore[arg-type]


def test_read_only_tables_refuse_writable() -> None:
    with pytest.raises(MapError):
        Point("p", Table.INPUT, 0, "u16", writable=True)
    with pytest.raises(MapError):
        Point("p", Table.DISCRETE_INPUTS, 0, "bool", writable=True)
    with pytest.raises(MapError):
        Point("p", Table.COILS, 0, "u16")


# -- decoding known values ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "byte_order", "word_order", "words", "value"),
    [
        ("u16", "big", "big", [0xBEEF], 48879),
        ("u16", "little", "big", [0xEFBE], 48879),
        ("i16", "big", "big", [0xFF85], -123),
        ("u32", "big", "big", [0x1234, 0x5678], 0x12345678),
        ("u32", "big", "little", [0x5678, 0x1234], 0x12345678),
        ("u32", "little", "big", [0x3412, 0x7856], 0x12345678),
        ("u32", "little", "little", [0x7856, 0x3412], 0x12345678),
        ("i32", "big", "big", [0xFFFF, 0xFFFE], -2),
        ("u64", "big", "big", [0x0001, 0, 0, 0], 1 << 48),
        ("i64", "big", "little", [0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], -2),
        ("f32", "big", "big", [0x4060, 0x0000], 3.5),
        ("f32", "little", "little", [0x0000, 0xA0BF], -1.25),
        ("f32", "big", "little", [0x0000, 0x4060], 3.5),
        ("f64", "big", "big", [0x3FF8, 0, 0, 0], 1.5),
        ("f64", "big", "little", [0, 0, 0, 0xC002], -2.25),
    ],
)
def test_decode_known_values(type_: str, byte_order: str, word_order: str, words: list[int], value: object) -> None:
    p = reg("p", 0, type_, byte_order=byte_order, word_order=word_order, unit="W")
    [s] = decode_point(p, words)
    assert (s.name, s.value, type(s.value), s.unit, s.error) == ("p", value, type(value), "W", "")


def test_scale_offset_precision() -> None:
    p = reg("t", 0, "i16", scale=0.1, offset=1.0, precision=1, unit="Cel")
    assert decode_point(p, [0xFF38])[0].value == -19.0
    assert decode_point(reg("v", 0, "u16", scale=0.01, precision=2), [2345])[0].value == 23.45
    assert decode_point(reg("raw", 0, "u16"), [7])[0].value == 7  # unscaled ints stay ints


def test_strings_and_bitfields() -> None:
    assert decode_point(reg("s", 0, "string", count=4), [0x5347, 0x2D31, 0, 0x4142])[0].value == "SG-1"
    assert decode_point(reg("s", 0, "string", count=2, byte_order="little"), [0x4241, 0x4443])[0].value == "ABCD"
    assert decode_point(reg("s", 0, "string", count=2), [0x4107, 0x4220])[0].value == "AB"  # control char, pad
    bf = reg("st", 0, "bitfield", bits=((0, "run"), (1, "fault"), (15, "alarm")))
    assert [(s.name, s.value) for s in decode_point(bf, [0x8001])] == [
        ("st.run", True),
        ("st.fault", False),
        ("st.alarm", True),
    ]
    wide = reg("w", 0, "bitfield", count=2, bits=((16, "hi"), (0, "lo")))
    assert [(s.name, s.value) for s in decode_point(wide, [0x0001, 0x0000])] == [("w.hi", True), ("w.lo", False)]


def test_nan_and_overflow_give_no_value() -> None:
    [s] = decode_point(reg("f", 0, "f32"), [0x7FC0, 0x0000])
    assert s.value is None and "not a number" in s.error
    [s] = decode_point(reg("f", 0, "f64", scale=1e300), [0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF])
    assert s.value is None and "overflow" in s.error


def test_decode_block_checks_the_reply() -> None:
    req = plan([reg("a", 10, "u32"), reg("b", 12)])[0]
    assert [(s.name, s.value) for s in decode_block(req, [0, 1, 2])] == [("a", 1), ("b", 2)]
    for bad in ([0, 1], [0, 1, 2, 3], [0, 1, 70000], [0, 1, -1], [0, True, 2], [0, 1.0, 2]):
        with pytest.raises(DecodeError):
            decode_block(req, bad)
    coils = plan([Point("c0", Table.COILS, 0, "bool"), Point("c2", Table.COILS, 2, "bool")], max_gap=1)[0]
    padded = [True, False, False] + [False] * 5  # FC 1 replies come in whole bytes
    assert [(s.name, s.value) for s in decode_block(coils, padded)] == [("c0", True), ("c2", False)]
    with pytest.raises(DecodeError):
        decode_block(coils, [True, False])


# -- encoding -----------------------------------------------------------------------------


def test_encode_applies_inverse_scaling_and_order() -> None:
    sp = reg("sp", 0, "i16", scale=0.1, writable=True, min=-20, max=50)
    assert encode(sp, 21.5) == [215]
    assert encode(sp, -2) == [0xFFEC]
    assert encode(reg("e", 0, "u32", word_order="little", writable=True), 0x12345678) == [0x5678, 0x1234]
    assert encode(reg("f", 0, "f32", byte_order="little", writable=True), 3.5) == [0x6040, 0x0000]
    assert encode(reg("s", 0, "string", count=2, writable=True), "AB") == [0x4142, 0]
    assert encode(Point("c", Table.COILS, 0, "bool", writable=True), True) == [True]


@pytest.mark.parametrize(
    ("point", "value"),
    [
        (reg("ro", 0), 1),
        (reg("sp", 0, "i16", writable=True, min=0, max=10), 11),
        (reg("sp", 0, "i16", writable=True, min=0, max=10), -0.5),
        (reg("u", 0, "u16", writable=True), -1),
        (reg("u", 0, "u16", writable=True), 65536),
        (reg("u", 0, "u16", writable=True, scale=0.1), 6553.6),
        (reg("u", 0, "u16", writable=True), True),
        (reg("u", 0, "u16", writable=True), "5"),
        (reg("u", 0, "f32", writable=True), math.nan),
        (reg("u", 0, "f32", writable=True), 1e39),
        (reg("u", 0, "i64", writable=True), 10**400),
        (reg("s", 0, "string", count=1, writable=True), "ABC"),
        (Point("c", Table.COILS, 0, "bool", writable=True), 2),
    ],
)
def test_encode_refuses(point: Point, value: object) -> None:
    with pytest.raises(WriteError):
        encode(point, value)


# -- properties ---------------------------------------------------------------------------

orders = st.sampled_from(["big", "little"])


@st.composite
def points(draw: st.DrawFn, writable: bool = False) -> Point:
    table = draw(st.sampled_from(list(Table)))
    address = draw(st.integers(0, 300))
    name = f"p{draw(st.integers(0, 10**6))}"
    if table.bits:
        return Point(name, table, address, "bool", writable=writable and table.writable)
    type_ = draw(st.sampled_from([*NUMERIC_TYPES, "string", "bitfield"]))
    extra: dict[str, object] = {}
    if type_ == "string":
        extra["count"] = draw(st.integers(1, 8))
    elif type_ == "bitfield":
        extra["count"] = draw(st.sampled_from([0, 1, 2]))
        top = 16 * (extra["count"] or 1)  # type: ignore[operator]
        bits = draw(st.lists(st.integers(0, top - 1), min_size=1, max_size=5, unique=True))
        extra["bits"] = tuple((b, f"b{b}") for b in bits)
    else:
        extra["scale"] = draw(st.sampled_from([1.0, 0.1, 10.0, -2.5, 1e-300, 1e300]))
        extra["offset"] = draw(st.sampled_from([0.0, -40.0, 1e308]))
    return Point(
        name,
        table,
        address,
        type_,
        byte_order=draw(orders),
        word_order=draw(orders),
        writable=writable and table.writable and type_ != "bitfield",
        **extra,  # type: ignore[arg-type]
    )


hostile = st.one_of(
    st.integers(-(2**70), 2**70),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.floats(allow_nan=True),
    st.none(),
    st.text(max_size=2),
)


@given(st.lists(points(), min_size=1, max_size=12), st.integers(0, 5), st.data())
def test_decoder_only_raises_decode_error(pts: list[Point], gap: int, data: st.DataObject) -> None:
    for req in plan(pts, max_gap=gap):
        size = req.count + data.draw(st.sampled_from([0, 0, 0, -1, 1, 7, 8]))
        if data.draw(st.booleans()):
            words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=max(size, 0), max_size=max(size, 0)))
        else:
            words = data.draw(st.lists(hostile, max_size=max(size, 0) + 2))
        try:
            samples = decode_block(req, words)
        except DecodeError:
            continue
        assert len(samples) == sum(len(p.names()) for p in req.points)
        for s in samples:
            if s.value is None:
                assert s.error
            elif isinstance(s.value, float):
                assert math.isfinite(s.value)
            else:
                assert isinstance(s.value, bool | int | str)


@given(st.lists(points(), max_size=40), st.integers(0, 10), st.integers(1, 125), st.integers(1, 2000))
def test_plan_covers_every_point_once_within_limits(pts: list[Point], gap: int, max_regs: int, max_bits: int) -> None:
    assume(all(p.width <= max_regs for p in pts if not p.table.bits))
    reads = plan(pts, max_gap=gap, max_registers=max_regs, max_bits=max_bits)
    served = sorted(id(p) for r in reads for p in r.points)
    assert served == sorted(id(p) for p in pts)
    for r in reads:
        assert r.count <= (max_bits if r.table.bits else max_regs) <= (MAX_BITS if r.table.bits else MAX_REGISTERS)
        assert all(p.table is r.table and r.address <= p.address and p.end <= r.address + r.count for p in r.points)
        # no run of more than max_gap addresses in a read is left unmapped
        covered = sorted({a for p in r.points for a in range(p.address, p.end)})
        assert covered[0] == r.address and covered[-1] == r.address + r.count - 1
        assert all(b - a - 1 <= gap for a, b in itertools.pairwise(covered))


@given(points(writable=True), st.data())
def test_encode_then_decode_round_trips(p: Point, data: st.DataObject) -> None:
    assume(p.writable)
    if p.type == "bool":
        value: object = data.draw(st.booleans())
    elif p.type == "string":
        value = data.draw(st.text(alphabet="ABCxyz0129 -_", max_size=2 * p.width)).strip()
    elif p.type in ("f32", "f64"):
        value = data.draw(st.floats(-1e6, 1e6, allow_nan=False))
    else:
        value = data.draw(st.integers(-(2**70), 2**70))
    try:
        words = encode(p, value)
    except WriteError:
        return
    req = Request(p.table, p.address, p.width, (p,))
    [s] = decode_block(req, list(words) + ([False] * 7 if p.table.bits else []))
    if p.type in ("bool", "string"):
        assert s.value == value
    elif s.value is not None:
        assert isinstance(value, int | float) and isinstance(s.value, int | float)
        if p.type == "f32":
            tol = abs(value) * 1e-6 + abs(p.scale) * 1e-6
        else:
            tol = abs(p.scale) / 2 + abs(value) * 1e-9 if p.type != "f64" else abs(value) * 1e-9 + 1e-9
        assert abs(s.value - value) <= tol + abs(p.offset) * 1e-15


@given(st.binary(max_size=16).filter(lambda b: len(b) % 2 == 0), orders, orders)
def test_word_byte_order_inverse(raw: bytes, byte_order: str, word_order: str) -> None:
    words = bytes_to_words(raw, byte_order, word_order)  # type: ignore[arg-type]
    assert words_to_bytes(words, byte_order, word_order) == raw  # type: ignore[arg-type]
    assert struct.calcsize(f">{len(words)}H") == len(raw)
