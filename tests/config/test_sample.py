"""`config sample` and `config check`: config.toml and the README cover every setting."""

from __future__ import annotations

import re
from pathlib import Path

from appliance import config
from appliance.config import SETTINGS, sample
from appliance.mqtt.ingest import compile_routes

ROOT = Path(__file__).resolve().parents[2]


def test_config_file_documents_every_setting() -> None:
    config_toml = (ROOT / "config.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    assert config_toml == sample(), "config.toml is stale: run appliance config sample > config.toml"
    assert config.load(str(ROOT / "config.toml"), environ={}).sources["mqtt.broker"].startswith("file")
    for s in SETTINGS:
        assert f"{s.key} = " in config_toml and f"[{s.section}]" in config_toml, s.name
        assert f"`{s.name}`" in readme, f"README does not document {s.name}"


def test_readme_config_examples_load(tmp_path: Path) -> None:
    """Every ```toml block in the README is a valid configuration (a lone subscription gets a broker)."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert len(blocks) >= 3
    for i, block in enumerate(blocks):
        if "[[mqtt.subscription]]" in block and "[mqtt]" not in block:
            block = '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\n' + block
        path = tmp_path / f"example{i}.toml"
        path.write_text(block)
        cfg = config.load(str(path), environ={})
        compile_routes(cfg.mqtt.subscriptions)


def test_the_sample_loads_to_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(sample())
    from_file = config.load(str(path), environ={})
    default = config.load(None, environ={})
    assert [s.value(from_file) for s in SETTINGS] == [s.value(default) for s in SETTINGS]


def test_describe_lists_every_setting_in_section_order_then_the_subscriptions(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[mqtt]\nbroker = "mqtt://h:1883"\npassword = "hunter2"\n'
        '[[mqtt.subscription]]\ntopic = "s/#"\ndatabase = "iot"\nqos = 0\n'
    )
    rows = config.describe(config.load(str(path), environ={}))
    assert [name for name, _, _ in rows] == [s.name for s in SETTINGS] + ["mqtt.subscription[1]"]
    shown = {name: (value, source) for name, value, source in rows}
    assert shown["mqtt.password"] == ("(set, hidden)", f"file {path}")
    assert shown["mqtt.broker"] == ("'mqtt://h:1883'", f"file {path}")
    assert shown["mqtt.subscription[1]"] == ("topic='s/#' database='iot' qos=0", "file")
    assert shown["sync.secret_access_key"] == ("''", "default")  # empty: nothing to hide
