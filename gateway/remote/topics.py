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


def subscriptions(prefix: str, gateway: str, groups: list[str]) -> list[str]:
    """Everything a gateway subscribes to for remote config and commands."""
    out = [config_set(prefix, gateway), command_request(prefix, gateway)]
    for g in groups:
        out += [group_config_set(prefix, g), group_command_request(prefix, g)]
    return out
