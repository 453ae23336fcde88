"""The section dataclasses declare every setting; SETTINGS is generated from them."""

from __future__ import annotations

from dataclasses import fields

import pytest

from appliance import config
from appliance.config import SECTIONS, SETTINGS, Config


def test_every_section_field_is_a_setting_and_every_setting_a_section_field() -> None:
    declared = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in fields(cls)}
    assert declared - {s.name for s in SETTINGS} == {"mqtt.subscriptions"}  # only the file holds them
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_sections_are_configs_attributes_in_file_order() -> None:
    assert list(SECTIONS) == [f.name for f in fields(Config) if f.name != "sources"]
    assert list(dict.fromkeys(s.section for s in SETTINGS)) == list(SECTIONS)
    assert list(SECTIONS) == ["server", "http", "auth", "wal", "storage", "catalog", "query"] + [
        "engine",
        "mqtt",
        "sync",
    ]


def test_env_names_derive_from_section_and_key() -> None:
    by_name = {s.name: s for s in SETTINGS}
    assert by_name["mqtt.broker"].env == "APPLIANCE_MQTT_BROKER"
    assert by_name["storage.max_disk_bytes"].env == "APPLIANCE_STORAGE_MAX_DISK_BYTES"
    assert {s.name for s in SETTINGS if s.secret} == {"mqtt.password", "sync.secret_access_key"}


def test_each_setting_reads_its_value_from_its_section() -> None:
    cfg = config.load(None, {"sync.bucket": "edge", "http.bind": "0.0.0.0:1"}, environ={})
    assert cfg.sync.bucket == "edge" and cfg.http.bind == "0.0.0.0:1"
    by_name = {s.name: s for s in SETTINGS}
    assert by_name["sync.bucket"].value(cfg) == "edge"
    assert by_name["auth.enabled"].value(cfg) is True


def test_sections_are_frozen() -> None:
    cfg = config.load(None, environ={})
    with pytest.raises(AttributeError):
        cfg.sync.bucket = "x"  # type: ignore[misc]


def test_with_settings_takes_only_the_named_settings() -> None:
    old = config.load(None, environ={})
    new = config.load(
        None, {"query.timeout": "5s", "catalog.max_tables": "10", "sync.bucket": "b"}, environ={}
    )
    merged = old.with_settings(new, ["query.timeout", "sync.bucket"])
    assert merged.query.timeout == 5_000_000_000 and merged.sync.bucket == "b"
    assert merged.catalog.max_tables == old.catalog.max_tables  # not named: kept
    assert merged.sources == old.sources
    assert old.query.timeout == 30_000_000_000  # old itself is unchanged
