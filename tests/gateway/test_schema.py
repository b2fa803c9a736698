"""gateway.schema: the config-model library that replaced pydantic in the daemon."""

from __future__ import annotations

import copy
import json
import pickle
from typing import Annotated, Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.schema import Config
from gateway.registry import Registry
from gateway.schema import (
    AfterValidator,
    Field,
    Model,
    ValidationError,
    field_validator,
    model_validator,
)
from gateway.units import Duration


class Inner(Model):
    """A nested section."""

    kind: Literal["a"]
    level: int = Field(default=1, ge=0, le=10, description="Level.")


class Other(Model):
    kind: Literal["b"]
    text: str = Field(default="", max_length=3, description="Text.")


class Outer(Model):
    """A section with every supported shape."""

    name: str = Field(pattern=r"^[a-z]+$", description="Name.")
    count: int = Field(default=0, ge=0, description="Count.")
    ratio: float = Field(default=0.5, gt=0, lt=1, description="Ratio.")
    flag: bool = Field(default=False, description="Flag.")
    wait: Duration = Field(default=1.0, ge=0, description="Wait.")
    maybe: int | None = Field(default=None, description="Optional.")
    scalar: float | int | bool | str = Field(default=0, description="Smart union.")
    tags: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, max_length=3, description="Tags.")
    ids: set[int] = Field(default_factory=set, description="Ids.")
    pair: tuple[int, str] = Field(default=(1, "x"), description="Pair.")
    names: dict[str, int] = Field(default_factory=dict, description="Map.")
    inner: Inner | None = Field(default=None, description="Nested.")
    either: list[Annotated[Inner | Other, Field(discriminator="kind")]] = Field(
        default_factory=list, description="Tagged union."
    )
    upper: Annotated[str, AfterValidator(str.upper)] = Field(default="", description="Upper-cased.")

    @field_validator("name")
    @classmethod
    def _not_admin(cls, v: str) -> str:
        if v == "admin":
            raise ValueError("name 'admin' is reserved")
        return v

    @model_validator(mode="after")
    def _count_vs_tags(self) -> Outer:
        if self.count and len(self.tags) > self.count:
            raise ValueError("more tags than count")
        return self


def problems(data: Any) -> dict[str, tuple[str, str]]:
    with pytest.raises(ValidationError) as exc:
        Outer.model_validate(data)
    return {".".join(map(str, e["loc"])): (e["type"], e["msg"]) for e in exc.value.errors()}


def test_values_are_converted_and_defaults_filled() -> None:
    o = Outer.model_validate(
        {
            "name": "abc",
            "count": "7",
            "ratio": 0.25,
            "flag": "yes",
            "wait": "250ms",
            "scalar": True,
            "tags": ["x"],
            "ids": [3, 3, 4],
            "pair": [2, "y"],
            "names": {"a": 1.0},
            "inner": {"kind": "a"},
            "either": [{"kind": "b", "text": "hi"}, {"kind": "a", "level": 3}],
            "upper": "up",
        }
    )
    got = (o.count, o.flag, o.wait, o.scalar, o.ids, o.pair, o.names)
    assert got == (7, True, 0.25, True, {3, 4}, (2, "y"), {"a": 1})
    assert type(o.scalar) is bool and type(o.names["a"]) is int
    assert o.inner == Inner(kind="a", level=1)
    assert [type(x).__name__ for x in o.either] == ["Other", "Inner"] and o.either[1].level == 3
    assert o.upper == "UP"
    assert o.model_fields_set == {
        "name", "count", "ratio", "flag", "wait", "scalar", "tags", "ids", "pair", "names", "inner", "either", "upper",
    }
    d = Outer.model_validate({"name": "z"})
    assert (d.count, d.maybe, d.tags, d.either, d.model_fields_set) == (0, None, [], [], {"name"})


def test_every_problem_is_reported_with_its_location() -> None:
    got = problems(
        {
            "name": "A B",
            "count": -1,
            "ratio": 1,
            "flag": "perhaps",
            "wait": "soon",
            "tags": ["", "b", "c", "d"],
            "ids": "1,2",
            "pair": [1],
            "names": {"a": "x"},
            "inner": {"kind": "a", "level": 11, "colour": 1},
            "either": [{"kind": "c"}, {"text": "x"}, {"kind": "b", "text": "long"}],
            "bogus": 1,
        }
    )
    assert got == {
        "bogus": ("extra_forbidden", "Extra inputs are not permitted"),
        "name": ("string_pattern_mismatch", "String should match pattern '^[a-z]+$'"),
        "count": ("greater_than_equal", "Input should be greater than or equal to 0"),
        "ratio": ("less_than", "Input should be less than 1"),
        "flag": ("bool_parsing", "Input should be a valid boolean, unable to interpret input"),
        "wait": ("value_error", "Value error, invalid duration 'soon' (use e.g. 10s, 500ms, 5m, 1h)"),
        "tags.0": ("string_too_short", "String should have at least 1 character"),
        "ids": ("set_type", "Input should be a valid set"),
        "pair": ("too_short", "Tuple should have 2 items, not 1"),
        "names.a": ("int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
        "inner.colour": ("extra_forbidden", "Extra inputs are not permitted"),
        "inner.level": ("less_than_equal", "Input should be less than or equal to 10"),
        "either.0": (
            "union_tag_invalid",
            "Input tag 'c' found using 'kind' does not match any of the expected tags: 'a', 'b'",
        ),
        "either.1": ("union_tag_not_found", "Unable to extract tag using discriminator 'kind'"),
        "either.2.b.text": ("string_too_long", "String should have at most 3 characters"),
    }


def test_list_bound_and_validators() -> None:
    assert problems({"name": "x", "tags": ["a", "b", "c", "d"]})["tags"] == (
        "too_long",
        "List should have at most 3 items after validation, not 4",
    )
    assert problems({"name": "admin"})["name"] == ("value_error", "Value error, name 'admin' is reserved")
    too_many = problems({"name": "x", "count": 1, "tags": ["a", "b"]})
    assert too_many[""] == ("value_error", "Value error, more tags than count")
    assert problems({})["name"] == ("missing", "Field required")
    assert problems([1])[""][0] == "model_type"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (True, "int_type"),
        (1.5, "int_from_float"),
        (float("inf"), "finite_number"),
        ("1e3", "int_parsing"),
        (None, "int_type"),
        ([1], "int_type"),
    ],
)
def test_int_refuses(value: Any, kind: str) -> None:
    assert problems({"name": "x", "count": value})["count"][0] == kind


