"""gateway.schema keeps pydantic's promise: one table of inputs through both, same verdicts.

gateway/schema.py replaces pydantic in the daemon (about 11 MB of resident memory saved) and
says it behaves like pydantic 2 in lax mode. Every row below is validated by a gateway.schema
model and by the same model built with pydantic (the ``test`` extra installs it): both accept
with the same value and type, or both refuse with the same error types. The deliberate
differences are listed in gateway/schema.py's docstring and in DIFFERENT below, which checks
that they still differ as written, so neither side can drift unnoticed.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
import pytest

from gateway import schema

INF, NAN = float("inf"), float("nan")


class Inner(schema.Model):
    n: int = schema.Field(ge=0)


class PInner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    n: int = pydantic.Field(ge=0)


class TagA(schema.Model):
    kind: Literal["a"]
    a: int = 0


class TagB(schema.Model):
    kind: Literal["b"]
    b: str = ""


class PTagA(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    kind: Literal["a"]
    a: int = 0


class PTagB(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    kind: Literal["b"]
    b: str = ""


def _pair(name: str) -> tuple[Any, Any]:
    """The annotation a row names, for gateway.schema and for pydantic."""
    ours = {"Inner": Inner, "list[Inner]": list[Inner], "Tagged": TagA | TagB}
    theirs = {"Inner": PInner, "list[Inner]": list[PInner], "Tagged": PTagA | PTagB}
    return ours[name], theirs[name]


# (annotation, Field options, input)
ROWS: list[tuple[Any, dict[str, Any], Any]] = [
    (int, {}, 1), (int, {}, 1.0), (int, {}, 1.5), (int, {}, "7"), (int, {}, " 7 "), (int, {}, "x"), (int, {}, None),
    (int, {}, INF), (int, {}, NAN), (int, {}, [1]), (int, {}, 2**70), (int, {}, "1_000"), (int, {}, "0x10"),
    (float, {}, 1), (float, {}, 1.5), (float, {}, "1.5"), (float, {}, " 2 "), (float, {}, "x"), (float, {}, None),
    (float, {}, "1e3"),
    (bool, {}, True), (bool, {}, 1), (bool, {}, 0), (bool, {}, 2), (bool, {}, -1), (bool, {}, "yes"), (bool, {}, "off"),
    (bool, {}, "T"), (bool, {}, "maybe"), (bool, {}, None), (bool, {}, []),
    (str, {}, "a"), (str, {}, 1), (str, {}, None), (str, {}, True), (str, {}, ""),
    (int, {"ge": 1}, 0), (int, {"ge": 1}, 1), (int, {"gt": 1}, 1), (int, {"le": 5}, 6), (int, {"lt": 5}, 5),
    (float, {"gt": 0}, 0.0), (float, {"ge": 0.5}, "0.25"), (float, {"le": 1}, 1),
    (str, {"min_length": 2}, "a"), (str, {"max_length": 2}, "abc"), (str, {"pattern": r"^/dev/"}, "/dev/tty"),
    (str, {"pattern": r"^/dev/"}, "tty"),
    (Literal["a", "b"], {}, "a"), (Literal["a", "b"], {}, "c"), (Literal[1, 2], {}, 1), (Literal[1, 2], {}, "1"),
    (int | None, {}, None), (int | None, {}, "3"), (int | None, {}, "x"), (int | str, {}, "3"), (int | str, {}, 3),
    (float | str, {}, 3), (int | float, {}, 3.0), (str | None, {"default": None}, None),
    (list[int], {}, [1, "2"]), (list[int], {}, (1, 2)), (list[int], {}, "12"), (list[int], {}, [1, "x"]),
    (list[int], {"min_length": 1}, []), (list[int], {"max_length": 1}, [1, 2]), (list[int], {}, {"a": 1}),
    (tuple[int, ...], {}, [1, 2]), (set[str], {}, ["a", "a"]), (frozenset[str], {}, ["a"]),
    (dict[str, int], {}, {"a": "1"}), (dict[str, int], {}, {1: 1}), (dict[str, int], {}, [("a", 1)]),
    (dict[str, int], {"max_length": 1}, {"a": 1, "b": 2}),
    ("Inner", {}, {"n": 1}), ("Inner", {}, {"n": -1}), ("Inner", {}, {}), ("Inner", {}, {"n": 1, "m": 2}),
    ("Inner", {}, "n=1"), ("Inner", {}, None), ("list[Inner]", {}, [{"n": 1}, {"n": "x"}]),
    ("Tagged", {"discriminator": "kind"}, {"kind": "a", "a": 2}), ("Tagged", {"discriminator": "kind"}, {"kind": "b"}),
    ("Tagged", {"discriminator": "kind"}, {"kind": "c"}), ("Tagged", {"discriminator": "kind"}, {"a": 1}),
    ("Tagged", {"discriminator": "kind"}, {"kind": "a", "b": "x"}), ("Tagged", {"discriminator": "kind"}, "a"),
    (Any, {}, {"anything": [1]}),
]

# the deliberate differences (gateway/schema.py's docstring): row -> (ours, pydantic's)
DIFFERENT: list[tuple[Any, dict[str, Any], Any]] = [
    (int, {}, True), (int, {}, False), (float, {}, True), (Literal[1, 2], {}, True),  # a boolean is not a number
    (bool, {}, 1.0), (bool, {}, 0.0), (bool, {}, " true "),  # floats as booleans; blanks
    (int, {}, "7.0"),  # a string holding a float for an int
    (float, {}, INF), (float, {}, NAN), (float, {}, "inf"), (float, {}, "-inf"),  # non-finite
    (str, {}, b"a"),  # bytes as text
    (list[int], {}, {1, 2}),  # a set as a list
]


def _models(annotation: Any, options: dict[str, Any]) -> tuple[type[schema.Model], type[pydantic.BaseModel]]:
    ours, theirs = _pair(annotation) if isinstance(annotation, str) else (annotation, annotation)
    required = "default" not in options
    mine = type("Row", (schema.Model,), {"__annotations__": {"x": ours}, "x": schema.Field(**options)})
    other = pydantic.create_model(
        "Row", __config__=pydantic.ConfigDict(extra="forbid", frozen=True),
        x=(theirs, pydantic.Field(**options) if not required or options else ...))
    return mine, other


def _verdict(model: Any, value: Any) -> tuple[Any, ...]:
    """("ok", value as plain data, its type) or ("error", sorted (location, type) of each problem)."""
    errors: tuple[type[Exception], ...] = (schema.ValidationError, pydantic.ValidationError)
    try:
        got = model.model_validate({"x": value}).x
    except errors as e:
        return "error", tuple(sorted((tuple(map(str, er["loc"])), er["type"]) for er in e.errors()))
    plain = got.model_dump() if hasattr(got, "model_dump") else _dump(got)
    return "ok", repr(plain), type(got).__name__ if not hasattr(got, "model_dump") else "model"


def _dump(v: Any) -> Any:
    if isinstance(v, schema.Model):
        return {k: _dump(getattr(v, k)) for k in type(v).model_fields}
    if isinstance(v, list | tuple):
        return [_dump(x) for x in v]
    if isinstance(v, set | frozenset):
        return sorted(v)
    return v


def _id(row: tuple[Any, dict[str, Any], Any]) -> str:
    annotation, options, value = row
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return f"{name}{options or ''}<-{value!r}"


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_gateway_schema_and_pydantic_agree(row: tuple[Any, dict[str, Any], Any]) -> None:
    annotation, options, value = row
    ours, theirs = _models(annotation, options)
    mine, other = _verdict(ours, value), _verdict(theirs, value)
    if mine[0] == "ok" and mine[2] == "model":
        other = ("ok", repr(theirs.model_validate({"x": value}).x.model_dump()), "model")
        mine = ("ok", repr(_dump(ours.model_validate({"x": value}).x)), "model")
    assert mine == other


@pytest.mark.parametrize("row", DIFFERENT, ids=_id)
def test_each_deliberate_difference_is_as_documented(row: tuple[Any, dict[str, Any], Any]) -> None:
    """gateway.schema refuses; pydantic accepts (or, for " true ", the other way round)."""
    annotation, options, value = row
    ours, theirs = _models(annotation, options)
    mine, other = _verdict(ours, value), _verdict(theirs, value)
    assert mine != other
    if value == " true ":
        assert mine[0] == "ok" and other[0] == "error"
    else:
        assert mine[0] == "error" and other[0] == "ok"
