"""Bring an older config document up to the current ``config_version`` before validation.

Each step takes the raw mapping of version N and returns version N+1. A document from a newer
build is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config.schema import CONFIG_VERSION

Step = Callable[[dict[str, Any]], dict[str, Any]]

# version N -> function producing version N+1; empty while only version 1 exists.
STEPS: dict[int, Step] = {}


class MigrationError(ValueError):
    """The document's version cannot be brought to the current one."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``data`` at the current config_version (a new dict when steps ran)."""
    version = data.get("config_version", CONFIG_VERSION)
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
