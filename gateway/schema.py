"""Config schemas declared in code: a small library in the style of pydantic's models.

Config sections and driver options are classes whose annotated attributes are the options::

    class PortOptions(Model):
        \"\"\"One serial port.\"\"\"

        device: str = Field(pattern=r"^/dev/", description="Device node.")
        baudrate: int = Field(default=9600, ge=50, le=4_000_000, description="Line speed.")

        @field_validator("device")
        @classmethod
        def _no_spaces(cls, v: str) -> str: ...

        @model_validator(mode="after")
        def _check(self) -> PortOptions: ...

``PortOptions.model_validate(data)`` checks a mapping and raises one ``ValidationError``
listing every problem (location, message, offending input); instances are immutable and
unknown keys are errors. ``model_json_schema()`` exports JSON Schema (draft 2020-12).

Why not pydantic itself: the daemon must stay small on a gateway. pydantic's runtime and the
validators it builds for our schemas cost about 11 MB of resident memory in the daemon; this
module does the part we use, in plain Python. The names and messages follow pydantic's,
so a driver author who knows pydantic writes these classes the same way.

It accepts and refuses what pydantic 2 (lax mode, ``extra="forbid"``) does, with the same
error types, except where a config is better served by refusing; tests/gateway/
test_schema_parity.py runs one table of inputs through both and holds each of these
deliberate differences to what is written here:

* a number field (``int``, ``float``, a ``Literal`` of numbers) refuses a boolean (pydantic
  takes ``true`` as 1): in YAML that is a mistake, not a number;
* a ``bool`` field refuses a float (pydantic takes 0.0 and 1.0), and strips blanks around
  ``" true "`` (pydantic does not);
* an ``int`` field refuses a string holding a float (``"7.0"``; pydantic takes it);
* a ``float`` field refuses inf and nan, also as strings (pydantic takes them): durations,
  sizes and scales in a config are finite;
* a ``str`` field refuses bytes (YAML ``!!binary``; pydantic decodes them as UTF-8);
* a ``list`` field refuses a set (YAML ``!!set``; pydantic takes it, in no defined order).

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, ``Literal``,
unions (``X | None``; a ``discriminator`` field picks among models by a ``Literal`` tag),
``list``, ``set``, ``frozenset``, ``tuple[X, ...]``, ``dict[K, V]``, nested ``Model``s and
``Annotated[X, Field(...), BeforeValidator(f), AfterValidator(f), JsonSchema({...})]``.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

__all__ = [
    "AfterValidator",
    "BeforeValidator",
    "ConfigDict",
    "Field",
    "FieldInfo",
    "JsonSchema",
    "Model",
    "ValidationError",
    "field_validator",
    "model_validator",
]

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<required>"})()
_INVALID: Any = type("_Invalid", (), {"__repr__": lambda self: "<invalid>"})()
Loc = tuple[str | int, ...]
F = TypeVar("F")


class FieldInfo:
    """What ``Field(...)`` declares: default, description and constraints of one option."""

    __slots__ = (
        "_annotation",
        "_owner",
        "default",
        "default_factory",
        "description",
        "discriminator",
        "exclude",
        "ge",
        "gt",
        "le",
        "lt",
        "max_length",
        "min_length",
        "name",
        "pattern",
        "pattern_help",
        "regex",
    )

    def __init__(
        self,
        default: Any = _MISSING,
        default_factory: Callable[[], Any] | None = None,
        description: str = "",
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
        pattern: str | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        discriminator: str | None = None,
        exclude: bool = False,
        pattern_help: str = "",
    ) -> None:
        if default is not _MISSING and default_factory is not None:
            raise TypeError("give a default or a default_factory, not both")
        self.default = default
        self.default_factory = default_factory
        self.description = description
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.pattern = pattern
        self.regex = re.compile(pattern) if pattern is not None else None
        self.pattern_help = pattern_help
        self.min_length, self.max_length = min_length, max_length
        self.discriminator = discriminator
        self.exclude = exclude
        self.name = ""
        self._owner: type[Model] | None = None
        self._annotation: Any = _MISSING

    def is_required(self) -> bool:
        """True when the option has no default."""
        return self.default is _MISSING and self.default_factory is None

    def get_default(self) -> Any:
        """A fresh default value (mutable defaults are copied, factories called)."""
        if self.default_factory is not None:
            return self.default_factory()
        if isinstance(self.default, list | dict | set):
            return copy.deepcopy(self.default)
        return self.default

    @property
    def annotation(self) -> Any:
        """The option's type, with forward references resolved."""
        if self._annotation is _MISSING and self._owner is not None:
            _resolve(self._owner)
        return self._annotation

    def _constrained(self) -> bool:
        return any(
            v is not None
            for v in (self.ge, self.gt, self.le, self.lt, self.pattern, self.min_length, self.max_length)
        )

    def __repr__(self) -> str:
        return f"FieldInfo(name={self.name!r}, default={self.default!r}, description={self.description!r})"


