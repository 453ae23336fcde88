"""Subscriptions: each block checked with an error naming the problem, and a topic's route found."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError
from appliance.mqtt.ingest import MqttIngest
from appliance.mqtt.messages import Message, Part
from appliance.mqtt.routes import ROUTE_CACHE, Router, compile_routes

LP = '[[mqtt.subscription]]\ntopic = "s/#"\ndatabase = "iot"\n'


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('[[mqtt.subscription]]\ntopic = "$share/g/s"\ndatabase = "iot"\n', "shared subscriptions"),
        ('[[mqtt.subscription]]\ntopic = "s/#/x"\ndatabase = "iot"\n', "'#' the whole last level"),
        ('[[mqtt.subscription]]\ntopic = "s/a+"\ndatabase = "iot"\n', "'+' must be a whole level"),
        (LP + LP, "given twice"),
        ('[[mqtt.subscription]]\ntopic = "s"\ndatabase = "bad name"\n', "invalid database name"),
        ('[[mqtt.subscription]]\ntopic = "s"\ndatabase = "iot"\nformat = "json"\n', "no measurement"),
        ("", "no [[mqtt.subscription]] block"),
    ],
)
def test_subscription_errors_name_the_problem(tmp_path: Path, block: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n{block}')
    with pytest.raises(
        ConfigError, match=message.replace("$", r"\$").replace("[", r"\[").replace("+", r"\+")
    ):
        MqttIngest(config.load(str(path), environ={}).mqtt)


def test_the_first_matching_subscription_routes_a_topic() -> None:
    subs = [config.Subscription("a/+/t", "one"), config.Subscription("a/#", "two")]
    router = Router(compile_routes(subs))
    found = [router.match(t) for t in ["a/x/t", "a/x/u", "b"]]
    assert [r.sub.database if r else None for r in found] == ["one", "two", None]
    for n in range(ROUTE_CACHE + 1):  # the cache starts over when full; answers stay right
        router.match(f"a/{n}")
    assert len(router._by_topic) <= ROUTE_CACHE and router.match("a/x/t") is router.routes[0]


def test_system_tables_of_one_database_hold_only_its_subscriptions_and_errors(tmp_path: Path) -> None:
    """What a resource token for one database sees of system.mqtt_*: its subscriptions, and the errors
    of the messages routed to it, even when the topic kept in the row is cut short and would now
    match another subscription."""
    path = tmp_path / "config.toml"
    blocks = "".join(
        f'[[mqtt.subscription]]\ntopic = "{topic}"\ndatabase = "{db}"\n'
        for topic, db in (("s/+/end", "lab"), ("s/#", "plant"))
    )
    path.write_text(f'[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n{blocks}')
    ingest = MqttIngest(config.load(str(path), environ={}).mqtt)
    router = Router(ingest.routes)
    long_topic = "s/" + "x" * 300 + "/end"  # kept as its first 256 characters, which match s/#
    for topic in (long_topic, "s/other"):
        msg = Message(router.match(topic), topic, b"lab-secret=42", 1, 1, 1, 1, 1)
        ingest.batcher.rejects.record([Part(msg, errors=["bad line"])])

    def shown(db: str, every: bool) -> tuple[list[str], list[str]]:
        tables = ingest.system_tables(db, every)
        return (
            tables["mqtt_subscriptions"].column("topic").to_pylist(),
            [t[:8] for t in tables["mqtt_errors"].column("topic").to_pylist()],
        )

    assert shown("lab", False) == (["s/+/end"], ["s/xxxxxx"])
    assert shown("plant", False) == (["s/#"], ["s/other"])
    assert shown("lab", True) == (["s/+/end", "s/#"], ["s/xxxxxx", "s/other"])
