"""Find drivers through the ``sensegate.drivers`` entry-point group and check them at load.

An entry point names a driver's ``Manifest`` (``sim = drivers.sim:MANIFEST``). The manifest
is cheap to import; the driver class it names, with its hardware libraries, is imported only
when a configured instance needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from dataclasses import dataclass

from gateway.driver_api import (
    SUPPORTED_API_VERSIONS,
    ConfigError,
    Driver,
    DriverConfig,
    Manifest,
    MissingExtra,
)
from gateway.entrypoints import entry_points

GROUP = "sensegate.drivers"
log = logging.getLogger("sensegate.registry")


@dataclass(frozen=True)
class Broken:
    """An entry point that did not load, kept so `sensegate drivers` can say why."""

    name: str
    target: str
    reason: str


class Registry:
    """Installed drivers by name, plus the ones that failed their checks."""

    def __init__(self, manifests: dict[str, Manifest], broken: list[Broken]) -> None:
        self.manifests = manifests
        self.broken = broken

    def refresh(self) -> None:
        """Look again (a reload or a push after `sensegate driver install`): new drivers appear."""
        importlib.invalidate_caches()  # the import system caches directory listings
        fresh = Registry.discover()
        self.manifests, self.broken = fresh.manifests, fresh.broken

    @classmethod
    def discover(cls) -> Registry:
        """Load every entry point of the group; never raises for one bad plugin."""
        manifests: dict[str, Manifest] = {}
        broken: list[Broken] = []
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                obj = ep.load()
                problem = check_manifest(ep.name, obj)
            except Exception as e:  # a broken plugin must not break the host
                problem = f"import failed: {type(e).__name__}: {e}"
            if problem:
                broken.append(Broken(ep.name, ep.value, problem))
                log.warning("driver %s (%s) not loaded: %s", ep.name, ep.value, problem)
            elif ep.name in manifests:
                broken.append(Broken(ep.name, ep.value, "a driver of this name is already installed"))
            else:
                manifests[ep.name] = obj
        return cls(manifests, broken)

    def broken_reason(self, name: str) -> str | None:
        """Why an installed driver of this name does not load, or None (loads, or not installed)."""
        return next((b.reason for b in self.broken if b.name == name), None)

    def get(self, name: str) -> Manifest:
        """The manifest of an installed driver, or a ConfigError listing what is installed."""
        try:
            return self.manifests[name]
        except KeyError:
            known = ", ".join(sorted(self.manifests)) or "none"
            why = self.broken_reason(name)
            if why:
                raise ConfigError(f"driver {name!r} is installed but broken: {why}") from None
            raise ConfigError(f"unknown driver {name!r} (installed: {known})") from None


def check_manifest(ep_name: str, obj: object) -> str | None:
    """Why an entry point's object is not an acceptable manifest, or None."""
    if not isinstance(obj, Manifest):
        return f"entry point must name a gateway.driver_api.Manifest, not {type(obj).__name__}"
    if obj.name != ep_name:
        return f"manifest name {obj.name!r} does not match entry point name {ep_name!r}"
    if obj.api_version not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(map(str, sorted(SUPPORTED_API_VERSIONS)))
        return f"driver API version {obj.api_version} is not supported (this host: {supported})"
    if not (isinstance(obj.config, type) and issubclass(obj.config, DriverConfig)):
        return "manifest.config must be a DriverConfig subclass"
    if ":" not in obj.factory:
        return f"manifest.factory {obj.factory!r} must look like 'package.module:Class'"
    return None


def load_driver_class(manifest: Manifest) -> type[Driver]:
    """Import the driver class, checking its hardware libraries and its method signatures."""
    for module in manifest.requires:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(manifest.name, module, manifest.extra or manifest.name)
    mod_name, _, attr = manifest.factory.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] != mod_name.split(".")[0]:
            raise MissingExtra(manifest.name, e.name, manifest.extra or manifest.name) from None
        raise
    cls = getattr(mod, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise ConfigError(f"{manifest.factory} is not a gateway.driver_api.Driver subclass")
    method = "run" if manifest.kind == "stream" else "poll"
    if getattr(cls, method) is getattr(Driver, method):
        raise ConfigError(f"{manifest.factory} is a {manifest.kind} driver but does not define {method}()")
    for name in ("setup", "poll", "run", "write", "close"):
        if not inspect.iscoroutinefunction(getattr(cls, name)):
            raise ConfigError(f"{manifest.factory}.{name} must be 'async def'")
    cls.manifest = manifest
    return cls
