"""docs/configuration.md carries the reference made from the schema, so the page cannot drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from gateway.config.reference import BEGIN, END, reference
from gateway.config.schema import Config
from gateway.driver_api import DriverConfig
from gateway.edge.rules import ReportRule
from gateway.schema import Model

PAGE = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_the_page_carries_the_reference_the_schema_makes() -> None:
    text = PAGE.read_text()
    assert BEGIN in text and END in text
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == reference().strip(), "docs/configuration.md is stale: paste `sensegate check --reference`"


def _models(model: type[Model], seen: set[type[Model]]) -> set[type[Model]]:
    if model in seen:
        return seen
    seen.add(model)
    for info in model.model_fields.values():
        for found in _nested(info.annotation):
            _models(found, seen)
    return seen


def _nested(annotation: object) -> list[type[Model]]:
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return [annotation]
    return [m for a in get_args(annotation) for m in _nested(a)]


def test_every_option_of_every_section_has_a_row_and_every_link_a_heading() -> None:
    ref = reference()
    tables = ref.split("\n### ")
    models = _models(Config, set()) | _models(DriverConfig, set())
    assert ReportRule in models
    for model in models:
        table = next((t for t in tables if (model.__doc__ or "").strip().splitlines()[0] in t), None)
        assert table is not None, f"no table for {model.__name__}"
        for name in model.model_fields:
            assert f"| `{name}` |" in table, f"{model.__name__}.{name} has no row"
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^### (.+)$", ref, re.M)}
    for link in re.findall(r"\]\(#([^)]+)\)", ref):
        assert link in anchors, f"a link to #{link} has no heading"
