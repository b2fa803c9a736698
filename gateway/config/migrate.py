"""Bring an older config document up to the current ``config_version`` before validation.

Each step takes the raw mapping of version N and returns version N+1. A document from a newer
build is refused rather than guessed at. Versions: 1 the first format; 2 modbus names its serial
device ``port:`` (was ``device:``), as every other serial driver does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config.schema import CONFIG_VERSION

Step = Callable[[dict[str, Any]], dict[str, Any]]

def _modbus_port(data: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: modbus names its serial device ``port:``, as gps, rfid and barcode do (was ``device:``)."""
    drivers = data.get("drivers")
    if not isinstance(drivers, list):
        return data
    out = []
    for section in drivers:
        if isinstance(section, dict) and section.get("driver") == "modbus" and "device" in section:
            section = dict(section)
            device = section.pop("device")
            if section.get("transport") != "tcp":  # for tcp it was never read
                section["port"] = device
        out.append(section)
    data["drivers"] = out
    return data


# version N -> function producing version N+1. Each step leaves what is already current alone,
# so a document without config_version (read as version 1) is safe to migrate.
STEPS: dict[int, Step] = {1: _modbus_port}


class MigrationError(ValueError):
    """The document's version cannot be brought to the current one."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` at the current config_version (a new dict when steps ran)."""
    version = data.get("config_version", 1)  # unversioned: the first format (steps keep current ones as they are)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise MigrationError(f"config_version must be a whole number >= 1, not {version!r}")
    if version > CONFIG_VERSION:
        raise MigrationError(
            f"config_version {version} is newer than this sensegate understands "
            f"(up to {CONFIG_VERSION}); upgrade sensegate"
        )
    while version < CONFIG_VERSION:
        step = STEPS.get(version)
        if step is None:
            raise MigrationError(f"no migration from config_version {version}")
        data = step(dict(data))
        version += 1
        data["config_version"] = version
    return data
