"""Fleet documents: the config one `sensegate config push` sends to a gateway or a whole group.

A fleet document may leave out identity (``gateway.id``, ``site``, ``state_dir``,
``key_file``): each gateway fills in its own. ``sensegate check --fleet FILE`` and the check
`config push` makes before it signs anything use this one validator, so a document passes on
the ops machine exactly when it would pass there; the rules that need the gateway's own file
(its identity may not change) are the gateway's (gateway.remote.agent).
"""

from __future__ import annotations

from gateway.config.loader import LoadError, load_yaml
from gateway.config.validate import ConfigInvalid, GatewayConfig, validate_document
from gateway.registry import Registry

STAND_IN_ID = "fleet-document"  # an id for validation only: each gateway uses its own


def check_fleet_document(raw: bytes, registry: Registry, source: str) -> tuple[GatewayConfig, list[str]]:
    """Validate a fleet document; ConfigInvalid lists its problems, the list returned says what gateways refuse."""
    try:
        doc = load_yaml(raw)
    except LoadError as e:
        raise ConfigInvalid(e.problems, source) from None
    if isinstance(doc.data, dict) and isinstance(doc.data.setdefault("gateway", {}), dict):
        doc.data["gateway"].setdefault("id", STAND_IN_ID)
    cfg = validate_document(doc, registry, source)
    refused: list[str] = []
    if "remote" in cfg.config.model_fields_set:
        refused.append("the remote: section (trusted keys, groups, limits) can only be changed in each gateway's "
                       "local file: gateways refuse a push that changes it")
    if not any(u.type == "mqtt" for u in cfg.config.uplinks):
        refused.append("no MQTT uplink: a gateway without remote.coap_listen refuses it (it would lock itself out)")
    return cfg, refused
