"""The connection's settings and reconnect backoff."""

from __future__ import annotations

import pytest

from appliance import config
from appliance.errors import ConfigError
from appliance.mqtt.client import Backoff


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("broker", "mqtt://user:secret@host:1883", "not in the URL"),
        ("broker", "mqtt://host:99999", "out of range"),
        ("broker", "http://host", "expected mqtt://"),
        ("keepalive", "0s", "between 1s and 65535s"),
        ("keepalive", "100000s", "between 1s and 65535s"),
        ("max_pending_bytes", "0", "more than 0"),
        ("reconnect_min", "0s", "more than 0"),
        ("protocol", "4", "3.1.1 or 5"),
    ],
)
def test_mqtt_settings_are_validated(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"mqtt.{key}") as e:
        config.load(None, {f"mqtt.{key}": value}, environ={})
    assert message in str(e.value) and "secret" not in str(e.value)


def test_the_password_is_never_shown_by_config_check() -> None:
    cfg = config.load(None, {"mqtt.password": "hunter2"}, environ={})
    shown = {name: value for name, value, _ in config.describe(cfg)}
    assert shown["mqtt.password"] == "(set, hidden)"


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(1.0, 8.0)
    delays = [b.next() for _ in range(6)]
    for d, base in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert base / 2 <= d <= base
    b.reset()
    assert b.next() <= 1.0
