"""Hostile YAML is refused with a clear message and bounded cost."""

from __future__ import annotations

import resource

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigInvalid, load_config_bytes
from gateway.config.loader import MAX_BYTES, LoadError, load_yaml
from gateway.registry import Registry

BILLION_LAUGHS = b"""
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
gateway: {id: gw-1}
"""


def _problem(raw: bytes) -> str:
    with pytest.raises(LoadError) as exc:
        load_yaml(raw)
    return exc.value.problems[0].message


def test_alias_bomb_refused_without_expanding() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "expands to more than" in _problem(BILLION_LAUGHS)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000  # an expanded bomb would need gigabytes


def test_huge_document_refused_before_parsing() -> None:
    assert f"the limit is {MAX_BYTES}" in _problem(b"a: " + b"x" * (MAX_BYTES + 1))


def test_deep_nesting_refused() -> None:
    assert "nesting deeper" in _problem(b"[" * 5000 + b"]" * 5000)


def test_non_utf8_refused_with_position() -> None:
    with pytest.raises(LoadError) as exc:
        load_yaml(b"gateway:\n  id: gw\xff1\n")
    p = exc.value.problems[0]
    assert (p.line, p.col) == (2, 9)
    assert "not valid UTF-8" in p.message


def test_python_tags_refused() -> None:
    msg = _problem(b"gateway: !!python/object/apply:os.system ['true']\n")
    assert "could not determine a constructor" in msg or "YAML" in msg


def test_utf8_bom_accepted() -> None:
    assert load_yaml("\ufeffgateway: {id: gw-1}\n").data == {"gateway": {"id": "gw-1"}}


def test_multiple_documents_refused() -> None:
    assert "YAML" in _problem(b"gateway: {id: a}\n---\ngateway: {id: b}\n")


@given(st.binary(max_size=2000))
def test_random_bytes_never_escape(raw: bytes) -> None:
    try:
        load_config_bytes(raw, REGISTRY)
    except ConfigInvalid as e:
        assert e.problems and all(p.line >= 1 and p.col >= 1 for p in e.problems)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
        max_leaves=30,
    )
)
def test_random_structures_give_placed_problems(data: object) -> None:
    import yaml

    raw = yaml.safe_dump({"gateway": {"id": "gw-1"}, "drivers": data}).encode()
    try:
        load_config_bytes(raw, REGISTRY)
    except ConfigInvalid as e:
        assert e.problems


REGISTRY = Registry.discover()
