"""The only reader of config.toml and APPLIANCE_* variables: settings per section, defaults, help, validation.

Precedence, highest first: command-line flag, `APPLIANCE_<SECTION>_<KEY>` environment
variable, the config file, the default. Components take their section (`config.mqtt`,
`config.sync`, ...) or plain values from it.
"""

from __future__ import annotations

from .load import DEFAULT_CONFIG_PATHS, load
from .parse import MQTT_SCHEMES
from .sample import describe, sample
from .settings import (
    SECTIONS,
    SETTINGS,
    AuthSettings,
    CatalogSettings,
    Config,
    EngineSettings,
    HttpSettings,
    MqttSettings,
    QuerySettings,
    ServerSettings,
    Setting,
    StorageSettings,
    SyncSettings,
    WalSettings,
)
from .subscriptions import MQTT_FORMATS, Subscription

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "MQTT_FORMATS",
    "MQTT_SCHEMES",
    "SECTIONS",
    "SETTINGS",
    "AuthSettings",
    "CatalogSettings",
    "Config",
    "EngineSettings",
    "HttpSettings",
    "MqttSettings",
    "QuerySettings",
    "ServerSettings",
    "Setting",
    "StorageSettings",
    "Subscription",
    "SyncSettings",
    "WalSettings",
    "describe",
    "load",
    "sample",
]
