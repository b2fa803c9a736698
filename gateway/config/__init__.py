"""Config: loading (loader), schema, migration, validation and apply are separate modules."""

from gateway.config.loader import Problem
from gateway.config.schema import CONFIG_VERSION, Config
from gateway.config.validate import ConfigInvalid, GatewayConfig, Instance, load_config, load_config_bytes

__all__ = [
    "CONFIG_VERSION",
    "Config",
    "ConfigInvalid",
    "GatewayConfig",
    "Instance",
    "Problem",
    "load_config",
    "load_config_bytes",
]
