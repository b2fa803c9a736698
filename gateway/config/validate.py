"""Turn a loaded document into a checked config, or a list of placed problems.

No I/O happens here beyond reading the given file, so a pushed config can be checked
before anything is applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as _replace
from pathlib import Path
from typing import Any, get_args

from gateway.config.loader import Document, LoadError, Loc, Problem, load_yaml, merge, named
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
class DownInstance:
    """A configured instance whose driver is installed but does not load: it alone stays down."""

    name: str
    driver: str
    reason: str


@dataclass(frozen=True)
class GatewayConfig:
    """A config that passed every check; what the daemon runs."""

    config: Config
    instances: tuple[Instance, ...]
    source: str = ""
    down: tuple[DownInstance, ...] = ()  # only when loaded with broken_ok (the daemon)

    def instance(self, name: str) -> Instance:
        """The configured instance of this name."""
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)


class ConfigInvalid(Exception):
    """The config has problems; ``problems`` are placed for FILE:LINE:COL output."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col))
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
        problems.append(doc.problem(loc, msg))
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


def validate_document(doc: Document, registry: Registry, source: str = "", broken_ok: bool = False) -> GatewayConfig:
    """Check a parsed document against the schema and every driver's schema.

    With ``broken_ok`` (the daemon), an instance of a driver that is installed but does not
    load is set aside as down instead of refusing the whole config: it alone stays off.
    """
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
        raise ConfigInvalid([doc.problem(("config_version",), str(e))], source) from None
    problems: list[Problem] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        problems += _problems(err, Config, doc, (), data)

    instances: list[Instance] = []
    down: list[DownInstance] = []
    raw_drivers = data.get("drivers")
    names: dict[str, Loc] = {}
    if isinstance(raw_drivers, list):
        for i, section in enumerate(raw_drivers):
            loc: Loc = ("drivers", i)
            if not isinstance(section, dict):
                problems.append(
                    doc.problem(loc, f"{_dotted(loc)}: a driver section must be a mapping with a 'driver:' key")
                )
                continue
            driver = section.get("driver")
            if not isinstance(driver, str) or not driver:
                problems.append(
                    doc.problem(loc, f"{_dotted(loc)}: missing required key 'driver' (the driver's name)")
                )
                continue
            try:
                manifest = registry.get(driver)
            except ConfigError as e:
                why = registry.broken_reason(driver)
                if broken_ok and why is not None:
                    down.append(DownInstance(str(section.get("name") or driver), driver, why))
                    continue
                problems.append(doc.problem((*loc, "driver"), f"{_dotted((*loc, 'driver'))}: {e}"))
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
    return GatewayConfig(config, tuple(instances), source, tuple(down))


def dropin_dir(path: str | Path) -> Path:
    """``FILE.d/``: the drop-in directory whose ``*.yaml`` files are merged over FILE."""
    p = Path(path)
    return p.with_name(p.name + ".d")


def config_files(path: str | Path) -> list[Path]:
    """The config file and its drop-ins in the order they are merged (drop-ins by name)."""
    d = dropin_dir(path)
    extra = sorted(f for f in d.glob("*.yaml") if f.is_file()) if d.is_dir() else []
    return [Path(path), *extra]


def read_config(path: str | Path, skip: Path | None = None, replace: dict[Path, bytes] | None = None) -> Document:
    """Read, parse and migrate a config file and its drop-ins (``FILE.d/*.yaml``) into one document.

    Each file is migrated on its own (its own ``config_version``), then the drop-ins are laid
    over the file in name order: mappings merge key by key, lists and values replace. Every
    position keeps the file it came from, so a problem names the file and line that set the
    value. ``skip`` leaves one file out; ``replace`` reads given bytes instead of a file (a
    file that does not exist yet is added in its place in the order).
    """
    source = str(path)
    replace = replace or {}
    files = [f for f in config_files(path) if f != skip]
    files = sorted({*files, *replace}, key=lambda f: (f != Path(path), str(f)))
    merged: Document | None = None
    problems: list[Problem] = []
    for f in files:
        name = str(f) if len(files) > 1 else ""
        try:
            raw = replace[f] if f in replace else f.read_bytes()
        except OSError as e:
            problems.append(Problem(1, 1, f"cannot read config: {e.strerror or e}", name))
            continue
        try:
            doc = load_yaml(raw)
        except LoadError as e:
            problems += [_replace(p, file=name) for p in e.problems]
            continue
        if len(files) == 1:
            return doc  # validate_document reports an empty or malformed single file
        doc = named(doc, name)
        if doc.data is None:
            continue  # an empty file (comments only) sets nothing
        if not isinstance(doc.data, dict):
            kind = type(doc.data).__name__
            problems.append(doc.problem((), f"the top level must be a mapping of sections, not a {kind}"))
            continue
        try:
            doc.data = migrate(doc.data)
        except MigrationError as e:
            problems.append(doc.problem(("config_version",), str(e)))
            continue
        merged = doc if merged is None else merge(merged, doc)
    if problems:
        raise ConfigInvalid(problems, source)
    return merged or Document(None, {(): (1, 1)})


def load_config(path: str | Path, registry: Registry, broken_ok: bool = False) -> GatewayConfig:
    """Read, parse, migrate and validate a config file and its drop-ins (see read_config)."""
    return validate_document(read_config(path), registry, str(path), broken_ok)


def load_config_bytes(raw: bytes, registry: Registry, source: str = "<config>") -> GatewayConfig:
    """Parse and validate config bytes (a file, or a pushed document)."""
    try:
        doc = load_yaml(raw)
    except LoadError as e:
        raise ConfigInvalid(e.problems, source) from None
    return validate_document(doc, registry, source)
