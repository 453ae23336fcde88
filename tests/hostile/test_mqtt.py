"""Hostile MQTT publishes (an anonymous broker): bad names, a poison message, a table flood."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_mqtt import count, mqtt_health, start_server, toml_config, wait_count
from tests.mosquitto import Broker
from tests.server import Server, wait_for

SUBSCRIPTIONS = [
    {"topic": "lp/#", "database": "iot", "qos": 1},
    {"topic": "json/#", "database": "iot", "qos": 1, "format": "json", "measurement": "js"},
    {"topic": "tagged/#", "database": "iot", "qos": 1, "topic_parsing": "_/{dev}"},
]


def ready(tmp_path: Path, broker: Broker, **catalog: Any) -> Server:
    config = toml_config(broker, SUBSCRIPTIONS)
    if catalog:
        config += "[catalog]\n" + "".join(f"{k} = {v}\n" for k, v in catalog.items())
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok", what="MQTT subscribed")
    return server


def mqtt_errors(server: Server) -> list[dict[str, Any]]:
    sql = "SELECT topic, reason FROM system.mqtt_errors ORDER BY time"
    r = server.request("GET", "/api/v3/query_sql", {"db": "iot", "q": sql, "format": "json"})
    return list(r.json()) if r.status == 200 else []  # 404 until the database exists


def test_names_with_nul_are_refused_over_mqtt_and_queries_keep_working(
    tmp_path: Path, broker: Broker
) -> None:
    server = ready(tmp_path, broker)
    broker.publish("lp/a", ["cpu usage\0=2 1000000000\ncpu usage=1 2000000000"])
    broker.publish("json/b", [json.dumps({"usage\u0000": 2, "v": 1})])
    wait_count(server, "iot", "cpu", 1)
    wait_count(server, "iot", "js", 1)
    assert server.query("iot", "SELECT usage FROM cpu") == [{"usage": 1.0}]
    assert [set(r) - {"time"} for r in server.query("iot", "SELECT * FROM js")] == [{"v"}]
    errors = wait_for(lambda: len(mqtt_errors(server)) == 2 and mqtt_errors(server))
    assert errors[0]["topic"] == "lp/a" and errors[0]["reason"].startswith("line 1: invalid field key")
    assert "U+0000" in errors[0]["reason"] and "U+0000" in errors[1]["reason"]


def test_a_ten_megabyte_message_of_bad_lines_is_recorded_once_and_not_redelivered(
    tmp_path: Path, broker: Broker
) -> None:
    server = ready(tmp_path, broker)
    baseline = server.memory_mib()
    broker.publish("lp/junk", [b"x\n" * 5_000_000], timeout=120)
    errors = wait_for(lambda: mqtt_errors(server), 120, "the junk message recorded")
    assert len(errors) == 1 and errors[0]["topic"] == "lp/junk"
    assert (
        errors[0]["reason"].endswith("and 97 more; 5000000 lines rejected in all")
        and len(errors[0]["reason"]) < 2000
    )
    assert server.memory_mib() < baseline + 250, (baseline, server.memory_mib())  # was +2.9 GB (OOM)
    counted = 'appliance_mqtt_errors_total{subscription="lp/#"} 1'
    wait_for(lambda: counted in server.request("GET", "/metrics").text, 10, "the message counted as bad")
    broker.publish("lp/ok", ["ok v=1 1000000000"])
    wait_count(server, "iot", "ok", 1)
    # Acknowledged: after a restart the broker does not send it again, and the server stays up.
    server.stop()
    server.start()
    wait_for(lambda: mqtt_health(server)["status"] == "ok", what="MQTT subscribed again")
    broker.publish("lp/ok", ["ok v=2 2000000000"])
    # The sentinel: published after the restart, it arrives after anything the broker would
    # redeliver (one session, in order), and ingest records errors before the rows it commits.
    wait_count(server, "iot", "ok", 2)
    assert mqtt_errors(server) == [] and server.proc is not None and server.proc.poll() is None
    assert server.request("GET", "/health").status == 200


@pytest.mark.slow  # ~13 s: two five-million-line messages
def test_junk_retagged_from_the_topic_or_sent_as_a_json_array_is_reported_in_bounded_memory(
    tmp_path: Path, broker: Broker
) -> None:
    server = ready(tmp_path, broker)
    baseline = server.memory_mib()
    # Every line unreadable, so no topic tag can be added to it (was one reason per line: +819 MB).
    broker.publish("tagged/a", [b"x\n" * 5_000_000], timeout=120)
    errors = wait_for(lambda: mqtt_errors(server), 120, "the retagged junk recorded")
    assert [e["topic"] for e in errors] == ["tagged/a"]
    assert server.memory_mib() < baseline + 250, (baseline, server.memory_mib())
    assert (
        errors[0]["reason"].endswith("; and 5000097 more; 5000000 lines rejected in all")
        and len(errors[0]["reason"]) < 2000
    )
    # A JSON array of a million elements without fields (was one reason per element: +254 MB).
    broker.publish("json/junk", [b"[" + b",".join([b'{"a":[]}'] * 1_000_000) + b"]"], timeout=120)
    errors = wait_for(lambda: len(mqtt_errors(server)) == 2 and mqtt_errors(server), 120, "the JSON junk")
    assert errors[1]["reason"].startswith("element 0: no fields; element 1: no fields")
    assert errors[1]["reason"].endswith("; and 999997 more") and len(errors[1]["reason"]) < 2000
    assert server.memory_mib() < baseline + 250, (baseline, server.memory_mib())  # elements read one by one
    broker.publish("tagged/b", ["ok v=1 1000000000"])  # acknowledged, and the server still writes
    wait_count(server, "iot", "ok", 1)
    assert server.query("iot", "SELECT dev FROM ok") == [{"dev": "b"}]
    assert server.request("GET", "/health").status == 200


def test_one_publish_of_many_measurements_cannot_use_up_every_database_s_tables(
    tmp_path: Path, broker: Broker
) -> None:
    server = ready(tmp_path, broker, max_tables=20, max_tables_per_database=5)
    broker.publish("lp/flood", ["\n".join(f"m{i} v=1 1000000000" for i in range(50))])
    errors = wait_for(lambda: mqtt_errors(server), 30, "the flood recorded")
    assert "limit of 5 tables in database 'iot' (catalog.max_tables_per_database)" in errors[0]["reason"]
    assert (
        len(
            [
                t
                for t in server.query("iot", "SHOW TABLES")
                if t["table_schema"] not in ("system", "information_schema")
            ]
        )
        == 5
    )
    r = server.request("POST", "/api/v3/write_lp", {"db": "other"}, "a v=1 1\nb v=1 1")
    assert r.status == 204  # the HTTP writers' databases still have room
    assert count(server, "other", "a") == 1