def Field(
    default: Any = _MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    description: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    discriminator: str | None = None,
    exclude: bool = False,
    pattern_help: str = "",
) -> Any:
    """Declare an option: its default (none: required), description and constraints.

    ``ge``/``gt``/``le``/``lt`` bound numbers; ``pattern`` (searched, so anchor it with ``^...$``)
    and ``min_length``/``max_length`` bound strings and lists; ``discriminator`` names the
    ``Literal`` field that picks the model of a union; ``exclude`` leaves the option out of
    ``model_dump``; ``pattern_help`` says in words what ``pattern`` wants (the error shows it
    instead of the regular expression).
    """
    return FieldInfo(
        default, default_factory, description, ge, gt, le, lt, pattern, min_length, max_length, discriminator, exclude,
        pattern_help,
    )


class BeforeValidator:
    """``Annotated`` metadata: ``func(value)`` runs before the type check (e.g. parse "10s")."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class AfterValidator:
    """``Annotated`` metadata: ``func(value)`` runs after the type check and constraints."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func


class JsonSchema:
    """``Annotated`` metadata: the JSON Schema of this type, instead of the derived one."""

    __slots__ = ("schema",)

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema


def ConfigDict(**options: Any) -> dict[str, Any]:
    """Accepted for familiarity; every model already forbids unknown keys and is immutable."""
    return dict(options)


def field_validator(*fields: str, mode: Literal["before", "after"] = "after") -> Callable[[F], F]:
    """Mark ``f(cls, value) -> value`` to check or normalise the named options.

    ``mode="after"`` (default) runs on the type-checked value, ``"before"`` on the raw input.
    Raise ``ValueError`` with a message for the user; return the (possibly changed) value.
    """

    def mark(f: F) -> F:
        target = f.__func__ if isinstance(f, classmethod | staticmethod) else f
        target.__sg_field_validator__ = (fields, mode)  # type: ignore[union-attr]
        return f

    return mark


def model_validator(*, mode: Literal["before", "after"]) -> Callable[[F], F]:
    """Mark a whole-model check: ``after``: ``f(self) -> self`` on the built instance;
    ``before``: ``f(cls, data) -> data`` on the raw mapping. Raise ``ValueError`` to refuse."""

    def mark(f: F) -> F:
        target = f.__func__ if isinstance(f, classmethod | staticmethod) else f
        target.__sg_model_validator__ = mode  # type: ignore[union-attr]
        return f

    return mark


