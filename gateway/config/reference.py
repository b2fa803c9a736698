"""The configuration reference as Markdown, made from the schema itself so the page cannot drift.

``sensegate check --reference`` prints it; docs/configuration.md carries it between two marker
lines, and a test holds the page to this output. Covered: every section of the core config and
the options every driver instance has (with its ``report:`` rules); a driver's own options are
in its README.
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

from gateway.config.schema import Config
from gateway.driver_api import DriverConfig
from gateway.schema import FieldInfo, Model
from gateway.units import ByteSize, Duration

BEGIN = "<!-- reference: made by `sensegate check --reference`; edit the schema, not this -->"
END = "<!-- reference: end -->"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001)):
        if seconds >= size and (seconds / size) == round(seconds / size):
            return f"{round(seconds / size)}{unit}"
    return f"{seconds:g}s"


def _size(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


class _Reference:
    """Walks the models from the top level down, one table per model, in the order found."""

    def __init__(self) -> None:
        self.headings: dict[type[Model], str] = {}
        self.queue: list[type[Model]] = []

    def add(self, model: type[Model], heading: str) -> str:
        if model not in self.headings:
            self.headings[model] = heading
            self.queue.append(model)
        return self.headings[model]

    def type_of(self, annotation: Any, where: str) -> str:
        if annotation is Duration:
            return "duration"
        if annotation is ByteSize:
            return "size"
        origin = get_origin(annotation)
        if origin is Literal:
            return " \\| ".join(f"`{v}`" for v in get_args(annotation))
        if origin in (Union, types.UnionType):
            parts = [a for a in get_args(annotation) if a is not type(None)]
            text = " or ".join(self.type_of(a, where) for a in parts)
            return f"{text}, optional" if len(parts) < len(get_args(annotation)) else text
        if origin is list:
            return f"list of {self.type_of(get_args(annotation)[0], where)}"
        if hasattr(annotation, "__metadata__"):  # Annotated: the type it annotates
            return self.type_of(get_args(annotation)[0], where)
        if isinstance(annotation, type) and issubclass(annotation, Model):
            tag = annotation.model_fields.get("type")
            name = f"{where} (type: {get_args(tag.annotation)[0]})" if tag is not None else where
            heading = self.add(annotation, name)
            return f"[{heading}](#{_slug(heading)})"
        return {str: "text", int: "integer", float: "number", bool: "true/false"}.get(annotation, "mapping")

    @staticmethod
    def default_of(info: FieldInfo) -> str:
        if info.is_required():
            return "**required**"
        value = info.get_default()
        ann = _members(info.annotation)
        if value is None:
            return "none"
        if Duration in ann:
            return f"`{_duration(value)}`"
        if ByteSize in ann:
            return f"`{_size(value)}`"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        if isinstance(value, list):
            if value and isinstance(value[0], Model):
                return "one `jsonl`" if len(value) == 1 else f"{len(value)} entries"
            return f"`[{', '.join(map(str, value))}]`"
        if isinstance(value, Model):
            return "(defaults)"
        return f'`"{value}"`' if value == "" else f"`{value}`"

    def table(self, model: type[Model]) -> list[str]:
        where = self.headings[model]
        doc = (model.__doc__ or "").strip().splitlines()[0]
        lines = [f"### {where}", "", doc, "", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        base = re.sub(r" \(.*\)$", "", where)  # "uplinks (type: mqtt)" -> "uplinks"
        for name, info in model.model_fields.items():
            sub = name if where == "top level" else f"{base}.{name}"
            if model is Config and name == "drivers":
                heading = self.headings[DriverConfig]
                kind = f"list of [{heading}](#{_slug(heading)}) plus the driver's own options (its README)"
            else:
                kind = self.type_of(info.annotation, sub)
            text = (info.description or ("Selects this kind." if name == "type" else ""))
            text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")  # not HTML tags
            lines.append(f"| `{name}` | {kind} | {self.default_of(info)} | {text} |")
        return [*lines, ""]


def reference() -> str:
    """Markdown: one table per section of the core config and of every driver instance's options."""
    ref = _Reference()
    ref.add(Config, "top level")
    ref.add(DriverConfig, "drivers (every instance)")
    out: list[str] = []
    while ref.queue:
        model = ref.queue.pop(0)
        if model is DriverConfig and any(m is not DriverConfig for m in ref.queue):
            ref.queue.append(model)  # the core sections first, then the drivers'
            continue
        out += ref.table(model)
    return "\n".join(out).rstrip() + "\n"
