"""load(): precedence (flag > environment > file > default), derived defaults, checks across sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[query]\ntimeout = "3s"\nmax_concurrent = 2\n[sync]\nregion = "eu"\n')
    env = {"APPLIANCE_QUERY_TIMEOUT": "4s", "APPLIANCE_QUERY_MAX_CONCURRENT": "3"}
    cfg = config.load(str(path), {"query.timeout": "5s", "sync.region": None}, environ=env)
    assert cfg.query.timeout == 5_000_000_000 and cfg.sources["query.timeout"] == "flag"
    assert (
        cfg.query.max_concurrent == 3
        and cfg.sources["query.max_concurrent"] == "env APPLIANCE_QUERY_MAX_CONCURRENT"
    )
    assert cfg.sync.region == "eu" and cfg.sources["sync.region"] == f"file {path}"  # None: flag not given
    assert cfg.query.memory_limit == 256 << 20 and cfg.sources["query.memory_limit"] == "default"


def test_the_file_may_come_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nnode_id = "gw7"\n')
    cfg = config.load(None, environ={"APPLIANCE_CONFIG": str(path)})
    assert cfg.server.node_id == "gw7" and cfg.mqtt.client_id == "appliance-gw7"


def test_defaults_that_depend_on_other_settings(tmp_path: Path) -> None:
    cfg = config.load(None, {"server.data_dir": str(tmp_path), "server.node_id": "n1"}, environ={})
    assert cfg.engine.plugin_dir == str(tmp_path / "plugins")
    assert cfg.mqtt.client_id == "appliance-n1"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"http.max_buffered_bytes": "1MiB"},
            "http.max_buffered_bytes (1048576) is smaller than http.max_request_size (10485760)",
        ),
        (
            {"sync.endpoint": "http://x:9000"},
            "sync.endpoint http://x:9000 is plain http: set sync.allow_http",
        ),
        ({"server.node_id": "a b"}, "setting server.node_id: 'a b' may only hold"),
        ({"nope.x": "1"}, "unknown setting 'nope.x'"),
        ({"auth.enabled": "maybe"}, "setting auth.enabled (from flag): expected true or false, got 'maybe'"),
    ],
)
def test_errors_name_the_setting(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(None, overrides, environ={})
    assert message in str(e.value)


def test_plain_http_endpoint_is_allowed_when_asked() -> None:
    cfg = config.load(None, {"sync.endpoint": "http://x:9000/", "sync.allow_http": "true"}, environ={})
    assert cfg.sync.endpoint == "http://x:9000" and cfg.sync.allow_http


def test_subscriptions_need_a_broker(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[[mqtt.subscription]]\ntopic = "a"\ndatabase = "d"\n')
    with pytest.raises(ConfigError, match=r"blocks are set but mqtt.broker is empty"):
        config.load(str(path), environ={})
    cfg = config.load(str(path), {"mqtt.broker": "mqtt://h:1"}, environ={})
    assert [s.topic for s in cfg.mqtt.subscriptions] == ["a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1\n", "top-level key 'x' must be a [section]"),
        ("[http]\nnope = 1\n", "unknown setting 'http.nope'"),
        ("[mqtt]\nsubscription = 3\n", "mqtt.subscription must be an array of tables"),
        ('[[mqtt.subscription]]\ntopic = "a"\ndatabase = "d"\nqos = 3\n', "number 1: qos must be 0, 1 or 2"),
        ('[[mqtt.subscription]]\ntopic = "a"\n', "number 1: database is required"),
    ],
)
def test_file_errors_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        config.load(str(path), environ={})
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "none.toml"), environ={})
