"""MQTT ingest against a real Mosquitto broker and a real `appliance serve` process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mosquitto import Broker
from tests.server import REPO, Server, wait_for

BASE_NS = 1_764_000_000_000_000_000


def toml_config(broker: Broker, subscriptions: list[dict[str, Any]], **mqtt: Any) -> str:
    """A config.toml with an [mqtt] block and its [[mqtt.subscription]] blocks."""
    lines = ["[mqtt]", f'broker = "{broker.url}"', 'reconnect_min = "100ms"', 'reconnect_max = "1s"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in mqtt.items()]
    for sub in subscriptions:
        lines += ["", "[[mqtt.subscription]]", *(f"{k} = {json.dumps(v)}" for k, v in sub.items())]
    return "\n".join(lines) + "\n"


def start_server(tmp_path: Path, config: str, **kw: Any) -> Server:
    path = tmp_path / "config.toml"
    path.write_text(config)
    return Server(tmp_path / "data", args=["--config", str(path)], **kw).start()


def count(server: Server, db: str, table: str) -> int:
    r = server.request("GET", "/api/v3/query_sql", {"db": db, "q": f"SELECT count(*) AS n FROM {table}"})
    return int(r.json()[0]["n"]) if r.status == 200 else 0


def wait_count(server: Server, db: str, table: str, n: int, timeout: float = 30.0) -> None:
    wait_for(lambda: count(server, db, table) >= n, timeout, f"{n} rows in {db}.{table}")
    assert count(server, db, table) == n


def mqtt_health(server: Server) -> dict[str, Any]:
    return dict(server.request("GET", "/health").json()["components"]["mqtt"])


# -- the minimal configuration, and payload formats ---------------------------------------
def test_minimal_config_line_protocol_message_is_queryable_with_the_cli(
    tmp_path: Path, broker: Broker
) -> None:
    config = (
        f'[mqtt]\nbroker = "{broker.url}"\n\n'
        '[[mqtt.subscription]]\ntopic = "sensors/#"\ndatabase = "iot"\nqos = 1\nformat = "line_protocol"\n'
    )
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok", what="MQTT subscribed")
    broker.publish("sensors/lab/temp", ["temp,room=lab value=21.5"])
    wait_count(server, "iot", "temp", 1)
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "query", "--host", server.url, "-d", "iot", "--format", "json"]
        + ["SELECT room, value FROM temp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [{"room": "lab", "value": 21.5}]


def test_many_lines_per_message_and_several_messages(tmp_path: Path, broker: Broker) -> None:
    server = start_server(tmp_path, toml_config(broker, [{"topic": "lp/#", "database": "iot"}]))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    bodies = ["\n".join(f"m,dev=d{i} v={j} {BASE_NS + j}" for j in range(50)) for i in range(20)]
    broker.publish("lp/batch", bodies)
    wait_count(server, "iot", "m", 1000)
    subs = server.query(
        "iot", "SELECT topic, database, format, state, messages, lines, errors FROM system.mqtt_subscriptions"
    )
    assert subs == [
        {"topic": "lp/#", "database": "iot", "format": "line_protocol", "state": "subscribed"}
        | {"messages": 20, "lines": 1000, "errors": 0}
    ]


def test_json_payload_with_topic_levels_as_tags_and_measurement(tmp_path: Path, broker: Broker) -> None:
    sub = {
        "topic": "factory/+/+/+",
        "database": "plant",
        "format": "json",
        "topic_parsing": "_/{site}/{device}/{measurement}",
        "tag_keys": ["line"],
        "time_key": "ts",
        "time_format": "ms",
    }
    server = start_server(tmp_path, toml_config(broker, [sub]))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish(
        "factory/berlin/press-7/vibration",
        [
            json.dumps({"ts": 1_764_000_000_000, "line": 3, "rms": 0.25, "ok": True, "status": "run"}),
            json.dumps([{"ts": 1_764_000_001_000, "line": 3, "rms": 1, "axis": {"x": 2, "y": 3}}]),
        ],
    )
    wait_count(server, "plant", "vibration", 2)
    rows = server.query("plant", "SELECT * FROM vibration ORDER BY time")
    assert rows[0] | {} == {
        "site": "berlin",
        "device": "press-7",
        "line": "3",
        "rms": 0.25,
        "ok": True,
        "status": "run",
        "time": "2025-11-24T16:00:00",
    }
    assert rows[1]["rms"] == 1.0 and rows[1]["axis_x"] == 2.0 and rows[1]["time"] == "2025-11-24T16:00:01"


def test_wildcards_route_each_topic_to_its_subscription(tmp_path: Path, broker: Broker) -> None:
    subs = [
        {"topic": "site/+/temp", "database": "temps", "topic_parsing": "_/{room}", "topic_tag": "topic"},
        {"topic": "site/#", "database": "other"},
    ]
    server = start_server(tmp_path, toml_config(broker, subs))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish("site/kitchen/temp", [f"t v=1 {BASE_NS}"])
    broker.publish("site/kitchen/humidity/raw", [f"h v=2 {BASE_NS}"])
    wait_count(server, "temps", "t", 1)
    wait_count(server, "other", "h", 1)
    assert server.query("temps", "SELECT room, topic FROM t") == [
        {"room": "kitchen", "topic": "site/kitchen/temp"}
    ]
    assert server.request("GET", "/api/v3/query_sql", {"db": "temps", "q": "SELECT * FROM h"}).status != 200


def test_bad_payload_is_acknowledged_recorded_and_does_not_block_good_ones(
    tmp_path: Path, broker: Broker
) -> None:
    subs = [
        {"topic": "s/#", "database": "iot"},
        {"topic": "j/#", "database": "iot", "format": "json", "measurement": "j"},
    ]
    server = start_server(tmp_path, toml_config(broker, subs))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish(
        "s/1",
        [
            "this is not line protocol",
            f"good v=1 {BASE_NS}\nbad v= {BASE_NS}\ngood v=3 {BASE_NS + 1}",
            f'good v="text" {BASE_NS + 2}',  # a type conflict with the float column
            f"good v=4 {BASE_NS + 3}",
        ],
    )
    broker.publish("j/1", ["{not json", '{"v": 5}'])
    wait_count(server, "iot", "good", 3)
    wait_count(server, "iot", "j", 1)
    errors = server.query("iot", "SELECT topic, reason, payload FROM system.mqtt_errors ORDER BY time")
    assert [e["topic"] for e in errors] == ["s/1", "s/1", "s/1", "j/1"]
    assert "line 1" in errors[0]["reason"] and errors[0]["payload"] == "this is not line protocol"
    assert "line 2" in errors[1]["reason"]
    assert "invalid column type for column 'v'" in errors[2]["reason"]
    assert "invalid JSON" in errors[3]["reason"]
    stats = server.query(
        "iot", "SELECT topic, messages, lines, errors FROM system.mqtt_subscriptions ORDER BY topic"
    )
    assert stats == [
        {"topic": "j/#", "messages": 2, "lines": 1, "errors": 1},
        {"topic": "s/#", "messages": 4, "lines": 3, "errors": 3},
    ]
    assert "rejected in part" in server.log()
    # Acknowledged: after a restart the broker does not send them again (a sentinel sent after
    # the restart arrives, and nothing bad arrived before it).
    server.stop()
    server.start()
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish("s/1", [f"sentinel v=1 {BASE_NS}"])
    wait_count(server, "iot", "sentinel", 1)
    assert count(server, "iot", "good") == 3
    assert len(server.query("iot", "SELECT * FROM system.mqtt_errors")) == 0


# -- broker authentication and TLS ----------------------------------------------------------------
def test_username_and_password_file(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", users={"gateway": "s3cret pass"}).start()
    (tmp_path / "mqtt-password").write_text("s3cret pass\n")
    config = toml_config(
        broker,
        [{"topic": "a/#", "database": "iot"}],
        username="gateway",
        password_file=str(tmp_path / "mqtt-password"),
    )
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish("a/b", [f"m v=1 {BASE_NS}"], username="gateway", password="s3cret pass")
    wait_count(server, "iot", "m", 1)
    assert "s3cret" not in server.log()


def test_wrong_password_shows_degraded_health_and_http_keeps_working(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", users={"gateway": "right"}).start()
    config = toml_config(broker, [{"topic": "a/#", "database": "iot"}], username="gateway")
    server = start_server(tmp_path, config, env={"APPLIANCE_MQTT_PASSWORD": "Wr0ngPa55"})
    health = wait_for(lambda: (h := mqtt_health(server))["error"] and h, what="a connection error")
    assert health["status"] == "degraded" and not health["connected"]
    assert "refused" in health["error"] or "not authorized" in health["error"].lower()
    assert server.request("GET", "/health").json()["state"] == "degraded"
    assert server.write("iot", f"m v=1 {BASE_NS}").status == 204
    assert "Wr0ngPa55" not in server.log()


def test_tls_to_the_broker_with_a_client_certificate(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=True).start()
    cert, key = broker.client_cert("appliance")
    config = toml_config(
        broker,
        [{"topic": "secure/#", "database": "iot"}],
        tls_ca=str(broker.ca_file),
        tls_cert=str(cert),
        tls_key=str(key),
    )
    assert broker.url.startswith("mqtts://")
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    broker.publish("secure/x", [f"m v=1 {BASE_NS}"])
    wait_count(server, "iot", "m", 1)


def test_unknown_ca_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=True).start()
    server = start_server(tmp_path, toml_config(broker, [{"topic": "a", "database": "iot"}]))
    health = wait_for(lambda: (h := mqtt_health(server))["error"] and h, what="a TLS error")
    assert health["status"] == "degraded" and "cannot connect" in health["error"]


def test_bad_subscription_config_stops_start_up_naming_the_key(tmp_path: Path, broker: Broker) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml_config(broker, [{"topic": "a/#", "database": "iot", "format": "json"}]))
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "config", "check", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1 and "measurement" in out.stderr and "number 1" in out.stderr
    path.write_text(toml_config(broker, [{"topic": "a/#", "database": "iot", "qos": 3}]))
    with pytest.raises(RuntimeError, match="qos must be 0, 1 or 2"):
        Server(tmp_path / "data", args=["--config", str(path)]).start()


# -- resilience -----------------------------------------------------------------------------------
def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    server = start_server(tmp_path, toml_config(broker, [{"topic": "a/#", "database": "iot"}]))
    health = mqtt_health(server)
    assert health["status"] == "degraded" and not health["connected"]
    assert server.write("iot", f"http v=1 {BASE_NS}").status == 204
    broker.start()
    wait_for(lambda: mqtt_health(server)["status"] == "ok", what="reconnected")
    broker.publish("a/b", [f"m v=1 {BASE_NS}"])
    wait_count(server, "iot", "m", 1)


class Publisher:
    """Publishes `n` numbered points at QoS 1 from a persistent session, surviving broker restarts."""

    def __init__(self, broker: Broker, topic: str, n: int, per_second: float = 2000) -> None:
        self.broker, self.topic, self.n, self.interval = broker, topic, n, 1 / per_second
        self.client = broker.client(f"pub-{time.monotonic_ns()}", clean_session=False)
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho takes float seconds; its hint says int
        self.mids: list[int] = []
        self.acked: set[int] = set()  # on_publish: paho's info.rc stays NO_CONN for a message resent later
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self.acked.add(mid)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Publisher:
        self.client.connect("127.0.0.1", self.broker.port)
        self.client.loop_start()
        self.thread.start()
        return self

    def _run(self) -> None:
        for i in range(self.n):
            line = f"p,dev=d{i % 10} seq={i}i {BASE_NS + i}"
            # While the broker is away paho keeps QoS 1 messages and sends them on reconnect.
            self.mids.append(self.client.publish(self.topic, line, qos=1).mid)
            time.sleep(self.interval)

    @property
    def sent(self) -> int:
        return len(self.mids)

    def finish(self, timeout: float = 60.0) -> None:
        self.thread.join(timeout)
        wait_for(lambda: self.acked.issuperset(self.mids), timeout, "every PUBACK from the broker")
        self.client.disconnect()
        self.client.loop_stop()


def assert_every_point_once(server: Server, n: int) -> None:
    wait_count(server, "iot", "p", n, timeout=60)
    rows = server.query("iot", "SELECT count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi FROM p")
    assert rows == [{"d": n, "lo": 0, "hi": n - 1}]


def test_broker_restart_during_publishing_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    server = start_server(tmp_path, toml_config(broker, [{"topic": "p/#", "database": "iot", "qos": 1}]))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    publisher = Publisher(broker, "p/x", 3000).start()
    wait_for(lambda: publisher.sent > 1000, what="publishing under way")
    broker.restart()
    wait_for(lambda: publisher.sent > 2000, what="publishing resumed")
    broker.restart()
    publisher.finish()
    assert_every_point_once(server, 3000)


def test_appliance_sigkill_during_publishing_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    server = start_server(tmp_path, toml_config(broker, [{"topic": "p/#", "database": "iot", "qos": 1}]))
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    publisher = Publisher(broker, "p/x", 4000).start()
    for threshold in (1000, 2500):
        wait_for(lambda: publisher.sent > threshold, what="publishing under way")  # noqa: B023
        server.kill()
        down_at = publisher.sent  # the broker queues these for the persistent session meanwhile:
        wait_for(lambda: publisher.sent > down_at + 200, what="publishing while the appliance is down")  # noqa: B023
        server.start()
    publisher.finish()
    assert_every_point_once(server, 4000)


def test_mqtt5_session_keeps_messages_while_the_appliance_restarts(tmp_path: Path, broker: Broker) -> None:
    config = toml_config(broker, [{"topic": "p/#", "database": "iot", "qos": 2}], protocol="5")
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    server.stop()
    broker.publish("p/x", [f"p,dev=d seq={i}i {BASE_NS + i}" for i in range(500)], qos=2)
    server.start()
    assert_every_point_once(server, 500)


def test_back_pressure_with_tiny_caps_still_stores_everything(tmp_path: Path, broker: Broker) -> None:
    config = toml_config(
        broker, [{"topic": "p/#", "database": "iot"}], max_inflight=2, max_pending_bytes="1KiB"
    )
    server = start_server(tmp_path, config)
    wait_for(lambda: mqtt_health(server)["status"] == "ok")
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], mqtt_health(server)["inflight"])

    sampler = threading.Thread(target=sample)
    sampler.start()
    broker.publish("p/x", [f"p,dev=d seq={i}i {BASE_NS + i}" for i in range(2000)])
    assert_every_point_once(server, 2000)
    done.set()
    sampler.join()
    assert 1 <= peak[0] <= 2
