"""Turn a loaded document into a checked config, or a list of placed problems.

No I/O happens here beyond reading the given file, so a pushed config can be checked
before anything is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from gateway.config.loader import Document, LoadError, Loc, Problem, load_yaml
from gateway.config.migrate import MigrationError, migrate
from gateway.config.schema import Config
from gateway.driver_api import ConfigError, DriverConfig, Manifest
from gateway.registry import Registry
from gateway.schema import Model, ValidationError


@dataclass(frozen=True)
class Instance:
    """One configured driver instance, validated against its driver's schema."""

    name: str
    manifest: Manifest
    config: DriverConfig


@dataclass(frozen=True)
class GatewayConfig:
    """A config that passed every check; what the daemon runs."""

    config: Config
    instances: tuple[Instance, ...]
    source: str = ""

    def instance(self, name: str) -> Instance:
        """The configured instance of this name."""
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)


class ConfigInvalid(Exception):
    """The config has problems; ``problems`` are placed for FILE:LINE:COL output."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.col))
        self.source = source
        super().__init__("\n".join(p.format(source or "<config>") for p in self.problems))


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _data_loc(data: Any, loc: tuple[Any, ...]) -> Loc:
    """Drop the parts of an error location that are not in the data (union tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif not isinstance(node, dict | list):
            break
        # else: a missing key or a union tag, not in the data; skip it
    return tuple(out)


def _problems(err: ValidationError, model: type[Model], doc: Document, base: Loc, data: Any) -> list[Problem]:
    problems = []
    for e in err.errors(include_url=False):
        raw_loc = tuple(e["loc"])
        loc = (*base, *_data_loc(data, raw_loc))
        line, col = doc.where(loc)
        kind = e["type"]
        if kind == "extra_forbidden":
            key = raw_loc[-1]
            allowed = _allowed_keys(model, raw_loc[:-1])
            msg = f"{_dotted(loc[:-1]) if len(loc) > 1 else 'top level'}: unknown key {key!r}"
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif kind == "missing":
            msg = f"{_dotted(loc)}: missing required key {raw_loc[-1]!r}"
        else:
            text = str(e["msg"]).removeprefix("Value error, ")
            shown = e.get("input")
            suffix = ""
            if kind != "value_error" and isinstance(shown, str | int | float) and len(repr(shown)) < 60:
                suffix = f" (got {shown!r})"
            msg = f"{_dotted(loc)}: {text}{suffix}"
        problems.append(Problem(line, col, msg))
    return problems


def _models_in(annotation: Any) -> list[type[Model]]:
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _allowed_keys(model: type[Model], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model that rejected an unknown key, for a helpful hint."""
    current: type[Model] | None = model
    pending: list[type[Model]] = []
    for part in loc:
        if isinstance(part, int):
            continue
        if pending:  # a discriminated union: this part is the tag
            current = next((m for m in pending if part in get_args(m.model_fields["type"].annotation)), None)
            pending = []
            if current is None:
                return []
            continue
        if current is None or part not in current.model_fields:
            return []
        found = _models_in(current.model_fields[part].annotation)
        if len(found) == 1:
            current = found[0]
        elif found:
            pending, current = found, None
        else:
            return []
    return sorted(current.model_fields) if current is not None else []


def validate_document(doc: Document, registry: Registry, source: str = "") -> GatewayConfig:
    """Check a parsed document against the schema and every driver's schema."""
    data = doc.data
    if data is None:
        raise ConfigInvalid(
            [Problem(1, 1, "the config is empty; it needs at least a 'gateway: {id: ...}' section")], source
        )
    if not isinstance(data, dict):
        raise ConfigInvalid(
            [Problem(1, 1, f"the top level must be a mapping of sections, not a {type(data).__name__}")], source
        )
    try:
        data = migrate(data)
    except MigrationError as e:
        raise ConfigInvalid([Problem(*doc.where(("config_version",)), str(e))], source) from None
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems += _problems(err, Config, doc, (), data)

    instances: list[Instance] = []
    raw_drivers = data.get("drivers")
    names: dict[str, Loc] = {}
    if isinstance(raw_drivers, list):
        for i, section in enumerate(raw_drivers):
            loc: Loc = ("drivers", i)
            if not isinstance(section, dict):
                problems.append(
                    Problem(*doc.where(loc), f"{_dotted(loc)}: a driver section must be a mapping with a 'driver:' key")
                )
                continue
            driver = section.get("driver")
            if not isinstance(driver, str) or not driver:
                problems.append(
                    Problem(*doc.where(loc), f"{_dotted(loc)}: missing required key 'driver' (the driver's name)")
                )
                continue
            try:
                manifest = registry.get(driver)
            except ConfigError as e:
                problems.append(Problem(*doc.where((*loc, "driver")), f"{_dotted((*loc, 'driver'))}: {e}"))
                continue
            try:
                dc = manifest.config.model_validate(section)
            except ValidationError as err:
                problems += _problems(err, manifest.config, doc, loc, section)
                continue
            name = dc.name or dc.driver
            if name in names:
                first = doc.where(names[name])[0]
                problems.append(
                    Problem(
                        *doc.where((*loc, "name") if "name" in section else loc),
                        f"{_dotted(loc)}: instance name {name!r} is already used on line {first}; "
                        "give each instance a unique 'name:'",
                    )
                )
                continue
            names[name] = loc
            if dc.enabled:
                instances.append(Instance(name, manifest, dc))
    if config is not None:
        declared = {str(d.get("name") or d.get("driver")) for d in raw_drivers or [] if isinstance(d, dict)}
        for i, name in enumerate(config.health.expect_absent):
            if name not in declared:
                where = ("health", "expect_absent", i)
                problems.append(Problem(*doc.where(where), f"{_dotted(where)}: no driver instance named {name!r} "
                                        f"(instances: {', '.join(sorted(declared)) or 'none'})"))
        seen: dict[str, int] = {}
        for i, up in enumerate(config.uplinks):
            if up.name in seen:
                problems.append(
                    Problem(
                        *doc.where(("uplinks", i)),
                        f"uplinks[{i}]: uplink name {up.name!r} is already used by uplinks[{seen[up.name]}]",
                    )
                )
            seen[up.name] = i
    if problems or config is None:
        raise ConfigInvalid(problems, source)
    return GatewayConfig(config, tuple(instances), source)


def load_config(path: str | Path, registry: Registry) -> GatewayConfig:
    """Read, parse, migrate and validate a config file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigInvalid([Problem(1, 1, f"cannot read config: {e.strerror or e}")], source) from None
    return load_config_bytes(raw, registry, source)


def load_config_bytes(raw: bytes, registry: Registry, source: str = "<config>") -> GatewayConfig:
    """Parse and validate config bytes (a file, or a pushed document)."""
    try:
        doc = load_yaml(raw)
    except LoadError as e:
        raise ConfigInvalid(e.problems, source) from None
    return validate_document(doc, registry, source)
