"""Subscriptions: each block checked with an error naming the problem, and a topic's route found."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config
from appliance.errors import ConfigError
from appliance.mqtt.ingest import MqttIngest
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