def test_floats_must_be_finite_and_not_bool() -> None:
    assert problems({"name": "x", "ratio": "nan"})["ratio"][0] == "finite_number"
    assert problems({"name": "x", "ratio": True})["ratio"][0] == "float_type"


def test_instances_are_immutable_comparable_hashable_and_picklable() -> None:
    o = Outer.model_validate({"name": "x", "tags": ["a"], "inner": {"kind": "a"}})
    with pytest.raises(AttributeError, match="immutable"):
        o.name = "y"  # type: ignore[misc]
    assert o == Outer.model_validate({"name": "x", "tags": ["a"], "inner": {"kind": "a"}})
    assert o != Outer.model_validate({"name": "y"})
    assert hash(o) == hash(copy.deepcopy(o))
    assert pickle.loads(pickle.dumps(o)) == o
    changed = o.model_copy(update={"count": 5})
    assert (changed.count, o.count, "count" in changed.model_fields_set) == (5, 0, True)
    with pytest.raises(ValueError, match="no option"):
        o.model_copy(update={"nope": 1})
    dumped = o.model_dump(mode="json")
    assert dumped["inner"] == {"kind": "a", "level": 1} and dumped["pair"] == [1, "x"] and dumped["ids"] == []
    assert "name" not in o.model_dump(exclude={"name"})
    assert Outer.model_validate(o) is o


def test_constructor_validates_like_model_validate() -> None:
    assert Inner(kind="a", level=2).level == 2
    with pytest.raises(ValidationError, match="level"):
        Inner(kind="a", level=99)


def test_validator_for_unknown_field_is_a_definition_error() -> None:
    with pytest.raises(TypeError, match="unknown field"):

        class Bad(Model):
            x: int = 0

            @field_validator("y")
            @classmethod
            def _y(cls, v: int) -> int:
                return v


def test_classes_defined_in_a_function_resolve_local_names() -> None:
    class Leaf(Model):
        v: int = 0

    class Tree(Model):
        leaves: list[Leaf] = Field(default_factory=list)

    assert Tree.model_validate({"leaves": [{"v": 2}]}).leaves == [Leaf(v=2)]


def test_json_schema_shape() -> None:
    s = Outer.model_json_schema()
    json.dumps(s)  # serialisable
    props = s["properties"]
    assert s["additionalProperties"] is False and s["required"] == ["name"]
    assert props["count"] == {"type": "integer", "minimum": 0, "description": "Count.", "default": 0}
    assert props["ratio"]["exclusiveMinimum"] == 0 and props["ratio"]["exclusiveMaximum"] == 1
    assert props["wait"]["anyOf"][1]["type"] == "string"
    assert props["maybe"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["tags"]["maxItems"] == 3 and props["tags"]["items"]["minLength"] == 1
    assert props["ids"]["uniqueItems"] is True
    assert props["either"]["items"]["discriminator"]["mapping"] == {"a": "#/$defs/Inner", "b": "#/$defs/Other"}
    assert set(s["$defs"]) == {"Inner", "Other"}
    assert s["$defs"]["Inner"]["properties"]["kind"] == {"const": "a"}


def test_config_schema_documents_every_option() -> None:
    s = Config.model_json_schema()
    for name, section in [("Config", s), *s["$defs"].items()]:
        for key, prop in section["properties"].items():
            assert prop.get("description") or key == "type", f"{name}.{key} has no description"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_sections = st.fixed_dictionaries(
    {},
    optional={
        "gateway": st.dictionaries(st.sampled_from(["id", "site", "log_level", "x"]), _json, max_size=4),
        "buffer": st.dictionaries(st.sampled_from(["max_bytes", "policy", "commit_interval", "y"]), _json, max_size=4),
        "uplinks": st.lists(
            st.dictionaries(st.sampled_from(["type", "url", "name", "tls", "inflight"]), _json, max_size=5), max_size=3
        ),
        "batch": _json,
        "drivers": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(data=_sections | _json)
def test_hostile_config_data_only_ever_raises_validation_error(data: Any) -> None:
    try:
        Config.model_validate(data)
    except ValidationError as e:
        assert e.errors()
        for err in e.errors():
            assert err["msg"] and isinstance(err["loc"], tuple)


@settings(max_examples=200, deadline=None)
@given(options=st.dictionaries(st.sampled_from(["points", "interval", "repeat", "nodes", "x"]), _json, max_size=4))
def test_hostile_driver_options_only_ever_raise_validation_error(options: dict[str, Any]) -> None:
    sim = Registry.discover().get("sim").config
    try:
        sim.model_validate({"driver": "sim", **options})
    except ValidationError as e:
        assert e.errors()
