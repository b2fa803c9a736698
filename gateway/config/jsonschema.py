"""Export the config's JSON Schema (for editors), with one branch per installed driver."""

from __future__ import annotations

from typing import Any

from gateway.config.schema import Config
from gateway.registry import Registry


def config_json_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of a whole config; `drivers` items are chosen by their `driver:` value."""
    schema = Config.model_json_schema()
    defs: dict[str, Any] = schema.setdefault("$defs", {})
    branches = []
    for name, manifest in sorted(registry.manifests.items()):
        sub = manifest.config.model_json_schema(ref_template="#/$defs/{model}")
        for key, value in sub.pop("$defs", {}).items():
            defs.setdefault(key, value)
        sub["properties"]["driver"] = {"const": name, "description": manifest.description}
        sub.setdefault("required", [])
        if "driver" not in sub["required"]:
            sub["required"].append("driver")
        sub["title"] = f"driver: {name}"
        branches.append(sub)
    schema["properties"]["drivers"]["items"] = {"oneOf": branches} if branches else {"type": "object"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sensegate config"
    return schema
