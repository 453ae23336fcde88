"""Subscriptions as routes: each `[[mqtt.subscription]]` checked and compiled, and a topic's route found.

A message is written by the first subscription whose filter matches its topic; one matching
none (left in the broker's session by an earlier configuration) has no route.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import paho.mqtt.client as paho

from ..config import Subscription
from ..errors import CatalogError, ConfigError
from ..model import Precision
from ..storage.catalog import check_database_name
from .jsonlines import NO_MEASUREMENT, JsonOptions
from .topics import TopicParsing

#: Topics whose subscription is remembered (the cache starts over when full).
ROUTE_CACHE = 10_000


@dataclass
class Route:
    """One subscription, compiled, with its counters."""

    sub: Subscription
    parsing: TopicParsing
    json: JsonOptions | None
    precision: Precision
    state: str = "pending"  # pending, subscribed, refused, downgraded (granted QoS below asked)
    messages: int = 0
    lines: int = 0
    errors: int = 0
    last_message_ns: int | None = None

    @property
    def wire_qos(self) -> int:
        """The QoS subscribed on the wire: 2 is taken as 1 (see client.py)."""
        return min(self.sub.qos, 1)


def compile_routes(subscriptions: Iterable[Subscription]) -> list[Route]:
    """Check and compile every subscription; ConfigError names the block and the problem."""
    routes = []
    seen: set[str] = set()
    for i, sub in enumerate(subscriptions, 1):
        try:
            routes.append(_compile(sub, seen))
        except (ValueError, CatalogError) as e:
            raise ConfigError(f"[[mqtt.subscription]] number {i} (topic {sub.topic!r}): {e}") from None
    return routes


def _compile(sub: Subscription, seen: set[str]) -> Route:
    parsing = TopicParsing.compile(sub.topic_parsing, sub.topic_tag)
    opts = None
    if sub.format == "json":
        if not (sub.measurement or sub.measurement_key or parsing.gives_measurement):
            raise ValueError(NO_MEASUREMENT)
        opts = JsonOptions(
            sub.measurement,
            sub.measurement_key,
            sub.tag_keys,
            sub.field_keys,
            sub.time_key,
            sub.time_format,
        )
    precision = Precision.parse(sub.precision, Precision.AUTO)
    _check_filter(sub.topic)
    if sub.topic in seen:
        raise ValueError("the same topic filter is given twice; a message is written once, by the first")
    seen.add(sub.topic)
    check_database_name(sub.database)
    return Route(sub, parsing, opts, precision)


def _check_filter(topic: str) -> None:
    if topic.startswith("$share/"):
        raise ValueError("shared subscriptions ($share/...) are not supported: subscribe to the topic itself")
    if "\0" in topic:
        raise ValueError("a topic filter may not contain NUL")
    levels = topic.split("/")
    for n, level in enumerate(levels):
        if ("#" in level and (level != "#" or n != len(levels) - 1)) or ("+" in level and level != "+"):
            raise ValueError("'+' must be a whole level and '#' the whole last level, e.g. sensors/+/temp/#")


class Router:
    """Finds a topic's route; called on paho's network thread only, so the cache needs no lock."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._by_topic: dict[str, Route | None] = {}

    def match(self, topic: str) -> Route | None:
        """The first subscription whose filter matches (cached: devices repeat their topics)."""
        try:
            return self._by_topic[topic]
        except KeyError:
            pass
        route = next((r for r in self.routes if paho.topic_matches_sub(r.sub.topic, topic)), None)
        if len(self._by_topic) >= ROUTE_CACHE:
            self._by_topic.clear()
        self._by_topic[topic] = route
        return route
