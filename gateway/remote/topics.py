"""MQTT topics of remote config and commands (the table is in docs/topics.md)."""

from __future__ import annotations

import re

COMMAND_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")  # safe as one topic level


def config_set(prefix: str, gateway: str) -> str:
    """Signed config pushes for one gateway."""
    return f"{prefix}/{gateway}/config/set"


def group_config_set(prefix: str, group: str) -> str:
    """Signed config pushes for every gateway of a group."""
    return f"{prefix}/group/{group}/config/set"


def config_status(prefix: str, gateway: str) -> str:
    """Retained outcome of the latest push (received, rejected, applied, rolled_back)."""
    return f"{prefix}/{gateway}/config/status"


def command_request(prefix: str, gateway: str) -> str:
    """Signed commands for one gateway."""
    return f"{prefix}/{gateway}/cmd/req"


def group_command_request(prefix: str, group: str) -> str:
    """Signed commands for every gateway of a group."""
    return f"{prefix}/group/{group}/cmd/req"


def command_result(prefix: str, gateway: str, cmd_id: str) -> str:
    """The result of one command (``-`` when the request carried no usable id)."""
    return f"{prefix}/{gateway}/cmd/res/{cmd_id}"


def agent_set(prefix: str, gateway: str) -> str:
    """Signed agent update manifests for one gateway (signed by a release key)."""
    return f"{prefix}/{gateway}/agent/set"


def group_agent_set(prefix: str, group: str) -> str:
    """Signed agent update manifests for every gateway of a group."""
    return f"{prefix}/group/{group}/agent/set"


def agent_status(prefix: str, gateway: str) -> str:
    """Retained: the latest agent update's progress and outcome (signed by the device key)."""
    return f"{prefix}/{gateway}/agent/status"


def update_chunks(prefix: str, sha256: str, index: str = "+") -> str:
    """Retained: the chunks of an update bundle, by the bundle's SHA-256 (one copy for the fleet)."""
    return f"{prefix}/updates/{sha256}/{index}"


def ops_key_event(prefix: str, kid_hex: str = "+", event: str = "+") -> str:
    """Retained: an ops key's rotation (``rotated``) or revocation (``revoked``), signed by ops keys."""
    return f"{prefix}/ops/keys/{kid_hex}/{event}"


def gateway_key_revoked(prefix: str, gateway: str, kid_hex: str = "+") -> str:
    """Retained: the revocation of one of a gateway's device keys, signed by an ops key."""
    return f"{prefix}/{gateway}/keys/revoked/{kid_hex}"


def subscriptions(prefix: str, gateway: str, groups: list[str]) -> list[str]:
    """Everything a gateway subscribes to for remote config, commands and ops key events."""
    out = [config_set(prefix, gateway), command_request(prefix, gateway), ops_key_event(prefix),
           agent_set(prefix, gateway)]
    for g in groups:
        out += [group_config_set(prefix, g), group_command_request(prefix, g), group_agent_set(prefix, g)]
    return out