class ValidationError(ValueError):
    """Every problem found in one ``model_validate``; ``errors()`` lists them as dicts with
    ``type``, ``loc`` (keys and list indexes from the top), ``msg`` and ``input``."""

    def __init__(self, title: str, errors: list[dict[str, Any]]) -> None:
        self.title = title
        self._errors = errors
        super().__init__(self._render())

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        """The problems, in the order found."""
        return [dict(e) for e in self._errors]

    def error_count(self) -> int:
        """How many problems."""
        return len(self._errors)

    def _render(self) -> str:
        n = len(self._errors)
        lines = [f"{n} validation error{'s' if n != 1 else ''} for {self.title}"]
        for e in self._errors:
            lines.append(".".join(str(p) for p in e["loc"]) or "(top level)")
            shown = repr(e["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            lines.append(f"  {e['msg']} [type={e['type']}, input_value={shown}]")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


class _Errors(list[dict[str, Any]]):
    def add(self, kind: str, loc: Loc, msg: str, value: Any) -> Any:
        self.append({"type": kind, "loc": loc, "msg": msg, "input": value})
        return _INVALID


def _num(v: float) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() and abs(v) < 1e15 else str(v)


def _or_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


_TRUE = frozenset({"true", "yes", "on", "y", "t", "1"})
_FALSE = frozenset({"false", "no", "off", "n", "f", "0"})


def _scalar(tp: type, value: Any, loc: Loc, errors: _Errors) -> Any:
    """Check/convert a value for str, int, float or bool (pydantic's lax rules, minus bool-as-number)."""
    if tp is str:
        if isinstance(value, str):
            return value
        return errors.add("string_type", loc, "Input should be a valid string", value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value in (0, 1):
                return bool(value)
            return errors.add("bool_parsing", loc, "Input should be a valid boolean, unable to interpret input", value)
        if isinstance(value, str):
            low = value.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            return errors.add("bool_parsing", loc, "Input should be a valid boolean, unable to interpret input", value)
        return errors.add("bool_type", loc, "Input should be a valid boolean", value)
    if tp is int:
        if isinstance(value, bool):
            return errors.add("int_type", loc, "Input should be a valid integer", value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            if not math.isfinite(value):
                return errors.add("finite_number", loc, "Input should be a finite number", value)
            return errors.add(
                "int_from_float", loc, "Input should be a valid integer, got a number with a fractional part", value
            )
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return errors.add(
                    "int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", value
                )
        return errors.add("int_type", loc, "Input should be a valid integer", value)
    if tp is float:
        out: float
        if isinstance(value, bool):
            return errors.add("float_type", loc, "Input should be a valid number", value)
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                return errors.add(
                    "float_parsing", loc, "Input should be a valid number, unable to parse string as a number", value
                )
        else:
            return errors.add("float_type", loc, "Input should be a valid number", value)
        if not math.isfinite(out):
            return errors.add("finite_number", loc, "Input should be a finite number", value)
        return out
    raise TypeError(f"unsupported scalar type {tp!r}")  # pragma: no cover - guarded by the caller


def _constraints(info: FieldInfo, value: Any, loc: Loc, errors: _Errors) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if info.ge is not None and not value >= info.ge:
            return errors.add(
                "greater_than_equal", loc, f"Input should be greater than or equal to {_num(info.ge)}", value
            )
        if info.gt is not None and not value > info.gt:
            return errors.add("greater_than", loc, f"Input should be greater than {_num(info.gt)}", value)
        if info.le is not None and not value <= info.le:
            return errors.add("less_than_equal", loc, f"Input should be less than or equal to {_num(info.le)}", value)
        if info.lt is not None and not value < info.lt:
            return errors.add("less_than", loc, f"Input should be less than {_num(info.lt)}", value)
    elif isinstance(value, str):
        if info.min_length is not None and len(value) < info.min_length:
            return errors.add(
                "string_too_short", loc, f"String should have at least {_plural(info.min_length, 'character')}", value
            )
        if info.max_length is not None and len(value) > info.max_length:
            return errors.add(
                "string_too_long", loc, f"String should have at most {_plural(info.max_length, 'character')}", value
            )
        if info.regex is not None and not info.regex.search(value):
            text = f"String should match pattern '{info.pattern}'"
            if info.pattern_help:
                text = f"must be {info.pattern_help}"
            return errors.add("string_pattern_mismatch", loc, text, value)
    elif isinstance(value, list | set | frozenset | tuple | dict):
        kind = "Dictionary" if isinstance(value, dict) else "List"
        if info.min_length is not None and len(value) < info.min_length:
            return errors.add(
                "too_short",
                loc,
                f"{kind} should have at least {_plural(info.min_length, 'item')} after validation, not {len(value)}",
                value,
            )
        if info.max_length is not None and len(value) > info.max_length:
            return errors.add(
                "too_long",
                loc,
                f"{kind} should have at most {_plural(info.max_length, 'item')} after validation, not {len(value)}",
                value,
            )
    return value


def _value_error(e: Exception, loc: Loc, value: Any, errors: _Errors) -> Any:
    return errors.add("value_error", loc, f"Value error, {e}", value)


def _lit(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _type_name(tp: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if tp in names:
        return names[tp]
    if isinstance(tp, type) and issubclass(tp, Model):
        return tp.__name__
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(_lit(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "list"
    if origin in (set, frozenset):
        return "set"
    if origin is dict:
        return "dictionary"
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    return getattr(tp, "__name__", str(tp))


def _exact(tp: Any, value: Any) -> bool:
    """Whether the value already is of this member type (pydantic's "smart" union, first pass)."""
    if tp in (str, int, float, bool, type(None)):
        return type(value) is tp
    origin = get_origin(tp)
    if origin is Literal:
        return any(type(a) is type(value) and a == value for a in get_args(tp))
    if origin is Annotated:
        return _exact(get_args(tp)[0], value)
    if isinstance(tp, type) and issubclass(tp, Model):
        return isinstance(value, tp)
    return False


def _check(tp: Any, value: Any, loc: Loc, errors: _Errors, info: FieldInfo | None = None) -> Any:
    """Validate one value against an annotation; appends problems to ``errors``."""
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *meta = get_args(tp)
        after: list[Callable[[Any], Any]] = []
        merged = info
        for m in meta:
            if isinstance(m, BeforeValidator):
                try:
                    value = m.func(value)
                except (ValueError, AssertionError) as e:
                    return _value_error(e, loc, value, errors)
            elif isinstance(m, AfterValidator):
                after.append(m.func)
            elif isinstance(m, FieldInfo):
                merged = m if merged is None else _merge(merged, m)
        value = _check(inner, value, loc, errors, merged)
        if value is _INVALID:
            return value
        for func in after:
            try:
                value = func(value)
            except (ValueError, AssertionError) as e:
                return _value_error(e, loc, value, errors)
        return value
    if tp is Any or tp is object:
        out = value
    elif tp in (str, int, float, bool):
        out = _scalar(tp, value, loc, errors)
    elif tp is type(None) or tp is None:
        if value is not None:
            return errors.add("none_required", loc, "Input should be None", value)
        return None
    elif origin is Literal:
        allowed = get_args(tp)
        for a in allowed:
            if type(a) is type(value) and a == value:
                return a
        return errors.add("literal_error", loc, f"Input should be {_or_list([_lit(a) for a in allowed])}", value)
    elif origin in (Union, types.UnionType):
        out = _union(get_args(tp), value, loc, errors, info)
    elif origin in (list, tuple, set, frozenset):
        out = _sequence(tp, origin, value, loc, errors)
    elif origin is dict:
        out = _mapping(tp, value, loc, errors)
    elif tp in (list, tuple, set, frozenset, dict):
        out = _check(tp[Any] if tp is not tuple else tuple[Any, ...], value, loc, errors, info)
    elif isinstance(tp, type) and issubclass(tp, Model):
        return tp._validate(value, loc, errors)
    else:
        raise TypeError(f"schema type {tp!r} is not supported (at {'.'.join(map(str, loc))})")
    if out is _INVALID or info is None:
        return out
    return _constraints(info, out, loc, errors)


def _merge(a: FieldInfo, b: FieldInfo) -> FieldInfo:
    out = FieldInfo()
    for slot in ("ge", "gt", "le", "lt", "pattern", "regex", "min_length", "max_length", "discriminator"):
        setattr(out, slot, getattr(b, slot) if getattr(b, slot) is not None else getattr(a, slot))
    return out


def _union(members: tuple[Any, ...], value: Any, loc: Loc, errors: _Errors, info: FieldInfo | None) -> Any:
    if value is None and type(None) in members:
        return None
    options = [m for m in members if m is not type(None)]
    disc = info.discriminator if info is not None else None
    if disc is not None:
        return _tagged(options, disc, value, loc, errors)
    if len(options) == 1:
        return _check(options[0], value, loc, errors)
    for m in options:  # smart mode: an exact type match wins
        if _exact(m, value):
            return _check(m, value, loc, errors)
    firsts: list[_Errors] = []
    for m in options:
        trial = _Errors()
        out = _check(m, value, loc, trial)
        if out is not _INVALID:
            return out
        firsts.append(trial)
    models = [(m, e) for m, e in zip(options, firsts, strict=True) if isinstance(m, type) and issubclass(m, Model)]
    if len(models) == 1 and isinstance(value, dict):  # a mapping meant for the one model option
        errors.extend(models[0][1])
        return _INVALID
    expected = [_type_name(m) for m in options]
    return errors.add("union_type", loc, f"Input should be a valid {_or_list(expected)}", value)


def _tagged(options: list[Any], disc: str, value: Any, loc: Loc, errors: _Errors) -> Any:
    tags: dict[Any, type[Model]] = {}
    for m in options:
        if not (isinstance(m, type) and issubclass(m, Model)):
            raise TypeError(f"discriminator {disc!r}: {m!r} is not a model")
        for tag in get_args(m.model_fields[disc].annotation):
            tags[tag] = m
    expected = ", ".join(_lit(t) for t in tags)
    if isinstance(value, Model) and type(value) in options:
        return value
    if not isinstance(value, dict):
        return errors.add("model_attributes_type", loc, "Input should be a valid dictionary or object", value)
    if disc not in value:
        return errors.add(
            "union_tag_not_found", loc, f"Unable to extract tag using discriminator '{disc}'", value
        )
    tag = value[disc]
    model = tags.get(tag) if isinstance(tag, str | int) and not isinstance(tag, bool) else None
    if model is None:
        return errors.add(
            "union_tag_invalid",
            loc,
            f"Input tag {_lit(tag)} found using '{disc}' does not match any of the expected tags: {expected}",
            value,
        )
    return model._validate(value, (*loc, tag), errors)


def _sequence(tp: Any, origin: Any, value: Any, loc: Loc, errors: _Errors) -> Any:
    args = get_args(tp)
    if origin in (set, frozenset):
        if not isinstance(value, list | tuple | set | frozenset):
            return errors.add("set_type", loc, "Input should be a valid set", value)
    elif not isinstance(value, list | tuple):
        kind = "tuple" if origin is tuple else "list"
        return errors.add(f"{kind}_type", loc, f"Input should be a valid {kind}", value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            return errors.add(
                "too_long" if len(value) > len(args) else "too_short",
                loc,
                f"Tuple should have {_plural(len(args), 'item')}, not {len(value)}",
                value,
            )
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    before = len(errors)
    items = [_check(t, v, (*loc, i), errors) for i, (t, v) in enumerate(zip(item_types, value, strict=True))]
    if len(errors) > before:
        return _INVALID
    if origin is list:
        return items
    if origin is tuple:
        return tuple(items)
    try:
        return origin(items)
    except TypeError:  # unhashable items in a set
        return errors.add("set_type", loc, "Input should be a valid set of hashable items", value)


def _mapping(tp: Any, value: Any, loc: Loc, errors: _Errors) -> Any:
    if not isinstance(value, dict):
        return errors.add("dict_type", loc, "Input should be a valid dictionary", value)
    key_type, value_type = get_args(tp) or (Any, Any)
    before = len(errors)
    out = {}
    for k, v in value.items():
        key = _check(key_type, k, (*loc, k, "[key]"), errors)  # (where pydantic puts it)
        item = _check(value_type, v, (*loc, k), errors)
        out[key] = item
    return _INVALID if len(errors) > before else out


def _is_classvar(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    return annotation is ClassVar or get_origin(annotation) is ClassVar


def _resolve(cls: type[Model]) -> None:
    """Evaluate the string annotations of a model's fields (on first use, so classes may refer
    to classes defined after them)."""
    if cls.__dict__.get("_sg_resolved"):
        return
    localns = dict(cls.__dict__.get("_sg_localns") or {})
    localns.setdefault(cls.__name__, cls)
    try:
        hints = typing.get_type_hints(cls, localns=localns, include_extras=True)
    except NameError as e:
        raise TypeError(f"{cls.__qualname__}: cannot resolve an annotation: {e}") from None
    fields = {}
    for name, info in cls.model_fields.items():
        if info._owner is not cls:  # inherited: a copy owned by this class
            clone = copy.copy(info)
            clone._owner = cls
            info = clone
        info._annotation = hints[name]
        fields[name] = info
    cls.model_fields = fields
    cls._sg_resolved = True


# mypy learns the constructor (keyword arguments per field) from this decorator (PEP 681).
@typing.dataclass_transform(kw_only_default=True, field_specifiers=(Field, FieldInfo), frozen_default=True)
class Model:
    """Base of config sections and driver options: immutable, unknown keys refused."""

    model_config: ClassVar[dict[str, Any]] = {}
    model_fields: ClassVar[dict[str, FieldInfo]] = {}
    _sg_resolved: ClassVar[bool] = False
    _sg_localns: ClassVar[dict[str, Any] | None] = None
    _sg_field_validators: ClassVar[dict[str, list[tuple[str, Callable[..., Any]]]]] = {}
    _sg_model_validators: ClassVar[list[tuple[str, Callable[..., Any]]]] = []

    if typing.TYPE_CHECKING:
        model_fields_set: set[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        frame = sys._getframe(1)
        if frame.f_locals is not frame.f_globals:  # a class made inside a function (tests)
            cls._sg_localns = dict(frame.f_locals)
        fields: dict[str, FieldInfo] = {}
        for base in reversed(cls.__mro__[1:]):
            if issubclass(base, Model) and base is not Model:
                fields.update(base.model_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if name.startswith("_") or _is_classvar(annotation):
                continue
            declared = cls.__dict__.get(name, _MISSING)
            info = declared if isinstance(declared, FieldInfo) else FieldInfo(default=declared)
            info = copy.copy(info)
            info.name = name
            info._owner = cls
            info._annotation = _MISSING
            fields[name] = info
            if name in cls.__dict__:
                delattr(cls, name)
        cls.model_fields = fields
        cls._sg_resolved = False
        field_validators: dict[str, list[tuple[str, Callable[..., Any]]]] = {}
        model_validators: dict[str, tuple[str, Callable[..., Any]]] = {}
        for klass in reversed(cls.__mro__):
            for attr, obj in klass.__dict__.items():
                func = obj.__func__ if isinstance(obj, classmethod | staticmethod) else obj
                marked = getattr(func, "__sg_field_validator__", None)
                if marked is not None:
                    names, mode = marked
                    for n in names:
                        if n not in fields:
                            raise TypeError(f"{cls.__qualname__}.{attr}: validator for unknown field {n!r}")
                        field_validators.setdefault(n, []).append((mode, func))
                mode = getattr(func, "__sg_model_validator__", None)
                if mode is not None:
                    model_validators[attr] = (mode, func)
        cls._sg_field_validators = field_validators
        cls._sg_model_validators = list(model_validators.values())

    # -- validation ---------------------------------------------------------------------------

    @classmethod
    def model_validate(cls: type[_M], obj: Any) -> _M:
        """A checked instance from a mapping (or an instance); ``ValidationError`` lists all problems."""
        errors = _Errors()
        out = cls._validate(obj, (), errors)
        if errors or out is _INVALID:
            raise ValidationError(cls.__name__, errors)
        return typing.cast(_M, out)

    def __init__(self, **data: Any) -> None:
        errors = _Errors()
        if type(self)._populate(self, data, (), errors) is _INVALID:
            raise ValidationError(type(self).__name__, errors)

    @classmethod
    def _validate(cls, obj: Any, loc: Loc, errors: _Errors) -> Any:
        if isinstance(obj, cls):
            return obj
        return cls._populate(cls.__new__(cls), obj, loc, errors)

    @classmethod
    def _populate(cls, inst: Model, obj: Any, loc: Loc, errors: _Errors) -> Any:
        """Check ``obj`` and fill ``inst`` with its values; ``inst``, or ``_INVALID`` with the
        problems appended to ``errors`` (the constructor and ``model_validate`` both end here)."""
        for mode, func in cls._sg_model_validators:
            if mode == "before":
                try:
                    obj = func(cls, obj)
                except (ValueError, AssertionError) as e:
                    return _value_error(e, loc, obj, errors)
        if not isinstance(obj, dict):
            return errors.add(
                "model_type", loc, f"Input should be a valid dictionary or instance of {cls.__name__}", obj
            )
        values = cls._fields_of(obj, loc, errors)
        if values is _INVALID:
            return _INVALID
        inst._fill(values, obj)
        return cls._after(inst, obj, loc, errors)

    @classmethod
    def _fields_of(cls, data: dict[str, Any], loc: Loc, errors: _Errors) -> Any:
        _resolve(cls)
        before = len(errors)
        values: dict[str, Any] = {}
        for key in data:
            if key not in cls.model_fields:
                errors.add("extra_forbidden", (*loc, key), "Extra inputs are not permitted", data[key])
        for name, info in cls.model_fields.items():
            where = (*loc, name)
            if name not in data:
                if info.is_required():
                    errors.add("missing", where, "Field required", data)
                else:
                    values[name] = info.get_default()
                continue
            value = data[name]
            validators = cls._sg_field_validators.get(name, ())
            try:
                for mode, func in validators:
                    if mode == "before":
                        value = func(cls, value)
            except (ValueError, AssertionError) as e:
                _value_error(e, where, value, errors)
                continue
            value = _check(info.annotation, value, where, errors, info)
            if value is _INVALID:
                continue
            try:
                for mode, func in validators:
                    if mode == "after":
                        value = func(cls, value)
            except (ValueError, AssertionError) as e:
                _value_error(e, where, value, errors)
                continue
            values[name] = value
        return _INVALID if len(errors) > before else values

    def _fill(self, values: dict[str, Any], given: Iterable[str]) -> None:
        d = self.__dict__
        d.update(values)
        d["model_fields_set"] = {k for k in given if k in values}

    @classmethod
    def _after(cls, inst: Model, data: Any, loc: Loc, errors: _Errors) -> Any:
        for mode, func in cls._sg_model_validators:
            if mode == "after":
                try:
                    func(inst)
                except (ValueError, AssertionError) as e:
                    return _value_error(e, loc, data, errors)
        return inst

    # -- behaviour of instances -----------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use model_copy(update={{{name!r}: ...}})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(self.__dict__[n] == other.__dict__[n] for n in type(self).model_fields)

    def __hash__(self) -> int:
        return hash((type(self), *(_hashable(self.__dict__[n]) for n in type(self).model_fields)))

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={self.__dict__[n]!r}" for n in type(self).model_fields)
        return f"{type(self).__name__}({shown})"

    def __copy__(self) -> Model:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Model:
        new = type(self).__new__(type(self))
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.__dict__))

    def model_copy(self: _M, *, update: dict[str, Any] | None = None, deep: bool = False) -> _M:
        """A copy with some options replaced (not validated again, as in pydantic)."""
        new = copy.deepcopy(self) if deep else copy.copy(self)
        if update:
            unknown = set(update) - set(type(self).model_fields)
            if unknown:
                raise ValueError(f"{type(self).__name__} has no option {', '.join(sorted(unknown))}")
            new.__dict__.update(update)
            new.__dict__["model_fields_set"] = set(self.model_fields_set) | set(update)
        return new

    def model_dump(
        self, *, mode: Literal["python", "json"] = "python", exclude: set[str] | None = None
    ) -> dict[str, Any]:
        """The options as plain data (nested models as dicts); ``mode="json"``: JSON types only."""
        out = {}
        for name, info in type(self).model_fields.items():
            if info.exclude or (exclude and name in exclude):
                continue
            out[name] = _dump(self.__dict__[name], mode)
        return out

    @classmethod
    def model_json_schema(cls, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of this model; nested models under ``$defs``."""
        defs: dict[str, Any] = {}
        top = _model_schema(cls, defs, ref_template)
        if defs:
            top["$defs"] = defs
        return top


_M = TypeVar("_M", bound=Model)


def _rebuild(cls: type[Model], state: dict[str, Any]) -> Model:
    inst = cls.__new__(cls)
    inst.__dict__.update(state)
    return inst


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, set):
        return frozenset(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((repr(k), _hashable(x)) for k, x in v.items()))
    return v


def _dump(v: Any, mode: str) -> Any:
    if isinstance(v, Model):
        return v.model_dump(mode=mode)  # type: ignore[arg-type]
    if isinstance(v, list):
        return [_dump(x, mode) for x in v]
    if isinstance(v, tuple):
        return [_dump(x, mode) for x in v] if mode == "json" else tuple(_dump(x, mode) for x in v)
    if isinstance(v, set | frozenset):
        items = [_dump(x, mode) for x in v]
        if mode == "json":
            try:
                return sorted(items)
            except TypeError:
                return items
        return type(v)(items)
    if isinstance(v, dict):
        return {(str(k) if mode == "json" else k): _dump(x, mode) for k, x in v.items()}
    return v


# -- JSON Schema ---------------------------------------------------------------------------------


def _model_schema(cls: type[Model], defs: dict[str, Any], ref: str) -> dict[str, Any]:
    _resolve(cls)
    props: dict[str, Any] = {}
    required = []
    for name, info in cls.model_fields.items():
        if info.exclude:
            continue
        prop = _type_schema(info.annotation, defs, ref, info)
        if info.description:
            prop["description"] = info.description
        if info.is_required():
            required.append(name)
        elif info.default_factory is None and _jsonable(info.default):
            prop["default"] = info.default
        props[name] = prop
    out: dict[str, Any] = {"title": cls.__name__, "type": "object", "properties": props}
    doc = (cls.__doc__ or "").strip()
    if doc:
        out["description"] = doc.split("\n\n")[0].replace("\n", " ")
    if required:
        out["required"] = required
    out["additionalProperties"] = False
    return out


def _jsonable(v: Any) -> bool:
    if v is None or isinstance(v, str | int | float | bool):
        return not (isinstance(v, float) and not math.isfinite(v))
    if isinstance(v, list | tuple):
        return all(_jsonable(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _jsonable(x) for k, x in v.items())
    return False


def _type_schema(tp: Any, defs: dict[str, Any], ref: str, info: FieldInfo | None = None) -> dict[str, Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, JsonSchema):
                return copy.deepcopy(m.schema)
        merged = info
        for m in meta:
            if isinstance(m, FieldInfo):
                merged = m if merged is None else _merge(merged, m)
        return _type_schema(inner, defs, ref, merged)
    out: dict[str, Any]
    if tp is Any or tp is object:
        out = {}
    elif tp is str:
        out = {"type": "string"}
    elif tp is bool:
        out = {"type": "boolean"}
    elif tp is int:
        out = {"type": "integer"}
    elif tp is float:
        out = {"type": "number"}
    elif tp is type(None) or tp is None:
        out = {"type": "null"}
    elif origin is Literal:
        values = list(get_args(tp))
        out = {"const": values[0]} if len(values) == 1 else {"enum": values}
    elif origin in (Union, types.UnionType):
        members = get_args(tp)
        disc = info.discriminator if info is not None else None
        if disc is not None:
            options = [m for m in members if m is not type(None)]
            mapping = {}
            refs = []
            for m in options:
                r = _type_schema(m, defs, ref)
                refs.append(r)
                for tag in get_args(m.model_fields[disc].annotation):
                    mapping[str(tag)] = r["$ref"]
            out = {"oneOf": refs, "discriminator": {"propertyName": disc, "mapping": mapping}}
        else:
            out = {"anyOf": [_type_schema(m, defs, ref) for m in members]}
    elif origin in (list, tuple, set, frozenset):
        args = get_args(tp)
        out = {"type": "array"}
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            out["prefixItems"] = [_type_schema(a, defs, ref) for a in args]
            out["minItems"] = out["maxItems"] = len(args)
        elif args:
            out["items"] = _type_schema(args[0], defs, ref)
        if origin in (set, frozenset):
            out["uniqueItems"] = True
    elif origin is dict:
        key_type, value_type = get_args(tp) or (Any, Any)
        out = {"type": "object", "additionalProperties": _type_schema(value_type, defs, ref)}
        if key_type is not str:
            out["propertyNames"] = {"description": f"a key of type {_type_name(key_type)}"}
    elif tp in (list, tuple, set, frozenset):
        out = {"type": "array"}
    elif tp is dict:
        out = {"type": "object"}
    elif isinstance(tp, type) and issubclass(tp, Model):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            defs[name] = _model_schema(tp, defs, ref)
        return {"$ref": ref.format(model=name)}
    else:
        raise TypeError(f"schema type {tp!r} has no JSON Schema")
    if info is not None:
        _schema_constraints(out, info)
    return out


def _schema_constraints(out: dict[str, Any], info: FieldInfo) -> None:
    kind = out.get("type")
    if kind in ("integer", "number"):
        for attr, key in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum"), ("lt", "exclusiveMaximum")):
            v = getattr(info, attr)
            if v is not None:
                out[key] = v
    elif kind == "string":
        if info.pattern is not None:
            out["pattern"] = info.pattern
        if info.min_length is not None:
            out["minLength"] = info.min_length
        if info.max_length is not None:
            out["maxLength"] = info.max_length
    elif kind == "array":
        if info.min_length is not None:
            out["minItems"] = info.min_length
        if info.max_length is not None:
            out["maxItems"] = info.max_length
    elif "anyOf" in out:
        for branch in out["anyOf"]:
            if branch.get("type") != "null":
                _schema_constraints(branch, info)
